"""structure_kl (the Alignahead++ structure term): each backend here against a dense
float64 KL and by gradcheck (student and peer), and each compiled backend's fused
forward and backward against the reference over the shared grid; the Triton kernels under
the interpreter (last section)."""

import pytest
import torch

import fastalign
from fastalign import backends
from helpers import (
    assert_close, assert_noise, CASES, degenerate, dense_structure_kl, feats, features, get_case, grad_pair,
    graph_of, index_params, join_pair, kernel_grid, KERNELS, pair, REFERENCE, SIGMA, SMALL, tight_gradcheck,
    TRITON_INTERPRETER, truth, CUDA_CASES, TRITON_GPU_CASES, well_scaled, graph_params,
)
import importlib


# the module, not the function fastalign.ops re-exports under the same name
structure_kl_module = importlib.import_module("fastalign.ops.structure_kl")


@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl_matches_dense(backend, name, index_dtype, kernel):
    g = get_case(name, index_dtype)
    hs = pair(g, 5, seed=1, scale=2.0)
    hp = pair(g, 3, seed=5, scale=2.0)  # different width: only similarities are compared
    kl = fastalign.structure_kl(g, hs, hp, kernel, tau=0.5, reduction="none", sigma=3.0, backend=backend)
    kw = {"sigma": 3.0} if kernel in ("l1", "rbf") else {}
    expected = dense_structure_kl(g, hs, hp, kernel, tau=0.5, **kw)
    torch.testing.assert_close(kl, expected)
    assert (kl >= -1e-12).all()
    mean = fastalign.structure_kl(g, hs, hp, kernel, tau=0.5, sigma=3.0, backend=backend)
    total = fastalign.structure_kl(g, hs, hp, kernel, tau=0.5, reduction="sum", sigma=3.0, backend=backend)
    torch.testing.assert_close(total, expected.sum())
    torch.testing.assert_close(mean, expected.mean() if g.num_dst else expected.sum())


def test_structure_kl_zero_for_identical_embeddings(backend):
    g = get_case("square", torch.int64)
    h = feats(g.num_src, 4)
    assert float(fastalign.structure_kl(g, h, h.clone(), backend=backend)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", SMALL)
@index_params
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl_gradcheck_student_and_peer(backend, name, index_dtype, kernel):
    g = graph_of(name, index_dtype)
    hs, hp = grad_pair(g, 3, 0), grad_pair(g, 4, 5)
    n = len(hs)
    sigma = SIGMA[kernel]

    def loss(*x):
        return fastalign.structure_kl(
            g, join_pair(g, x[:n]), join_pair(g, x[n:]), kernel, 0.8, "none", sigma, backend=backend
        )

    tight_gradcheck(loss, *hs, *hp)  # peer gradient included
    detached = tuple(h.detach() for h in hp)
    tight_gradcheck(lambda *x: loss(*x, *detached), *hs)
    dense = fastalign.structure_kl(g, join_pair(g, hs), join_pair(g, hp), kernel, 0.8, "none", sigma, backend="torch")
    assert_close(loss(*hs, *hp), dense, torch.float64)


def test_structure_kl_detached_peer_gets_no_grad_and_same_student_grad(backend):
    g = get_case("square", torch.int64)
    hs = feats(g.num_src, 4, seed=1, requires_grad=True)
    hp = feats(g.num_src, 4, seed=2, requires_grad=True)
    fastalign.structure_kl(g, hs, hp, backend=backend).backward()
    grad_with_peer = hs.grad.clone()
    hs.grad = None
    fastalign.structure_kl(g, hs, hp.detach(), backend=backend).backward()
    torch.testing.assert_close(hs.grad, grad_with_peer)


@kernel_grid
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl_forward_backward(kernels, name, index_dtype, dtype, width, kernel):
    g = graph_of(name, index_dtype)
    peer_width = width + 2  # widths may differ: only per-edge scalars are compared
    s_dst = features(g, width, dtype, seed=1, side="dst") * width**-0.5
    s_src = features(g, width, dtype, seed=2) * width**-0.5
    p_dst = features(g, peer_width, dtype, seed=3, side="dst") * peer_width**-0.5
    p_src = features(g, peer_width, dtype, seed=4) * peer_width**-0.5
    params = (kernel, SIGMA[kernel], 2, 1.0, 0.7)
    emb = (s_dst, s_src, p_dst, p_src)
    got = kernels.structure_kl_forward(g.rowptr, g.col, *emb, *params)
    want = truth(REFERENCE.structure_kl_forward, g.rowptr, g.col, *emb, *params)
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
        results = zip(kernels.structure_kl_backward(*args), truth(REFERENCE.structure_kl_backward, *args))
        for k, (a, b) in enumerate(results):
            if k < 2 and degenerate(kernel, width):  # the student's gradients
                assert_noise(a, dtype)
            else:
                assert_close(a, b, dtype)
    # The detached-peer fast path: the forward leaves the student's gradient state, the
    # backward scales it and runs one pass over the transpose.
    fast = kernels.structure_kl_forward_with_grad_state(g.rowptr, g.col, *emb, *params)
    assert len(fast) == 5
    for a, b in zip(fast[:3], got):
        assert torch.equal(a, b)  # the same forward, bit for bit
    dst_grad, src_coef = fast[3:]
    assert dst_grad.shape == (g.num_dst, width) and src_coef.shape == (g.num_edges, 2)
    student = kernels.structure_kl_student_backward(
        *g.transpose(), s_dst, s_src, dst_grad, src_coef, grad_kl, *params, False
    )
    args = (g.rowptr, g.col, *g.transpose(), *emb, *state, grad_kl, *params, False)
    for a, b in zip(student, truth(REFERENCE.structure_kl_backward, *args)[:2]):
        if degenerate(kernel, width):
            assert_noise(a, dtype)
        else:
            assert_close(a, b, dtype)
    if g.is_square:  # one student tensor on both sides: one gradient, the sum
        emb = (s_src, s_src, p_src, p_src)
        fast = kernels.structure_kl_forward_with_grad_state(g.rowptr, g.col, *emb, *params)
        split = kernels.structure_kl_student_backward(*g.transpose(), s_src, s_src, *fast[3:], grad_kl, *params, False)
        total, empty = kernels.structure_kl_student_backward(
            *g.transpose(), s_src, s_src, *fast[3:], grad_kl, *params, True
        )
        assert empty.numel() == 0
        assert_close(total, split[0] + split[1], dtype)


# ------------------------------------------------------------------ Triton, interpreted
# The Triton kernels against the reference on CPU tensors under the Triton interpreter:
# tests/test_triton_backend.py runs these in a process of its own with TRITON_INTERPRET=1
# (`TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops`); other runs do not collect them.
if TRITON_INTERPRETER:
    from triton_interpreter import close, graph, interpreted, KERNELS, ref, segments, tb

    def _kl_case(g, ws=5, wp=3):
        return (features(g, ws, side="dst", seed=1), features(g, ws, seed=2),
                features(g, wp, side="dst", seed=3), features(g, wp, seed=4))


    def _check_kl(g, feats, kernel, tau, peers=(False, True)):
        sigma, degree, coef = KERNELS[kernel]
        rt, ct, pt = g.transpose()
        out = tb.structure_kl_forward(g.rowptr, g.col, *feats, kernel, sigma, degree, coef, tau)
        expect = ref.structure_kl_forward(g.rowptr, g.col, *feats, kernel, sigma, degree, coef, tau)
        close(out, expect)
        gk = torch.randn(g.num_dst, dtype=torch.float64)
        state = (expect[1], expect[2], expect[0])  # the backward takes (lse_s, lse_p, kl)
        for peer in peers:
            close(
                tb.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, *feats, *state, gk,
                                         kernel, sigma, degree, coef, tau, peer),
                ref.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, *feats, *state, gk,
                                          kernel, sigma, degree, coef, tau, peer),
            )


    @interpreted
    @pytest.mark.parametrize("kernel", list(KERNELS))
    def test_triton_structure_kl(kernel):
        g = graph("square")
        _check_kl(g, _kl_case(g), kernel, 0.7)


    @interpreted
    @pytest.mark.parametrize("name", ["rectangular", "no_edges", "hub"])
    def test_triton_structure_kl_graphs_split(name):
        g = graph(name, torch.int32)
        with segments.force_split(4):
            _check_kl(g, _kl_case(g), "l1", 0.5, peers=(True,))


    @interpreted
    def test_triton_structure_kl_wide_cosine():
        g = graph("hub")
        feats = _kl_case(g, 300, 1)  # 300: several feature blocks; 1: a width-1 peer
        with segments.force_split(8):
            _check_kl(g, feats, "cosine", 0.3, peers=(True,))


    @interpreted
    @pytest.mark.parametrize("kernel", ["l1", "rbf", "linear", "poly", "cosine"])
    def test_triton_structure_kl_atomic_backward(kernel, monkeypatch):
        """The opt-in single-pass backward (source gradients by atomics)."""
        monkeypatch.setenv("FASTALIGN_TRITON_SKL_BACKWARD", "atomic")
        g = graph("hub" if kernel in ("l1", "cosine") else "square")
        feats = _kl_case(g, 5 if kernel != "cosine" else 300, 3)
        if kernel == "cosine":
            feats[1][2] = 0.0  # a zero source row: the eps clamp on the gathered side
        with segments.force_split(4):
            _check_kl(g, feats, kernel, 0.6)


# ------------------------------------------------------------------ CUDA, on a device
# The CUDA extension's kernels against the reference on the same GPU (`pytest -m cuda
# tests/ops`); collected only where they can run (tests/ops/cuda_gpu.py: the dry run).
if CUDA_CASES:
    from cuda_gpu import (as_state_of, assert_close as cuda_close, CU, cuda_case, cuda_only, DEV,
                          dtype_params as cuda_dtypes, feats as cuda_feats, graph_of as cuda_graph,
                          hub50k, kl_state, misaligned, REF as CREF, sim_params,
                          UNDER_TEST)

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("widths", ((16, 16), (3, 67), (64, 256)))
    @pytest.mark.parametrize("kernel", KERNELS)
    def test_cuda_structure_kl(name, index_dtype, dtype, widths, kernel):
        g = cuda_graph(name, index_dtype)
        fs, fp = widths
        sd, ss, pd, ps = (well_scaled(kernel, cuda_feats(n, f, dtype, seed)) for n, f, seed in
                          ((g.num_dst, fs, 1), (g.num_src, fs, 2), (g.num_dst, fp, 3), (g.num_src, fp, 4)))
        params = sim_params(kernel, max(fs, fp)) + (0.5,)
        kl, lse_s, lse_p = kl_state(CU.structure_kl_forward(g.rowptr, g.col, sd, ss, pd, ps, *params), dtype)
        rkl, rls, rlp = as_state_of(CREF.structure_kl_forward(g.rowptr, g.col, sd, ss, pd, ps, *params),
                                    (kl, lse_s, lse_p))
        cuda_close(kl, rkl, scale_of=(rls, rlp))
        cuda_close(lse_s, rls, dtype)
        cuda_close(lse_p, rlp, dtype)
        assert torch.equal(torch.isinf(lse_s), torch.isinf(rls))

        rowptr_t, col_t, perm_t = g.transpose()
        grad = cuda_feats(g.num_dst, 1, dtype, 5).flatten()
        for peer_grad in (False, True):
            args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, sd, ss, pd, ps, rls, rlp, rkl, grad,
                    *params, peer_grad)
            got, want = CU.structure_kl_backward(*args), CREF.structure_kl_backward(*args)
            for a, b in zip(got, want):
                cuda_close(a, b)

    @cuda_case
    @index_params
    @pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
    def test_cuda_structure_kl_hub_of_degree_50k(index_dtype, dtype):
        g = hub50k(index_dtype)
        x = cuda_feats(g.num_src, 64, dtype)
        params = sim_params("l1", 64) + (1.0,)
        p = cuda_feats(g.num_src, 32, dtype, seed=9)
        kl, ls, lp = kl_state(CU.structure_kl_forward(g.rowptr, g.col, x, x, p, p, *params), dtype)
        rkl, rls, rlp = as_state_of(CREF.structure_kl_forward(g.rowptr, g.col, x, x, p, p, *params), (kl, ls, lp))
        cuda_close(kl, rkl, scale_of=(rls, rlp))
        cuda_close(ls, rls, dtype)
        rowptr_t, col_t, perm_t = g.transpose()
        grad = torch.ones(g.num_dst, device=DEV, dtype=dtype)
        args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, x, p, p, rls, rlp, rkl, grad, *params, True)
        for a, b in zip(CU.structure_kl_backward(*args), CREF.structure_kl_backward(*args)):
            cuda_close(a, b)

    @cuda_case
    def test_cuda_structure_kl_deterministic_without_atomics():
        """Split hub rows are combined in a fixed order: two backward runs agree bit for bit."""
        g = cuda_graph("hub50k", torch.int64)
        x = cuda_feats(g.num_src, 64, torch.float32)
        rowptr_t, col_t, perm_t = g.transpose()
        params = sim_params("rbf", 64) + (1.0,)
        kl, ls, lp = CU.structure_kl_forward(g.rowptr, g.col, x, x, x, x, *params)
        grad = torch.ones_like(kl)
        args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, x, x, x, ls, lp, kl, grad, *params, False)
        r1, r2 = CU.structure_kl_backward(*args), CU.structure_kl_backward(*args)
        assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])

    @cuda_case
    def test_cuda_structure_kl_op_gradients():
        g = cuda_graph("long_rows", torch.int32)
        hs = cuda_feats(g.num_src, 48, torch.float32, 1).requires_grad_()
        hp = cuda_feats(g.num_src, 24, torch.float32, 2).requires_grad_()
        loss = fastalign.structure_kl(g, hs, hp, kernel="cosine", tau=0.5, backend=UNDER_TEST)
        loss.backward()
        hs2 = hs.detach().clone().requires_grad_()
        hp2 = hp.detach().clone().requires_grad_()
        ref = fastalign.structure_kl(g, hs2, hp2, kernel="cosine", tau=0.5, backend="torch")
        ref.backward()
        cuda_close(loss.detach(), ref.detach())
        cuda_close(hs.grad, hs2.grad)
        cuda_close(hp.grad, hp2.grad)

    @cuda_case
    def test_cuda_structure_kl_misaligned_and_strided_inputs():
        """Views with odd storage offsets or strides are copied to aligned dense rows."""
        g = cuda_graph("long_rows", torch.int64)
        x, strided = misaligned(g.num_src, 64)
        params = sim_params("rbf", 64) + (1.0,)
        for inp in (x, strided):
            got = kl_state(CU.structure_kl_forward(g.rowptr, g.col, inp, inp, x, x, *params), inp.dtype)
            want = as_state_of(CREF.structure_kl_forward(g.rowptr, g.col, inp, inp, x, x, *params), got)
            cuda_close(got[0], want[0], scale_of=want[1:])

    @cuda_case
    @cuda_only
    def test_cuda_structure_kl_glue_checks_every_shape_it_indexes_with():
        """A direct op call with inconsistent shapes is refused before any kernel runs."""
        ops = torch.ops.fastalign_cuda
        g = cuda_graph("square", torch.int64)
        rt, ct, pt = g.transpose()
        x = cuda_feats(g.num_src, 8, torch.float32)
        short = x[:-1].contiguous()
        with pytest.raises(ValueError, match="rows"):  # fewer student rows than destinations
            ops.structure_kl_forward(g.rowptr, g.col, short, x, x, x, "l1", 8.0, 2, 1.0, 1.0)
        with pytest.raises(ValueError, match="rows"):  # peer sources differ from student sources
            ops.structure_kl_forward(g.rowptr, g.col, x, x, x, short, "l1", 8.0, 2, 1.0, 1.0)
        lse = torch.zeros(g.num_dst, device=DEV)
        with pytest.raises(ValueError, match="rows"):
            ops.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, x, short, x, short, lse, lse, lse, lse,
                                      "l1", 8.0, 2, 1.0, 1.0, False)


# ------------------------------------------------------------------ Triton, on a device
# The Triton kernels compiled for the GPU against the reference on the same device
# (`pytest -m triton_gpu tests/ops`); collected only where they can run
# (tests/ops/triton_gpu.py: the dry run). Low precision: two kernels suffice.
if TRITON_GPU_CASES:
    from triton_gpu import (DEV as TDEV, dtypes as triton_dtypes, feats as triton_feats, hub, KERNELS as TKERNELS,
                            params as triton_params, power_law, REF as TREF, rel_close, TB, triton_gpu_case)

    def triton_kl(g, hs, hp, kernel, dtype, peer, tau=0.5):
        sigma, degree, coef = triton_params(kernel, hs.size(1))
        args = (g.rowptr, g.col, hs, hs, hp, hp, kernel, sigma, degree, coef, tau)
        out = TB.structure_kl_forward(*args)
        # the reference keeps its state in double: compared, and fed to the backward, in the
        # backend's dtypes
        expect = tuple(r.to(o.dtype) for r, o in zip(TREF.structure_kl_forward(*args), out))
        rel_close(out[1:], expect[1:], torch.float32 if dtype != torch.float64 else dtype, f"kl lse {kernel}")
        rel_close(out[0], expect[0], dtype if dtype != torch.float32 else torch.float16, f"kl {kernel}")
        rt, ct, pt = g.transpose()
        gk = torch.rand(g.num_dst, device=TDEV).to(dtype)
        kl, lse_s, lse_p = expect  # the backward takes (lse_s, lse_p, kl)
        bargs = (g.rowptr, g.col, rt, ct, pt, hs, hs, hp, hp, lse_s, lse_p, kl, gk, kernel, sigma, degree, coef,
                 tau, peer)
        rel_close(TB.structure_kl_backward(*bargs), TREF.structure_kl_backward(*bargs),
                  dtype if dtype != torch.float32 else torch.float16, f"kl grads {kernel}")

    @triton_gpu_case
    @pytest.mark.parametrize("dtype,kernel", triton_dtypes(
        [(torch.float32, k) for k in TKERNELS] + [(d, k) for d in (torch.float16, torch.bfloat16)
                                                  for k in ("l1", "cosine")]))
    def test_triton_gpu_structure_kl(dtype, kernel):
        g = power_law(torch.int32)
        hs, hp = (well_scaled(kernel, triton_feats(g.num_src, w, dtype, seed)) for w, seed in ((64, 3), (48, 4)))
        triton_kl(g, hs, hp, kernel, dtype, peer=True)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes())
    def test_triton_gpu_structure_kl_hub_row(dtype):
        g = hub(torch.int64)
        triton_kl(g, triton_feats(g.num_src, 64, dtype, 1), triton_feats(g.num_src, 32, dtype, 2), "l1", dtype,
                  peer=True)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes([torch.float32, torch.bfloat16]))
    def test_triton_gpu_structure_kl_atomic_backward(dtype, monkeypatch):
        monkeypatch.setenv("FASTALIGN_TRITON_SKL_BACKWARD", "atomic")
        g = hub(torch.int32)
        triton_kl(g, triton_feats(g.num_src, 64, dtype, 18), triton_feats(g.num_src, 64, dtype, 19), "l1", dtype,
                  peer=True)

    @triton_gpu_case
    def test_triton_gpu_structure_kl_wide():
        g = power_law(torch.int64)
        triton_kl(g, triton_feats(g.num_src, 300, torch.float32, 5), triton_feats(g.num_src, 1, torch.float32, 6),
                  "cosine", torch.float32, peer=False)

    @triton_gpu_case
    @pytest.mark.parametrize("name", [name for name, dt in CASES if dt == torch.int64])
    def test_triton_gpu_structure_kl_edge_case_graphs(name):
        g = get_case(name, torch.int64).to(TDEV)
        x = triton_feats(g.num_src, 5, torch.float32, 11)
        xd = triton_feats(g.num_dst, 5, torch.float32, 12)
        args = (g.rowptr, g.col, xd, x, xd, x, "rbf", 1.0, 2, 1.0, 1.0)
        out = TB.structure_kl_forward(*args)
        assert (out[0].dtype, out[1].dtype) == backends.structure_kl_state_dtype("triton", torch.float32)
        # the reference keeps its state in double: compared in the backend's dtypes
        expect = tuple(r.to(o.dtype) for r, o in zip(TREF.structure_kl_forward(*args), out))
        rel_close(out, expect, torch.float32, "kl")
