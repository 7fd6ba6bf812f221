"""fastalign.nn: GCNConv parity with PyG's GCNConv, the alignment-loss modules."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastalign
from fastalign import Graph
from fastalign.nn import FeatureAlignLoss, GCNConv, StructureAlignLoss

pyg_nn = pytest.importorskip("torch_geometric.nn", reason="torch_geometric is not installed")
try:
    import torch_sparse  # noqa: F401

    HAVE_TORCH_SPARSE = True
except ImportError:
    HAVE_TORCH_SPARSE = False

N, E, F_IN, F_OUT = 23, 90, 7, 5


def _edge_index(seed=0, loops=True):
    """Random directed edges with duplicates, self loops (one node with two) and
    isolated nodes (ids 20..22 have no edge)."""
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, 20, (2, E), generator=gen)
    if loops:
        ei = torch.cat([ei, torch.tensor([[3, 3, 5], [3, 3, 5]])], 1)
    return ei


def _weights(num, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num, generator=gen, dtype=torch.float64) + 0.1)


def _pair(seed=0, bias=True, **options):
    torch.manual_seed(seed)
    ref = pyg_nn.GCNConv(F_IN, F_OUT, bias=bias, **options).double()
    with torch.no_grad():
        if ref.bias is not None:
            ref.bias.normal_()
    ours = GCNConv(F_IN, F_OUT, bias=bias, **options).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _run(conv, x, adj, w):
    x = x.detach().clone().requires_grad_(True)
    w = None if w is None else w.detach().clone().requires_grad_(True)
    out = conv(x, adj, w) if w is not None else conv(x, adj)
    gen = torch.Generator().manual_seed(5)
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    (out * grad).sum().backward()
    grads = {"x": x.grad, "weight": conv.lin.weight.grad}
    if conv.bias is not None:
        grads["bias"] = conv.bias.grad
    if w is not None:
        grads["edge_weight"] = w.grad
    return out.detach(), grads


def _assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _shadowed_loops(ei):
    """Caller positions of self loops that a later loop of the same node overrides."""
    shadowed = torch.zeros(ei.size(1), dtype=torch.bool)
    last = {}
    for k in torch.nonzero(ei[0] == ei[1]).flatten().tolist():
        node = int(ei[0, k])
        if node in last:
            shadowed[last[node]] = True
        last[node] = k
    return shadowed


def _compare(ref, ours, x, adj_ref, adj_ours, w):
    out_r, g_r = _run(ref, x, adj_ref, w)
    out_o, g_o = _run(ours, x, adj_ours, w)
    _assert_close(out_o, out_r)
    assert set(g_r) == set(g_o)
    for key in g_r:
        assert g_r[key] is not None and g_o[key] is not None, key
        if key == "edge_weight" and ref.normalize and ref.add_self_loops:
            # PyG keeps the last of duplicate self loops (add_remaining_self_loops), but
            # its index assignment also sends the loop's gradient to the overridden
            # one, which has no effect on the output: its true derivative is 0.
            shadowed = _shadowed_loops(adj_ref)
            assert shadowed.any()
            _assert_close(g_o[key][~shadowed], g_r[key][~shadowed])
            assert torch.all(g_o[key][shadowed] == 0.0)
            continue
        _assert_close(g_o[key], g_r[key])


OPTIONS = [
    dict(improved=i, add_self_loops=a, normalize=n)
    for i, (a, n) in itertools.product((False, True), ((True, True), (False, True), (False, False)))
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_gcnconv_edge_index_matches_pyg(options, weighted, bias, index_dtype):
    ei = _edge_index()
    x = torch.randn(N, F_IN, dtype=torch.float64)
    w = _weights(ei.size(1)) if weighted else None
    ref, ours = _pair(bias=bias, **options)
    _compare(ref, ours, x, ei, ei.to(index_dtype), w)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_gcnconv_graph_input_matches_pyg(options, weighted):
    """A fastalign.Graph built from the edge_index, edge_weight in caller order."""
    ei = _edge_index(seed=3)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    w = _weights(ei.size(1)) if weighted else None
    ref, ours = _pair(**options)
    graph = Graph.from_edge_index(ei, num_nodes=N)
    assert graph.perm is not None  # the internal order differs: to_internal is exercised
    _compare(ref, ours, x, ei, graph, w)


def test_gcnconv_edge_weight_gradient_is_the_true_derivative():
    """Finite differences confirm the edge-weight gradient, duplicate self loops included."""
    ei = _edge_index(seed=2)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    _, ours = _pair(improved=True)
    w = _weights(ei.size(1)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: ours(x, ei, w), (w,))


def test_gcnconv_graph_with_own_weights_matches_pyg():
    ei = _edge_index(seed=4)
    w = _weights(ei.size(1))
    x = torch.randn(N, F_IN, dtype=torch.float64)
    for options in OPTIONS:
        ref, ours = _pair(**options)
        graph = Graph.from_edge_index(ei, w, num_nodes=N)
        out_r = ref(x, ei, w)
        _assert_close(ours(x, graph), out_r)


def _torch_sparse_adj(ei, w, layout):
    values = w if w is not None else torch.ones(ei.size(1), dtype=torch.float64)
    adj = torch.sparse_coo_tensor(torch.stack([ei[1], ei[0]]), values, (N, N)).coalesce()
    return adj.to_sparse_csr() if layout == "csr" else adj


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("weighted", [False, True], ids=["ones", "weighted"])
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_gcnconv_torch_sparse_matches_pyg(options, weighted, layout):
    """PyG's torch.sparse path: existing loops are summed with the fill value and
    ``improved`` always applies; gradients to x and the parameters match."""
    ei = _edge_index(seed=6)
    adj = _torch_sparse_adj(ei, _weights(ei.size(1)) if weighted else None, layout)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    ref, ours = _pair(**options)
    _compare(ref, ours, x, adj, adj, None)


@pytest.mark.skipif(not HAVE_TORCH_SPARSE, reason="torch_sparse is not installed")
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("weighted", [False, True], ids=["novalue", "weighted"])
def test_gcnconv_sparse_tensor_matches_pyg(options, weighted):
    from torch_sparse import SparseTensor

    ei = _edge_index(seed=7)
    value = _weights(ei.size(1)) if weighted else None
    adj = SparseTensor(row=ei[1], col=ei[0], value=value, sparse_sizes=(N, N)).coalesce()
    x = torch.randn(N, F_IN, dtype=torch.float64)
    ref, ours = _pair(**options)
    _compare(ref, ours, x, adj, adj, None)


class SparseTensor:
    """A duck-typed stand-in for torch_sparse.SparseTensor (coalesced CSR adj_t), so that
    the SparseTensor path runs without torch_sparse installed."""

    def __init__(self, ei, value, n):
        key = ei[1] * n + ei[0]
        order = torch.argsort(key)
        uniq, inverse = torch.unique(key[order], return_inverse=True)
        self.row, self.col = uniq // n, uniq % n
        self.value = None
        if value is not None:
            self.value = torch.zeros(uniq.numel(), dtype=value.dtype).index_add_(0, inverse, value[order])
        self.n = n

    def csr(self):
        rowptr = torch.zeros(self.n + 1, dtype=torch.long)
        rowptr[1:] = torch.cumsum(torch.bincount(self.row, minlength=self.n), 0)
        return rowptr, self.col, self.value

    def sparse_sizes(self):
        return (self.n, self.n)

    def dense(self):
        a = torch.zeros(self.n, self.n, dtype=torch.float64)
        v = self.value if self.value is not None else torch.ones(self.row.numel(), dtype=torch.float64)
        a[self.row, self.col] = v
        return a


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("weighted", [False, True], ids=["novalue", "weighted"])
def test_gcnconv_sparse_tensor_path_semantics(options, weighted):
    """PyG's SparseTensor path written densely from its gcn_norm: ``fill_diag`` replaces
    the diagonal by 2 (improved) or 1, degrees are row sums (runs without torch_sparse)."""
    ei = _edge_index(seed=9)
    adj = SparseTensor(ei, _weights(ei.size(1)) if weighted else None, N)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    _, ours = _pair(**options)
    a = adj.dense()
    if options["normalize"]:
        if options["add_self_loops"]:
            a.fill_diagonal_(2.0 if options["improved"] else 1.0)
        dis = a.sum(1).pow(-0.5)
        dis[torch.isinf(dis)] = 0
        a = dis[:, None] * a * dis[None, :]
    want = a @ (x @ ours.lin.weight.T) + ours.bias
    _assert_close(ours(x, adj), want.detach())


def test_gcnconv_torch_sparse_improved_differs_from_edge_index_path():
    """The documented PyG quirk is reproduced, not smoothed over: without weights,
    ``improved`` changes the torch.sparse result but not the edge_index one."""
    ei = _edge_index(seed=8)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    _, plain = _pair(improved=False)
    _, improved = _pair(improved=True)
    _assert_close(improved(x, ei), plain(x, ei))
    adj = _torch_sparse_adj(ei, None, "coo")
    assert not torch.allclose(improved(x, adj), plain(x, adj))


@pytest.mark.parametrize("kind", ["edge_index", "torch_sparse", "graph"])
def test_gcnconv_cached_matches_pyg(kind):
    ei1, ei2 = _edge_index(seed=10), _edge_index(seed=11)
    w1, w2 = _weights(ei1.size(1), seed=2), _weights(ei2.size(1), seed=3)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    ref, ours = _pair(cached=True, improved=True)
    if kind == "torch_sparse":
        a1, a2 = _torch_sparse_adj(ei1, w1, "coo"), _torch_sparse_adj(ei2, w2, "coo")
        calls = [(a1, a1, None), (a2, a2, None)]
    elif kind == "graph":
        calls = [(ei1, Graph.from_edge_index(ei1, num_nodes=N), w1),
                 (ei2, Graph.from_edge_index(ei2, num_nodes=N), w2)]
    else:
        calls = [(ei1, ei1, w1), (ei2, ei2, w2)]
    outs = []
    for adj_r, adj_o, w in calls:
        out_r = ref(x, adj_r, w) if w is not None else ref(x, adj_r)
        out_o = ours(x, adj_o, w) if w is not None else ours(x, adj_o)
        _assert_close(out_o, out_r)
        outs.append(out_o)
    # the second call reused the first graph (both libraries ignore the new one)
    _assert_close(outs[1], outs[0])
    assert ours._cached_graph is not None
    ours.reset_parameters()
    assert ours._cached_graph is None


def test_gcnconv_uncached_follows_the_graph():
    ei1, ei2 = _edge_index(seed=12), _edge_index(seed=13)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    _, ours = _pair(cached=False)
    assert not torch.allclose(ours(x, ei1), ours(x, ei2))
    assert ours._cached_graph is None


def test_gcnconv_cached_backward_twice():
    """Edge weights that require grad on the first cached call do not leave the cache
    attached to that autograd graph."""
    ei = _edge_index(seed=14)
    w = _weights(ei.size(1)).requires_grad_(True)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    _, ours = _pair(cached=True, improved=True)
    ours(x, ei, w).sum().backward()
    assert w.grad is not None and bool(w.grad.abs().sum() > 0)
    ours(x, ei, w).sum().backward()  # served from the cache, differentiable in x only



def test_gcnconv_cache_follows_the_layer_to_another_device():
    """A cached layer moved with module.to() moves its cached graph on the first call
    there (the meta device stands in for a second device on a CPU-only machine), and the
    copy keeps serving: the adjacency then passed is still ignored."""
    ei = _edge_index(seed=16)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    _, ours = _pair(cached=True)
    ours(x, ei)
    cached = ours._cached_graph
    ours.to("meta")
    out = ours(x.to("meta"), ei.to("meta"))
    assert out.device.type == "meta" and out.shape == (N, F_OUT)
    moved = ours._cached_graph
    assert moved is not cached and moved.device.type == "meta" and moved.num_edges == cached.num_edges
    ours(x.to("meta"), _edge_index(seed=17).to("meta"))
    assert ours._cached_graph is moved

def test_gcnconv_float32_matches_pyg():
    ei = _edge_index(seed=15)
    x = torch.randn(N, F_IN)
    ref = pyg_nn.GCNConv(F_IN, F_OUT)
    ours = GCNConv(F_IN, F_OUT)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x, ei), ref(x, ei), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_c,out_c", [(7, 5), (5, 7)])
def test_gcnconv_both_aggregation_orders(in_c, out_c):
    """lin before or after the aggregation (chosen by width) gives PyG's numbers."""
    ei = _edge_index(seed=16)
    x = torch.randn(N, in_c, dtype=torch.float64)
    ref = pyg_nn.GCNConv(in_c, out_c).double()
    ours = GCNConv(in_c, out_c).double()
    ours.load_state_dict(ref.state_dict())
    _compare(ref, ours, x, ei, ei, _weights(ei.size(1)))


def test_gcnconv_state_dict_round_trip():
    ref = pyg_nn.GCNConv(F_IN, F_OUT)
    ours = GCNConv(F_IN, F_OUT)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape
    ours.load_state_dict(ref.state_dict())
    back = pyg_nn.GCNConv(F_IN, F_OUT)
    back.load_state_dict(ours.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    nobias = GCNConv(F_IN, F_OUT, bias=False)
    assert list(nobias.state_dict()) == list(pyg_nn.GCNConv(F_IN, F_OUT, bias=False).state_dict())


@pytest.mark.parametrize("options", OPTIONS[:3] + [dict(bias=False, cached=True)])
def test_gcnconv_from_pyg(options):
    ei = _edge_index(seed=18)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    ref = pyg_nn.GCNConv(F_IN, F_OUT, **options).double()
    ours = GCNConv.from_pyg(ref)
    for name in ("improved", "cached", "add_self_loops", "normalize"):
        assert getattr(ours, name) == getattr(ref, name)
    assert (ours.bias is None) == (ref.bias is None)
    assert ours.lin.weight.dtype == torch.float64
    _assert_close(ours(x, ei), ref(x, ei))
    with pytest.raises(TypeError):
        GCNConv.from_pyg(torch.nn.Linear(3, 4))


def test_gcnconv_reset_parameters_like_pyg():
    conv = GCNConv(300, 200)
    with torch.no_grad():
        conv.bias.fill_(3.0)
    conv.reset_parameters()
    assert torch.all(conv.bias == 0)
    bound = (6.0 / (300 + 200)) ** 0.5  # glorot
    assert conv.lin.weight.abs().max() <= bound
    assert conv.lin.weight.abs().max() > 0.9 * bound
    assert conv.lin.weight.shape == (200, 300)
    assert repr(conv) == "GCNConv(300, 200)"


def test_gcnconv_in_a_pyg_model_trains():
    """Swapped into a PyG-style model: a few steps lower the loss."""
    ei = _edge_index(seed=17)
    x = torch.randn(N, F_IN)
    y = torch.randint(0, F_OUT, (N,))
    conv = GCNConv(F_IN, F_OUT)
    opt = torch.optim.Adam(conv.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(conv(x, ei), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------- bad input
def test_gcnconv_bad_construction():
    with pytest.raises(ValueError, match="self-loops"):
        GCNConv(4, 4, add_self_loops=True, normalize=False)
    with pytest.raises(ValueError, match="lazy"):
        GCNConv(-1, 4)
    with pytest.raises(ValueError, match="positive"):
        GCNConv(4, 0)
    with pytest.raises(TypeError):
        GCNConv(4.0, 3)


def test_gcnconv_bad_input():
    conv = GCNConv(F_IN, F_OUT)
    ei = _edge_index()
    x = torch.randn(N, F_IN)
    with pytest.raises(ValueError, match="tuple"):
        conv((x, x), ei)
    with pytest.raises(TypeError, match="x must be"):
        conv(x.numpy(), ei)
    with pytest.raises(ValueError, match="2-D"):
        conv(x[0], ei)
    with pytest.raises(ValueError, match="in_channels"):
        conv(torch.randn(N, F_IN + 1), ei)
    with pytest.raises(TypeError, match="int64 or int32"):
        conv(x, ei.float())
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        conv(x, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        conv(torch.randn(10, F_IN), ei)
    with pytest.raises(ValueError, match="negative"):
        conv(x, torch.tensor([[0, -1], [1, 2]]))
    with pytest.raises(ValueError, match="one per edge"):
        conv(x, ei, torch.rand(ei.size(1) - 1))
    with pytest.raises(TypeError, match="floating"):
        conv(x, ei, torch.ones(ei.size(1), dtype=torch.long))
    with pytest.raises(TypeError, match="edge_index must be"):
        conv(x, ei.tolist())
    adj = _torch_sparse_adj(ei, None, "coo").float()
    with pytest.raises(ValueError, match="edge_weight must be None"):
        conv(x, adj, torch.rand(ei.size(1)))
    with pytest.raises(ValueError, match="square"):
        conv(x, Graph.from_edge_index(torch.tensor([[0, 1], [1, 2]]), num_nodes=(N, 5)))
    with pytest.raises(ValueError, match="one per edge"):
        conv(x, Graph.from_edge_index(ei, num_nodes=N), torch.rand(3))


# ---------------------------------------------------------------------- losses
KERNEL_CASES = [("l1", None), ("rbf", 2.0), ("linear", None), ("poly", None), ("cosine", None)]


@pytest.mark.parametrize("kernel,sigma", KERNEL_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_structure_align_loss_matches_op(kernel, sigma, reduction):
    ei = _edge_index(seed=20)
    graph = Graph.from_edge_index(ei, num_nodes=N)
    gen = torch.Generator().manual_seed(0)
    hs = (0.3 * torch.randn(N, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)
    hp = (0.3 * torch.randn(N, 9, generator=gen, dtype=torch.float64)).requires_grad_(True)
    loss_fn = StructureAlignLoss(kernel=kernel, tau=0.7, sigma=sigma, reduction=reduction)
    got = loss_fn(ei, hs, hp)
    want = fastalign.structure_kl(graph, hs, hp, kernel=kernel, tau=0.7, sigma=sigma,
                                  reduction=reduction, backend="torch")
    _assert_close(got, want)
    if reduction == "none":
        assert got.shape == (N,)
    g_got = torch.autograd.grad(got.sum(), (hs, hp))
    g_want = torch.autograd.grad(want.sum(), (hs, hp))
    for a, b in zip(g_got, g_want):
        _assert_close(a, b)
    assert bool(g_got[0].abs().sum() > 0)


def test_structure_align_loss_gradcheck():
    ei = torch.tensor([[0, 1, 2, 3, 1, 0], [1, 2, 3, 0, 0, 2]])
    gen = torch.Generator().manual_seed(1)
    hs = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    hp = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    loss_fn = StructureAlignLoss(kernel="rbf", sigma=1.5, tau=0.5)
    assert torch.autograd.gradcheck(lambda h: loss_fn(ei, h, hp), (hs,))


def test_structure_align_loss_identical_embeddings_zero():
    ei = _edge_index(seed=21)
    h = torch.randn(N, 4, dtype=torch.float64)
    assert StructureAlignLoss(kernel="cosine")(ei, h, h.clone()).abs().item() < 1e-12


def test_structure_align_loss_graph_cache_and_detach():
    ei = _edge_index(seed=22)
    loss_fn = StructureAlignLoss(detach_peer=True)
    hs = torch.randn(N, 4, dtype=torch.float64, requires_grad=True)
    hp = torch.randn(N, 4, dtype=torch.float64, requires_grad=True)
    loss_fn(ei, hs, hp).backward()
    assert hs.grad is not None and hp.grad is None
    g1 = loss_fn.graph_for(ei, hs)
    assert loss_fn.graph_for(ei, hs) is g1  # cached for the same tensor
    ei[0, 0] = (int(ei[0, 0]) + 1) % 20  # in-place change: rebuilt
    g2 = loss_fn.graph_for(ei, hs)
    assert g2 is not g1 and g2.num_edges == ei.size(1)
    graph = Graph.from_edge_index(ei, num_nodes=N)
    assert loss_fn.graph_for(graph, hs) is graph
    # a rectangular graph through (dst, src) pairs
    rect = torch.tensor([[0, 1, 4, 2], [0, 0, 1, 2]])
    hs_pair = (torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64))
    hp_pair = (torch.randn(3, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    got = StructureAlignLoss()(rect, hs_pair, hp_pair)
    want = fastalign.structure_kl(Graph.from_edge_index(rect, num_nodes=(5, 3)), hs_pair, hp_pair)
    _assert_close(got, want)


def test_structure_align_loss_bad_input():
    with pytest.raises(ValueError, match="kernel"):
        StructureAlignLoss(kernel="gaussian")
    with pytest.raises(ValueError, match="tau"):
        StructureAlignLoss(tau=0.0)
    with pytest.raises(ValueError, match="reduction"):
        StructureAlignLoss(reduction="avg")
    with pytest.raises(ValueError, match="sigma"):
        StructureAlignLoss(sigma=-1.0)
    loss_fn = StructureAlignLoss()
    ei = _edge_index()
    with pytest.raises(ValueError, match="rows"):
        loss_fn(ei, torch.randn(N, 4), torch.randn(N - 1, 4))
    with pytest.raises(TypeError):
        loss_fn(ei, torch.randn(N, 4), torch.randn(N, 4, dtype=torch.float64))
    with pytest.raises(TypeError):
        loss_fn(ei, "h", torch.randn(N, 4))
    with pytest.raises(ValueError, match="out of range"):
        loss_fn(ei, torch.randn(5, 4), torch.randn(5, 4))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_feature_align_loss_value_and_grads(normalize, reduction):
    torch.manual_seed(0)
    loss_fn = FeatureAlignLoss(6, 9, normalize=normalize, reduction=reduction).double()
    hs = torch.randn(N, 6, dtype=torch.float64, requires_grad=True)
    hp = torch.randn(N, 9, dtype=torch.float64, requires_grad=True)
    got = loss_fn(hs, hp)
    zs, zp = hs @ loss_fn.adapter.weight.T, hp
    if normalize:
        zs = zs / zs.norm(dim=1, keepdim=True)
        zp = zp / zp.norm(dim=1, keepdim=True)
    per_node = ((zs - zp) ** 2).mean(1)
    want = {"mean": per_node.mean(), "sum": per_node.sum(), "none": per_node}[reduction]
    _assert_close(got, want)
    if reduction == "mean" and not normalize:  # the hint loss: MSE over nodes and features
        _assert_close(got, torch.nn.functional.mse_loss(hs @ loss_fn.adapter.weight.T, hp))
    if normalize:
        cos = torch.nn.functional.cosine_similarity(hs @ loss_fn.adapter.weight.T, hp, dim=1)
        _assert_close(per_node, (2 - 2 * cos) / 9)
    got.sum().backward()
    assert hs.grad is not None and hp.grad is not None
    assert loss_fn.adapter.weight.grad is not None
    assert bool(loss_fn.adapter.weight.grad.abs().sum() > 0)
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b).sum(), (hs.detach().requires_grad_(), hp.detach().requires_grad_()))


def test_feature_align_loss_same_width_adapter_starts_at_identity():
    loss_fn = FeatureAlignLoss(5)
    assert torch.equal(loss_fn.adapter.weight, torch.eye(5))
    hs, hp = torch.randn(8, 5), torch.randn(8, 5)
    torch.testing.assert_close(loss_fn(hs, hp), torch.nn.functional.mse_loss(hs, hp))
    with pytest.raises(ValueError, match="equal widths"):
        FeatureAlignLoss(5, 6, adapter=False)


def test_feature_align_loss_no_adapter_mask_detach():
    loss_fn = FeatureAlignLoss(5, adapter=False, normalize=True, detach_peer=True)
    assert isinstance(loss_fn.adapter, torch.nn.Identity)
    assert len(list(loss_fn.parameters())) == 0
    h = torch.randn(8, 5)
    assert loss_fn(h, 3.0 * h).item() < 1e-10  # scale-free
    mask = torch.zeros(8, dtype=torch.bool)
    mask[:3] = True
    hs = torch.randn(8, 5, requires_grad=True)
    hp = torch.randn(8, 5, requires_grad=True)
    per_node = FeatureAlignLoss(5, adapter=False, normalize=True, reduction="none")(hs, hp)
    torch.testing.assert_close(loss_fn(hs, hp, mask), per_node[:3].mean())
    loss_fn(hs, hp, mask).backward()
    assert hp.grad is None
    assert torch.all(hs.grad[3:] == 0) and bool(hs.grad[:3].abs().sum() > 0)


def test_feature_align_loss_bad_input():
    with pytest.raises(ValueError, match="positive"):
        FeatureAlignLoss(0)
    with pytest.raises(TypeError):
        FeatureAlignLoss(4.5)
    with pytest.raises(ValueError, match="reduction"):
        FeatureAlignLoss(4, reduction="avg")
    loss_fn = FeatureAlignLoss(4, 6)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        loss_fn(torch.randn(3, 6), torch.randn(3, 6))
    with pytest.raises(ValueError, match="nodes"):
        loss_fn(torch.randn(3, 4), torch.randn(2, 6))
    with pytest.raises(TypeError, match="floating"):
        loss_fn(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 6))
    with pytest.raises(ValueError, match="mask"):
        loss_fn(torch.randn(3, 4), torch.randn(3, 6), torch.ones(3))
