"""spmm: out[i] = reduce over in-edges (j -> i) of w_ji * x[j]  (sum | mean | max).

Custom ops:
    fastalign::spmm                 forward; returns (out, arg) with arg the winning edge
                                    per output element for "max" (empty otherwise), int32
                                    unless the graph has 2**31 edges or more; "amax" is
                                    the max without its winners, for calls that will not
                                    want a gradient (as torch.amax is to torch.max)
    fastalign::spmm_max_backward    gradients of the max reduction
    fastalign::sddmm                per-edge a[i] . b[j], the edge-weight gradient
Autograd: grad_x of sum/mean is spmm over the cached transpose (no atomics; the
graph's own weights in transposed order are cached on the Graph);
grad_w is an SDDMM of the output gradient with x. The max backward also walks the cached
transpose (``perm_t`` maps each transposed edge to its internal edge): a source node
gathers the output gradients its edges won, so no backend needs atomics for grad_x.

Kernels: reference ``fastalign/backends/reference.py``; CPU ``csrc/cpu/spmm.cpp``
(traversal in ``csrc/cpu/segment.h``); Triton ``fastalign/kernels/spmm.py``; CUDA
``csrc/cuda/kernels/spmm.cu`` (the sddmm runs as the ``linear`` edge similarity on the
GPU backends).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .. import validation as V
from ..graph import Graph
from ..validation import check_edge_values, check_features, check_placement
from .twin_op import TwinOp
from ._common import as_graph, impl, resolve, transpose_for, transposed_weight

REDUCTIONS = ("sum", "mean", "max")


def _spmm(
    rowptr: Tensor,
    col: Tensor,
    weight: Optional[Tensor],
    x: Tensor,
    reduce: str,
    rowptr_t: Optional[Tensor],
    col_t: Optional[Tensor],
    perm_t: Optional[Tensor],
    weight_t: Optional[Tensor],
    backend: str,
) -> Tuple[Tensor, Tensor]:
    V.check_csr(rowptr, col, V.check_2d("x", x).size(0))
    V.check_length("weight", weight, col.numel(), "edge")
    out, arg = impl(backend).spmm_forward(rowptr, col, weight, x, reduce)
    if reduce == "max":  # the backward trusts what this forward wrote (cached, not rescanned)
        V.mark_arg_valid(arg, col.numel())
    return out, arg


spmm_op = torch.library.custom_op("fastalign::spmm", mutates_args=())(_spmm)


@spmm_op.register_fake
def _(rowptr, col, weight, x, reduce, rowptr_t, col_t, perm_t, weight_t, backend):
    num_dst = rowptr.shape[0] - 1
    out = x.new_empty((num_dst, x.shape[1]))
    arg_shape = (num_dst, x.shape[1]) if reduce == "max" else (0,)
    return out, x.new_empty(arg_shape, dtype=V.arg_dtype(col.shape[0]) if reduce == "max" else torch.int64)


def _spmm_max_backward(
    col: Tensor,
    rowptr_t: Tensor,
    col_t: Tensor,
    perm_t: Tensor,
    weight: Optional[Tensor],
    x: Tensor,
    arg: Tensor,
    grad_out: Tensor,
    need_weight_grad: bool,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    num_edges = V.check_index_tensor("col", col).numel()
    V.check_csr(rowptr_t, col_t, V.check_2d("grad_out", grad_out).size(0), "graph transpose")
    if col.dtype != col_t.dtype:
        raise TypeError(f"col ({col.dtype}) and the transpose ({col_t.dtype}) must share a dtype")
    V.check_rows("x", x, rowptr_t.numel() - 1, "graph transpose (sources)")
    if x.size(1) != grad_out.size(1):
        raise ValueError(f"x has {x.size(1)} features but grad_out {grad_out.size(1)}")
    if col_t.numel() != num_edges:
        raise ValueError(f"the transpose has {col_t.numel()} edges, the graph {num_edges}")
    V.check_columns(col, x.size(0), "graph")
    V.check_perm(perm_t, num_edges)
    V.check_arg(arg, num_edges, grad_out.shape, col_t, perm_t)
    V.check_length("weight", weight, num_edges, "edge")
    return impl(backend).spmm_max_backward(
        col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad
    )


spmm_max_backward_op = torch.library.custom_op(
    "fastalign::spmm_max_backward", mutates_args=()
)(_spmm_max_backward)
spmm_max_backward_call = TwinOp(spmm_max_backward_op, _spmm_max_backward)


@spmm_max_backward_op.register_fake
def _(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad, backend):
    grad_w = x.new_empty((col.shape[0],) if need_weight_grad else (0,))
    return torch.empty_like(x), grad_w


def _sddmm(rowptr: Tensor, col: Tensor, a: Tensor, b: Tensor, backend: str) -> Tensor:
    V.check_csr(rowptr, col, V.check_2d("b", b).size(0))
    V.check_rows("a", a, rowptr.numel() - 1, "graph (destinations)")
    return impl(backend).sddmm(rowptr, col, a, b)


sddmm_op = torch.library.custom_op("fastalign::sddmm", mutates_args=())(_sddmm)
sddmm_call = TwinOp(sddmm_op, _sddmm)


@sddmm_op.register_fake
def _(rowptr, col, a, b, backend):
    return a.new_empty((col.shape[0],))


def _setup_context(ctx, inputs, output):
    rowptr, col, weight, x, reduce, rowptr_t, col_t, perm_t, weight_t, backend = inputs
    ctx.reduce, ctx.backend = reduce, backend
    ctx.save_for_backward(rowptr, col, weight, x, output[1], rowptr_t, col_t, perm_t, weight_t)


_NO_GRADS = (None,) * 6  # reduce, rowptr_t, col_t, perm_t, weight_t, backend


def _backward(ctx, grad_out, _grad_arg):
    rowptr, col, weight, x, arg, rowptr_t, col_t, perm_t, weight_t = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[3], ctx.needs_input_grad[2]
    grad_x = grad_w = None
    grad_out = grad_out.contiguous()
    if ctx.reduce == "amax":
        raise RuntimeError(
            "spmm: this max was computed without its winning edges (prepared for features that "
            "needed no gradient), so it has no backward; prepare the propagation with features "
            "that require grad, with gradients enabled"
        )
    if ctx.reduce == "max":
        if rowptr_t is None or col_t is None or perm_t is None:
            raise RuntimeError(
                "spmm max backward needs the transpose (rowptr_t, col_t, perm_t); it was not passed"
            )
        grad_x, grad_w = spmm_max_backward_call(
            col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_w, ctx.backend
        )
        return (None, None, (grad_w if need_w else None), (grad_x if need_x else None)) + _NO_GRADS
    if ctx.reduce == "mean":
        deg = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(grad_out.dtype)
        grad_out = grad_out / deg.unsqueeze(1)
    if need_x:
        if rowptr_t is None:
            raise RuntimeError("spmm backward needs the transpose; it was not passed")
        grad_x, _ = spmm_call(
            rowptr_t, col_t, weight_t, grad_out, "sum", None, None, None, None, ctx.backend
        )
    if need_w:
        grad_w = sddmm_call(rowptr, col, grad_out, x, ctx.backend)
    return (None, None, grad_w, grad_x) + _NO_GRADS


spmm_call = TwinOp(spmm_op, _spmm, _backward, _setup_context)


def spmm_propagation(
    graph: Graph,
    like: Tensor,
    reduce: str = "sum",
    edge_weight: Optional[Tensor] = None,
    backend: Optional[str] = None,
) -> Callable[[Tensor], Tensor]:
    """spmm prepared once: ``fn(x)`` for source features typed and placed like ``like``
    (its dtype, device and whether it needs a gradient; any width). The backend, the
    weights in the features' dtype and the transpose a backward needs are found here,
    so each call of ``fn`` is the custom op alone (the drop-in convs' pass per forward).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    check_placement("x", like, graph)
    weight = edge_weight if edge_weight is not None else graph.edge_weight
    weight = check_edge_values("edge_weight", weight, graph, like.dtype)
    functions = ("spmm_forward", "sddmm") + (("spmm_max_backward",) if reduce == "max" else ())
    name = resolve("spmm", backend, like.device, functions)
    grad_on = torch.is_grad_enabled()
    if reduce == "max":  # the max backward walks the transpose for both gradients
        w_grad = weight is not None and weight.requires_grad
        needs_t = grad_on and (like.requires_grad or w_grad)
    else:
        needs_t = grad_on and like.requires_grad
    rowptr_t, col_t, perm_t = transpose_for(graph, needs_t)
    weight_t = None
    if needs_t and weight is not None and reduce != "max":
        weight_t = transposed_weight(graph, weight, perm_t)
    if reduce != "max":
        perm_t = None  # sum/mean need only the transposed rows (and weights)
    rowptr, col = graph.rowptr, graph.col
    # a max that no gradient will ask for skips the winning edges (their selects and the
    # [num_dst, F] index tensor): a third less time on the CPU
    op_reduce = "amax" if reduce == "max" and not needs_t else reduce

    def propagate(x: Tensor) -> Tensor:
        out, _ = spmm_call(
            rowptr, col, weight, x.contiguous(), op_reduce, rowptr_t, col_t, perm_t, weight_t, name
        )
        return out

    return propagate


def spmm(
    graph,
    x: Tensor,
    reduce: str = "sum",
    edge_weight: Optional[Tensor] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Sparse-dense product over a graph: ``out[i] = reduce_{j -> i} w_ji * x[j]``.

    Args:
        graph: a :class:`fastalign.Graph` (or anything ``Graph.coerce`` accepts).
        x: ``[num_src, F]`` source-node features.
        reduce: ``"sum"``, ``"mean"`` (divides by the in-degree) or ``"max"``; nodes with
            no in-edge get 0.
        edge_weight: ``[E]`` weights in the graph's internal order; by default the graph's
            own values, if any.
        backend: ``None``/``"auto"`` or one of ``"torch"``, ``"cpu"``, ``"triton"``,
            ``"cuda"``.

    Returns:
        ``[num_dst, F]``. Differentiable in ``x`` and ``edge_weight``.
    """
    graph = as_graph(graph, x)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    x = check_features("x", x, graph.num_src, graph, "source")
    return spmm_propagation(graph, x, reduce, edge_weight, backend)(x)
