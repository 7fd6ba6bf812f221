"""linear: ``out = x W^T + b``, torch's ``F.linear``, with a CPU kernel for narrow outputs.

    out[..., n] = sum_k x[..., k] W[n, k] + b[n]

A small GNN's first layer takes wide node features (1,433 columns on Cora, 3,703 on
CiteSeer) to a narrow hidden width (16 to 64), and that product is most of the layer's
forward. The CPU kernel keeps a block of rows' whole output in registers while it
streams their features once; torch's general product packs and blocks for shapes where
both sides are large. The backward is torch's products (grad_x = grad W, grad_W =
grad^T x, grad_b = the column sums of grad), written with differentiable ops, so second
derivatives work as they do through ``F.linear``.

Kernels: reference ``torch.nn.functional.linear``; CPU ``csrc/cpu/linear.cpp`` (float32,
16, 32, 48 or 64 outputs, on CPUs with AVX-512; torch's product otherwise). No Triton or
CUDA kernel: on a GPU, under torch.compile, torch.func or a dispatch mode, and for any
other input, this is ``F.linear`` itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends, settings
from .twin_op import _forward_ad_in_use, plain_eager

WIDTHS = (16, 32, 48, 64)  # the output widths the kernel holds in registers


@lru_cache(maxsize=None)
def _kernel_here() -> bool:
    """Whether this process has the kernel: the C++ extension with ``linear``, on a CPU
    with AVX-512 (elsewhere the kernel would only call torch's product)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512" or not backends.is_available("cpu"):
        return False
    return "linear" in backends.get("cpu").FUNCTIONS


def _kernel(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.ops.fastalign_cpu.linear(x, weight, bias)


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _kernel(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.size(-1))
        if ctx.needs_input_grad[0]:
            grad_x = grad.matmul(weight)
        if ctx.needs_input_grad[1]:
            grad_weight = rows.t().mm(x.reshape(-1, x.size(-1)))
        if ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias


def _use_kernel(x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: Optional[str]) -> bool:
    # anything else, bad shapes included, is F.linear's to compute or to refuse
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor) and x.is_cpu and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() >= 2 and weight.dim() == 2
            and weight.size(0) in WIDTHS and x.size(-1) == weight.size(1) and x.layout == torch.strided
            and x.is_contiguous()):
        return False
    if bias is not None and not (isinstance(bias, Tensor) and bias.dtype == torch.float32
                                 and bias.dim() == 1 and bias.size(0) == weight.size(0)):
        return False
    choice = backend if backend not in (None, "auto") else settings.backend()
    if choice not in (None, "auto", "cpu"):  # another backend asked for: torch's product
        return False
    args = (x, weight, bias)
    return _kernel_here() and plain_eager(args) and not _forward_ad_in_use(args)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.linear(x, weight, bias)``: the same arguments, result and
    gradients, through fastalign's CPU kernel where it applies (float32 features, 16,
    32, 48 or 64 outputs, an AVX-512 CPU, plain eager mode) and ``F.linear`` everywhere
    else. ``backend``: ``None``/``"auto"`` or ``"cpu"`` allow the kernel; any other
    backend name asks for torch's product."""
    if not _use_kernel(x, weight, bias, backend):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _LinearFunction.apply(x, weight, bias)
    return _kernel(x, weight, bias)
