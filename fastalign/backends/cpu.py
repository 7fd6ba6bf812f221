"""Adapter to the C++/OpenMP kernels (csrc/cpu), registered by ``fastalign._C`` as
``torch.ops.fastalign_cpu.<name>`` for the CPU dispatch key.

The kernels take float32/float64 features and int32/int64 indices. float16/bfloat16
inputs go to the reference backend (``fastalign.backends.reference``), which accumulates them
in float32. ``FUNCTIONS`` lists what the extension registers; functions it does not
provide are not listed, so the automatic choice falls back to the reference for them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import extensions
from . import reference

_C = extensions.load("_C")  # loading the library registers the fastalign_cpu ops

AVAILABLE = _C is not None
FUNCTIONS = frozenset(getattr(_C, "FUNCTIONS", ())) if _C is not None else frozenset()
KERNEL_DTYPES = (torch.float32, torch.float64)
# The dtypes of the optional fast paths (which have no reference fallback).
FAST_PATH_DTYPES = KERNEL_DTYPES
# The kernels keep the structure KL's per-node state (kl and the log-sum-exps) in double
# whatever the features' dtype: at logits of ~1e7 a float32 log-sum-exp is off by ~1 and
# so would be the backward's log p, and the peer gradient's log q - log p - kl cancels
# to far below a float32 kl's rounding.
STRUCTURE_KL_STATE_DTYPE = {d: (torch.float64, torch.float64) for d in KERNEL_DTYPES}


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def _ops():
    return torch.ops.fastalign_cpu


def spmm_forward(rowptr: Tensor, col: Tensor, weight: Optional[Tensor], x: Tensor, reduce: str):
    if x.dtype not in KERNEL_DTYPES:
        return reference.spmm_forward(rowptr, col, weight, x, reduce)
    return _ops().spmm_forward(rowptr, col, weight, x, reduce)


def spmm_max_backward(
    col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad: bool
):
    if x.dtype not in KERNEL_DTYPES:
        return reference.spmm_max_backward(
            col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad
        )
    # The C++ kernel walks destination rows (one thread per row range, no atomics): it
    # takes no transpose.
    return _ops().spmm_max_backward(col, weight, x, arg, grad_out, need_weight_grad)


def sddmm(rowptr, col, a, b):
    if a.dtype not in KERNEL_DTYPES:
        return reference.sddmm(rowptr, col, a, b)
    return _ops().sddmm(rowptr, col, a, b)


def gcn_aggregate(rowptr, col, weight, dis, loop_weight, x):
    if x.dtype not in KERNEL_DTYPES:
        return reference.gcn_aggregate(rowptr, col, weight, dis, loop_weight, x)
    return _ops().gcn_aggregate(rowptr, col, weight, dis, loop_weight, x)


def edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef):
    if x_dst.dtype not in KERNEL_DTYPES:
        return reference.edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)
    return _ops().edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)


def edge_similarity_backward(
    rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef
):
    args = (rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef)
    if x_dst.dtype not in KERNEL_DTYPES:
        return reference.edge_similarity_backward(*args)
    return _ops().edge_similarity_backward(*args)


def edge_softmax(rowptr, logits):
    if logits.dtype not in KERNEL_DTYPES:
        return reference.edge_softmax(rowptr, logits)
    return _ops().edge_softmax(rowptr, logits)


def edge_softmax_backward(rowptr, p, grad_p):
    if p.dtype not in KERNEL_DTYPES:
        return reference.edge_softmax_backward(rowptr, p, grad_p)
    return _ops().edge_softmax_backward(rowptr, p, grad_p)


def structure_kl_forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    args = (rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau)
    if s_dst.dtype not in KERNEL_DTYPES:
        return reference.structure_kl_forward(*args)
    return _ops().structure_kl_forward(*args)


def structure_kl_forward_with_grad_state(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    """The forward plus the student's gradient state (float32/float64 only; see
    ``fastalign.backends.OPTIONAL_FUNCTIONS``)."""
    return _ops().structure_kl_forward_with_grad_state(
        rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau
    )


def structure_kl_student_backward(
    rowptr_t, col_t, perm_t, s_dst, s_src, dst_grad, src_coef, grad_kl, kernel, sigma, degree, coef, tau,
    combined,
):
    return _ops().structure_kl_student_backward(
        rowptr_t, col_t, perm_t, s_dst, s_src, dst_grad, src_coef, grad_kl, kernel, sigma, degree, coef, tau,
        combined,
    )


def structure_kl_backward(
    rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
    lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad,
):
    args = (rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
            lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad)
    if s_dst.dtype not in KERNEL_DTYPES:
        return reference.structure_kl_backward(*args)
    return _ops().structure_kl_backward(*args)
