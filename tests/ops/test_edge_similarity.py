"""edge_similarity (the five kernels): each backend here against dense float64 kernels and
by gradcheck, and each compiled backend's forward and backward against the reference over
the shared grid; the Triton kernels under the interpreter (last section)."""

import pytest
import torch

import fastalign
from fastalign import Graph
from helpers import (
    as_pair, assert_close, assert_noise, CASES, degenerate, dense_edge_values, dense_kernel, feats, features,
    get_case, grad_pair, graph_of, join_pair, kernel_grid, KERNELS, pair, REFERENCE, SIGMA, SMALL,
    tight_gradcheck, TRITON_INTERPRETER, truth, CUDA_CASES, TRITON_GPU_CASES, graph_params, index_params,
)


@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_matches_dense(backend, name, index_dtype, kernel):
    g = get_case(name, index_dtype)
    x = pair(g, 5, scale=3.0)
    a, b = as_pair(x)
    s = fastalign.edge_similarity(g, x, kernel, backend=backend)
    assert s.shape == (g.num_edges,)
    torch.testing.assert_close(s, dense_edge_values(g, dense_kernel(kernel, a, b)))


@pytest.mark.parametrize("kernel,sigma,degree,coef", [("l1", 2.0, 2, 1.0), ("rbf", 0.7, 2, 1.0), ("poly", None, 3, 0.5)])
def test_edge_similarity_parameters(backend, kernel, sigma, degree, coef):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 4)
    s = fastalign.edge_similarity(g, x, kernel, sigma=sigma, degree=degree, coef=coef, backend=backend)
    kw = {"sigma": sigma} if kernel in ("l1", "rbf") else {"degree": degree, "coef": coef}
    torch.testing.assert_close(s, dense_edge_values(g, dense_kernel(kernel, x, x, **kw)))


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_gradcheck(backend, name, kernel):
    g = graph_of(name, torch.int64)
    xs = grad_pair(g, 3, 0)
    tight_gradcheck(
        lambda *x: fastalign.edge_similarity(g, join_pair(g, x), kernel, SIGMA[kernel], backend=backend), *xs)


@kernel_grid
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_and_backward(kernels, name, index_dtype, dtype, width, kernel):
    g = graph_of(name, index_dtype)
    scale = width**-0.5
    x_dst = features(g, width, dtype, seed=1, side="dst") * scale
    x_src = features(g, width, dtype, seed=2) * scale
    params = (kernel, SIGMA[kernel], 2, 1.0)
    s = kernels.edge_similarity(g.rowptr, g.col, x_dst, x_src, *params)
    assert_close(s, truth(REFERENCE.edge_similarity, g.rowptr, g.col, x_dst, x_src, *params), dtype)
    grad_s = torch.randn(g.num_edges, generator=torch.Generator().manual_seed(4)).to(dtype)
    args = (g.rowptr, g.col, *g.transpose(), x_dst, x_src, grad_s, *params)
    for got, want in zip(kernels.edge_similarity_backward(*args), truth(REFERENCE.edge_similarity_backward, *args)):
        if degenerate(kernel, width):
            assert_noise(got, dtype)
        else:
            assert_close(got, want, dtype)


def test_cosine_gradient_at_zero_vector_is_finite(backend):
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    fastalign.edge_similarity(g, x, "cosine", backend=backend).sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ Triton, interpreted
# The Triton kernels against the reference on CPU tensors under the Triton interpreter:
# tests/test_triton_backend.py runs these in a process of its own with TRITON_INTERPRET=1
# (`TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops`); other runs do not collect them.
if TRITON_INTERPRETER:
    from triton_interpreter import close, graph, interpreted, KERNELS, ref, segments, tb

    @interpreted
    @pytest.mark.parametrize("kernel", list(KERNELS))
    @pytest.mark.parametrize("name", ["square", "rectangular"])
    def test_triton_edge_similarity(kernel, name):
        g = graph(name)
        xd, xs = features(g, 5, side="dst", seed=1), features(g, 5)
        sigma, degree, coef = KERNELS[kernel]
        rt, ct, pt = g.transpose()
        gs = torch.randn(g.num_edges, dtype=torch.float64)
        close(tb.edge_similarity(g.rowptr, g.col, xd, xs, kernel, sigma, degree, coef),
              ref.edge_similarity(g.rowptr, g.col, xd, xs, kernel, sigma, degree, coef))
        close(tb.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, xd, xs, gs, kernel, sigma, degree, coef),
              ref.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, xd, xs, gs, kernel, sigma, degree, coef))


    @interpreted
    @pytest.mark.parametrize("kernel", ["l1", "rbf"])
    @pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
    def test_triton_auto_sigma(kernel, name):
        """sigma="auto" through the public ops: the scale and the loss as the reference's."""
        g = graph(name)
        hs = (features(g, 5, side="dst", seed=1), features(g, 5, seed=2)) if not g.is_square else features(g, 5)
        hp = (features(g, 3, side="dst", seed=3), features(g, 3, seed=4)) if not g.is_square else 3 * features(g, 3, seed=3)
        close(fastalign.edge_scale(g, hs, kernel, backend="triton"), fastalign.edge_scale(g, hs, kernel, backend="torch"))
        kw = dict(kernel=kernel, sigma="auto", reduction="none")
        close(fastalign.structure_kl(g, hs, hp, backend="triton", **kw), fastalign.structure_kl(g, hs, hp, backend="torch", **kw))


    @interpreted
    @pytest.mark.parametrize("kernel", ["l1", "cosine", "poly"])
    def test_triton_edge_similarity_hub_split_and_wide(kernel):
        g = graph("hub")
        width = 300 if kernel == "cosine" else 3  # 300 > BLOCK_F: several feature blocks
        x = features(g, width)
        x[3] = 0.0  # a zero row: the cosine eps clamp
        sigma, degree, coef = KERNELS[kernel]
        degree = 0 if kernel == "poly" else degree
        rt, ct, pt = g.transpose()
        gs = torch.randn(g.num_edges, dtype=torch.float64)
        with segments.force_split(4):
            close(tb.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef),
                  ref.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef))
            close(tb.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, x, x, gs, kernel, sigma, degree, coef),
                  ref.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, x, x, gs, kernel, sigma, degree, coef))


# ------------------------------------------------------------------ CUDA, on a device
# The CUDA extension's kernels against the reference on the same GPU (`pytest -m cuda
# tests/ops`); collected only where they can run (tests/ops/cuda_gpu.py: the dry run).
if CUDA_CASES:
    from cuda_gpu import (assert_close as cuda_close, CU, cuda_case, cuda_only, DEV, dtype_params as cuda_dtypes,
                          feats as cuda_feats, graph_of as cuda_graph, REF as CREF,
                          sim_params, WIDTHS as CUDA_WIDTHS)

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("width", CUDA_WIDTHS)
    @pytest.mark.parametrize("kernel", KERNELS)
    def test_cuda_edge_similarity(name, index_dtype, dtype, width, kernel):
        g = cuda_graph(name, index_dtype)
        xd = cuda_feats(g.num_dst, width, dtype, seed=2)
        xs = cuda_feats(g.num_src, width, dtype, seed=3)
        params = sim_params(kernel, width)
        got = CU.edge_similarity(g.rowptr, g.col, xd, xs, *params)
        cuda_close(got, CREF.edge_similarity(g.rowptr, g.col, xd, xs, *params))

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    # the cosine of two 1-D rows is +-1, a constant: its gradient is zero, and each side
    # returns only the rounding residue of two cancelling terms (not collected)
    @pytest.mark.parametrize("width,kernel", [(w, k) for w in (1, 16, 67) for k in KERNELS if not degenerate(k, w)])
    def test_cuda_edge_similarity_backward(name, index_dtype, dtype, width, kernel):
        g = cuda_graph(name, index_dtype)
        rowptr_t, col_t, perm_t = g.transpose()
        xd = cuda_feats(g.num_dst, width, dtype, seed=2)
        xs = cuda_feats(g.num_src, width, dtype, seed=3)
        gs = cuda_feats(g.num_edges, 1, dtype, seed=4).flatten()
        params = sim_params(kernel, width)
        args = (g.rowptr, g.col, rowptr_t, col_t, perm_t, xd, xs, gs, *params)
        got, want = CU.edge_similarity_backward(*args), CREF.edge_similarity_backward(*args)
        cuda_close(got[0], want[0])
        cuda_close(got[1], want[1])

    @cuda_case
    @cuda_only
    def test_cuda_edge_similarity_glue_checks_every_shape_it_indexes_with():
        """A direct op call with inconsistent shapes is refused before any kernel runs."""
        g = cuda_graph("square", torch.int64)
        rt, ct, pt = g.transpose()
        x = cuda_feats(g.num_src, 8, torch.float32)
        short = x[:-1].contiguous()
        grad_s = torch.zeros(g.num_edges, device=DEV)
        backward = torch.ops.fastalign_cuda.edge_similarity_backward
        with pytest.raises(ValueError, match="rows"):
            backward(g.rowptr, g.col, rt, ct, pt, short, x, grad_s, "l1", 8.0, 2, 1.0)
        with pytest.raises(ValueError, match="edges"):
            backward(g.rowptr, g.col, rt * 0, ct[:0], pt, x, x, grad_s, "l1", 8.0, 2, 1.0)


# ------------------------------------------------------------------ Triton, on a device
# The Triton kernels compiled for the GPU against the reference on the same device
# (`pytest -m triton_gpu tests/ops`); collected only where they can run
# (tests/ops/triton_gpu.py: the dry run). Low precision: two kernels suffice.
if TRITON_GPU_CASES:
    from triton_gpu import (dtypes as triton_dtypes, DEV as TDEV, feats as triton_feats, KERNELS as TKERNELS,
                            params as triton_params, power_law, REF as TREF, rel_close, TB, triton_gpu_case)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype,kernel", triton_dtypes(
        [(torch.float32, k) for k in TKERNELS] + [(d, k) for d in (torch.float16, torch.bfloat16)
                                                  for k in ("l1", "linear")]))
    def test_triton_gpu_edge_similarity(dtype, kernel):
        g = power_law(torch.int64)
        x = triton_feats(g.num_src, 67, dtype, 7)
        sigma, degree, coef = triton_params(kernel, 67)
        rt, ct, pt = g.transpose()
        rel_close(TB.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef),
                  TREF.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef), dtype, "sim")
        gs = torch.randn(g.num_edges, device=TDEV).to(dtype)
        args = (g.rowptr, g.col, rt, ct, pt, x, x, gs, kernel, sigma, degree, coef)
        tol = dtype if dtype != torch.float32 else torch.float16  # sums of many signed terms
        rel_close(TB.edge_similarity_backward(*args), TREF.edge_similarity_backward(*args), tol, "sim grads")
