"""linear (torch's F.linear, with the CPU kernel for float32 and 16-64 outputs): the
kernel against a float64 product over shapes, widths it takes and widths it leaves to
torch, gradients and second derivatives against F.linear, the paths that must be
F.linear itself (another backend, torch.func, bad shapes), and the layers that use it."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import fastalign
from fastalign.ops.linear import WIDTHS, linear
from helpers import REL_TOL, rel_err

linear_module = importlib.import_module("fastalign.ops.linear")  # fastalign.ops.linear is the function
KERNEL = linear_module._kernel_here()
needs_kernel = pytest.mark.skipif(not KERNEL, reason="the linear kernel needs the C++ extension and AVX-512")


def _inputs(m, k, n, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    b = torch.randn(n, generator=gen) if bias else None
    return x, w, b


def _exact(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.fixture
def kernel_calls(monkeypatch):
    """The number of calls of the C++ kernel during a test."""
    calls = []
    real = linear_module._kernel

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(linear_module, "_kernel", counted)
    return calls


@needs_kernel
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("m, k", [(0, 5), (1, 1), (11, 7), (13, 64), (25, 300), (2708, 1433)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_matches_a_float64_product(kernel_calls, m, k, n, bias):
    """Row counts around the kernel's blocks (12, 8 or 6 rows) and their remainders."""
    x, w, b = _inputs(m, k, n, bias=bias)
    out = linear(x, w, b)
    assert kernel_calls == [x.shape]
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert rel_err(out, _exact(x, w, b)) < REL_TOL[torch.float32]


@pytest.mark.parametrize("n", [1, 8, 17, 80])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_widths_and_dtypes_are_torch_s_product(kernel_calls, n, dtype):
    x, w, b = _inputs(9, 6, n)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
    x, w, b = (t.to(dtype) for t in _inputs(9, 6, 16))
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
    assert kernel_calls == []
    # the C++ op called directly falls back to torch's product the same way
    torch.testing.assert_close(torch.ops.fastalign_cpu.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)


@needs_kernel
def test_batched_and_non_contiguous_features(kernel_calls):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, 30, generator=gen)
    w = torch.randn(32, 30, generator=gen)
    out = linear(x, w)
    assert out.shape == (2, 5, 7, 32)
    assert rel_err(out, _exact(x, w, None)) < REL_TOL[torch.float32]
    assert len(kernel_calls) == 1
    xt = torch.randn(30, 40, generator=gen).t()  # not contiguous: torch's product
    torch.testing.assert_close(linear(xt, w), F.linear(xt, w), rtol=0, atol=0)
    assert len(kernel_calls) == 1


@needs_kernel
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False),
                                   (False, False, True)])
def test_gradients_and_second_derivatives_match_f_linear(kernel_calls, needs):
    x, w, b = _inputs(37, 45, 16, seed=4)
    ours = [t.clone().requires_grad_(r) for t, r in zip((x, w, b), needs)]
    theirs = [t.clone().requires_grad_(r) for t, r in zip((x, w, b), needs)]
    grad = torch.randn(37, 16, generator=torch.Generator().manual_seed(5))
    out, ref = linear(*ours), F.linear(*theirs)
    assert kernel_calls
    wanted = [t for t in ours if t.requires_grad]
    given = [t for t in theirs if t.requires_grad]
    g_ours = torch.autograd.grad(out, wanted, grad, create_graph=True)
    g_theirs = torch.autograd.grad(ref, given, grad, create_graph=True)
    for a, e in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    # differentiating the gradients again (a gradient penalty): the backward is torch's ops
    if needs[0] and needs[1]:
        (hx,) = torch.autograd.grad(g_ours[0].square().sum(), ours[1])
        (ex,) = torch.autograd.grad(g_theirs[0].square().sum(), theirs[1])
        torch.testing.assert_close(hx, ex, rtol=1e-5, atol=1e-5)


def test_another_backend_torch_func_and_bad_shapes_are_f_linear(kernel_calls):
    x, w, b = _inputs(20, 10, 16)
    torch.testing.assert_close(linear(x, w, b, backend="torch"), F.linear(x, w, b), rtol=0, atol=0)
    grads = torch.func.grad(lambda t: linear(t, w, b).sum())(x)
    torch.testing.assert_close(grads, w.sum(0).expand(20, 10))
    assert kernel_calls == []
    # F.linear's own errors, whatever the path would have been
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        linear(x[:, :9], w, b)
    with pytest.raises(RuntimeError):
        linear(x, w, b[:3])


@needs_kernel
def test_the_drop_in_layers_project_through_it(kernel_calls):
    """GCNConv's, GraphConv's and SAGEConv's projections are fastalign.nn Linear modules
    (torch.nn.Linear's state dict) computed by the kernel, unless the layer's backend
    asks for another; their outputs match PyG's."""
    pyg_nn = pytest.importorskip("torch_geometric.nn", reason="torch_geometric is not installed")
    torch.manual_seed(0)
    ei = torch.randint(0, 50, (2, 300))
    x = torch.randn(50, 40)
    theirs = pyg_nn.GCNConv(40, 16)
    ours = fastalign.nn.GCNConv(40, 16)
    assert isinstance(ours.lin, torch.nn.Linear) and set(ours.state_dict()) == {"bias", "lin.weight"}
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x, ei), theirs(x, ei), rtol=1e-5, atol=1e-5)
    assert kernel_calls
    kernel_calls.clear()
    reference = fastalign.nn.GCNConv(40, 16, backend="torch")
    reference.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(reference(x, ei), theirs(x, ei), rtol=1e-5, atol=1e-5)
    assert kernel_calls == []
    for name, layer in (("GraphConv", fastalign.nn.GraphConv(40, 32)), ("SAGEConv", fastalign.nn.SAGEConv(40, 32))):
        other = getattr(pyg_nn, name)(40, 32)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x, ei), other(x, ei), rtol=1e-5, atol=1e-5, msg=name)
    assert kernel_calls
