"""SAGEConv, GraphConv, GINConv (and GCNConv's MessagePassing options) against the
installed PyG: every option, every input kind, outputs and gradients in float64."""

import itertools
import warnings

import pytest
import torch

import fastalign.nn as fnn
from fastalign import Graph
from helpers import random_edge_index
from pyg_twins import DT, _gen, adjacencies, assert_same_forward_backward, leaf, twin  # noqa: F401

pyg_nn = pytest.importorskip("torch_geometric.nn", reason="needs torch_geometric (the test extra)")
import torch_geometric  # noqa: E402
from torch_geometric.typing import WITH_TORCH_SPARSE  # noqa: E402

N_SRC, N_DST, E, F_IN = 11, 7, 40, 6


def square_inputs(seed=0, n=N_SRC, e=E, dtype=torch.int64):
    ei = random_edge_index(n, n, e, seed=seed).to(dtype)
    x = torch.randn(n, F_IN, dtype=DT, generator=_gen(seed))
    return x, ei


def bipartite_inputs(seed=0):
    ei = random_edge_index(N_SRC, N_DST, E, seed=seed)
    x_src = torch.randn(N_SRC, F_IN, dtype=DT, generator=_gen(seed))
    x_dst = torch.randn(N_DST, F_IN + 2, dtype=DT, generator=_gen(seed + 1))
    return (x_src, x_dst), ei


# ---------------------------------------------------------------------- layer options
SAGE_OPTIONS = [
    dict(aggr=a, normalize=nz, root_weight=rw, project=pj, bias=b)
    for a, nz, rw, pj, b in itertools.product(["mean", "sum", "max"], [False, True], [True, False], [False, True], [True, False])
    if not (nz and not rw and not b)  # a few combinations are enough for the rest
]
GRAPH_OPTIONS = [dict(aggr=a, bias=b) for a in ("add", "mean", "max") for b in (True, False)]
GIN_OPTIONS = [dict(eps=e, train_eps=t, aggr=a) for e in (0.0, 0.3) for t in (False, True) for a in ("add", "mean", "max")]


def layer_cases():
    for o in SAGE_OPTIONS:
        yield "SAGEConv", o
    for o in GRAPH_OPTIONS:
        yield "GraphConv", o
    for o in GIN_OPTIONS:
        yield "GINConv", o


def build(name, in_channels, out_channels, options):
    ours_cls, pyg_cls = getattr(fnn, name), getattr(pyg_nn, name)
    if name == "GINConv":
        in_w = in_channels if isinstance(in_channels, int) else in_channels[1]
        torch.manual_seed(1)
        mlp = torch.nn.Sequential(torch.nn.Linear(in_w, 8), torch.nn.ReLU(), torch.nn.Linear(8, out_channels)).to(DT)
        torch.manual_seed(0)
        theirs = pyg_cls(mlp, **options).to(DT)
        import copy

        ours = ours_cls(copy.deepcopy(mlp), **options).to(DT)
        ours.load_state_dict(theirs.state_dict())
        return ours, theirs
    return twin(ours_cls, pyg_cls, in_channels, out_channels, **options)


def ids(cases):
    return [f"{n}-" + "-".join(f"{k}={v}" for k, v in o.items()) for n, o in cases]


CASES = list(layer_cases())


@pytest.mark.parametrize("name,options", CASES, ids=ids(CASES))
def test_edge_index_matches_pyg(name, options):
    x, ei = square_inputs()
    ours, theirs = build(name, F_IN, 5, options)
    xo, xt = leaf(x), leaf(x)
    assert_same_forward_backward(
        ours, theirs, lambda: (ours(xo, ei), [xo]), lambda: (theirs(xt, ei), [xt])
    )


@pytest.mark.parametrize("name,options", CASES[::3], ids=ids(CASES[::3]))
def test_bipartite_matches_pyg(name, options):
    (x_src, x_dst), ei = bipartite_inputs()
    if name == "GINConv":
        x_dst = x_dst[:, :F_IN].contiguous()
        in_channels = F_IN
    else:
        in_channels = (F_IN, F_IN + 2)
    if name == "SAGEConv" and options["project"]:
        options = dict(options)
    ours, theirs = build(name, in_channels, 5, options)
    for pair_dst in (x_dst, None):
        s_o, s_t, d_o, d_t = leaf(x_src), leaf(x_src), leaf(pair_dst), leaf(pair_dst)
        size = (N_SRC, N_DST)
        assert_same_forward_backward(
            ours, theirs,
            lambda: (ours((s_o, d_o), ei, size=size), [s_o] + ([d_o] if d_o is not None else [])),
            lambda: (theirs((s_t, d_t), ei, size=size), [s_t] + ([d_t] if d_t is not None else [])),
        )


@pytest.mark.parametrize("name,options", CASES[::2], ids=ids(CASES[::2]))
def test_every_adjacency_kind_matches_pyg(name, options):
    x, ei = square_inputs(seed=3)
    ours, theirs = build(name, F_IN, 4, options)
    expected = theirs(x, ei)
    from torch_geometric import EdgeIndex

    kinds = adjacencies(ei, N_SRC, N_SRC)
    kinds["EdgeIndex"] = EdgeIndex(ei, sparse_size=(N_SRC, N_SRC))
    kinds["Graph"] = Graph.from_edge_index(ei, num_nodes=N_SRC)
    kinds["int32"] = ei.to(torch.int32)
    for kind, adj in kinds.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ours(x, adj)
            # PyG on the same input (a sparse adjacency merges duplicate edges)
            ref = expected if kind in ("Graph", "int32") else theirs(x, adj)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10, msg=f"{name} {kind}")


@pytest.mark.parametrize("aggr", ["add", "mean", "max"])
def test_graph_conv_edge_weights_match_pyg(aggr):
    x, ei = square_inputs(seed=4)
    w = torch.rand(ei.size(1), dtype=DT, generator=_gen(2)) + 0.1
    ours, theirs = build("GraphConv", F_IN, 3, dict(aggr=aggr))
    xo, xt, wo, wt = leaf(x), leaf(x), leaf(w), leaf(w)
    assert_same_forward_backward(
        ours, theirs, lambda: (ours(xo, ei, wo), [xo, wo]), lambda: (theirs(xt, ei, wt), [xt, wt])
    )
    # the weights as the values of a sparse adjacency, as PyG reads them
    for kind, adj in adjacencies(ei, N_SRC, N_SRC, w).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.testing.assert_close(ours(x, adj), theirs(x, adj), rtol=1e-9, atol=1e-10, msg=kind)
    # a Graph with weights in caller order
    torch.testing.assert_close(ours(x, Graph.from_edge_index(ei, num_nodes=N_SRC), w), theirs(x, ei, w))


@pytest.mark.parametrize("name", ["SAGEConv", "GraphConv", "GINConv", "GCNConv"])
def test_static_graph_batch_matches_pyg(name):
    """PyG's static graphs: x of shape [B, N, F] over one edge_index (node_dim=-2)."""
    x, ei = square_inputs(seed=6)
    xb = torch.stack([x, x.flip(0), 2 * x])
    if name == "GCNConv":
        ours, theirs = twin(fnn.GCNConv, pyg_nn.GCNConv, F_IN, 4)
    else:
        ours, theirs = build(name, F_IN, 4, {})
    out = ours(xb, ei)
    assert out.shape == (3, N_SRC, 4)
    torch.testing.assert_close(out, theirs(xb, ei), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["SAGEConv", "GraphConv", "GINConv", "GCNConv"])
def test_flow_target_to_source(name):
    x, ei = square_inputs(seed=7)
    ours = build(name, F_IN, 4, {})[0] if name != "GCNConv" else fnn.GCNConv(F_IN, 4).to(DT)
    expected = ours(x, ei)
    ours.flow = "target_to_source"  # a mutable attribute, as in PyG
    torch.testing.assert_close(ours(x, ei.flip(0)), expected)
    with pytest.raises(ValueError, match="target_to_source"):
        ours(x, adjacencies(ei, N_SRC, N_SRC)["csc_t"])


def test_edge_cases_match_pyg():
    """Isolated nodes, an empty graph, self loops and duplicates, one hub."""
    n = 9
    hub = torch.stack([torch.arange(1, n), torch.zeros(n - 1, dtype=torch.long)])
    cases = {
        "empty": torch.empty(2, 0, dtype=torch.long),
        "isolated": torch.tensor([[0, 1], [1, 0]]),
        "loops_and_duplicates": torch.tensor([[0, 0, 3, 3, 3], [0, 0, 3, 2, 2]]),
        "hub": torch.cat([hub, hub], 1),
    }
    x = torch.randn(n, F_IN, dtype=DT, generator=_gen(8))
    for name, options in CASES[::5]:
        ours, theirs = build(name, F_IN, 3, options)
        for case, ei in cases.items():
            torch.testing.assert_close(ours(x, ei), theirs(x, ei), rtol=1e-9, atol=1e-10, msg=f"{name} {case}")


def test_repr_is_pygs():
    assert str(fnn.SAGEConv(8, 32)) == "SAGEConv(8, 32, aggr=mean)"
    assert str(fnn.SAGEConv((8, 16), 32, aggr="sum")) == "SAGEConv((8, 16), 32, aggr=sum)"
    assert str(fnn.SAGEConv(-1, 32)) == "SAGEConv(-1, 32, aggr=mean)"
    assert str(fnn.GraphConv((8, 16), 32)) == "GraphConv((8, 16), 32)"
    mlp = torch.nn.Linear(4, 4)
    assert str(fnn.GINConv(mlp)) == str(pyg_nn.GINConv(mlp))
    assert str(fnn.GCNConv(16, 32)) == "GCNConv(16, 32)"


def test_state_dicts_are_interchangeable():
    for name, options in [("SAGEConv", dict(project=True)), ("GraphConv", {}), ("GINConv", dict(train_eps=True))]:
        ours, theirs = build(name, F_IN, 4, options)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        theirs.load_state_dict(ours.state_dict())


def test_lazy_sage_conv():
    x, ei = square_inputs()
    conv = fnn.SAGEConv(-1, 5).to(DT)
    assert conv(x, ei).shape == (N_SRC, 5)
    assert conv.lin_l.weight.shape == (5, F_IN)
    with pytest.raises(ValueError, match="does not support lazy"):
        fnn.SAGEConv(-1, 5, project=True)


def test_gin_eps_is_a_parameter_or_buffer_as_in_pyg():
    assert "eps" in dict(fnn.GINConv(torch.nn.Linear(3, 3), train_eps=True).named_parameters())
    conv = fnn.GINConv(torch.nn.Linear(3, 3), eps=0.5)
    assert "eps" in dict(conv.named_buffers()) and float(conv.eps) == 0.5
    conv.eps.data.fill_(2.0)
    conv.reset_parameters()
    assert float(conv.eps) == 0.5


def test_unsupported_options_name_pygs_class():
    with pytest.raises(ValueError, match="torch_geometric.nn.SAGEConv"):
        fnn.SAGEConv(8, 16, aggr="lstm")
    with pytest.raises(ValueError, match="torch_geometric.nn.SAGEConv"):
        fnn.SAGEConv(8, 16, aggr=["mean", "max"])
    with pytest.raises(ValueError, match="torch_geometric.nn.GraphConv"):
        fnn.GraphConv(8, 16, aggr="min")
    with pytest.raises(ValueError, match="torch_geometric.nn.GCNConv"):
        fnn.GCNConv(8, 16, aggr="mean")
    with pytest.raises(ValueError, match="aggr_kwargs"):
        fnn.GINConv(torch.nn.Identity(), aggr_kwargs={"learn": True})
    with pytest.raises(TypeError, match="'weird'"):
        fnn.GraphConv(8, 16, weird=1)
    with pytest.raises(ValueError, match="flow"):
        fnn.SAGEConv(8, 16, flow="sideways")
    with pytest.raises(ValueError, match="decomposed_layers"):
        fnn.GCNConv(8, 16, decomposed_layers=0)
    with pytest.raises(TypeError, match="nn must be"):
        fnn.GINConv(3)
    # MessagePassing options that can be honoured are kept, as attributes
    conv = fnn.GCNConv(8, 16, decomposed_layers=2, node_dim=0, flow="target_to_source")
    assert (conv.decomposed_layers, conv.node_dim, conv.flow) == (2, 0, "target_to_source")


def test_bad_inputs_are_clear_errors():
    x, ei = square_inputs()
    conv = fnn.SAGEConv(F_IN, 4).to(DT)
    with pytest.raises(ValueError, match="source features"):
        conv(x, ei, size=(N_SRC + 1, N_SRC))
    with pytest.raises(ValueError, match="out of range"):
        conv(x[:3], ei)
    with pytest.raises(TypeError, match="int64 or int32"):
        conv(x, ei.float())
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        conv(x, ei[:1])
    with pytest.raises(ValueError, match="pair"):
        conv((x, x, x), ei)
    with pytest.raises(ValueError, match="size"):
        conv(x, ei, size=(1, 2, 3))
    with pytest.raises(ValueError, match="at least 2-D"):
        conv(x[0], ei)
    with pytest.raises(TypeError, match="edge_index must be"):
        conv(x, ei.tolist())
    graph_conv = fnn.GraphConv(F_IN, 4).to(DT)
    with pytest.raises(ValueError, match="one per edge"):
        graph_conv(x, ei, torch.rand(3, dtype=DT))
    with pytest.raises(ValueError, match="edge_weight must be None"):
        graph_conv(x, adjacencies(ei, N_SRC, N_SRC)["csc_t"], torch.rand(ei.size(1), dtype=DT))


def test_gcn_conv_pyg_cache_attributes_and_sparse_features():
    x, ei = square_inputs(seed=9)
    ours, theirs = twin(fnn.GCNConv, pyg_nn.GCNConv, F_IN, 8)  # widens: aggregates first
    expected = theirs(x, ei)
    ours.cached = True  # switched on after construction, as PyG's tests do
    ours(x, ei)
    assert ours._cached_edge_index is not None and ours._cached_adj_t is None
    torch.testing.assert_close(ours(x, ei[:, :3]), expected)  # the cache is used
    ours._cached_edge_index = None  # how PyG code resets the cache
    assert ours._cached_edge_index is None
    sparse_x = x.to_sparse()
    torch.testing.assert_close(ours(sparse_x, ei), expected)
    torch.testing.assert_close(ours(sparse_x, ei), theirs(sparse_x, ei))


# ---------------------------------------------------------------------- torch.compile
COMPILE_LAYERS = {
    "GCNConv": lambda: fnn.GCNConv(F_IN, 8),
    "GCNConv-no-loops": lambda: fnn.GCNConv(F_IN, 4, add_self_loops=False),
    "SAGEConv-max": lambda: fnn.SAGEConv(F_IN, 8, aggr="max"),
    "SAGEConv": lambda: fnn.SAGEConv(F_IN, 4),
    "GraphConv": lambda: fnn.GraphConv(F_IN, 4, aggr="mean"),
    "GINConv": lambda: fnn.GINConv(torch.nn.Linear(F_IN, 4), train_eps=True),
}


@pytest.mark.parametrize("name", list(COMPILE_LAYERS))
def test_compiles_from_edge_index_without_graph_breaks(name):
    import torch._dynamo as dynamo

    conv = COMPILE_LAYERS[name]()
    x, ei = square_inputs()
    x = x.float()
    dynamo.reset()
    assert dynamo.explain(conv)(x, ei).graph_break_count == 0
    # static shapes on one graph (a second size would only recompile it as dynamic), then
    # dynamic shapes over three sizes with one compile
    for dynamic, sizes in ((False, ((10, 30),)), (True, ((10, 30), (17, 55), (23, 70)))):
        dynamo.reset()
        compiled = torch.compile(conv, fullgraph=True, dynamic=dynamic)
        for n, e in sizes:
            x, ei = square_inputs(seed=n, n=n, e=e)
            x = x.float()
            xe, xc = leaf(x), leaf(x)
            out_e, out_c = conv(xe, ei), compiled(xc, ei)
            torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
            g = torch.randn(out_e.shape, generator=_gen(n))
            torch.testing.assert_close(
                torch.autograd.grad(out_c, xc, g)[0], torch.autograd.grad(out_e, xe, g)[0],
                rtol=1e-4, atol=1e-5,
            )


def test_one_graph_per_edge_index_tensor_and_in_place_edits_are_seen():
    from fastalign.nn import drop_in

    x, ei = square_inputs(seed=10)
    first = drop_in.prepare("T", x, ei).graph
    assert drop_in.prepare("T", x, ei).graph is first  # the next layer / epoch reuses it
    assert drop_in.prepare("T", x, ei.clone()).graph is not first
    ours, theirs = build("GraphConv", F_IN, 3, {})
    torch.testing.assert_close(ours(x, ei), theirs(x, ei))
    ei[0, :5] = torch.arange(5)  # an in-place edit: a fresh CSR
    assert drop_in.prepare("T", x, ei).graph is not first
    torch.testing.assert_close(ours(x, ei), theirs(x, ei))
    with torch.inference_mode():  # inference tensors have no version counter: not cached
        ei_inf = ei.clone()
        assert drop_in.prepare("T", x, ei_inf).graph is not drop_in.prepare("T", x, ei_inf).graph


def test_edits_the_version_counter_does_not_see_build_a_fresh_graph():
    """.data, a NumPy view and a torch.from_numpy alias change the indices without a
    version bump: the cached CSR must not be served for them (CPU)."""
    x, ei = square_inputs(seed=4)
    ours, theirs = build("GraphConv", F_IN, 3, {})
    array = ei.numpy()  # shares the memory
    alias = torch.from_numpy(array)  # another tensor over the same memory
    for edit in (lambda: ei.data[0, :5].copy_(torch.arange(5)),
                 lambda: array.__setitem__((1, slice(0, 7)), 3),
                 lambda: alias[0, 10:20].fill_(N_SRC - 1)):
        torch.testing.assert_close(ours(x, ei), theirs(x, ei))  # cached
        version = ei._version
        edit()
        assert ei._version == version  # the counter did not see it
        torch.testing.assert_close(ours(x, ei), theirs(x, ei))


@pytest.mark.parametrize("name", ["GCNConv", "SAGEConv", "GraphConv", "GINConv", "GATConv"])
def test_torchscript_is_refused_by_name(name):
    conv = fnn.GINConv(torch.nn.Linear(4, 4)) if name == "GINConv" else getattr(fnn, name)(4, 4)
    for model in (conv, torch.nn.Sequential(torch.nn.Identity(), conv)):  # also inside a model
        with pytest.raises(NotImplementedError, match=f"{name} does not support TorchScript.*torch.compile"):
            torch.jit.script(model)


def test_message_hooks_are_refused_with_a_clear_error():
    conv = fnn.GraphConv(4, 4)
    with pytest.raises(NotImplementedError, match="no messages to hook"):
        conv.register_message_forward_hook(lambda *a: None)
    with pytest.raises(NotImplementedError, match="torch_geometric.nn.GCNConv"):
        fnn.GCNConv(4, 4).register_message_forward_pre_hook(lambda *a: None)
