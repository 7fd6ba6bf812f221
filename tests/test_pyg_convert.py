"""fastalign.nn.convert and fastalign.patch_pyg on stock PyG models."""

import pytest
import torch

import fastalign
import fastalign.nn as fnn
from helpers import random_edge_index

pyg_nn = pytest.importorskip("torch_geometric.nn", reason="needs torch_geometric (the test extra)")

N, F_IN = 30, 12


class Mixed(torch.nn.Module):
    """A model of mixed PyG layers, one of which fastalign does not offer (lstm)."""

    def __init__(self):
        super().__init__()
        self.gcn = pyg_nn.GCNConv(F_IN, 16)
        self.sage = pyg_nn.SAGEConv(16, 16, aggr="max", project=True)
        self.blocks = torch.nn.ModuleList([
            pyg_nn.GraphConv(16, 8, aggr="mean"),
            pyg_nn.GINConv(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), train_eps=True),
        ])
        self.lstm = pyg_nn.SAGEConv(8, 4, aggr="lstm")

    def forward(self, x, edge_index):
        x = self.gcn(x, edge_index).relu()
        x = self.sage(x, edge_index)
        for block in self.blocks:
            x = block(x, edge_index)
        return self.lstm(x, edge_index)


def inputs():
    ei = random_edge_index(N, N, 120, seed=0)
    ei = ei[:, torch.argsort(ei[1], stable=True)]  # lstm needs edges sorted by target
    return torch.randn(N, F_IN, generator=torch.Generator().manual_seed(0)), ei


def test_convert_swaps_supported_layers_keeps_outputs_and_says_what_it_left():
    torch.manual_seed(0)
    model = Mixed()
    x, ei = inputs()
    expected = model(x, ei)
    gin_mlp = model.blocks[1].nn
    with pytest.warns(UserWarning, match=r"lstm \(fastalign's SAGEConv supports aggr"):
        converted = fnn.convert(model)
    assert converted is model
    assert type(model.gcn) is fnn.GCNConv and type(model.sage) is fnn.SAGEConv
    assert type(model.blocks[0]) is fnn.GraphConv and type(model.blocks[1]) is fnn.GINConv
    assert model.blocks[1].nn is gin_mlp  # carried, not copied
    assert type(model.lstm) is pyg_nn.SAGEConv
    assert [name for name, _ in model.fastalign_skipped] == ["lstm"]
    torch.testing.assert_close(model(x, ei), expected, rtol=1e-5, atol=1e-5)
    # training goes through the converted layers
    model(x, ei).sum().backward()
    assert model.gcn.lin.weight.grad is not None and model.blocks[1].eps.grad is not None


def test_convert_names_layers_it_has_no_drop_in_for():
    """GATv2Conv (PyG's GAT(v2=True)) is left as PyG's, and the warning says so: before,
    such a model came back unchanged without a word."""
    model = pyg_nn.models.GAT(F_IN, 8, num_layers=2, out_channels=3, v2=True)
    with pytest.warns(UserWarning, match=r"convs\.0 \(fastalign has no drop-in for GATv2Conv"):
        fnn.convert(model)
    assert [type(c) for c in model.convs] == [pyg_nn.GATv2Conv] * 2
    assert [name for name, _ in model.fastalign_skipped] == ["convs.0", "convs.1"]
    mixed = torch.nn.ModuleList([pyg_nn.GATConv(F_IN, 4), pyg_nn.GATv2Conv(F_IN, 4)])
    fnn.convert(mixed, quiet=True)
    assert type(mixed[0]) is fnn.GATConv and type(mixed[1]) is pyg_nn.GATv2Conv


def test_convert_a_single_layer_and_quiet():
    conv = pyg_nn.GraphConv(F_IN, 3)
    ours = fnn.convert(conv)
    assert type(ours) is fnn.GraphConv
    x, ei = inputs()
    torch.testing.assert_close(ours(x, ei), conv(x, ei))
    lazy = pyg_nn.GCNConv(-1, 3)
    assert fnn.convert(lazy, quiet=True) is lazy
    assert "lazy" in lazy.fastalign_skipped[0][1]


def test_patch_pyg_builds_fastalign_layers_in_stock_models():
    x, ei = inputs()
    torch.manual_seed(0)
    stock = pyg_nn.models.GraphSAGE(F_IN, 16, num_layers=2, out_channels=4)
    fastalign.patch_pyg()
    try:
        fastalign.patch_pyg()  # idempotent
        torch.manual_seed(0)
        patched = pyg_nn.models.GraphSAGE(F_IN, 16, num_layers=2, out_channels=4)
        assert all(type(c) is fnn.SAGEConv for c in patched.convs)
        patched.load_state_dict(stock.state_dict())
        torch.testing.assert_close(patched(x, ei), stock(x, ei), rtol=1e-5, atol=1e-5)
        assert isinstance(pyg_nn.GCNConv(4, 4), pyg_nn.GCNConv)
        # what fastalign cannot build falls back to PyG's own layer
        fallback = pyg_nn.SAGEConv(4, 4, aggr="lstm")
        assert type(fallback) is fnn.pyg.original("SAGEConv")
        assert isinstance(fallback, pyg_nn.SAGEConv)
        with pytest.warns(UserWarning, match="does not call MessagePassing hooks"):
            class Weighted(pyg_nn.GraphConv):
                def message(self, x_j, edge_weight):
                    return x_j
        assert Weighted(4, 4)(torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]])).shape == (3, 4)
    finally:
        fastalign.unpatch_pyg()
    assert pyg_nn.GCNConv is fnn.pyg.original("GCNConv")
    assert type(pyg_nn.models.GCN(F_IN, 8, num_layers=1).convs[0]) is pyg_nn.GCNConv


def test_to_hetero_duplicates_fastalign_layers_per_edge_type():
    """PyG's to_hetero recognises fastalign's layers as message-passing layers (once
    patch_pyg or convert has run) and gives each edge type its own copy."""
    from torch_geometric.nn import to_hetero

    class Net(torch.nn.Module):
        def __init__(self, conv_cls):
            super().__init__()
            self.conv1 = conv_cls((8, 8), 16)
            self.conv2 = conv_cls((16, 16), 4)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    gen = torch.Generator().manual_seed(0)
    x_dict = {"paper": torch.randn(20, 8, generator=gen), "author": torch.randn(12, 8, generator=gen)}
    edge_index_dict = {
        ("paper", "cites", "paper"): random_edge_index(20, 20, 60, seed=1),
        ("author", "writes", "paper"): torch.stack([torch.randint(0, 12, (30,), generator=gen),
                                                    torch.randint(0, 20, (30,), generator=gen)]),
        ("paper", "rev_writes", "author"): torch.stack([torch.randint(0, 20, (30,), generator=gen),
                                                        torch.randint(0, 12, (30,), generator=gen)]),
    }
    metadata = (list(x_dict), list(edge_index_dict))
    torch.manual_seed(0)
    theirs = to_hetero(Net(pyg_nn.SAGEConv), metadata, aggr="sum")
    fnn.convert(torch.nn.Module(), quiet=True)  # installs the FX hook, as convert does
    ours = to_hetero(Net(fnn.SAGEConv), metadata, aggr="sum")
    convs = [m for m in ours.modules() if isinstance(m, fnn.SAGEConv)]
    assert len(convs) == 2 * len(edge_index_dict)  # one per layer and edge type
    ours.load_state_dict(theirs.state_dict())
    out_o, out_t = ours(x_dict, edge_index_dict), theirs(x_dict, edge_index_dict)
    assert out_o.keys() == out_t.keys() == {"paper", "author"}
    for key in out_t:
        torch.testing.assert_close(out_o[key], out_t[key], rtol=1e-5, atol=1e-5)


def test_to_hetero_with_bases_says_it_needs_message_hooks():
    from torch_geometric.nn import to_hetero_with_bases

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = fnn.SAGEConv(8, 4)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    fnn.convert(torch.nn.Module(), quiet=True)  # installs the FX hook, as convert does
    metadata = (["paper", "author"], [("paper", "cites", "paper"), ("author", "writes", "paper")])
    with pytest.raises(NotImplementedError, match="no messages to hook"):
        to_hetero_with_bases(Net(), metadata, num_bases=2, in_channels={"x": 8})


def test_convert_keeps_the_parameter_objects_ties_freezing_and_optimizers():
    torch.manual_seed(0)
    model = pyg_nn.models.GCN(F_IN, 16, 2, 4)
    model.convs[1].bias.requires_grad_(False)  # frozen
    model.convs[0].lin.weight = torch.nn.Parameter(model.convs[0].lin.weight.detach())
    before = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # built before convert
    x, ei = inputs()
    out0 = model(x, ei).detach()
    fnn.convert(model)
    assert all(type(c).__module__.startswith("fastalign") for c in model.convs)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not model.convs[1].bias.requires_grad
    torch.testing.assert_close(model(x, ei), out0)
    model(x, ei).square().sum().backward()
    opt.step()  # the optimizer's parameters are the model's: the converted model learns
    assert not torch.allclose(model(x, ei), out0)
    assert model.convs[1].bias.grad is None

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = pyg_nn.GCNConv(F_IN, F_IN), pyg_nn.GCNConv(F_IN, F_IN)
            self.b.lin.weight = self.a.lin.weight  # one weight, two layers

    tied = fnn.convert(Tied())
    assert tied.a.lin.weight is tied.b.lin.weight
    assert len(list(tied.parameters())) == 3  # the tied weight once, two biases


def test_convert_keeps_module_hooks():
    x, ei = inputs()
    conv = pyg_nn.GCNConv(F_IN, 8)
    seen = []
    conv.register_forward_pre_hook(lambda m, args: seen.append(("pre", type(m).__module__)))
    conv.register_forward_hook(lambda m, args, out: seen.append(("post", type(m).__module__)))
    conv.register_full_backward_hook(lambda m, gin, gout: seen.append(("backward", type(m).__module__)))
    ours = fnn.convert(conv)
    x.requires_grad_(True)
    ours(x, ei).sum().backward()
    assert [kind for kind, _ in seen] == ["pre", "post", "backward"]
    assert all(where.startswith("fastalign") for _, where in seen)


def test_convert_leaves_what_it_cannot_carry_and_says_why():
    from torch.nn.utils import parametrizations, weight_norm

    class Three(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.normed = pyg_nn.GCNConv(F_IN, 8)
            weight_norm(self.normed.lin, "weight")
            self.spectral = pyg_nn.GCNConv(F_IN, 8)
            parametrizations.spectral_norm(self.spectral.lin, "weight")
            self.hooked = pyg_nn.GraphConv(F_IN, 8)
            self.hooked.register_message_forward_hook(lambda m, inputs, out: out)
            self.plain = pyg_nn.GCNConv(F_IN, 8)

    with pytest.warns(UserWarning, match="left these layers"):
        model = fnn.convert(Three())
    reasons = dict(model.fastalign_skipped)
    assert "WeightNorm" in reasons["normed"] and "parametrization" in reasons["spectral"]
    assert "message-passing hooks" in reasons["hooked"]
    assert type(model.plain).__module__.startswith("fastalign")
    with torch.device("meta"):
        meta = pyg_nn.GCNConv(F_IN, 8)
    fnn.convert(meta, quiet=True)
    assert "meta device" in dict(meta.fastalign_skipped)["GCNConv"]
