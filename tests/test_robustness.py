"""Inputs at the edges of the ops' domains, on every backend of this machine: each either
gets the right answer (the float64 / torch.* definition) or a clear ValueError /
TypeError, never a silent wrong one."""

import importlib

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign.ops import _common

BACKENDS = backends.available_backends("cpu")
REF = importlib.import_module("fastalign.backends.reference")
NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------- max
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ["given", "reversed", "shuffled"])
def test_spmm_max_propagates_nan_in_any_edge_order(backend, order):
    """torch.amax semantics: a NaN message makes its row's maximum NaN; the gradient
    goes to the row's first NaN edge; rows without NaN are unaffected."""
    src = torch.tensor([0, 1, 2, 3, 1, 2, 0, 3])
    dst = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    perm = {"given": torch.arange(8), "reversed": torch.arange(7, -1, -1),
            "shuffled": torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])}[order]
    g = Graph.from_edge_index(torch.stack([src[perm], dst[perm]]), num_nodes=4)
    x = torch.tensor([[1.0, 5.0, -1.0], [NAN, 2.0, -2.0], [3.0, NAN, -3.0], [2.0, 1.0, NAN]],
                     dtype=torch.float64, requires_grad=True)
    out = fastalign.spmm(g, x, "max", backend=backend)
    dense = torch.full((4, 4, 3), -INF, dtype=torch.float64)  # [dst, src, F]
    dense[dst, src] = x.detach()[src]
    expect = torch.amax(dense, dim=1)
    expect[3] = 0  # node 3 has no in-edge
    torch.testing.assert_close(out.detach(), expect, equal_nan=True)
    out.backward(torch.ones_like(out))
    # the winning source of each (row, feature): CSR rows are sorted by source, so the
    # first NaN is the lowest source holding one
    winners = {0: (1, 2, 3), 1: (1, 2, 1), 2: (3, 0, 3)}
    grad = torch.zeros(4, 3, dtype=torch.float64)
    for row, sources in winners.items():
        for f, j in enumerate(sources):
            grad[j, f] += 1
    torch.testing.assert_close(x.grad, grad)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_max_winners_across_the_pieces_of_hub_rows(backend, index_dtype, dtype):
    """Hub rows are cut into pieces and merged: NaN in a later piece wins over numbers in
    the earlier ones, the first NaN stays, ties between pieces keep the earlier edge, and
    a row of -inf keeps -inf (not the 0 of an empty row); values and winners exactly as
    the reference's."""
    from tests.helpers import PIECE, long_row_graph

    g = long_row_graph(index_dtype, PIECE)
    n, width = g.num_src, 5
    x = torch.randn(n, width, generator=torch.Generator().manual_seed(2), dtype=dtype)
    col, rowptr = g.col.long(), g.rowptr.long()
    hub = rowptr[0].item(), rowptr[1].item()  # node 0: 9,000 in-edges, three pieces
    assert hub[1] - hub[0] > 2 * PIECE
    late, later = col[hub[0] + PIECE + 7].item(), col[hub[0] + 2 * PIECE + 3].item()
    x[late, 0] = x[later, 0] = NAN  # feature 0: a NaN in the second piece and the third
    top = x[:, 1].max() + 1
    first, second = col[hub[0] + 11].item(), col[hub[0] + PIECE + 5].item()
    assert first != second  # the row's columns are sorted: the two sources sit in different pieces
    x[first, 1] = x[second, 1] = top  # feature 1: a tie across pieces
    x[:, 2] = -INF  # feature 2: -inf everywhere
    out, arg = backends.get(backend).spmm_forward(g.rowptr, g.col, None, x, "max")
    ref_out, ref_arg = REF.spmm_forward(g.rowptr, g.col, None, x, "max")
    torch.testing.assert_close(out, ref_out, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(arg.long(), ref_arg.long())
    assert out[0, 0].isnan() and col[arg[0, 0].long()].item() == late
    assert col[arg[0, 1].long()].item() == first and out[0, 2].item() == -INF
    assert arg[0, 1].item() == hub[0] + (col[hub[0]:hub[1]] == first).nonzero()[0].item()


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_softmax_hub_row_with_a_piece_of_minus_infinity(backend):
    """A hub row (more in-edges than one piece of the C++ traversal, 4,096) whose first
    piece holds only -inf logits: those edges get 0, the rest a softmax of their own."""
    n = 6001
    src = torch.arange(1, n)
    g = Graph.from_edge_index(torch.stack([src, torch.zeros_like(src)]), num_nodes=n)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(g.num_edges, generator=gen, dtype=torch.float64)
    z[:4500] = -INF
    p = fastalign.edge_softmax(g, z, backend=backend)
    torch.testing.assert_close(p, torch.softmax(z, 0))
    # a row of -inf only: NaN, as torch.softmax
    assert torch.isnan(fastalign.edge_softmax(g, torch.full_like(z, -INF), backend=backend)).all()


# ----------------------------------------------------------------------------- structure KL
def _exact_large_logits(seed=0, n=60, f=4):
    """Linear-kernel logits of ~1e7 that float32 holds exactly (integers times 2**20), so
    that a float32 kernel can be held to the float64 truth; ties are common, so the
    neighbour distributions are not one-hot and log(sum) terms of O(1) matter."""
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 500), generator=gen)
    g = Graph.from_edge_index(ei, num_nodes=n)
    s = torch.randint(-2, 3, (n, f), generator=gen).float() * 1024
    p = torch.randint(-2, 3, (n, f), generator=gen).float() * 1024
    return g, s, p


@pytest.mark.parametrize("backend", BACKENDS)
def test_structure_kl_at_logits_of_1e7(backend):
    g, s, p = _exact_large_logits()
    gk = torch.rand(g.num_dst, generator=torch.Generator().manual_seed(1))
    out = {}
    for dtype in (torch.float32, torch.float64):
        hs = s.detach().to(dtype).requires_grad_()
        hp = p.detach().to(dtype).requires_grad_()
        kl = fastalign.structure_kl(g, hs, hp, "linear", reduction="none",
                                    backend=backend if dtype == torch.float32 else "torch")
        kl.backward(gk.to(dtype))
        out[dtype] = (kl.detach().double(), hs.grad.double(), hp.grad.double())
    for name, a, b in zip(("kl", "student grad", "peer grad"), out[torch.float32], out[torch.float64]):
        err = float((a - b).norm() / b.norm())
        assert err < 1e-5, f"{name}: relative error {err:.3g}"


# ----------------------------------------------------------------------------- in place
@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_edits_of_a_graphs_tensors_are_seen(backend):
    gen = torch.Generator().manual_seed(2)
    ei = torch.randint(0, 30, (2, 200), generator=gen)
    w = torch.rand(200, generator=gen, dtype=torch.float64) + 0.5
    g = Graph.from_edge_index(ei, w, num_nodes=30)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)

    def run(graph):
        xs = x.clone().requires_grad_()
        a = fastalign.spmm(graph, xs, "sum", backend=backend)
        b = fastalign.gcn_aggregate(graph, xs, backend=backend)
        (a.square().sum() + b.square().sum()).backward()
        return a.detach(), b.detach(), xs.grad

    run(g)  # fills the caches: transposed weights, GCN normalisation
    g.edge_weight.mul_(3)
    fresh = Graph.from_edge_index(ei, w * 3, num_nodes=30)
    for got, want in zip(run(g), run(fresh)):
        torch.testing.assert_close(got, want)
    g.col[0] = 10**6  # an in-place edit of the structure is validated again
    with pytest.raises(ValueError, match="out of range"):
        fastalign.spmm(g, x, backend=backend)


# ----------------------------------------------------------------------------- sizes
def test_node_counts_past_the_sort_key_still_sort_correctly():
    ei = torch.tensor([[5, 0, 9, 2, 5, 1], [3, 0, 1, 3, 0, 1]])
    small = Graph.from_edge_index(ei, num_nodes=(10, 4))
    huge = Graph.from_edge_index(ei, num_nodes=(2**62, 4))  # dst * num_src overflows int64
    assert huge.num_src == 2**62
    for a, b in ((huge.rowptr, small.rowptr), (huge.col, small.col), (huge.perm, small.perm)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad, exc", [(3.9, TypeError), ("5", TypeError), (True, TypeError), (-1, ValueError),
                                      (2**63, ValueError), (torch.tensor([1, 2]), TypeError)])
def test_node_counts_must_be_ints(bad, exc):
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(exc, match="num_nodes"):
        Graph.from_edge_index(ei, num_nodes=bad)
    with pytest.raises(exc, match="num_nodes|num_src"):
        Graph.from_edge_index(ei, num_nodes=(bad, 2))


def test_int32_offsets_must_hold_the_edge_count():
    ei = torch.zeros(2, 1, dtype=torch.int32).expand(2, 2**31)  # a view: nothing allocated
    with pytest.raises(ValueError, match="int32"):
        Graph.from_edge_index(ei, num_nodes=1)


# ----------------------------------------------------------------------------- parameters
def _small():
    g = Graph.from_edge_index(torch.tensor([[0, 1, 2, 2], [1, 0, 0, 1]]), num_nodes=3)
    return g, torch.randn(3, 4, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(kernel="l1", sigma=1e-50), ValueError, "too small"),
    (dict(kernel="rbf", sigma=1e-30), ValueError, "too small"),
    (dict(kernel="l1", sigma=0.0), ValueError, "positive"),
    (dict(kernel="l1", sigma=NAN), ValueError, "finite"),
    (dict(kernel="l1", sigma="5"), TypeError, "sigma"),
    (dict(kernel="poly", degree=True), TypeError, "degree"),
    (dict(kernel="poly", degree=2.0), TypeError, "degree"),
    (dict(kernel="poly", degree="5"), TypeError, "degree"),
    (dict(kernel="poly", degree=2**63), ValueError, "degree"),
    (dict(kernel="poly", degree=-1), ValueError, "degree"),
    (dict(kernel="poly", coef=INF), ValueError, "coef"),
    (dict(kernel="manhattan"), ValueError, "kernel"),
])
def test_similarity_parameters_are_checked(kwargs, exc, match):
    g, x = _small()
    for fn in (fastalign.edge_similarity, fastalign.local_structure):
        with pytest.raises(exc, match=match):
            fn(g, x, **kwargs)
    with pytest.raises(exc, match=match):
        fastalign.structure_kl(g, x, x, **kwargs)


@pytest.mark.parametrize("tau, exc", [(1e-50, ValueError), (0.0, ValueError), (-1.0, ValueError),
                                      (INF, ValueError), (True, TypeError), ("1", TypeError)])
def test_temperature_is_checked(tau, exc):
    g, x = _small()
    with pytest.raises(exc, match="tau"):
        fastalign.local_structure(g, x, tau=tau)
    with pytest.raises(exc, match="tau"):
        fastalign.structure_kl(g, x, x, tau=tau)


@pytest.mark.parametrize("sigma", [1.2e-38, 1e-19])
@pytest.mark.parametrize("backend", BACKENDS)
def test_small_but_valid_scales_give_finite_structures(sigma, backend):
    g, x = _small()
    kernel = "l1" if sigma < 1e-30 else "rbf"
    p = fastalign.local_structure(g, x, kernel=kernel, sigma=sigma, backend=backend)
    assert torch.isfinite(p).all()


# ----------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1.0, 3e19, 1e-30])
def test_cosine_does_not_overflow(backend, scale):
    g, x = _small()
    xs = (x * scale).requires_grad_()
    s = fastalign.edge_similarity(g, xs, "cosine", backend=backend)
    s.sum().backward()
    want = fastalign.edge_similarity(g, (x * scale).double(), "cosine", backend="torch")
    if scale >= 1:  # above the eps clamp: the scale changes nothing
        torch.testing.assert_close(s.double(), torch.nn.functional.cosine_similarity(
            x[g.row], x[g.col.long()], dim=1).double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.double(), want, rtol=1e-5, atol=1e-45)
    assert torch.isfinite(xs.grad).all()


def test_cosine_on_float32_sums_refuses_entries_that_overflow():
    """Backends that sum cosine's squares in float32 refuse inputs that would overflow
    them (cosine is scale-invariant: the message says so)."""
    _, x = _small()
    big = x * 3e19
    assert not backends.cosine_overflow_safe("triton") or not backends.is_available("triton")
    with pytest.raises(ValueError, match="rescale"):
        _common.check_cosine_range("cosine", "triton", big)
    _common.check_cosine_range("cosine", "triton", x)  # ordinary entries pass
    _common.check_cosine_range("cosine", "triton", big.double())  # float64 sums: fine
    _common.check_cosine_range("l1", "triton", big)  # other kernels do not sum squares


@pytest.mark.parametrize("cache", ["facts", "graphs"])
def test_a_tensor_collected_while_its_cache_lock_is_held_does_not_deadlock(cache):
    """The id-keyed caches (validated facts, the drop-ins' edge_index graphs) drop an entry
    from a weakref callback when its tensor is collected. The collector can run inside a
    section that holds the cache's lock (any allocation there may trigger it), in the same
    thread: with a non-reentrant lock that thread waited on itself forever (seen as a hung
    CI run in layer-wise inference). Reproduced here by collecting such a tensor, kept in
    a reference cycle, while the lock is held."""
    import gc
    import threading

    from fastalign import validation
    from fastalign.nn import drop_in

    def scenario():
        t = torch.arange(5)
        if cache == "facts":
            validation._remember(t, csr_edges=5)
            lock = validation._LOCK
        else:
            drop_in.graph_from_edge_index(t.view(1, 5).expand(2, 5), torch.zeros(2, 0, dtype=torch.long), 5, 5,
                                          "source_to_target")
            lock = drop_in._GRAPHS_LOCK
        cycle = [t]
        cycle.append(cycle)  # only the cyclic collector frees it
        del t, cycle
        gc.disable()
        try:
            with lock:
                gc.collect()  # runs the weakref callback in this thread, lock held
        finally:
            gc.enable()
        done.set()

    done = threading.Event()
    worker = threading.Thread(target=scenario, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert done.is_set(), "the cache's weakref callback waited on a lock its own thread held"
