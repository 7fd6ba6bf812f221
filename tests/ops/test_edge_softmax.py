"""edge_softmax and local_structure (softmax of the similarity over each node's in-edges):
each backend here against a dense float64 softmax and by gradcheck, and each compiled
backend's kernels against the reference over the shared grid."""

import pytest
import torch

import fastalign
from helpers import (
    as_pair, assert_close, CASES, dense_adjacency, dense_edge_values, dense_kernel, dtype_params,
    get_case, grad_pair, graph_of, graph_params, index_params, join_pair, KERNELS, pair, REFERENCE, SIGMA,
    SMALL, tight_gradcheck,
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
