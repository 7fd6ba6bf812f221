"""The C++/OpenMP CPU backend against the reference backend, kernel by kernel, and
through the public ops (gradients, non-contiguous inputs, determinism, choice)."""

import importlib

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign.ops.gcn_aggregate import gcn_norm_state
from helpers import (INDEX_DTYPES, KERNELS, LOW_PRECISION_TOL, TOL, case_graphs, features, long_row_graph,
                     power_law_edge_index, random_edge_index, rel_err)

# the module, not the function fastalign.ops re-exports under the same name
structure_kl_module = importlib.import_module("fastalign.ops.structure_kl")

REF = importlib.import_module("fastalign.backends.reference")
pytestmark = pytest.mark.skipif(
    not backends.is_available("cpu"), reason="fastalign._C (the CPU extension) is not built"
)
if backends.is_available("cpu"):
    CPU = backends.get("cpu")

WIDTHS = (1, 3, 16, 67)
SIGMA = {"l1": 2.0, "rbf": 1.5, "linear": 1.0, "poly": 1.0, "cosine": 1.0}
PIECE = 4096  # the C++ traversal's hub-row piece (csrc/cpu/segment.h)


def all_graphs(index_dtype):
    return case_graphs(index_dtype) + [("long_rows", long_row_graph(index_dtype, PIECE))]


GRAPH_NAMES = [name for name, _ in all_graphs(torch.int64)]
_GRAPHS = {(n, d): g for d in INDEX_DTYPES for n, g in all_graphs(d)}


def graph_of(name, index_dtype):
    return _GRAPHS[(name, index_dtype)]


def assert_close(actual, expected, dtype):
    """Close within the dtype's tolerance, relative to the output's scale."""
    rtol, atol = TOL[dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


def truth(fn, *args):
    """The reference in float64 on the same inputs, cast back to the input dtype: what
    float32 results are compared with where sums cancel (kl, gradients over hub rows)."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    up = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    out = fn(*up)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return cast(out) if isinstance(out, torch.Tensor) else tuple(cast(t) for t in out)


def degenerate(kernel, width):
    """cosine in one dimension is +-1: its exact gradient is 0 and every backend returns
    rounding noise, which is checked against a bound instead of compared."""
    return kernel == "cosine" and width == 1


def assert_noise(t, dtype):
    # float32 noise scales with the terms (cosine's grow as 1 / norm) summed over 9,000-edge
    # hub rows, so only float64's is bounded here.
    if dtype == torch.float64:
        assert t.numel() == 0 or float(t.abs().max()) < 1e-9


def edge_weight(graph, dtype, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(graph.num_edges, generator=gen, dtype=torch.float64) + 0.5).to(dtype)


graph_params = pytest.mark.parametrize("name", GRAPH_NAMES)
# the GCN normalisation is defined on square graphs: the rectangular cases are not collected
square_graph_params = pytest.mark.parametrize(
    "name", [n for n in GRAPH_NAMES if _GRAPHS[(n, torch.int64)].is_square])
index_params = pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
dtype_params = pytest.mark.parametrize("dtype", (torch.float64, torch.float32))


# --------------------------------------------------------------------------- kernels
# float32 at the widths compiled in (csrc/cpu/common.h with_fixed_width: a whole row's
# sum in registers), beside the run-time width of WIDTHS; hub rows still go through pieces.
@square_graph_params
@index_params
@pytest.mark.parametrize("width", (32, 64))
@pytest.mark.parametrize("weighted", (False, True))
def test_sum_folds_at_fixed_widths(name, index_dtype, width, weighted):
    g = graph_of(name, index_dtype)
    x = features(g, width, torch.float32)
    w = edge_weight(g, torch.float32) if weighted else None
    for reduce in ("sum", "mean"):
        out, _ = CPU.spmm_forward(g.rowptr, g.col, w, x, reduce)
        assert_close(out, truth(lambda *a: REF.spmm_forward(*a)[0], g.rowptr, g.col, w, x, reduce),
                     torch.float32)
    for loops in (True, False):
        dis, loop_weight = gcn_norm_state(g, w, loops, False, torch.float32)
        args = (g.rowptr, g.col, w, dis, loop_weight, x)
        assert_close(CPU.gcn_aggregate(*args), truth(REF.gcn_aggregate, *args), torch.float32)


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
@pytest.mark.parametrize("weighted", (False, True))
def test_spmm_forward(name, index_dtype, dtype, width, reduce, weighted):
    g = graph_of(name, index_dtype)
    x = features(g, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    out, arg = CPU.spmm_forward(g.rowptr, g.col, w, x, reduce)
    ref_out, ref_arg = REF.spmm_forward(g.rowptr, g.col, w, x, reduce)
    assert_close(out, ref_out, dtype)
    assert torch.equal(arg, ref_arg)


@graph_params
@index_params
def test_spmm_max_winners_are_int32_and_both_index_widths_are_read(name, index_dtype):
    """The forward stores its winners as int32 (the graph has far fewer than 2**31 edges),
    like the reference; the backward reads int32 and int64 winners alike."""
    g = graph_of(name, index_dtype)
    x = features(g, 5, torch.float64)
    w = edge_weight(g, torch.float64)
    _, arg = CPU.spmm_forward(g.rowptr, g.col, w, x, "max")
    _, ref_arg = REF.spmm_forward(g.rowptr, g.col, w, x, "max")
    assert arg.dtype == ref_arg.dtype == torch.int32
    assert torch.equal(arg, ref_arg)
    grad_out = features(g, 5, torch.float64, seed=3, side="dst")
    t = g.transpose()
    gx32, gw32 = CPU.spmm_max_backward(g.col, *t, w, x, arg, grad_out, True)
    gx64, gw64 = CPU.spmm_max_backward(g.col, *t, w, x, arg.long(), grad_out, True)
    ref_gx, ref_gw = REF.spmm_max_backward(g.col, *t, w, x, arg.long(), grad_out, True)
    assert torch.equal(gx32, gx64) and torch.equal(gw32, gw64)
    assert_close(gx32, ref_gx, torch.float64)
    assert_close(gw32, ref_gw, torch.float64)


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("weighted", (False, True))
def test_spmm_max_backward(name, index_dtype, dtype, width, weighted):
    g = graph_of(name, index_dtype)
    x = features(g, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    _, arg = REF.spmm_forward(g.rowptr, g.col, w, x, "max")
    grad_out = features(g, width, dtype, seed=3, side="dst")
    t = g.transpose()  # accepted (the C++ kernel does not need it)
    gx, gw = CPU.spmm_max_backward(g.col, *t, w, x, arg, grad_out, True)
    ref_gx, ref_gw = REF.spmm_max_backward(g.col, *t, w, x, arg, grad_out, True)
    assert_close(gx, ref_gx, dtype)
    assert_close(gw, ref_gw, dtype)
    gx, gw = CPU.spmm_max_backward(g.col, *t, w, x, arg, grad_out, False)
    assert_close(gx, ref_gx, dtype)
    assert gw.numel() == 0


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
def test_sddmm(name, index_dtype, dtype, width):
    g = graph_of(name, index_dtype)
    a = features(g, width, dtype, seed=1, side="dst")
    b = features(g, width, dtype, seed=2)
    assert_close(CPU.sddmm(g.rowptr, g.col, a, b), REF.sddmm(g.rowptr, g.col, a, b), dtype)


@square_graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("loops", (True, False))
@pytest.mark.parametrize("weighted", (False, True))
def test_gcn_aggregate(name, index_dtype, dtype, width, loops, weighted):
    g = graph_of(name, index_dtype)
    assert g.is_square
    x = features(g, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    dis, loop_weight = gcn_norm_state(g, w, loops, False, dtype)
    args = (g.rowptr, g.col, w, dis, loop_weight, x)
    assert_close(CPU.gcn_aggregate(*args), REF.gcn_aggregate(*args), dtype)


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_and_backward(name, index_dtype, dtype, width, kernel):
    g = graph_of(name, index_dtype)
    scale = width**-0.5
    x_dst = features(g, width, dtype, seed=1, side="dst") * scale
    x_src = features(g, width, dtype, seed=2) * scale
    params = (kernel, SIGMA[kernel], 2, 1.0)
    s = CPU.edge_similarity(g.rowptr, g.col, x_dst, x_src, *params)
    assert_close(s, truth(REF.edge_similarity, g.rowptr, g.col, x_dst, x_src, *params), dtype)
    grad_s = torch.randn(g.num_edges, generator=torch.Generator().manual_seed(4)).to(dtype)
    args = (g.rowptr, g.col, *g.transpose(), x_dst, x_src, grad_s, *params)
    for got, want in zip(CPU.edge_similarity_backward(*args), truth(REF.edge_similarity_backward, *args)):
        if degenerate(kernel, width):
            assert_noise(got, dtype)
        else:
            assert_close(got, want, dtype)


@graph_params
@index_params
@dtype_params
def test_edge_softmax_and_backward(name, index_dtype, dtype):
    g = graph_of(name, index_dtype)
    gen = torch.Generator().manual_seed(6)
    logits = (3 * torch.randn(g.num_edges, generator=gen)).to(dtype)
    p = CPU.edge_softmax(g.rowptr, logits)
    assert_close(p, REF.edge_softmax(g.rowptr, logits), dtype)
    grad_p = torch.randn(g.num_edges, generator=gen).to(dtype)
    assert_close(
        CPU.edge_softmax_backward(g.rowptr, p, grad_p),
        REF.edge_softmax_backward(g.rowptr, p, grad_p),
        dtype,
    )


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl_forward_backward(name, index_dtype, dtype, width, kernel):
    g = graph_of(name, index_dtype)
    peer_width = width + 2  # widths may differ: only per-edge scalars are compared
    s_dst = features(g, width, dtype, seed=1, side="dst") * width**-0.5
    s_src = features(g, width, dtype, seed=2) * width**-0.5
    p_dst = features(g, peer_width, dtype, seed=3, side="dst") * peer_width**-0.5
    p_src = features(g, peer_width, dtype, seed=4) * peer_width**-0.5
    params = (kernel, SIGMA[kernel], 2, 1.0, 0.7)
    emb = (s_dst, s_src, p_dst, p_src)
    got = CPU.structure_kl_forward(g.rowptr, g.col, *emb, *params)
    want = truth(REF.structure_kl_forward, g.rowptr, g.col, *emb, *params)
    # kl and the log-sum-exps: the C++ kernels keep them in double (STRUCTURE_KL_STATE_DTYPE)
    assert fastalign.backends.structure_kl_state_dtype("cpu", dtype) == (torch.float64, torch.float64)
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        a = a.to(dtype)
        empty = torch.isinf(b)
        assert torch.equal(torch.isinf(a), empty)
        assert_close(a[~empty], b[~empty], dtype)
    grad_kl = torch.randn(g.num_dst, generator=torch.Generator().manual_seed(8)).to(dtype)
    kl, lse_s, lse_p = got
    state = (lse_s, lse_p, kl)  # the backward's order
    for peer_grad in (False, True):
        args = (g.rowptr, g.col, *g.transpose(), *emb, *state, grad_kl, *params, peer_grad)
        results = zip(CPU.structure_kl_backward(*args), truth(REF.structure_kl_backward, *args))
        for k, (a, b) in enumerate(results):
            if k < 2 and degenerate(kernel, width):  # the student's gradients
                assert_noise(a, dtype)
            else:
                assert_close(a, b, dtype)
    # The detached-peer fast path: the forward leaves the student's gradient state, the
    # backward scales it and runs one pass over the transpose.
    fast = CPU.structure_kl_forward_with_grad_state(g.rowptr, g.col, *emb, *params)
    assert len(fast) == 5
    for a, b in zip(fast[:3], got):
        assert torch.equal(a, b)  # the same forward, bit for bit
    dst_grad, src_coef = fast[3:]
    assert dst_grad.shape == (g.num_dst, width) and src_coef.shape == (g.num_edges, 2)
    student = CPU.structure_kl_student_backward(
        *g.transpose(), s_dst, s_src, dst_grad, src_coef, grad_kl, *params, False
    )
    args = (g.rowptr, g.col, *g.transpose(), *emb, *state, grad_kl, *params, False)
    for a, b in zip(student, truth(REF.structure_kl_backward, *args)[:2]):
        if degenerate(kernel, width):
            assert_noise(a, dtype)
        else:
            assert_close(a, b, dtype)
    if g.is_square:  # one student tensor on both sides: one gradient, the sum
        emb = (s_src, s_src, p_src, p_src)
        fast = CPU.structure_kl_forward_with_grad_state(g.rowptr, g.col, *emb, *params)
        split = CPU.structure_kl_student_backward(*g.transpose(), s_src, s_src, *fast[3:], grad_kl, *params, False)
        total, empty = CPU.structure_kl_student_backward(
            *g.transpose(), s_src, s_src, *fast[3:], grad_kl, *params, True
        )
        assert empty.numel() == 0
        assert_close(total, split[0] + split[1], dtype)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_types_widen_every_value_exactly(dtype):
    """The kernels widen float16 with a conversion of their own (branch-free, so that it
    vectorises): every one of the 65,536 values, denormals, infinities and NaN included,
    comes back from a self-loop spmm as torch's own round trip gives it."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype).reshape(-1, 1).repeat(1, 8)  # 8 wide: the vector loops, not the tail
    n = x.size(0)
    loops = torch.arange(n).repeat(2, 1)
    graph = Graph.from_edge_index(loops, num_nodes=n)
    out = fastalign.spmm(graph, x, "sum", backend="cpu")
    want = x.float().to(dtype)
    nan = want.isnan()
    assert torch.equal(out.isnan(), nan)
    # by value: the sum starts from +0, so -0 comes back as +0 (as torch's sum gives it)
    assert torch.equal(out[~nan].double(), want[~nan].double())
    assert (want[~nan] != 0).sum() == (~nan).sum() - 2 * 8  # only +-0 compare as zeros


@pytest.mark.parametrize("dtype", list(LOW_PRECISION_TOL))
@pytest.mark.parametrize("name", ("square", "hub", "rectangular"))
def test_low_precision_kernels_against_float64(dtype, name):
    """float16/bfloat16 inputs run the C++ kernels (read as stored, computed in float32):
    every function's outputs in the inputs' dtype, within the dtype's tolerance of the
    float64 reference."""
    g = graph_of(name, torch.int64)
    x64 = features(g, 16, torch.float64)
    w64 = edge_weight(g, torch.float64)
    a64 = features(g, 16, torch.float64, seed=3, side="dst")
    gout = features(g, 16, torch.float64, seed=4, side="dst")
    low = lambda t: t.to(dtype)  # noqa: E731

    def check(fast, ref):
        assert fast.dtype == dtype
        assert rel_err(fast.double(), ref) <= LOW_PRECISION_TOL[dtype]

    for reduce in ("sum", "mean", "max"):
        out, arg = CPU.spmm_forward(g.rowptr, g.col, low(w64), low(x64), reduce)
        ref, ref_arg = REF.spmm_forward(g.rowptr, g.col, w64, x64, reduce)
        check(out, ref)
    gx, gw = CPU.spmm_max_backward(g.col, *g.transpose(), low(w64), low(x64), arg, low(gout), True)
    rx, rw = REF.spmm_max_backward(g.col, *g.transpose(), w64, x64, arg, gout, True)
    check(gx, rx)
    check(gw, rw)
    check(CPU.sddmm(g.rowptr, g.col, low(a64), low(x64)), REF.sddmm(g.rowptr, g.col, a64, x64))
    dis = torch.rand(g.num_dst, dtype=torch.float64) + 0.1
    if g.is_square:
        check(CPU.gcn_aggregate(g.rowptr, g.col, w64.float(), dis.float(), None, low(x64)),
              REF.gcn_aggregate(g.rowptr, g.col, w64, dis, None, x64))
    z = torch.randn(g.num_edges, dtype=torch.float64)
    p = REF.edge_softmax(g.rowptr, z)
    check(CPU.edge_softmax(g.rowptr, low(z)), p)
    gp = torch.randn(g.num_edges, dtype=torch.float64)
    check(CPU.edge_softmax_backward(g.rowptr, low(p), low(gp)), REF.edge_softmax_backward(g.rowptr, p, gp))
    for kernel in ("rbf", "cosine"):
        params = (kernel, 4.0, 2, 1.0)
        check(CPU.edge_similarity(g.rowptr, g.col, low(a64), low(x64), *params),
              REF.edge_similarity(g.rowptr, g.col, a64, x64, *params))
        gs = torch.randn(g.num_edges, dtype=torch.float64)
        fast = CPU.edge_similarity_backward(g.rowptr, g.col, *g.transpose(), low(a64), low(x64), low(gs), *params)
        ref = REF.edge_similarity_backward(g.rowptr, g.col, *g.transpose(), a64, x64, gs, *params)
        for f, r in zip(fast, ref):
            check(f, r)
        # structure KL: forward state, full backward, and the student fast path
        emb64 = (a64, x64, features(g, 8, torch.float64, seed=5, side="dst"),
                 features(g, 8, torch.float64, seed=6))
        kl_params = (*params, 0.5)
        kl, lse_s, lse_p = CPU.structure_kl_forward(g.rowptr, g.col, *map(low, emb64), *kl_params)
        rkl, rls, rlp = REF.structure_kl_forward(g.rowptr, g.col, *emb64, *kl_params)
        assert rel_err(kl, rkl) <= LOW_PRECISION_TOL[dtype]
        grad_kl = torch.rand(g.num_dst, dtype=torch.float64)
        fast = CPU.structure_kl_backward(g.rowptr, g.col, *g.transpose(), *map(low, emb64), lse_s, lse_p, kl,
                                         low(grad_kl), *kl_params, True)
        ref = REF.structure_kl_backward(g.rowptr, g.col, *g.transpose(), *emb64, rls, rlp, rkl, grad_kl,
                                        *kl_params, True)
        for f, r in zip(fast, ref):
            check(f, r)
        state = CPU.structure_kl_forward_with_grad_state(g.rowptr, g.col, *map(low, emb64), *kl_params)
        assert state[3].dtype == state[4].dtype == torch.float32  # the gradient state
        student = CPU.structure_kl_student_backward(*g.transpose(), low(a64), low(x64), *state[3:],
                                                    low(grad_kl), *kl_params, False)
        for f, r in zip(student, ref[:2]):
            check(f, r)


# --------------------------------------------------------------------------- public ops
def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


SMALL = ("square", "hub", "rectangular")


def _inputs(g, width, seed, side="src"):
    return features(g, width, torch.float64, seed=seed, side=side).requires_grad_()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
def test_gradcheck_spmm(name, reduce):
    g = graph_of(name, torch.int32)
    x = _inputs(g, 3, 0)
    w = edge_weight(g, torch.float64).requires_grad_()
    _gradcheck(lambda x, w: fastalign.spmm(g, x, reduce, edge_weight=w, backend="cpu"), x, w)


@pytest.mark.parametrize("name", ("square", "hub"))
@pytest.mark.parametrize("loops", (True, False))
def test_gradcheck_gcn_aggregate(name, loops):
    g = graph_of(name, torch.int64)
    x = _inputs(g, 3, 0)
    _gradcheck(lambda x: fastalign.gcn_aggregate(g, x, add_self_loops=loops, backend="cpu"), x)
    out = fastalign.gcn_aggregate(g, x, add_self_loops=loops, backend="cpu")
    ref = fastalign.gcn_aggregate(g, x, add_self_loops=loops, backend="torch")
    assert_close(out, ref, torch.float64)


def _pair(g, width, seed):
    if g.is_square:
        return (_inputs(g, width, seed),)
    return (_inputs(g, width, seed, "dst"), _inputs(g, width, seed + 1))


def _join(g, xs):
    return xs[0] if g.is_square else (xs[0], xs[1])


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_edge_similarity_local_structure(name, kernel):
    g = graph_of(name, torch.int64)
    xs = _pair(g, 3, 0)
    sigma = SIGMA[kernel]
    _gradcheck(lambda *x: fastalign.edge_similarity(g, _join(g, x), kernel, sigma, backend="cpu"), *xs)
    _gradcheck(
        lambda *x: fastalign.local_structure(g, _join(g, x), kernel, 0.8, sigma, backend="cpu"), *xs
    )


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_structure_kl(name, kernel):
    g = graph_of(name, torch.int32)
    hs, hp = _pair(g, 3, 0), _pair(g, 4, 5)
    n = len(hs)
    sigma = SIGMA[kernel]

    def loss(*x):
        return fastalign.structure_kl(
            g, _join(g, x[:n]), _join(g, x[n:]), kernel, 0.8, "none", sigma, backend="cpu"
        )

    _gradcheck(loss, *hs, *hp)  # peer gradient included
    detached = tuple(h.detach() for h in hp)
    _gradcheck(lambda *x: loss(*x, *detached), *hs)
    dense = fastalign.structure_kl(g, _join(g, hs), _join(g, hp), kernel, 0.8, "none", sigma, backend="torch")
    assert_close(loss(*hs, *hp), dense, torch.float64)


def test_public_ops_accept_non_contiguous_inputs():
    g = graph_of("long_rows", torch.int64)
    wide = features(g, 32, torch.float32)
    x = wide[:, ::2]  # strided view
    assert not x.is_contiguous()
    for reduce in ("sum", "mean", "max"):
        got = fastalign.spmm(g, x, reduce, backend="cpu")
        assert_close(got, fastalign.spmm(g, x.contiguous(), reduce, backend="torch"), torch.float32)
    xt = features(g, 16, torch.float32).T.contiguous().T
    assert not xt.is_contiguous()
    assert_close(
        fastalign.gcn_aggregate(g, xt, backend="cpu"),
        fastalign.gcn_aggregate(g, xt.contiguous(), backend="torch"),
        torch.float32,
    )
    hp = features(g, 24, torch.float32, seed=3)[:, 1::3]
    got = fastalign.structure_kl(g, x, hp, "l1", reduction="none", backend="cpu")
    # against float64: the float32 reference loses digits summing kl over 9,000-edge rows
    want = fastalign.structure_kl(g, x.double(), hp.double(), "l1", reduction="none", backend="torch")
    want = want.float()
    assert_close(got, want, torch.float32)
    # straight to the kernels: strided features and per-edge values
    gs = torch.randn(2 * g.num_edges)[::2]
    args = (g.rowptr, g.col, *g.transpose(), x, x, gs, "rbf", 1.0, 2, 1.0)
    for a, b in zip(CPU.edge_similarity_backward(*args), REF.edge_similarity_backward(*args)):
        assert_close(a, b, torch.float32)


def _hub_heavy_graph():
    # exponent 3: the largest in-degree is ~7,000, above the piece size, so hubs are split
    ei = power_law_edge_index(20_000, 200_000, seed=1, exponent=3.0)
    return Graph.from_edge_index(ei, num_nodes=20_000)


def _run_all(g, x, h_peer):
    x = x.detach().requires_grad_()
    hp = h_peer.detach().requires_grad_()
    outs = [fastalign.spmm(g, x, r, backend="cpu") for r in ("sum", "mean", "max")]
    outs.append(fastalign.gcn_aggregate(g, x, backend="cpu"))
    outs.append(fastalign.local_structure(g, x, "cosine", backend="cpu"))
    loss = fastalign.structure_kl(g, x, hp, "l1", sigma=100.0, backend="cpu")
    total = loss + sum(o.square().mean() for o in outs)
    total.backward()
    return outs + [loss, x.grad, hp.grad]


def test_deterministic_on_hub_heavy_graph():
    g = _hub_heavy_graph()
    assert int(g.rowptr.diff().max()) > 4096
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(g.num_dst, 16, generator=gen)
    hp = torch.randn(g.num_dst, 8, generator=gen)
    first, second = _run_all(g, x, hp), _run_all(g, x, hp)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _run_all(g, x, hp)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b)  # same bits run to run
        assert torch.equal(a, c)  # and on any number of threads


def test_small_work_runs_on_the_calling_thread():
    """A traversal opens a parallel region only when it has a grain of work (1,024 rows
    plus edges) per thread: a tiny graph never waits for a second thread that a busy
    machine has not scheduled. Above the grain the team grows to torch's thread count."""
    from fastalign import _C

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert [_C.threads_for(w) for w in (0, 1, 1024, 1025, 2048, 10**6)] == [1, 1, 1, 2, 2, 2]
        torch.set_num_threads(1)
        assert _C.threads_for(10**6) == 1
    finally:
        torch.set_num_threads(threads)
    # a tiny graph's results are the same bits on one thread or two (the same partition)
    g = Graph.from_edge_index(random_edge_index(64, 64, 200, seed=3), num_nodes=64)
    x, hp = features(g, 16, torch.float32, seed=4), features(g, 8, torch.float32, seed=5)
    two = _run_all(g, x, hp)
    try:
        torch.set_num_threads(1)
        one = _run_all(g, x, hp)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(two, one):
        assert torch.equal(a, b)


def test_automatic_choice_picks_cpu_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    device = torch.device("cpu")
    # the C++ kernels implement every function and both fast paths
    assert CPU.FUNCTIONS == set(backends.BACKEND_FUNCTIONS) | set(backends.OPTIONAL_FUNCTIONS)
    assert set(structure_kl_module.FAST_PATH) <= set(backends.OPTIONAL_FUNCTIONS)
    assert backends.resolve("spmm", None, device, ("spmm_forward", "sddmm")) == "cpu"
    assert backends.resolve("structure_kl", "auto", device, ("structure_kl_forward",)) == "cpu"
    # the registered torch ops are what the adapter calls
    assert hasattr(torch.ops.fastalign_cpu, "structure_kl_backward")
    calls = []
    real = CPU.spmm_forward
    monkeypatch.setattr(CPU, "spmm_forward", lambda *a: calls.append(1) or real(*a))
    g = graph_of("square", torch.int64)
    fastalign.spmm(g, features(g, 4, torch.float32))
    assert calls
