"""Adapter to the hand-written CUDA kernels of ``fastalign._C_cuda`` (csrc/cuda; built only
where torch has CUDA and a toolkit is found).

The extension registers the backend functions as ``torch.ops.fastalign_cuda.*`` for the
CUDA dispatch key and lists them in ``_C_cuda.FUNCTIONS``. The kernels take float32,
float16 and bfloat16 (float32 accumulation); this adapter sends float64 inputs, and
per-edge ("pair") ops whose feature rows are wider than a kernel tile holds, to the
reference, so every listed function accepts everything the reference does.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import extensions
from . import reference as _ref

_C_cuda = extensions.load("_C_cuda")  # loading it registers torch.ops.fastalign_cuda

AVAILABLE = _C_cuda is not None
FUNCTIONS = frozenset(getattr(_C_cuda, "FUNCTIONS", ())) if _C_cuda is not None else frozenset()

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# A pair-kernel tile holds a whole feature row: 128 vectors of 16 bytes, or 128
# elements when the width is not a multiple of a vector (csrc/cuda/kernels/pair.cuh).
_MAX_VECTORS = 128


# cosine's sums of squares are float32 for 16/32-bit features: the ops refuse entries
# large enough to overflow them (fastalign.ops._common.check_cosine_range)
COSINE_OVERFLOW_SAFE = False


def supports(device: torch.device) -> bool:
    return device.type == "cuda"


def _ops():
    return torch.ops.fastalign_cuda


def _kernel_dtype(*tensors: Tensor) -> bool:
    return all(t.dtype in _KERNEL_DTYPES for t in tensors)


def _pair_fits(dtype: torch.dtype, *widths: int) -> bool:
    """Whether rows of these widths fit one tile of the pair kernels."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    if any(w % vec for w in widths):
        vec = 1
    return all(w <= _MAX_VECTORS * vec for w in widths)


# --------------------------------------------------------------------------- spmm
def spmm_forward(rowptr, col, weight: Optional[Tensor], x: Tensor, reduce: str):
    if not _kernel_dtype(x):
        return _ref.spmm_forward(rowptr, col, weight, x, reduce)
    return _ops().spmm_forward(rowptr, col, weight, x, reduce)


def spmm_max_backward(
    col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad: bool
):
    """grad_x gathered over the transpose (no atomics); grad_w by destination rows."""
    args = (col, rowptr_t, col_t, perm_t, weight, x, arg)
    if not _kernel_dtype(x):
        return _ref.spmm_max_backward(*args, grad_out, need_weight_grad)
    return _ops().spmm_max_backward(*args, grad_out.to(x.dtype), need_weight_grad)


def sddmm(rowptr, col, a: Tensor, b: Tensor) -> Tensor:
    if not _kernel_dtype(a, b) or a.dtype != b.dtype or not _pair_fits(a.dtype, a.size(1)):
        return _ref.sddmm(rowptr, col, a, b)
    return _ops().sddmm(rowptr, col, a, b)


def gcn_aggregate(rowptr, col, weight, dis, loop_weight, x):
    if not _kernel_dtype(x):
        return _ref.gcn_aggregate(rowptr, col, weight, dis, loop_weight, x)
    return _ops().gcn_aggregate(rowptr, col, weight, dis, loop_weight, x)


# --------------------------------------------------------------------------- similarity
def edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef):
    if not _kernel_dtype(x_dst) or not _pair_fits(x_dst.dtype, x_dst.size(1)):
        return _ref.edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)
    return _ops().edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)


def edge_similarity_backward(
    rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef
):
    if not _kernel_dtype(x_dst) or not _pair_fits(x_dst.dtype, x_dst.size(1)):
        return _ref.edge_similarity_backward(
            rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef
        )
    return _ops().edge_similarity_backward(
        rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef
    )


# --------------------------------------------------------------------------- softmax
def edge_softmax(rowptr, logits):
    if not _kernel_dtype(logits):
        return _ref.edge_softmax(rowptr, logits)
    return _ops().edge_softmax(rowptr, logits)


def edge_softmax_backward(rowptr, p, grad_p):
    if not _kernel_dtype(p):
        return _ref.edge_softmax_backward(rowptr, p, grad_p)
    return _ops().edge_softmax_backward(rowptr, p, grad_p)


# --------------------------------------------------------------------------- structure KL
def structure_kl_forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    if not _kernel_dtype(s_dst) or not _pair_fits(s_dst.dtype, s_dst.size(1), p_dst.size(1)):
        return _ref.structure_kl_forward(
            rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau
        )
    return _ops().structure_kl_forward(
        rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau
    )


def structure_kl_backward(
    rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
    lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad,
):
    if not _kernel_dtype(s_dst) or not _pair_fits(s_dst.dtype, s_dst.size(1), p_dst.size(1)):
        return _ref.structure_kl_backward(
            rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
            lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad,
        )
    return _ops().structure_kl_backward(
        rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
        lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad,
    )


# --------------------------------------------------------------------------- graph attention
def gat_aggregate_forward(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops):
    if not _kernel_dtype(x):
        return _ref.gat_aggregate_forward(
            rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops
        )
    return _ops().gat_aggregate_forward(
        rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops
    )


def gat_aggregate_backward(
    rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
    negative_slope, dropout, seed, add_self_loops,
):
    if not _kernel_dtype(x):
        return _ref.gat_aggregate_backward(
            rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
            negative_slope, dropout, seed, add_self_loops,
        )
    return _ops().gat_aggregate_backward(
        rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
        negative_slope, dropout, seed, add_self_loops,
    )
