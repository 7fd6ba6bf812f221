"""edge_softmax and local_structure (softmax of the similarity over each node's in-edges):
each backend here against a dense float64 softmax and by gradcheck, and each compiled
backend's kernels against the reference over the shared grid; the Triton kernels under
the interpreter (last section)."""

import pytest
import torch

import fastalign
from helpers import (
    as_pair, assert_close, CASES, dense_adjacency, dense_edge_values, dense_kernel, dtype_params, get_case,
    grad_pair, graph_of, graph_params, index_params, join_pair, KERNELS, pair, REFERENCE, SIGMA, SMALL,
    tight_gradcheck, TRITON_INTERPRETER, CUDA_CASES, TRITON_GPU_CASES,
)


@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_local_structure_is_neighbour_softmax(backend, name, index_dtype, tau):
    g = get_case(name, index_dtype)
    x = pair(g, 4, scale=20.0)
    a, b = as_pair(x)
    p = fastalign.local_structure(g, x, "l1", tau=tau, sigma=5.0, backend=backend)
    k = dense_kernel("l1", a, b, sigma=5.0) / tau
    # duplicate edges: each copy is its own entry of the softmax
    counts = dense_adjacency(g)
    mask = counts > 0
    denom = (torch.exp(k) * counts).sum(1, keepdim=True)
    dense_p = torch.where(mask, torch.exp(k) / denom, torch.zeros_like(k))
    torch.testing.assert_close(p, dense_edge_values(g, dense_p))
    row_sums = torch.zeros(g.num_dst, dtype=torch.float64).index_add_(0, g.row, p)
    has_edges = g.in_degree > 0
    torch.testing.assert_close(row_sums[has_edges], torch.ones(int(has_edges.sum()), dtype=torch.float64))


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("kernel", KERNELS)
def test_local_structure_gradcheck(backend, name, kernel):
    g = graph_of(name, torch.int64)
    xs = grad_pair(g, 3, 0)
    tight_gradcheck(
        lambda *x: fastalign.local_structure(g, join_pair(g, x), kernel, 0.8, SIGMA[kernel], backend=backend), *xs)


@graph_params
@index_params
@dtype_params
def test_edge_softmax_and_backward(kernels, name, index_dtype, dtype):
    g = graph_of(name, index_dtype)
    gen = torch.Generator().manual_seed(6)
    logits = (3 * torch.randn(g.num_edges, generator=gen)).to(dtype)
    p = kernels.edge_softmax(g.rowptr, logits)
    assert_close(p, REFERENCE.edge_softmax(g.rowptr, logits), dtype)
    grad_p = torch.randn(g.num_edges, generator=gen).to(dtype)
    assert_close(
        kernels.edge_softmax_backward(g.rowptr, p, grad_p),
        REFERENCE.edge_softmax_backward(g.rowptr, p, grad_p),
        dtype,
    )


# ------------------------------------------------------------------ Triton, interpreted
# The Triton kernels against the reference on CPU tensors under the Triton interpreter:
# tests/test_triton_backend.py runs these in a process of its own with TRITON_INTERPRET=1
# (`TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops`); other runs do not collect them.
if TRITON_INTERPRETER:
    from triton_interpreter import close, graph, interpreted, ref, segments, SPLITS, tb

    @interpreted
    @pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
    @pytest.mark.parametrize("split", SPLITS)
    def test_triton_edge_softmax(name, split):
        g = graph(name)
        z = torch.randn(g.num_edges, dtype=torch.float64) * 3
        with segments.force_split(split):
            p = tb.edge_softmax(g.rowptr, z)
            close(p, ref.edge_softmax(g.rowptr, z))
            gp = torch.randn_like(p)
            close(tb.edge_softmax_backward(g.rowptr, p, gp), ref.edge_softmax_backward(g.rowptr, p, gp))


    @interpreted
    def test_triton_edge_softmax_packs_short_rows_without_changing_a_bit(monkeypatch):
        """Several short rows per program (a power-law graph of 300 nodes: groups of rows of
        mixed degree, isolated rows, rows past the group's end, a hub cut into segments):
        equal to the reference, and bit for bit equal to one row per program."""
        from fastalign.kernels import edge_softmax as ksoftmax, heuristics
        from helpers import power_law_edge_index

        g = fastalign.Graph.from_edge_index(power_law_edge_index(300, 1500, seed=4), num_nodes=300)
        z = torch.randn(g.num_edges, dtype=torch.float32) * 3
        gp = torch.randn_like(z)
        rows, row_e, _ = heuristics.softmax_rows(segments.row_plan(g.rowptr))
        assert rows > 1 and g.num_dst > 2 * rows  # several groups of several rows
        with segments.force_split(32):
            assert segments.row_plan(g.rowptr).num_long > 0
            p = tb.edge_softmax(g.rowptr, z)
            gz = tb.edge_softmax_backward(g.rowptr, p, gp)
            close(p, ref.edge_softmax(g.rowptr, z), 1e-6)
            close(gz, ref.edge_softmax_backward(g.rowptr, p, gp), 1e-6)
            monkeypatch.setattr(ksoftmax, "softmax_rows", lambda plan: (1, row_e, 4))
            assert torch.equal(tb.edge_softmax(g.rowptr, z), p)
            assert torch.equal(tb.edge_softmax_backward(g.rowptr, p, gp), gz)


# ------------------------------------------------------------------ CUDA, on a device
# The CUDA extension's kernels against the reference on the same GPU (`pytest -m cuda
# tests/ops`); collected only where they can run (tests/ops/cuda_gpu.py: the dry run).
if CUDA_CASES:
    from cuda_gpu import (assert_close as cuda_close, CU, cuda_case, cuda_only, DEV, dtype_params as cuda_dtypes,
                          feats as cuda_feats, graph_of as cuda_graph, hub_rows_graph, REF as CREF)

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    def test_cuda_edge_softmax(name, index_dtype, dtype):
        g = cuda_graph(name, index_dtype)
        z = cuda_feats(g.num_edges, 1, dtype, seed=6).flatten() * 3
        p = CU.edge_softmax(g.rowptr, z)
        cuda_close(p, CREF.edge_softmax(g.rowptr, z))
        gp = cuda_feats(g.num_edges, 1, dtype, seed=7).flatten()
        cuda_close(CU.edge_softmax_backward(g.rowptr, p, gp), CREF.edge_softmax_backward(g.rowptr, p, gp))

    @cuda_case
    @pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
    def test_cuda_edge_softmax_hub_rows(dtype):
        """Rows of 1,024 edges (a warp's longest), 1,025 and 50,000 (a block's): against the
        reference, and the same bits on a second run."""
        g = hub_rows_graph()
        z = cuda_feats(g.num_edges, 1, dtype, seed=6).flatten() * 3
        gp = cuda_feats(g.num_edges, 1, dtype, seed=7).flatten()
        p = CU.edge_softmax(g.rowptr, z)
        cuda_close(p, CREF.edge_softmax(g.rowptr, z))
        gz = CU.edge_softmax_backward(g.rowptr, p, gp)
        cuda_close(gz, CREF.edge_softmax_backward(g.rowptr, p, gp))
        assert torch.equal(CU.edge_softmax(g.rowptr, z), p)
        assert torch.equal(CU.edge_softmax_backward(g.rowptr, p, gp), gz)

    @cuda_case
    @cuda_only
    def test_cuda_edge_softmax_glue_checks_its_inputs():
        """A direct op call with bad index or score tensors is refused before any kernel runs."""
        g = cuda_graph("square", torch.int64)
        scores = torch.zeros(g.num_edges, device=DEV)
        with pytest.raises(TypeError, match="int32 or int64"):
            torch.ops.fastalign_cuda.edge_softmax(g.rowptr.float(), scores)
        with pytest.raises(ValueError, match="1-D"):
            torch.ops.fastalign_cuda.edge_softmax(g.rowptr, scores.view(1, -1))


# ------------------------------------------------------------------ Triton, on a device
# The Triton kernels compiled for the GPU against the reference on the same device
# (`pytest -m triton_gpu tests/ops`); collected only where they can run
# (tests/ops/triton_gpu.py: the dry run).
if TRITON_GPU_CASES:
    from triton_gpu import (DEV as TDEV, dtypes as triton_dtypes, hub, power_law, REF as TREF, rel_close, TB,
                            triton_gpu_case)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes())
    @pytest.mark.parametrize("graph", ["power_law", "hub"])
    def test_triton_gpu_edge_softmax(dtype, graph):
        g = power_law(torch.int32) if graph == "power_law" else hub(torch.int64)
        z = torch.randn(g.num_edges, device=TDEV).to(dtype)
        p = TREF.edge_softmax(g.rowptr, z)
        rel_close(TB.edge_softmax(g.rowptr, z), p, dtype, "softmax")
        gp = torch.randn_like(p)
        rel_close(TB.edge_softmax_backward(g.rowptr, p, gp), TREF.edge_softmax_backward(g.rowptr, p, gp), dtype,
                  "softmax bwd")
