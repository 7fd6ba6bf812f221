"""What is particular to the C++/OpenMP CPU backend: the half types read and computed
exactly, low precision against float64, non-contiguous inputs, determinism on hub rows,
the thread count, the automatic choice. Each op's kernels against the reference, over
the shared grid: tests/ops/test_<op>.py."""

import importlib

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from helpers import (LOW_PRECISION_TOL, assert_close, edge_weight, features, graph_of, power_law_edge_index,
                     random_edge_index, rel_err)

# the module, not the function fastalign.ops re-exports under the same name
structure_kl_module = importlib.import_module("fastalign.ops.structure_kl")


REF = importlib.import_module("fastalign.backends.reference")


pytestmark = pytest.mark.skipif(
    not backends.is_available("cpu"), reason="fastalign._C (the CPU extension) is not built"
)
if backends.is_available("cpu"):
    CPU = backends.get("cpu")


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
