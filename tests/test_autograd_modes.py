"""Autograd beyond backward(): reverse-mode transforms (torch.func.grad, jacrev) give
the gradients backward gives; forward mode and second derivatives, which the fused
kernels do not have, are refused by name instead of returning zeros or internal errors."""

import pytest
import torch

import fastalign
from fastalign import Graph
from fastalign.nn import GATConv, GCNConv
from helpers import random_edge_index

N = 16


def graph():
    return Graph.from_edge_index(random_edge_index(N, N, 60, seed=2), num_nodes=N)


def cases():
    g = graph()
    peer = torch.randn(N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ei = torch.stack([g.col.long(), g.row.long()])
    gcn = GCNConv(4, 3).double()
    gat = GATConv(4, 3, heads=2).double()
    return {
        "spmm": lambda x: fastalign.spmm(g, x, "mean"),
        "gcn_aggregate": lambda x: fastalign.gcn_aggregate(g, x),
        "local_structure": lambda x: fastalign.local_structure(g, x, kernel="rbf", sigma=2.0),
        "structure_kl": lambda x: fastalign.structure_kl(g, x[:, :3], peer, kernel="l1", sigma=2.0),
        "GCNConv": lambda x: gcn(x, ei),
        "GATConv": lambda x: gat(x, ei),
    }


CASES = list(cases())


def x64():
    return torch.randn(N, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", CASES)
def test_func_grad_and_jacrev_equal_reverse_mode(name):
    f = cases()[name]
    x = x64()
    loss = lambda x: f(x).square().sum()  # noqa: E731
    xr = x.clone().requires_grad_()
    loss(xr).backward()
    torch.testing.assert_close(torch.func.grad(loss)(x), xr.grad)
    jac = torch.func.jacrev(f)(x)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(f, x))


@pytest.mark.parametrize("name", CASES)
def test_forward_mode_is_refused_by_name(name):
    f = cases()[name]
    x, t = x64(), torch.ones(N, 4, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="fastalign's .* has no forward-mode derivative"):
        torch.func.jvp(f, (x,), (t,))
    from torch.autograd import forward_ad

    with forward_ad.dual_level(), pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        f(forward_ad.make_dual(x, t))


@pytest.mark.parametrize("name", CASES)
def test_second_derivatives_are_refused_by_name(name):
    f = cases()[name]
    x = x64().requires_grad_()
    (gx,) = torch.autograd.grad(f(x).square().sum(), x, create_graph=True)  # first order: fine
    xr = x.detach().clone().requires_grad_()
    f(xr).square().sum().backward()
    torch.testing.assert_close(gx.detach(), xr.grad)
    with pytest.raises(RuntimeError, match="fastalign's .* has no second derivative"):
        gx.square().sum().backward()


def test_nested_func_grad_is_refused_by_name_and_leaves_the_graph_usable():
    """torch.func.grad of torch.func.grad (and jacrev of grad) differentiates a fused
    backward: refused with the op's name, as create_graph is. One graph and one
    edge_index serve every case in turn, so nothing a transform made may stay cached on
    them: the structure the Graph and the drop-ins' edge_index cache keep is built outside
    the transforms, and each later call works."""
    shared = cases()
    x = x64()
    for name, f in shared.items():
        loss = lambda x: f(x).square().sum()  # noqa: E731
        with pytest.raises(RuntimeError, match="fastalign's .* has no second derivative"):
            torch.func.grad(lambda x: torch.func.grad(loss)(x).square().sum())(x)
        with pytest.raises(RuntimeError, match="fastalign's .* has no second derivative"):
            torch.func.jacrev(torch.func.grad(loss))(x)
        xr = x.clone().requires_grad_()
        loss(xr).backward()
        torch.testing.assert_close(torch.func.grad(loss)(x), xr.grad)
