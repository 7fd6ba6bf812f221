"""Each op's autograd formula registered twice: on its torch custom op, and on an
``autograd.Function`` twin that plain eager calls take.

``torch.library.custom_op`` is what torch.compile, torch.export, FakeTensor and the
functorch transforms need, but its Python dispatch and autograd cost about 40 us per
call and 200 us per forward+backward in eager mode (measured on the 2-core VM:
gcn_aggregate on a 64-node graph, 295 us forward+backward through the custom op, 79 us
through an autograd.Function over the same kernel). On a small graph that is most of a
GNN layer's time. The twin runs the same implementation, setup_context and backward
functions, so both paths give the same bits; anything but a plain eager call on
ordinary CPU/CUDA tensors (compiling, tracing, a functorch transform, a dispatch
mode, a tensor subclass, meta tensors) goes through the custom op.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

_PLAIN = (Tensor, torch.nn.Parameter)


def plain_eager(args) -> bool:
    """Whether a call with these arguments may bypass the custom op."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch._C._are_functorch_transforms_active() or _get_current_dispatch_mode() is not None:
        return False
    for a in args:
        if isinstance(a, Tensor) and (type(a) not in _PLAIN or a.is_meta):
            return False
    return True


class TwinOp:
    """``op(*args)``: the custom op ``custom`` (built from ``impl``), or in plain eager
    mode ``impl`` itself (no gradient needed) or its autograd.Function twin.

    ``setup_context``/``backward`` are registered on the custom op too (omit both for an
    op without a gradient formula of its own, such as a backward op)."""

    def __init__(self, custom, impl: Callable, backward: Optional[Callable] = None,
                 setup_context: Optional[Callable] = None):
        self.custom, self.impl = custom, impl
        self.function = None
        if backward is not None:
            custom.register_autograd(backward, setup_context=setup_context)
            def forward(ctx, *args):
                out = impl(*args)
                setup_context(ctx, args, out)
                return out

            # forward(ctx, ...) rather than a separate setup_context: Function.apply then
            # skips binding the arguments to forward's signature (inspect, ~40 us a call)
            self.function = type(f"{impl.__name__.strip('_')}_function", (torch.autograd.Function,), {
                "forward": staticmethod(forward),
                "backward": staticmethod(backward),
            })

    def __call__(self, *args):
        if not plain_eager(args):
            return self.custom(*args)
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            # an op without a formula goes through the custom op, which refuses the backward
            return self.function.apply(*args) if self.function is not None else self.custom(*args)
        return self.impl(*args)
