"""gcn_aggregate (PyG's GCN normalisation fused into the aggregation): each backend here
against a dense float64 gcn_norm and PyG, by gradcheck, and each compiled backend's kernel
against the reference over the shared grid; the Triton kernel under the interpreter (last
section)."""

import pytest
import torch

import fastalign
from fastalign import Graph
from helpers import (
    assert_close, dense_gcn, dtype_params, edge_weight, feats, features, get_case, gradcheck_inputs,
    graph_of, INDEX_DTYPES, index_params, random_edge_index, REF, REFERENCE, square_graph_params,
    tight_gradcheck, TRITON_INTERPRETER, truth, WIDTHS, CUDA_CASES, TRITON_GPU_CASES,
)
from fastalign.ops.gcn_aggregate import gcn_norm_state


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("name", ["square", "no_edges", "hub"])
@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("improved", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_gcn_aggregate_matches_dense(backend, name, index_dtype, add_self_loops, improved, weighted):
    g = get_case(name, index_dtype)
    x = feats(g.num_src, 4)
    w = torch.rand(g.num_edges, dtype=torch.float64) + 0.5 if weighted else None
    out = fastalign.gcn_aggregate(g, x, add_self_loops, improved, edge_weight=w, backend=backend)
    expected = dense_gcn(g, x, add_self_loops, improved, w)
    torch.testing.assert_close(out, expected)
    bias = torch.randn(4, dtype=torch.float64)
    out = fastalign.gcn_aggregate(g, x, add_self_loops, improved, edge_weight=w, backend=backend, bias=bias)
    torch.testing.assert_close(out, expected + bias)


@pytest.mark.parametrize("name", ("square", "hub"))
@pytest.mark.parametrize("loops", (True, False))
def test_gcn_aggregate_gradcheck(backend, name, loops):
    g = graph_of(name, torch.int64)
    x = gradcheck_inputs(g, 3, 0)
    tight_gradcheck(lambda x: fastalign.gcn_aggregate(g, x, add_self_loops=loops, backend=backend), x)
    out = fastalign.gcn_aggregate(g, x, add_self_loops=loops, backend=backend)
    assert_close(out, dense_gcn(g, x.detach(), loops), torch.float64)
    # the edge weights' gradient too (the composed path), with improved self loops
    w = edge_weight(g, torch.float64).requires_grad_()
    tight_gradcheck(
        lambda x, w: fastalign.gcn_aggregate(g, x, loops, True, edge_weight=w, backend=backend), x, w)
    # a layer's bias, added in the kernel, on both paths (the second with edge weights)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    tight_gradcheck(lambda x, b: fastalign.gcn_aggregate(g, x, loops, backend=backend, bias=b), x, bias)
    tight_gradcheck(
        lambda x, w, b: fastalign.gcn_aggregate(g, x, loops, True, edge_weight=w, backend=backend, bias=b),
        x, w, bias)


@square_graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("loops", (True, False))
@pytest.mark.parametrize("weighted", (False, True))
def test_gcn_aggregate(kernels, name, index_dtype, dtype, width, loops, weighted):
    g = graph_of(name, index_dtype)
    assert g.is_square
    x = features(g, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    dis, loop_weight = gcn_norm_state(g, w, loops, False, dtype)
    args = (g.rowptr, g.col, w, dis, loop_weight, x)
    assert_close(kernels.gcn_aggregate(*args), REFERENCE.gcn_aggregate(*args), dtype)
    # with a bias, against the float64 reference: where the bias cancels a long row's sum,
    # the float32 reference's own rounding would be what is compared
    bias = torch.randn(width, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    assert_close(kernels.gcn_aggregate(*args, bias), truth(REFERENCE.gcn_aggregate, *args, bias), dtype)


def test_gcn_aggregate_refuses_a_bias_that_is_not_one_per_column(backend):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 4)
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        fastalign.gcn_aggregate(g, x, backend=backend, bias=torch.zeros(3, dtype=x.dtype))
    with pytest.raises(ValueError, match="bias must have shape"):
        fastalign.gcn_aggregate(g, x, backend=backend, bias=torch.zeros(1, 4, dtype=x.dtype))
    with pytest.raises(TypeError, match="bias must be torch.float64"):
        fastalign.gcn_aggregate(g, x, backend=backend, bias=torch.zeros(4))
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        fastalign.gcn_aggregate(g, x, backend=backend, bias=[0.0] * 4)


def test_gcn_aggregate_caches_normalisation_on_graph():
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 4)
    a = fastalign.gcn_aggregate(g, x, backend=REF)
    keys = [k for k in g._cache if isinstance(k, tuple) and k[0] == "gcn_norm"]
    assert len(keys) == 1
    torch.testing.assert_close(fastalign.gcn_aggregate(g, x, backend=REF), a)


@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_aggregate_matches_pyg(backend, improved, weighted, add_self_loops):
    pyg = pytest.importorskip("torch_geometric", reason="torch_geometric is not installed")
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    ei = random_edge_index(40, 40, 200, seed=11)  # self loops and duplicates included
    n = 45
    w = torch.rand(ei.size(1), dtype=torch.float64) + 0.1 if weighted else None
    x = feats(n, 6, requires_grad=True)
    ei_n, w_n = gcn_norm(ei, w, n, improved, add_self_loops, dtype=torch.float64)
    expected = torch.zeros(n, 6, dtype=torch.float64).index_add(0, ei_n[1], x[ei_n[0]] * w_n.unsqueeze(1))
    g = Graph.from_edge_index(ei, w, num_nodes=n)
    x2 = x.detach().clone().requires_grad_()
    out = fastalign.gcn_aggregate(g, x2, add_self_loops, improved, backend=backend)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad)
    assert pyg is not None


def test_gcn_conv_layer_matches_pyg_gcnconv():
    pytest.importorskip("torch_geometric", reason="torch_geometric is not installed")
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    ei = random_edge_index(30, 30, 120, seed=12)
    x = torch.randn(30, 8, requires_grad=True)
    conv = GCNConv(8, 5)
    expected = conv(x, ei)
    g = Graph.from_edge_index(ei, num_nodes=30)
    x2 = x.detach().clone().requires_grad_()
    out = fastalign.gcn_aggregate(g, conv.lin(x2), backend=REF) + conv.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    expected.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-6)
    # the bias in the op: the same output and the same gradients (of a sum over 30 rows)
    conv.zero_grad()
    x3 = x.detach().clone().requires_grad_()
    fused = fastalign.gcn_aggregate(g, conv.lin(x3), backend=REF, bias=conv.bias)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    fused.sum().backward()
    torch.testing.assert_close(x3.grad, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.bias.grad, torch.full((5,), 30.0))


def test_a_stored_self_loop_with_an_inf_feature_is_skipped_not_zeroed():
    """gcn_aggregate with self loops added skips the stored loop (its weight is in the
    added one): an inf feature there gives inf, as in the C++ kernel and PyG, not NaN."""
    from fastalign import backends

    g = Graph.from_edge_index(torch.tensor([[0, 1, 1, 2], [1, 0, 1, 1]]), num_nodes=3)  # 1 -> 1 stored
    x = torch.tensor([[1.0], [float("inf")], [2.0]])
    outs = [fastalign.gcn_aggregate(g, x, backend=b) for b in backends.available_backends("cpu")]
    for out in outs:
        assert torch.isinf(out[1, 0]) and not torch.isnan(out).any(), out
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])


# ------------------------------------------------------------------ Triton, interpreted
# The Triton kernels against the reference on CPU tensors under the Triton interpreter:
# tests/test_triton_backend.py runs these in a process of its own with TRITON_INTERPRET=1
# (`TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops`); other runs do not collect them.
if TRITON_INTERPRETER:
    from triton_interpreter import close, graph, interpreted, ref, segments, SPLITS, tb

    @interpreted
    @pytest.mark.parametrize("name", ["square", "hub"])
    @pytest.mark.parametrize("split", SPLITS)
    def test_triton_gcn_aggregate(name, split):
        g = graph(name)
        x = features(g, 9)
        w = torch.rand(g.num_edges, dtype=torch.float64)
        with segments.force_split(split):
            for weight in (None, w):
                for loops in (True, False):
                    dis, lw = gcn_norm_state(g, weight, loops, False, torch.float64)
                    close(tb.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x),
                          ref.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x))
            bias = torch.randn(9, dtype=x.dtype)
            close(tb.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x, bias),
                  ref.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x, bias))


# ------------------------------------------------------------------ CUDA, on a device
# The CUDA extension's kernel against the reference on the same GPU (`pytest -m cuda
# tests/ops`); collected only where it can run (tests/ops/cuda_gpu.py: the dry run).
if CUDA_CASES:
    from cuda_gpu import (assert_close as cuda_close, CU, cuda_case, dtype_params as cuda_dtypes,
                          edge_weight as cuda_weight, feats as cuda_feats, graph_of as cuda_graph, REF as CREF)

    @cuda_case
    @pytest.mark.parametrize("name", ("square", "hub", "long_rows"))
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("width", (3, 64, 130))
    @pytest.mark.parametrize("self_loops", (False, True))
    @pytest.mark.parametrize("weighted", (False, True))
    def test_cuda_gcn_aggregate(name, index_dtype, dtype, width, self_loops, weighted):
        g = cuda_graph(name, index_dtype)
        x = cuda_feats(g.num_src, width, dtype)
        w = cuda_weight(g, dtype) if weighted else None
        dis, loop_w = gcn_norm_state(g, w, self_loops, False, dtype)
        out = CU.gcn_aggregate(g.rowptr, g.col, w, dis, loop_w, x)
        cuda_close(out, CREF.gcn_aggregate(g.rowptr, g.col, w, dis, loop_w, x))


# ------------------------------------------------------------------ Triton, on a device
# The Triton kernel compiled for the GPU against the reference on the same device
# (`pytest -m triton_gpu tests/ops`); collected only where it can run
# (tests/ops/triton_gpu.py: the dry run). Packed rows: tests/ops/test_spmm.py.
if TRITON_GPU_CASES:
    from triton_gpu import (DEV as TDEV, dtypes as triton_dtypes, feats as triton_feats, power_law, REF as TREF,
                            rel_close, TB, triton_gpu_case)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes())
    def test_triton_gpu_gcn_aggregate(dtype):
        g = power_law(torch.int32)
        x = triton_feats(g.num_src, 128, dtype, 8)
        w = torch.rand(g.num_edges, device=TDEV).to(dtype)
        for weight in (None, w):
            for loops in (True, False):
                dis, lw = gcn_norm_state(g, weight, loops, False, dtype)
                rel_close(TB.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x),
                          TREF.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x), dtype, "gcn")
