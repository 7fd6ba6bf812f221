"""Shared helpers of the drop-in layer tests: a fastalign layer and PyG's with the same
parameters, every adjacency kind PyG takes, and the forward/backward comparison."""

import pytest
import torch

pytest.importorskip("torch_geometric", reason="needs torch_geometric (the test extra)")
from torch_geometric.typing import WITH_TORCH_SPARSE  # noqa: E402

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def adjacencies(ei, num_src, num_dst, value=None):
    """Every adjacency kind PyG layers take, with what PyG's layer should see."""
    from torch_geometric.utils import to_torch_coo_tensor, to_torch_csc_tensor

    size = (num_src, num_dst)
    if value is None:
        value = torch.ones(ei.size(1), dtype=DT)
    csc = to_torch_csc_tensor(ei, value, size=size)
    coo = to_torch_coo_tensor(ei, value, size=size)
    kinds = {
        "csc_t": csc.t(),  # a CSR adj_t
        "coo_t": coo.t().coalesce(),
        "csr": coo.t().coalesce().to_sparse_csr(),
    }
    if WITH_TORCH_SPARSE:
        from torch_geometric.typing import SparseTensor

        kinds["sparse_tensor"] = SparseTensor.from_edge_index(ei, value, sparse_sizes=size).t()
    return kinds


def twin(ours_cls, pyg_cls, *args, **kwargs):
    """A PyG layer and fastalign's with the same parameters, in float64."""
    torch.manual_seed(0)
    theirs = pyg_cls(*args, **kwargs).to(DT)
    ours = ours_cls(*args, **kwargs).to(DT)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def assert_same_forward_backward(ours, theirs, call_ours, call_theirs, extra=()):
    """Outputs and gradients (inputs, parameters, extra tensors) agree."""
    out_o, inputs_o = call_ours()
    out_t, inputs_t = call_theirs()
    assert out_o.shape == out_t.shape
    torch.testing.assert_close(out_o, out_t, rtol=1e-9, atol=1e-10)
    seed = torch.randn(out_t.shape, dtype=DT, generator=_gen(5))
    params_o = [p for p in ours.parameters()]
    params_t = [p for p in theirs.parameters()]
    g_o = torch.autograd.grad(out_o, inputs_o + params_o, seed, allow_unused=True)
    g_t = torch.autograd.grad(out_t, inputs_t + params_t, seed, allow_unused=True)
    for a, b in zip(g_o, g_t):
        if a is None or b is None:
            assert (a is None or not a.abs().any()) and (b is None or not b.abs().any())
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


