"""Each op's autograd formula registered twice: on its torch custom op, and on an
``autograd.Function`` twin that plain eager calls take.

``torch.library.custom_op`` is what torch.compile, torch.export, FakeTensor and the
functorch transforms need, but its Python dispatch and autograd cost several times an
``autograd.Function``'s per eager call (docs/architecture.md gives the figures): on a
small graph that is most of a GNN layer's time. The twin runs the same implementation,
setup_context and backward functions, so both paths give the same bits; anything but a plain eager call on
ordinary CPU/CUDA tensors (compiling, tracing, a functorch transform, a dispatch
mode, a tensor subclass, meta tensors) goes through the custom op.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

_PLAIN = (Tensor, torch.nn.Parameter)


def _op_name(impl: Callable) -> str:
    return impl.__name__.strip("_")


def _no_forward_ad(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"fastalign's {name} has no forward-mode derivative (torch.func.jvp, "
        "torch.autograd.forward_ad, jacfwd): use reverse mode (backward, torch.func.grad, jacrev)"
    )


def _forward_ad_in_use(args) -> bool:
    """Whether a plain eager call carries forward-mode tangents (a dual_level is open and
    an argument has one)."""
    if forward_ad._current_level < 0:
        return False
    return any(isinstance(a, Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)


def _tracked_by_an_outer_grad(t) -> bool:
    """Whether ``t``, a gradient seen by a backward under torch.func, is also tracked by an
    enclosing grad transform (torch.func.grad of torch.func.grad, jacrev of grad)."""
    functorch = torch._C._functorch
    return (isinstance(t, Tensor) and functorch.is_gradtrackingtensor(t)
            and functorch.is_gradtrackingtensor(functorch.get_unwrapped(t)))


def _first_order(name: str, backward: Callable) -> Callable:
    """``backward`` whose gradients, under ``create_graph=True``, refuse to be
    differentiated again with a message naming the op (as @once_differentiable does,
    whose message names nothing): the backward formulas are fused kernels with no
    derivative of their own."""
    message = (f"fastalign's {name} has no second derivative (its backward is a fused kernel): "
               "create_graph=True gives its gradients, but they cannot be differentiated again "
               "(gradient penalties, meta-learning)").encode()

    def wrapped(ctx, *grads):
        if torch._C._are_functorch_transforms_active():
            # torch.func.grad runs backwards under its own rules; a gradient that an outer
            # grad level still tracks means this backward is being differentiated
            if any(_tracked_by_an_outer_grad(g) for g in grads):
                raise RuntimeError(message.decode())
            return backward(ctx, *grads)
        with torch.no_grad():
            out = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return out
        outs = out if isinstance(out, tuple) else (out,)
        refuse = torch._C._functions.DelayedError(message, len(outs))

        def marked(t):
            if t is None:
                return t
            t = t.detach()
            t.requires_grad = True
            return t

        marked_outs = refuse(*[marked(t) for t in outs])
        if not isinstance(marked_outs, tuple):
            marked_outs = (marked_outs,)
        return marked_outs if isinstance(out, tuple) else marked_outs[0]

    return wrapped


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
                 setup_context: Optional[Callable] = None, *, unchecked: Optional[Callable] = None):
        self.custom = custom
        self.name = _op_name(impl)
        # what the twin runs: ``impl`` without its input checks where the op gives it.
        # The twin's callers are fastalign's prepared passes, which checked their graph
        # when prepared and check each call's features themselves; the custom op, which
        # anyone can call with any tensors, keeps the checks. Inside a layer they cost
        # more than they do alone (measured: ~17 us of a GCN layer's 750 on Cora, right
        # after the dense product has flushed the caches, against ~3.5 us in a loop).
        impl = self.impl = unchecked if unchecked is not None else impl
        self.function = self.transformable = None
        if backward is not None:
            custom.register_autograd(backward, setup_context=setup_context)
            name = self.name

            def forward(ctx, *args):
                out = impl(*args)
                setup_context(ctx, args, out)
                return out

            def jvp(ctx, *tangents):
                raise _no_forward_ad(name)

            once = staticmethod(_first_order(name, backward))
            # forward(ctx, ...) rather than a separate setup_context: Function.apply then
            # skips binding the arguments to forward's signature (inspect, ~40 us a call)
            self.function = type(f"{name}_function", (torch.autograd.Function,), {
                "forward": staticmethod(forward), "backward": once, "jvp": staticmethod(jvp),
            })
            # torch.func.grad / jacrev need the separate setup_context form
            self.transformable = type(f"{name}_transformable", (torch.autograd.Function,), {
                "forward": staticmethod(lambda *args: impl(*args)),
                "setup_context": staticmethod(setup_context), "backward": once,
                "jvp": staticmethod(jvp),
            })

    def __call__(self, *args):
        if not plain_eager(args):
            if torch._C._are_functorch_transforms_active():
                return self._transformed(args)
            return self.custom(*args)
        if _forward_ad_in_use(args):
            raise _no_forward_ad(self.name)
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            # an op without a formula goes through the custom op, which refuses the backward
            return self.function.apply(*args) if self.function is not None else self.custom(*args)
        return self.impl(*args)

    def _transformed(self, args):
        """Under torch.func: reverse-mode transforms (grad, jacrev, vjp) through the
        autograd.Function twin, forward mode refused by name, vmap through the custom op."""
        from torch._C._functorch import TransformType, peek_interpreter_stack

        top = peek_interpreter_stack()
        kind = top.key() if top is not None else None
        if kind == TransformType.Jvp:
            raise _no_forward_ad(self.name)
        if kind == TransformType.Grad:
            if self.transformable is None:  # a backward op, inside a backward under torch.func
                self.transformable = self._without_derivative()
            return self.transformable.apply(*args)
        return self.custom(*args)

    def _without_derivative(self):
        """A backward op (no formula of its own) as an autograd.Function that torch.func
        accepts: its derivative, a second derivative of the op it serves, is refused."""
        impl, name = self.impl, self.name

        def backward(ctx, *grads):
            raise RuntimeError(f"fastalign's {name} has no derivative (it is a fused backward kernel): "
                               "second derivatives through it are not supported")

        return type(f"{name}_transformable", (torch.autograd.Function,), {
            "forward": staticmethod(lambda *args: impl(*args)),
            "setup_context": staticmethod(lambda ctx, inputs, output: None),
            "backward": staticmethod(backward),
        })
