"""fastalign.nn.GATConv against the installed PyG GATConv: every option and input kind,
outputs and gradients in float64 (dropout 0), the attention it returns, dropout, bad
input and the conversion of PyG models."""

import itertools
import warnings

import pytest
import torch

import fastalign.nn as fnn
from fastalign import Graph, backends
from helpers import random_edge_index
from pyg_twins import DT, _gen, adjacencies, assert_same_forward_backward, leaf, twin

pyg_nn = pytest.importorskip("torch_geometric.nn", reason="needs torch_geometric (the test extra)")

N_SRC, N_DST, E, F_IN = 11, 7, 40, 6
BACKENDS = [b for b in ("torch", "cpu") if backends.is_available(b)]

OPTIONS = [
    dict(heads=h, concat=c, negative_slope=s, add_self_loops=lp, bias=b, residual=r)
    for h, c, s, lp, b, r in itertools.product([1, 3], [True, False], [0.2], [True, False], [True, False], [False, True])
] + [dict(heads=2, negative_slope=0.0), dict(heads=2, negative_slope=0.7, dropout=0.5)]


def ids(options):
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


def square(seed=0, dtype=torch.int64):
    ei = random_edge_index(N_SRC, N_SRC, E, seed=seed).to(dtype)
    return torch.randn(N_SRC, F_IN, dtype=DT, generator=_gen(seed)), ei


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=ids(OPTIONS))
def test_edge_index_matches_pyg(backend, options):
    x, ei = square()
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, F_IN, 5, **options)
    ours.backend = backend
    if options.get("dropout"):  # dropout draws other masks than PyG: compare in eval
        ours.eval(), theirs.eval()
    xo, xt = leaf(x), leaf(x)
    assert_same_forward_backward(ours, theirs, lambda: (ours(xo, ei), [xo]), lambda: (theirs(xt, ei), [xt]))


@pytest.mark.parametrize("heads,channels", [(1, 4), (2, 3), (8, 1)])
def test_wide_inputs_match_pyg(heads, channels):
    """Inputs wider than heads x channels (Cora: 1,433 features into 16), where the
    attention terms come from the projection instead of a folded weight: outputs and
    every gradient equal PyG's in float64."""
    f_in = 40
    ei = random_edge_index(N_SRC, N_SRC, E, seed=3)
    x = torch.randn(N_SRC, f_in, dtype=DT, generator=_gen(3))
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, f_in, channels, heads=heads)
    xo, xt = leaf(x), leaf(x)
    assert_same_forward_backward(ours, theirs, lambda: (ours(xo, ei), [xo]), lambda: (theirs(xt, ei), [xt]))


@pytest.mark.parametrize("options", OPTIONS[::3], ids=ids(OPTIONS[::3]))
def test_bipartite_matches_pyg(options):
    ei = random_edge_index(N_SRC, N_DST, E, seed=1)
    x_src = torch.randn(N_SRC, F_IN, dtype=DT, generator=_gen(1))
    x_dst = torch.randn(N_DST, F_IN + 2, dtype=DT, generator=_gen(2))
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, (F_IN, F_IN + 2), 4, **options)
    if options.get("dropout"):
        ours.eval(), theirs.eval()
    for with_dst in (True, False):
        so, st, do, dt = leaf(x_src), leaf(x_src), leaf(x_dst), leaf(x_dst)
        size = (N_SRC, N_DST)
        assert_same_forward_backward(
            ours, theirs,
            lambda: (ours((so, do if with_dst else None), ei, size=size), [so, do]),
            lambda: (theirs((st, dt if with_dst else None), ei, size=size), [st, dt]),
        )
    # one projection shared by both sides (in_channels an int, x a pair)
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, F_IN, 4, **options)
    if options.get("dropout"):
        ours.eval(), theirs.eval()
    x_dst = x_dst[:, :F_IN]
    so, st, do, dt = leaf(x_src), leaf(x_src), leaf(x_dst), leaf(x_dst)
    assert_same_forward_backward(ours, theirs, lambda: (ours((so, do), ei), [so, do]),
                                 lambda: (theirs((st, dt), ei), [st, dt]))


@pytest.mark.parametrize("add_self_loops", [True, False])
def test_every_adjacency_kind_matches_pyg(add_self_loops):
    x, ei = square(seed=2)
    ei = ei[:, ei[0] != ei[1]] if not add_self_loops else ei  # sparse adjacencies sum duplicates
    ei = torch.unique(ei, dim=1)
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, F_IN, 3, heads=2, add_self_loops=add_self_loops)
    expected = theirs(x, ei)
    for kind, adj in adjacencies(ei, N_SRC, N_SRC).items():
        xo, xt = leaf(x), leaf(x)
        assert_same_forward_backward(ours, theirs, lambda: (ours(xo, adj), [xo]), lambda: (theirs(xt, adj), [xt]))
        torch.testing.assert_close(ours(x, adj), expected, rtol=1e-9, atol=1e-10, msg=kind)
    graph = Graph.from_edge_index(ei, num_nodes=N_SRC)
    torch.testing.assert_close(ours(x, graph), expected, rtol=1e-9, atol=1e-10)
    from torch_geometric import EdgeIndex

    torch.testing.assert_close(ours(x, EdgeIndex(ei.contiguous(), sparse_size=(N_SRC, N_SRC))), expected, rtol=1e-9, atol=1e-10)


def test_int32_indices_flow_and_edge_cases_match_pyg():
    x, ei = square(seed=3)
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, F_IN, 3, heads=2)
    torch.testing.assert_close(ours(x, ei.int()), theirs(x, ei), rtol=1e-9, atol=1e-10)
    ours_t, theirs_t = twin(fnn.GATConv, pyg_nn.GATConv, F_IN, 3, heads=2, flow="target_to_source")
    torch.testing.assert_close(ours_t(x, ei), theirs_t(x, ei), rtol=1e-9, atol=1e-10)
    # isolated nodes, an empty edge set, a hub
    n = 40
    hub = torch.stack([torch.arange(1, n), torch.zeros(n - 1, dtype=torch.long)])
    xs = torch.randn(n, F_IN, dtype=DT, generator=_gen(4))
    for edges in (hub, torch.empty(2, 0, dtype=torch.long), hub[:, :5]):
        torch.testing.assert_close(ours(xs, edges), theirs(xs, edges), rtol=1e-9, atol=1e-10)
    empty = torch.empty(0, F_IN, dtype=DT)
    assert ours(empty, torch.empty(2, 0, dtype=torch.long)).shape == (0, 6)


def test_attention_weights_are_pygs():
    x, ei = square(seed=5)
    ours, theirs = twin(fnn.GATConv, pyg_nn.GATConv, F_IN, 3, heads=2)
    out_o, (ei_o, a_o) = ours(x, ei, return_attention_weights=True)
    out_t, (ei_t, a_t) = theirs(x, ei, return_attention_weights=True)
    torch.testing.assert_close(out_o, out_t, rtol=1e-9, atol=1e-10)
    assert torch.equal(ei_o, ei_t)
    torch.testing.assert_close(a_o, a_t, rtol=1e-9, atol=1e-12)
    ei_u = torch.unique(ei, dim=1)
    for kind, adj in adjacencies(ei_u, N_SRC, N_SRC).items():
        if kind == "sparse_tensor":
            continue
        (o, (adj_o, a_o)), (t, (adj_t, a_t)) = (ours(x, adj, return_attention_weights=True),
                                                 theirs(x, adj, return_attention_weights=True))
        torch.testing.assert_close(o, t, rtol=1e-9, atol=1e-10)
        assert adj_o.shape == adj_t.shape and adj_o._nnz() == adj_t._nnz(), kind
        torch.testing.assert_close(adj_o.to_dense(), adj_t.to_dense(), rtol=1e-9, atol=1e-12, msg=kind)
        torch.testing.assert_close(a_o, a_t, rtol=1e-9, atol=1e-12, msg=kind)


def test_attention_dropout_is_the_fused_kernels_mask():
    """In training, the returned attention is the one the output was computed with, and a
    seed set by torch.manual_seed gives the same result on every backend."""
    x, ei = square(seed=6)
    torch.manual_seed(0)
    conv = fnn.GATConv(F_IN, 4, heads=3, dropout=0.4).to(DT)
    outs = []
    for backend in BACKENDS:
        conv.backend = backend
        torch.manual_seed(42)
        out, (edges, alpha) = conv(x, ei, return_attention_weights=True)
        h = conv.lin(x).view(-1, 3, 4)
        manual = torch.zeros(N_SRC, 3, 4, dtype=DT).index_add(0, edges[1], alpha.unsqueeze(-1) * h[edges[0]])
        torch.testing.assert_close(out - conv.bias, manual.reshape(N_SRC, -1), rtol=1e-9, atol=1e-10)
        assert (alpha == 0).any()  # some entries dropped
        outs.append(out)
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-10, atol=1e-12)
    conv.eval()
    torch.testing.assert_close(conv(x, ei), conv(x, ei))


def test_state_dicts_repr_lazy_and_from_pyg():
    theirs = pyg_nn.GATConv(F_IN, 4, heads=2, residual=True)
    ours = fnn.GATConv(F_IN, 4, heads=2, residual=True)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert repr(ours) == repr(theirs) == "GATConv(6, 4, heads=2)"
    assert repr(fnn.GATConv((6, 8), 4, heads=2)) == "GATConv((6, 8), 4, heads=2)"
    x, ei = square(seed=7)
    lazy = fnn.GATConv(-1, 4, heads=2)
    assert lazy(x.float(), ei).shape == (N_SRC, 8)
    converted = fnn.GATConv.from_pyg(pyg_nn.GATConv(F_IN, 4, heads=2, concat=False).double())
    assert isinstance(converted, fnn.GATConv) and not converted.concat
    model = torch.nn.Sequential(pyg_nn.GATConv(F_IN, 4, heads=2).double())
    expected = model[0](x, ei)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fnn.convert(model)
    assert isinstance(model[0], fnn.GATConv)
    torch.testing.assert_close(model[0](x, ei), expected, rtol=1e-9, atol=1e-10)


def test_unsupported_options_are_clear_errors():
    with pytest.raises(ValueError, match="edge_dim"):
        fnn.GATConv(F_IN, 4, edge_dim=3)
    with pytest.raises(ValueError, match="aggr"):
        fnn.GATConv(F_IN, 4, aggr="mean")
    with pytest.raises(TypeError, match="node_dim"):
        fnn.GATConv(F_IN, 4, node_dim=1)
    with pytest.raises(ValueError, match="heads"):
        fnn.GATConv(F_IN, 4, heads=0)
    with pytest.raises(ValueError, match="dropout"):
        fnn.GATConv(F_IN, 4, dropout=2.0)
    conv = fnn.GATConv(F_IN, 4)
    x, ei = square()
    with pytest.raises(ValueError, match="static graphs"):
        conv(x.unsqueeze(0), ei)
    with pytest.raises(ValueError, match="out of range"):
        conv(x.float(), ei.clone().fill_(N_SRC + 3))
    # under patch_pyg, edge features build PyG's own layer
    import fastalign

    fastalign.patch_pyg()
    try:
        assert type(pyg_nn.GATConv(F_IN, 4, edge_dim=2)).__module__.startswith("torch_geometric")
        assert isinstance(pyg_nn.GATConv(F_IN, 4), fnn.GATConv)
    finally:
        fastalign.unpatch_pyg()


def test_compiles_without_graph_breaks_in_eval_and_in_training_with_dropout():
    x, ei = square(seed=8)
    conv = fnn.GATConv(F_IN, 4, heads=2, dropout=0.3).to(DT).eval()
    import torch._dynamo as dynamo

    dynamo.reset()
    explained = dynamo.explain(conv)(x, ei)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(conv, fullgraph=True)
    torch.testing.assert_close(compiled(x, ei), conv(x, ei), rtol=1e-9, atol=1e-10)
    # training: the dropout seed is drawn as a tensor inside the graph
    conv.train()
    dynamo.reset()
    explained = dynamo.explain(conv)(x, ei)
    assert explained.graph_break_count == 0, explained.break_reasons
    xg = x.clone().requires_grad_()
    out = torch.compile(conv, fullgraph=True)(xg, ei)
    out.sum().backward()
    assert out.shape == (N_SRC, 8) and torch.isfinite(xg.grad).all()
    # dropout acted (the compiled graph draws its own numbers, so not eager's mask)
    assert not torch.allclose(out.detach(), conv.eval()(x, ei))
