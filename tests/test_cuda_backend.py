"""The CUDA backend (fastalign._C_cuda) against the reference backend on the same GPU,
function by function, then through the public ops (gradients, determinism, hub rows).

Skipped without a CUDA device or without the compiled extension. Low-precision inputs
are compared with the reference run on the same low-precision inputs (both accumulate
in float32), so the tolerance is about one unit in the last place of the output dtype.

Dry run (not in CI): FASTALIGN_CUDA_TESTS_ON_CPU=1 runs these tests on CPU tensors with
the C++ CPU backend standing in for the CUDA one (float16 / bfloat16 go to the reference
there), skipping the few CUDA-specific ones. It checks the tests themselves (arguments,
shapes, tolerances against a second implementation) before any GPU run.
"""

import importlib
import os

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign.ops.gcn_aggregate import gcn_norm_state
from helpers import (GPU_DTYPES, INDEX_DTYPES, KERNELS, TOL, case_graphs, long_row_graph, power_law_edge_index,
                     random_edge_index, well_scaled)

REF = importlib.import_module("fastalign.backends.reference")
HAS_CUDA = torch.cuda.is_available() and backends.is_available("cuda")
DRY_RUN = not HAS_CUDA and os.environ.get("FASTALIGN_CUDA_TESTS_ON_CPU") == "1" and backends.is_available("cpu")
if not (HAS_CUDA or DRY_RUN):  # one skip line for the file, no cases collected
    pytest.skip("needs a CUDA device and the fastalign._C_cuda extension", allow_module_level=True)
UNDER_TEST = "cpu" if DRY_RUN else "cuda"  # the backend these tests check
if HAS_CUDA or DRY_RUN:
    CU = backends.get(UNDER_TEST)
cuda_only = pytest.mark.skipif(DRY_RUN, reason="dry run: checks the CUDA extension itself")

DEV = "cpu" if DRY_RUN else "cuda"
DTYPES = GPU_DTYPES
PIECE = 1024  # rows longer than this, and than the split size, are cut into pieces
WIDTHS = (1, 3, 16, 64, 67, 256)


def sim_params(kernel, width):
    """(kernel, sigma, degree, coef) keeping similarities in a well-scaled range."""
    sigma = {"l1": float(max(width, 1)), "rbf": float(max(width, 1)) ** 0.5}.get(kernel, 1.0)
    return kernel, sigma, 2, 1.0


def kl_state(out, dtype):
    """A structure-KL forward's (kl, lse_s, lse_p), checked against the dtypes the backend
    declares (backends.structure_kl_state_dtype) and cast to the reference's (the C++
    stand-in of a dry run keeps them in double)."""
    kl_dtype, lse_dtype = backends.structure_kl_state_dtype(UNDER_TEST, dtype)
    kl, ls, lp = out
    assert kl.dtype == kl_dtype and ls.dtype == lp.dtype == lse_dtype
    ref_lse = torch.float64 if dtype == torch.float64 else torch.float32
    return kl.to(dtype), ls.to(ref_lse), lp.to(ref_lse)


def as_state_of(ref, got):
    """The reference's structure-KL state (kept in double) in the dtypes of ``got``, the
    backend's state as kl_state returns it: the same comparison, and the same backward
    inputs, as a backend's own forward gives."""
    return tuple(r.to(g.dtype) for r, g in zip(ref, got))


def hub_graph(index_dtype, degree=50_000, n=60_000):
    """A hub of in-degree 50,000 (Reddit-like) on top of a power-law graph."""
    gen = torch.Generator().manual_seed(11)
    src = torch.randint(1, n, (degree,), generator=gen)
    hub = torch.stack([src, torch.zeros_like(src)])
    ei = torch.cat([hub, power_law_edge_index(n, 200_000, seed=5)], 1).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n)


def source_hub_graph(index_dtype, degree=20_000, n=5000):
    """A source of out-degree 20,000 (duplicates included): a long row of the transpose,
    which the max backward splits; plus a power-law graph."""
    gen = torch.Generator().manual_seed(13)
    dst = torch.randint(0, n, (degree,), generator=gen)
    hub = torch.stack([torch.zeros_like(dst), dst])
    ei = torch.cat([hub, power_law_edge_index(n, 40_000, seed=6)], 1).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n)


def all_graphs(index_dtype):
    return case_graphs(index_dtype) + [("long_rows", long_row_graph(index_dtype, PIECE))]


GRAPH_NAMES = [name for name, _ in all_graphs(torch.int64)]
_GRAPHS = {}


def graph_of(name, index_dtype):
    key = (name, index_dtype)
    if key not in _GRAPHS:
        if name == "hub50k":
            g = hub_graph(index_dtype)
        elif name == "source_hub":
            g = source_hub_graph(index_dtype)
        else:
            g = dict(all_graphs(index_dtype))[name]
        _GRAPHS[key] = g.to(DEV)
    return _GRAPHS[key]


def feats(n, width, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=gen).to(dtype).to(DEV)


def edge_weight(graph, dtype, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(graph.num_edges, generator=gen) + 0.5).to(dtype).to(DEV)


def magnitude(*tensors):
    """The largest finite |value| of the tensors, at least 1."""
    finite = [t[torch.isfinite(t)].float().abs().max() for t in tensors if torch.isfinite(t).any()]
    return max([1.0] + [float(m) for m in finite])


def assert_close(actual, expected, dtype=None, scale_of=()):
    """Within a few ulps of the output dtype, absolute errors measured against the
    output's magnitude, or against that of ``scale_of`` when the output is a small
    difference of such terms (kl = t / S_p + lse_s - lse_p: its float32 error is that of
    the log-sum-exps, ~1e-5 on a row of 9,000 edges, whatever the size of kl)."""
    dtype = dtype or expected.dtype
    rtol, atol = TOL.get(dtype, TOL[torch.float32])
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = magnitude(expected, *scale_of) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


graph_params = pytest.mark.parametrize("name", GRAPH_NAMES)
index_params = pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
dtype_params = pytest.mark.parametrize("dtype", DTYPES)


@cuda_only
def test_lists_every_backend_function():
    assert CU.FUNCTIONS == frozenset(backends.BACKEND_FUNCTIONS)
    assert backends.resolve("spmm", "cuda", torch.device(DEV), ("spmm_forward",)) == "cuda"


# --------------------------------------------------------------------------- spmm
@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS + (520,))
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
@pytest.mark.parametrize("weighted", (False, True))
def test_spmm_forward(name, index_dtype, dtype, width, reduce, weighted):
    g = graph_of(name, index_dtype)
    x = feats(g.num_src, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    out, arg = CU.spmm_forward(g.rowptr, g.col, w, x, reduce)
    ref_out, ref_arg = REF.spmm_forward(g.rowptr, g.col, w, x, reduce)
    assert_close(out, ref_out)
    if reduce == "max":
        # The same float32 products on both sides: the first maximal edge is exact.
        assert torch.equal(arg, ref_arg)
    else:
        assert arg.numel() == 0


def max_backward_pair(g, x, w, grad_out, need_w):
    """(cuda, reference) max backward; arg from the reference forward."""
    _, arg = REF.spmm_forward(g.rowptr, g.col, w, x, "max")
    rowptr_t, col_t, perm_t = g.transpose()
    args = (g.col, rowptr_t, col_t, perm_t, w, x, arg, grad_out, need_w)
    return CU.spmm_max_backward(*args), REF.spmm_max_backward(*args)


@pytest.mark.parametrize("name", GRAPH_NAMES + ["source_hub"])
@index_params
@dtype_params
@pytest.mark.parametrize("width", (1, 16, 67, 520))
@pytest.mark.parametrize("weighted", (False, True))
def test_spmm_max_backward(name, index_dtype, dtype, width, weighted):
    """grad_x gathered over the transpose (split source rows for "source_hub"; 520
    float32 features: two feature chunks)."""
    g = graph_of(name, index_dtype)
    x = feats(g.num_src, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    grad_out = feats(g.num_dst, width, dtype, seed=1)
    (gx, gw), (rx, rw) = max_backward_pair(g, x, w, grad_out, True)
    assert_close(gx, rx)
    assert_close(gw, rw)
    (gx2, gw2), _ = max_backward_pair(g, x, w, grad_out, False)
    assert torch.equal(gx2, gx)
    assert gw2.numel() == 0


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_spmm_max_winners_int32_and_int64(dtype):
    """The forward writes int32 winners; the backward reads int32 (16-byte int4 loads)
    and int64 winners to the same bits."""
    g = graph_of("source_hub", torch.int64)
    x = feats(g.num_src, 64, dtype)
    w = edge_weight(g, dtype)
    out, arg = CU.spmm_forward(g.rowptr, g.col, w, x, "max")
    assert arg.dtype == torch.int32
    assert torch.equal(arg, REF.spmm_forward(g.rowptr, g.col, w, x, "max")[1])
    grad_out = feats(g.num_dst, 64, dtype, seed=1)
    rowptr_t, col_t, perm_t = g.transpose()
    a32 = CU.spmm_max_backward(g.col, rowptr_t, col_t, perm_t, w, x, arg, grad_out, True)
    a64 = CU.spmm_max_backward(g.col, rowptr_t, col_t, perm_t, w, x, arg.long(), grad_out, True)
    assert torch.equal(a32[0], a64[0]) and torch.equal(a32[1], a64[1])


def test_spmm_max_backward_ties():
    """Integer-valued features: equal messages tie, and only the arg edge (the first
    maximal one) gets the gradient."""
    g = graph_of("long_rows", torch.int32)
    x = torch.randint(-2, 3, (g.num_src, 16), generator=torch.Generator().manual_seed(2))
    x = x.float().to(DEV)
    grad_out = feats(g.num_dst, 16, torch.float32, seed=3)
    (gx, gw), (rx, rw) = max_backward_pair(g, x, None, grad_out, True)
    assert_close(gx, rx)
    assert_close(gw, rw)


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
def test_sddmm(name, index_dtype, dtype, width):
    g = graph_of(name, index_dtype)
    a = feats(g.num_dst, width, dtype, seed=2)
    b = feats(g.num_src, width, dtype, seed=3)
    assert_close(CU.sddmm(g.rowptr, g.col, a, b), REF.sddmm(g.rowptr, g.col, a, b))


@pytest.mark.parametrize("name", ("square", "hub", "long_rows"))
@index_params
@dtype_params
@pytest.mark.parametrize("width", (3, 64, 130))
@pytest.mark.parametrize("self_loops", (False, True))
@pytest.mark.parametrize("weighted", (False, True))
def test_gcn_aggregate(name, index_dtype, dtype, width, self_loops, weighted):
    g = graph_of(name, index_dtype)
    x = feats(g.num_src, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    dis, loop_w = gcn_norm_state(g, w, self_loops, False, dtype)
    out = CU.gcn_aggregate(g.rowptr, g.col, w, dis, loop_w, x)
    assert_close(out, REF.gcn_aggregate(g.rowptr, g.col, w, dis, loop_w, x))


# --------------------------------------------------------------------------- graph attention
@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("heads,channels", ((1, 16), (3, 5), (8, 8)))
@pytest.mark.parametrize("loops,dropout,with_dst", ((True, 0.0, True), (False, 0.3, True), (True, 0.5, False)))
def test_gat_aggregate(name, index_dtype, dtype, heads, channels, loops, dropout, with_dst):
    g = graph_of(name, index_dtype)
    x = feats(g.num_src, heads * channels, dtype, seed=2).view(-1, heads, channels)
    a_s = feats(g.num_src, heads, dtype, seed=3)
    a_d = feats(g.num_dst, heads, dtype, seed=4) if with_dst else None
    args = (x, a_s, a_d, 0.2, dropout, 12345, loops)
    out, lse = CU.gat_aggregate_forward(g.rowptr, g.col, *args)
    ref_out, ref_lse = REF.gat_aggregate_forward(g.rowptr, g.col, *args)
    assert_close(out, ref_out)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert_close(lse[finite], ref_lse[finite], torch.float32)
    rowptr_t, col_t, perm_t = g.transpose()
    grad_out = feats(g.num_dst, heads * channels, dtype, seed=5).view(-1, heads, channels)
    back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.2, dropout,
            12345, loops)
    for got, expected in zip(CU.gat_aggregate_backward(*back), REF.gat_aggregate_backward(*back)):
        assert_close(got, expected)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_gat_aggregate_hub_rows(dtype):
    """Rows of 1,024 edges (one thread's longest), 1,025 and 50,000 (a block's), and a
    source of out-degree 20,000 (a long row of the transpose, for the source gradients),
    8 heads of 8 channels with self loops and dropout: against the reference, and the
    same bits on a second run."""
    hub = hub_graph(torch.int64)
    n = hub.num_dst
    ei = torch.cat([hub.edge_index.cpu(),
                    torch.stack([torch.arange(1024) % 500 + 10, torch.full((1024,), n)]),
                    torch.stack([torch.arange(1025) % 500 + 10, torch.full((1025,), n + 1)]),
                    torch.stack([torch.full((20_000,), 7), torch.arange(20_000) % n])], 1)
    g = Graph.from_edge_index(ei, num_nodes=n + 2).to(DEV)
    deg = (g.rowptr[1:] - g.rowptr[:-1]).cpu()
    assert int(deg[0]) >= 50_000 and int(deg[n]) == 1024 and int(deg[n + 1]) == 1025
    heads, channels = 8, 8
    x = feats(g.num_src, heads * channels, dtype, seed=2).view(-1, heads, channels)
    a_s, a_d = feats(g.num_src, heads, dtype, seed=3), feats(g.num_dst, heads, dtype, seed=4)
    args = (x, a_s, a_d, 0.2, 0.1, 777, True)
    out, lse = CU.gat_aggregate_forward(g.rowptr, g.col, *args)
    ref_out, ref_lse = REF.gat_aggregate_forward(g.rowptr, g.col, *args)
    assert_close(out, ref_out)
    assert_close(lse, ref_lse, torch.float32)
    rowptr_t, col_t, perm_t = g.transpose()
    assert int((rowptr_t[1:] - rowptr_t[:-1]).max()) >= 20_000
    grad_out = feats(g.num_dst, heads * channels, dtype, seed=5).view(-1, heads, channels)
    back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.2, 0.1, 777, True)
    grads = CU.gat_aggregate_backward(*back)
    for got, expected in zip(grads, REF.gat_aggregate_backward(*back)):
        assert_close(got, expected)
    again_out, again_lse = CU.gat_aggregate_forward(g.rowptr, g.col, *args)
    assert torch.equal(again_out, out) and torch.equal(again_lse, lse)
    for got, again in zip(grads, CU.gat_aggregate_backward(*back)):
        assert torch.equal(got, again)


# --------------------------------------------------------------------------- similarity
@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity(name, index_dtype, dtype, width, kernel):
    g = graph_of(name, index_dtype)
    xd = feats(g.num_dst, width, dtype, seed=2)
    xs = feats(g.num_src, width, dtype, seed=3)
    params = sim_params(kernel, width)
    got = CU.edge_similarity(g.rowptr, g.col, xd, xs, *params)
    assert_close(got, REF.edge_similarity(g.rowptr, g.col, xd, xs, *params))


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", (1, 16, 67))
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_backward(name, index_dtype, dtype, width, kernel):
    if kernel == "cosine" and width == 1:
        # the cosine of two 1-D rows is +-1, a constant: its gradient is zero, and each
        # side returns only the rounding residue of two cancelling terms
        pytest.skip("cosine at width 1: zero gradient")
    g = graph_of(name, index_dtype)
    rowptr_t, col_t, perm_t = g.transpose()
    xd = feats(g.num_dst, width, dtype, seed=2)
    xs = feats(g.num_src, width, dtype, seed=3)
    gs = feats(g.num_edges, 1, dtype, seed=4).flatten()
    params = sim_params(kernel, width)
    args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, xd, xs, gs, *params)
    got, want = CU.edge_similarity_backward(*args), REF.edge_similarity_backward(*args)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@graph_params
@index_params
@dtype_params
def test_edge_softmax(name, index_dtype, dtype):
    g = graph_of(name, index_dtype)
    z = feats(g.num_edges, 1, dtype, seed=6).flatten() * 3
    p = CU.edge_softmax(g.rowptr, z)
    assert_close(p, REF.edge_softmax(g.rowptr, z))
    gp = feats(g.num_edges, 1, dtype, seed=7).flatten()
    assert_close(CU.edge_softmax_backward(g.rowptr, p, gp), REF.edge_softmax_backward(g.rowptr, p, gp))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_edge_softmax_hub_rows(dtype):
    """Rows of 1,024 edges (a warp's longest), 1,025 and 50,000 (a block's): against the
    reference, and the same bits on a second run."""
    hub = hub_graph(torch.int64)
    n = hub.num_dst  # two new nodes n, n + 1 with exactly 1,024 and 1,025 in-edges
    ei = torch.cat([hub.edge_index.cpu(),
                    torch.stack([torch.arange(1024) % 500 + 10, torch.full((1024,), n)]),
                    torch.stack([torch.arange(1025) % 500 + 10, torch.full((1025,), n + 1)])], 1)
    g = Graph.from_edge_index(ei, num_nodes=n + 2).to(DEV)
    deg = (g.rowptr[1:] - g.rowptr[:-1]).cpu()
    assert int(deg[0]) >= 50_000 and int(deg[n]) == 1024 and int(deg[n + 1]) == 1025
    z = feats(g.num_edges, 1, dtype, seed=6).flatten() * 3
    gp = feats(g.num_edges, 1, dtype, seed=7).flatten()
    p = CU.edge_softmax(g.rowptr, z)
    assert_close(p, REF.edge_softmax(g.rowptr, z))
    gz = CU.edge_softmax_backward(g.rowptr, p, gp)
    assert_close(gz, REF.edge_softmax_backward(g.rowptr, p, gp))
    assert torch.equal(CU.edge_softmax(g.rowptr, z), p)
    assert torch.equal(CU.edge_softmax_backward(g.rowptr, p, gp), gz)


# --------------------------------------------------------------------------- structure KL
@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("widths", ((16, 16), (3, 67), (64, 256)))
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl(name, index_dtype, dtype, widths, kernel):
    g = graph_of(name, index_dtype)
    fs, fp = widths
    sd, ss, pd, ps = (well_scaled(kernel, feats(n, f, dtype, seed)) for n, f, seed in
                      ((g.num_dst, fs, 1), (g.num_src, fs, 2), (g.num_dst, fp, 3), (g.num_src, fp, 4)))
    params = sim_params(kernel, max(fs, fp)) + (0.5,)
    kl, lse_s, lse_p = kl_state(CU.structure_kl_forward(g.rowptr, g.col, sd, ss, pd, ps, *params), dtype)
    rkl, rls, rlp = as_state_of(REF.structure_kl_forward(g.rowptr, g.col, sd, ss, pd, ps, *params),
                                (kl, lse_s, lse_p))
    assert_close(kl, rkl, scale_of=(rls, rlp))
    assert_close(lse_s, rls, dtype)
    assert_close(lse_p, rlp, dtype)
    assert torch.equal(torch.isinf(lse_s), torch.isinf(rls))

    rowptr_t, col_t, perm_t = g.transpose()
    grad = feats(g.num_dst, 1, dtype, 5).flatten()
    for peer_grad in (False, True):
        args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, sd, ss, pd, ps, rls, rlp, rkl, grad,
                *params, peer_grad)
        got, want = CU.structure_kl_backward(*args), REF.structure_kl_backward(*args)
        for a, b in zip(got, want):
            assert_close(a, b)


# --------------------------------------------------------------------------- hub rows
@index_params
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_hub_of_degree_50k(index_dtype, dtype):
    g = graph_of("hub50k", index_dtype)
    assert int(g.in_degree.max()) >= 50_000
    x = feats(g.num_src, 64, dtype)
    for reduce in ("sum", "mean", "max"):
        out, arg = CU.spmm_forward(g.rowptr, g.col, None, x, reduce)
        ref_out, ref_arg = REF.spmm_forward(g.rowptr, g.col, None, x, reduce)
        assert_close(out, ref_out)
        if reduce == "max":
            assert torch.equal(arg, ref_arg)
    params = sim_params("l1", 64) + (1.0,)
    p = feats(g.num_src, 32, dtype, seed=9)
    kl, ls, lp = kl_state(CU.structure_kl_forward(g.rowptr, g.col, x, x, p, p, *params), dtype)
    rkl, rls, rlp = as_state_of(REF.structure_kl_forward(g.rowptr, g.col, x, x, p, p, *params), (kl, ls, lp))
    assert_close(kl, rkl, scale_of=(rls, rlp))
    assert_close(ls, rls, dtype)
    rowptr_t, col_t, perm_t = g.transpose()
    grad = torch.ones(g.num_dst, device=DEV, dtype=dtype)
    args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, x, p, p, rls, rlp, rkl, grad, *params, True)
    for a, b in zip(CU.structure_kl_backward(*args), REF.structure_kl_backward(*args)):
        assert_close(a, b)


def test_deterministic_without_atomics():
    """Split hub rows are combined in a fixed order: two runs agree bit for bit."""
    g = graph_of("hub50k", torch.int64)
    x = feats(g.num_src, 64, torch.float32)
    a, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
    b, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
    assert torch.equal(a, b)
    # the max backward (grad_x gathered over the transpose, a split source hub)
    for name in ("hub50k", "source_hub"):
        gm = graph_of(name, torch.int32)
        for dtype in (torch.float32, torch.bfloat16):
            xm = feats(gm.num_src, 64, dtype, seed=4)
            wm = edge_weight(gm, dtype)
            gout = feats(gm.num_dst, 64, dtype, seed=6)
            _, arg = CU.spmm_forward(gm.rowptr, gm.col, wm, xm, "max")
            rt, ct, pt = gm.transpose()
            args = (gm.col, rt, ct, pt, wm, xm, arg, gout, True)
            r1, r2 = CU.spmm_max_backward(*args), CU.spmm_max_backward(*args)
            assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1]), (name, dtype)
    rowptr_t, col_t, perm_t = g.transpose()
    params = sim_params("rbf", 64) + (1.0,)
    kl, ls, lp = CU.structure_kl_forward(g.rowptr, g.col, x, x, x, x, *params)
    grad = torch.ones_like(kl)
    args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, x, x, x, ls, lp, kl, grad, *params, False)
    r1, r2 = CU.structure_kl_backward(*args), CU.structure_kl_backward(*args)
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])


# --------------------------------------------------------------------------- public ops
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
def test_spmm_op_gradients(reduce):
    g = graph_of("long_rows", torch.int64)
    w = edge_weight(g, torch.float32)
    x = feats(g.num_src, 32, torch.float32).requires_grad_()
    wc = w.clone().requires_grad_()
    out = fastalign.spmm(g, x, reduce, edge_weight=wc, backend=UNDER_TEST)
    out.square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    w2 = w.clone().requires_grad_()
    ref = fastalign.spmm(g, x2, reduce, edge_weight=w2, backend="torch")
    ref.square().sum().backward()
    assert_close(out.detach(), ref.detach())
    assert_close(x.grad, x2.grad)
    assert_close(wc.grad, w2.grad)


def test_structure_kl_op_gradients():
    g = graph_of("long_rows", torch.int32)
    hs = feats(g.num_src, 48, torch.float32, 1).requires_grad_()
    hp = feats(g.num_src, 24, torch.float32, 2).requires_grad_()
    loss = fastalign.structure_kl(g, hs, hp, kernel="cosine", tau=0.5, backend=UNDER_TEST)
    loss.backward()
    hs2 = hs.detach().clone().requires_grad_()
    hp2 = hp.detach().clone().requires_grad_()
    ref = fastalign.structure_kl(g, hs2, hp2, kernel="cosine", tau=0.5, backend="torch")
    ref.backward()
    assert_close(loss.detach(), ref.detach())
    assert_close(hs.grad, hs2.grad)
    assert_close(hp.grad, hp2.grad)


def test_float64_falls_back_to_the_reference():
    g = graph_of("square", torch.int64)
    x = feats(g.num_src, 8, torch.float64)
    out, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
    ref, _ = REF.spmm_forward(g.rowptr, g.col, None, x, "sum")
    torch.testing.assert_close(out, ref)


def test_power_law_graph_matches_torch_sparse():
    ei = power_law_edge_index(20_000, 400_000, seed=1).to(DEV)
    g = Graph.from_edge_index(ei, num_nodes=20_000)
    x = feats(20_000, 128, torch.float32)
    out, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
    adj = torch.sparse_csr_tensor(g.rowptr.long(), g.col.long(), torch.ones(g.num_edges, device=DEV),
                                  size=(20_000, 20_000))
    assert_close(out, adj @ x)


def test_misaligned_and_strided_inputs():
    """Views with odd storage offsets or strides are copied to aligned dense rows."""
    g = graph_of("long_rows", torch.int64)
    n, f = g.num_src, 64
    base = torch.randn(n * f + 1, device=DEV)
    x = base[1:].view(n, f)  # contiguous, 4 bytes off a 16-byte boundary
    wide = torch.randn(n, 2 * f, device=DEV)
    strided = wide[:, ::2]
    for inp in (x, strided):
        out, _ = CU.spmm_forward(g.rowptr, g.col, None, inp, "sum")
        ref, _ = REF.spmm_forward(g.rowptr, g.col, None, inp, "sum")
        assert_close(out, ref)
        params = sim_params("rbf", f) + (1.0,)
        got = kl_state(CU.structure_kl_forward(g.rowptr, g.col, inp, inp, x, x, *params), inp.dtype)
        want = as_state_of(REF.structure_kl_forward(g.rowptr, g.col, inp, inp, x, x, *params), got)
        assert_close(got[0], want[0], scale_of=want[1:])


@cuda_only
def test_bad_input_fails_with_a_message():
    g = graph_of("square", torch.int64)
    x = feats(g.num_src, 8, torch.float32)
    with pytest.raises(RuntimeError, match="CUDA tensor|device"):
        torch.ops.fastalign_cuda.spmm_forward(g.rowptr, g.col, None, x.cpu(), "sum")
    with pytest.raises(RuntimeError, match="unknown reduce"):
        torch.ops.fastalign_cuda.spmm_forward(g.rowptr, g.col, None, x, "prod")
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.fastalign_cuda.spmm_forward(g.rowptr, g.col, None, x.flatten(), "sum")


@cuda_only
def test_glue_checks_every_shape_it_indexes_with():
    """A direct op call with inconsistent shapes is refused before any kernel runs."""
    ops = torch.ops.fastalign_cuda
    g = graph_of("square", torch.int64)
    rt, ct, pt = g.transpose()
    x = feats(g.num_src, 8, torch.float32)
    short = x[:-1].contiguous()
    with pytest.raises(ValueError, match="rows"):  # fewer student rows than destinations
        ops.structure_kl_forward(g.rowptr, g.col, short, x, x, x, "l1", 8.0, 2, 1.0, 1.0)
    with pytest.raises(ValueError, match="rows"):  # peer sources differ from student sources
        ops.structure_kl_forward(g.rowptr, g.col, x, x, x, short, "l1", 8.0, 2, 1.0, 1.0)
    lse = torch.zeros(g.num_dst, device=DEV)
    with pytest.raises(ValueError, match="rows"):
        ops.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, x, short, x, short, lse, lse, lse, lse,
                                  "l1", 8.0, 2, 1.0, 1.0, False)
    grad_s = torch.zeros(g.num_edges, device=DEV)
    with pytest.raises(ValueError, match="rows"):
        ops.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, short, x, grad_s, "l1", 8.0, 2, 1.0)
    with pytest.raises(ValueError, match="edges"):
        ops.edge_similarity_backward(g.rowptr, g.col, rt * 0, ct[:0], pt, x, x, grad_s, "l1", 8.0, 2, 1.0)
    with pytest.raises(TypeError, match="int32 or int64"):
        ops.edge_softmax(g.rowptr.float(), grad_s)
    with pytest.raises(ValueError, match="1-D"):
        ops.edge_softmax(g.rowptr, grad_s.view(1, -1))
