"""Alignahead++ on the user's own models: fastalign.distill.Alignahead's hooks, pairing,
terms and errors, on PyG's basic models and hand-written ones."""

import pytest
import torch
import torch.nn.functional as F

from fastalign import Graph, ops
from fastalign.distill import Alignahead, graph_layer_names, layer_pairs

from .helpers import random_edge_index

models = pytest.importorskip("torch_geometric.nn.models")

N, F_IN, C = 60, 12, 4


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, F_IN, generator=gen)
    ei = random_edge_index(N, N, 300, seed=1)
    y = torch.randint(0, C, (N,), generator=gen)
    mask = torch.rand(N, generator=gen) < 0.5
    return x, ei, y, mask


def basic(kind, layers, hidden=16, **kw):
    cls = {"gcn": models.GCN, "sage": models.GraphSAGE, "gat": models.GAT, "gin": models.GIN}[kind]
    return cls(F_IN, hidden, layers, C, **kw)


@pytest.mark.parametrize("kind", ["gcn", "sage", "gat", "gin"])
@pytest.mark.parametrize("layers", [2, 3, 4])
def test_every_pyg_basic_model_is_hooked_and_trained(kind, layers, data):
    x, ei, y, mask = data
    torch.manual_seed(0)
    pair = [basic(kind, layers), basic(kind, layers)]
    align = Alignahead(pair, num_classes=C)
    assert align.layer_names == [[f"convs.{i}" for i in range(layers)]] * 2
    assert align.widths[0][-1] == C and len(align.heads[0]) == layers - 1
    assert align.pairs[(0, 1)] == layer_pairs(layers, "ahead")
    outs = [m(x, ei) for m in pair]
    loss, parts = align.loss(ei, y, mask)
    total = loss + sum(F.cross_entropy(o[mask], y[mask]) for o in outs)
    total.backward()
    assert torch.isfinite(loss) and set(parts) == {"structure", "feature", "deep_supervision"}
    assert all(float(v) > 0 for v in parts.values())
    for m in pair + [align]:
        assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_the_terms_are_the_ops_on_the_hooked_outputs(data):
    x, ei, y, mask = data
    torch.manual_seed(0)
    pair = [basic("gcn", 2), basic("gcn", 2)]
    align = Alignahead(pair, num_classes=C, feature_weight=0.0, ds_weight=0.0, kernel="l1", sigma=2.0,
                       tau=0.5)
    h = [[], []]
    for k, m in enumerate(pair):  # the conv outputs, captured by our own hooks
        hooks = [m.convs[i].register_forward_hook(lambda mod, i_, o, k=k: h[k].append(o)) for i in range(2)]
        m.eval()
        m(x, ei)
        for hk in hooks:
            hk.remove()
    loss, parts = align.loss(ei, y, mask, student=0)
    g = Graph.from_edge_index(ei, num_nodes=N)
    want = torch.stack([ops.structure_kl(g, h[0][l], h[1][m].detach(), kernel="l1", sigma=2.0, tau=0.5)
                        for l, m in [(0, 1), (1, 0)]]).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(parts["structure"], want)


def test_simultaneous_is_the_sum_of_the_students_terms(data):
    x, ei, y, mask = data
    torch.manual_seed(0)
    pair = [basic("gat", 2, heads=2).eval(), basic("sage", 3).eval()]
    align = Alignahead(pair, num_classes=C)

    def run():
        for m in pair:
            m(x, ei)

    run()
    both, _ = align.loss(ei, y, mask)
    parts = []
    for k in range(2):
        run()
        parts.append(align.loss(ei, y, mask, student=k)[0])
    torch.testing.assert_close(both, parts[0] + parts[1])


def test_alternating_reaches_only_the_student(data):
    x, ei, y, mask = data
    pair = [basic("gcn", 2), basic("gcn", 2)]
    align = Alignahead(pair, num_classes=C)
    with torch.no_grad():
        pair[1](x, ei)
    out = pair[0](x, ei)
    (F.cross_entropy(out, y) + align.loss(ei, y, mask, student=0)[0]).backward()
    assert all(p.grad is not None for p in pair[0].parameters())
    assert all(p.grad is None for p in pair[1].parameters())
    # the student's heads and adapters learn; the peer's do not
    assert all(p.grad is not None for p in align.heads[0].parameters())
    assert all(p.grad is None for p in align.heads[1].parameters())


def test_heterogeneous_students_of_other_widths_and_depths(data):
    x, ei, y, mask = data
    gcn, gat = basic("gcn", 2, hidden=16), basic("gat", 3, hidden=32, heads=4)
    align = Alignahead([gcn, gat], num_classes=C)
    assert align.widths == [[16, C], [32, 32, C]]
    assert align.pairs[(0, 1)] == [(0, 1), (1, 0)] and align.pairs[(1, 0)] == [(0, 1), (1, 0), (2, 0)]
    # hint adapters map each student layer to its peer layer's width
    assert align.adapters["1_0_1_0"].adapter.weight.shape == (16, 32)
    gcn(x, ei), gat(x, ei)
    loss, _ = align.loss(ei, y, mask)
    loss.backward()
    assert torch.isfinite(loss)


class TupleLayers(torch.nn.Module):
    """A hand-written model whose attention layer returns (out, (edge_index, alpha))."""

    def __init__(self):
        super().__init__()
        from torch_geometric.nn import GATConv

        self.att = GATConv(F_IN, 8, heads=2)
        self.out = GATConv(16, C, heads=1)

    def forward(self, x, ei):
        h, _ = self.att(x, ei, return_attention_weights=True)
        return self.out(F.elu(h), ei)


def test_layers_returning_tuples_and_named_layers(data):
    x, ei, y, mask = data
    pair = [TupleLayers(), TupleLayers()]
    assert graph_layer_names(pair[0]) == ["att", "out"]
    align = Alignahead(pair, layers=[["att", "out"], ["att", "out"]], num_classes=C)
    assert align.widths == [[16, C], [16, C]]
    for m in pair:
        m(x, ei)
    loss, _ = align.loss(ei, y, mask)
    assert torch.isfinite(loss)


def test_widths_from_an_example_run(data):
    x, ei, y, mask = data

    class Plain(torch.nn.Module):  # layers that do not say their width
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(F_IN, 10), torch.nn.Linear(10, C)

        def forward(self, x, ei):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(ValueError, match="does not say its output width: pass example="):
        Alignahead([Plain(), Plain()], layers=[["a", "b"]] * 2)
    align = Alignahead([Plain(), Plain()], layers=[["a", "b"]] * 2, example=(x, ei))
    assert align.widths == [[10, C], [10, C]]


def test_clear_errors(data):
    x, ei, y, mask = data
    pair = [basic("gcn", 2), basic("gcn", 2)]
    with pytest.raises(ValueError, match="has no submodule 'convs.5'"):
        Alignahead(pair, layers=[["convs.0", "convs.5"], ["convs.0", "convs.1"]])
    with pytest.raises(TypeError, match="two or more"):
        Alignahead(pair[:1])
    with pytest.raises(ValueError, match="2 name lists for 3 models"):
        Alignahead(pair + [basic("gcn", 2)], layers=[["convs.0"], ["convs.0"]])
    align = Alignahead(pair, num_classes=C)
    pair[0](x, ei)
    with pytest.raises(RuntimeError, match="layer 'convs.0' of model 1 has not run since the last loss"):
        align.loss(ei, y, mask)
    pair[0](x, ei), pair[1](x, ei)
    align.loss(ei, y, mask)
    with pytest.raises(RuntimeError, match="has not run"):  # what the hooks saw is used once
        align.loss(ei, y, mask)
    pair[0](x, ei), pair[1](x, ei)
    with pytest.raises(TypeError, match="edge_index"):
        align.loss("graph", y, mask)
    align.remove()
    pair[0](x, ei), pair[1](x, ei)
    with pytest.raises(RuntimeError, match="has not run"):
        align.loss(ei, y, mask)


def test_example_trains_two_pyg_gats(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "alignahead_pyg.py"
    spec = importlib.util.spec_from_file_location("example_alignahead", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for mode in ("simultaneous", "alternating"):
        assert example.main(["--root", str(tmp_path), "--dataset", "synthetic", "--epochs", "3", "--mode", mode]) == 0
        out = capsys.readouterr().out
        assert "distilled" in out and "trained alone" in out
