"""edge_scale and sigma="auto" on every CPU backend against the definitions (the E x F
edge differences in float64): the scale itself, edge_similarity, local_structure and
structure_kl at the auto scale (each embedding set at its own), the gradient with the
scale held constant, the edge cases and bad input; the loss module and the trainer."""

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign.nn import StructureAlignLoss
from helpers import (LOW_PRECISION_TOL, case_graphs, dense_edge_scale, dense_edge_values, dense_kernel,
                     dense_structure_kl, features, random_edge_index, rel_err)

BACKENDS = [b for b in ("torch", "cpu") if backends.is_available(b)]
AUTO_KERNELS = ("l1", "rbf")


def embeddings(graph, seed, width=5, shift=0.0, scale=1.0):
    """(dst, src) pair for a rectangular graph, one tensor for a square one."""
    src = features(graph, width, seed=seed, side="src") * scale + shift
    if graph.is_square:
        return src
    return features(graph, width, seed=seed + 100, side="dst") * scale + shift, src


def detach_grad(x):
    if isinstance(x, tuple):
        return tuple(t.detach().clone().requires_grad_() for t in x)
    return x.detach().clone().requires_grad_()


def leaves(x):
    return list(x) if isinstance(x, tuple) else [x]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", AUTO_KERNELS)
@pytest.mark.parametrize("index_dtype", (torch.int32, torch.int64))
def test_edge_scale_matches_definition(backend, kernel, index_dtype):
    for name, graph in case_graphs(index_dtype):
        # far from the origin and at a scale of its own: the centring keeps the precision
        x = embeddings(graph, seed=1, shift=30.0, scale=0.01)
        got = fastalign.edge_scale(graph, x, kernel, backend=backend)
        assert got.dtype == torch.float64 and got.dim() == 0 and not got.requires_grad
        if graph.num_edges == 0:
            assert got.item() == 1.0, name  # no edge to measure: every sigma is the same
            continue
        want = dense_edge_scale(graph, x, kernel)
        assert abs(got.item() - want.item()) <= 1e-9 * want.item(), (name, got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", AUTO_KERNELS)
def test_edge_scale_follows_the_embeddings(backend, kernel):
    """Equivariant to a scale, invariant to a shift, 1 where every distance is 0."""
    graph = Graph.from_edge_index(random_edge_index(40, 40, 200, seed=3), num_nodes=40)
    x = features(graph, 7, seed=2)
    base = fastalign.edge_scale(graph, x, kernel, backend=backend)
    assert fastalign.edge_scale(graph, 1e-3 * x, kernel, backend=backend).item() == pytest.approx(1e-3 * base.item(), rel=1e-9)
    assert fastalign.edge_scale(graph, x + 5.0, kernel, backend=backend).item() == pytest.approx(base.item(), rel=1e-9)
    same = torch.full((40, 7), 3.25, dtype=torch.float64)
    assert fastalign.edge_scale(graph, same, kernel, backend=backend).item() == 1.0
    zeros = torch.zeros(40, 7, dtype=torch.float64)
    assert fastalign.edge_scale(graph, zeros, kernel, backend=backend).item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", AUTO_KERNELS)
def test_similarity_and_local_structure_at_auto(backend, kernel):
    for name, graph in case_graphs():
        x = embeddings(graph, seed=4, scale=0.05)
        sigma = dense_edge_scale(graph, x, kernel) if graph.num_edges else 1.0
        x_dst, x_src = x if isinstance(x, tuple) else (x, x)
        want = dense_edge_values(graph, dense_kernel(kernel, x_dst, x_src, sigma=float(sigma)))
        got = fastalign.edge_similarity(graph, x, kernel, sigma="auto", backend=backend)
        assert rel_err(got, want) < 1e-10, name
        if graph.num_edges:  # at the auto scale a typical edge is neither ~1 nor ~0
            assert 0.05 < got.mean().item() < 0.95, name
        p = fastalign.local_structure(graph, x, kernel, tau=0.5, sigma="auto", backend=backend)
        rows = torch.zeros(graph.num_dst, dtype=torch.float64).index_add_(0, graph.row, p)
        has_edges = graph.rowptr[1:] > graph.rowptr[:-1]
        assert torch.allclose(rows[has_edges], torch.ones_like(rows[has_edges])), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", AUTO_KERNELS)
@pytest.mark.parametrize("peer_grad", (False, True))
def test_structure_kl_at_auto_matches_definition(backend, kernel, peer_grad):
    """Forward: the student's and the peer's kernels each at their own scale. Gradient:
    that of the fixed-sigma loss at those scales (the scale is a constant to it); with a
    detached peer this goes through the backends' fast path."""
    for name, graph in case_graphs():
        hs = detach_grad(embeddings(graph, seed=5, scale=0.02))
        hp = embeddings(graph, seed=6, width=3, scale=4.0)  # another layer, another scale
        hp = detach_grad(hp) if peer_grad else hp
        sig_s = float(dense_edge_scale(graph, hs, kernel)) if graph.num_edges else 1.0
        sig_p = float(dense_edge_scale(graph, hp, kernel)) if graph.num_edges else 1.0
        got = fastalign.structure_kl(graph, hs, hp, kernel=kernel, tau=0.7, sigma="auto",
                                     reduction="sum", backend=backend)
        want = dense_structure_kl(graph, hs, hp, kernel, tau=0.7, sigma=sig_s, peer_sigma=sig_p).sum()
        assert abs(got.item() - want.item()) <= 1e-10 * max(1.0, abs(want.item())), name
        if graph.num_edges == 0:
            continue
        inputs = leaves(hs) + (leaves(hp) if peer_grad else [])
        g_got = torch.autograd.grad(got, inputs, allow_unused=True)
        g_want = torch.autograd.grad(want, inputs, allow_unused=True)
        for a, b in zip(g_got, g_want):
            a = torch.zeros_like(b) if a is None else a
            assert rel_err(a, b) < 1e-9, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_is_per_embedding_set(backend):
    """Scaling the peer by 1000 changes nothing at sigma="auto" (its kernel follows it),
    and everything at a fixed sigma."""
    graph = Graph.from_edge_index(random_edge_index(30, 30, 150, seed=8), num_nodes=30)
    hs, hp = features(graph, 6, seed=1), features(graph, 4, seed=2)
    auto = [fastalign.structure_kl(graph, hs, c * hp, sigma="auto", backend=backend) for c in (1.0, 1e3)]
    assert auto[0].item() > 1e-3 and auto[1].item() == pytest.approx(auto[0].item(), rel=1e-9)
    fixed = [fastalign.structure_kl(graph, hs, c * hp, sigma=2.0, backend=backend) for c in (1.0, 1e3)]
    assert abs(fixed[1].item() - fixed[0].item()) > 0.1 * fixed[0].item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_auto_in_low_precision(backend, dtype):
    graph = Graph.from_edge_index(random_edge_index(60, 60, 400, seed=9), num_nodes=60)
    hs, hp = features(graph, 16, seed=3) * 0.1, features(graph, 16, seed=4)
    scale = fastalign.edge_scale(graph, hs.to(dtype), "l1", backend=backend)
    assert scale.dtype == torch.float32  # computed in float32 from the stored values
    assert abs(scale.item() - dense_edge_scale(graph, hs, "l1").item()) < LOW_PRECISION_TOL[dtype] * scale.item()
    got = fastalign.structure_kl(graph, hs.to(dtype), hp.to(dtype), sigma="auto", reduction="none", backend=backend)
    want = fastalign.structure_kl(graph, hs, hp, sigma="auto", reduction="none", backend=backend)
    assert got.dtype == dtype and rel_err(got, want) < 5 * LOW_PRECISION_TOL[dtype]


def test_structure_align_loss_auto():
    graph = Graph.from_edge_index(random_edge_index(25, 25, 100, seed=10), num_nodes=25)
    hs, hp = features(graph, 5, seed=1).requires_grad_(), features(graph, 5, seed=2)
    loss = StructureAlignLoss(kernel="rbf", sigma="auto", tau=0.5)(graph, hs, hp)
    want = fastalign.structure_kl(graph, hs, hp, kernel="rbf", sigma="auto", tau=0.5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-12) and loss.item() > 0
    loss.backward()
    assert hs.grad is not None and hs.grad.abs().sum() > 0


def test_auto_bad_input():
    graph = Graph.from_edge_index(random_edge_index(10, 10, 30, seed=11), num_nodes=10)
    x = features(graph, 4, seed=1)
    for kernel in ("linear", "poly", "cosine"):
        with pytest.raises(ValueError, match="distance scale"):
            fastalign.structure_kl(graph, x, x, kernel=kernel, sigma="auto")
        with pytest.raises(ValueError, match="distance scale"):
            StructureAlignLoss(kernel=kernel, sigma="auto")
        with pytest.raises(ValueError, match="kernel must be one of"):
            fastalign.edge_scale(graph, x, kernel)
    for bad in ("Auto", "median", "", "5"):
        with pytest.raises(TypeError, match="real number or 'auto'"):
            fastalign.edge_similarity(graph, x, "l1", sigma=bad)
    with pytest.raises(ValueError, match="rows"):
        fastalign.edge_scale(graph, x[:5], "l1")
    with pytest.raises(TypeError, match="floating"):
        fastalign.edge_scale(graph, x.long(), "l1")
