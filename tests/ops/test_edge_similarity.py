"""edge_similarity (the five kernels): each backend here against dense float64 kernels and
by gradcheck, and each compiled backend's forward and backward against the reference over
the shared grid."""

import pytest
import torch

import fastalign
from fastalign import Graph
from helpers import (
    as_pair, assert_close, assert_noise, CASES, degenerate, dense_edge_values, dense_kernel, dtype_params,
    feats, features, get_case, graph_of, graph_params, index_params, KERNELS, pair, REFERENCE, SIGMA, truth,
    WIDTHS, grad_pair, join_pair, SMALL, tight_gradcheck,
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


@graph_params
@index_params
@dtype_params
@pytest.mark.parametrize("width", WIDTHS)
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
