"""Adapter to the hand-written CUDA kernels of ``fastalign._C_cuda`` (csrc/cuda; built only
where torch has CUDA and a toolkit is found).

The extension registers kernels for the backend functions (``schemas.py``) as
``torch.ops.fastalign_cuda.*`` for the CUDA dispatch key; ``FUNCTIONS`` is what it
registers. The kernels take float32, float16 and bfloat16 (float32 accumulation); this
adapter sends float64 inputs, and per-edge ("pair") ops whose feature rows are wider than
a kernel tile holds, to the reference, so every listed function accepts everything the
reference does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import extensions, settings
from . import reference as _ref
from . import schemas

schemas.define("fastalign_cuda")
_C_cuda = extensions.load("_C_cuda")  # loading it registers the kernels

AVAILABLE = _C_cuda is not None
FUNCTIONS = schemas.registered("fastalign_cuda", "CUDA") if AVAILABLE else frozenset()

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
    _C_cuda.set_split(settings.cuda_split() or 0)  # read at every call, as every switch
    return torch.ops.fastalign_cuda


def _kernel_dtype(*tensors: Tensor) -> bool:
    return all(t.dtype in _KERNEL_DTYPES for t in tensors)


def _pair_fits(dtype: torch.dtype, *widths: int) -> bool:
    """Whether rows of these widths fit one tile of the pair kernels."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    if any(w % vec for w in widths):
        vec = 1
    return all(w <= _MAX_VECTORS * vec for w in widths)


def _pair_rows_fit(x: Tensor, *others: Tensor) -> bool:
    """The dtype fits and rows of ``x`` (and of ``others``) fit one pair-kernel tile."""
    return _kernel_dtype(x) and _pair_fits(x.dtype, x.size(1), *(o.size(1) for o in others))


# Each backend function: the fastalign_cuda op of that name where the kernel applies,
# else the reference (so every function accepts what the reference does).
def spmm_forward(rowptr, col, weight, x, reduce):
    if not _kernel_dtype(x):
        return _ref.spmm_forward(rowptr, col, weight, x, reduce)
    if reduce == "amax":  # the max kernel, its winners dropped (no kernel of its own yet)
        return _ops().spmm_forward(rowptr, col, weight, x, "max")[0], x.new_empty(0, dtype=torch.int64)
    return _ops().spmm_forward(rowptr, col, weight, x, reduce)


def spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad):
    """grad_x gathered over the transpose (no atomics); grad_w by destination rows."""
    if not _kernel_dtype(x):
        return _ref.spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad)
    return _ops().spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out.to(x.dtype),
                                    need_weight_grad)


def sddmm(rowptr, col, a, b):
    if not (_kernel_dtype(a, b) and a.dtype == b.dtype and _pair_fits(a.dtype, a.size(1))):
        return _ref.sddmm(rowptr, col, a, b)
    return _ops().sddmm(rowptr, col, a, b)


def gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias=None):
    if not _kernel_dtype(x):
        return _ref.gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias)
    return _ops().gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias)


def edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef):
    if not _pair_rows_fit(x_dst):
        return _ref.edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)
    return _ops().edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)


def edge_similarity_backward(rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree,
                             coef):
    args = (rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef)
    if not _pair_rows_fit(x_dst):
        return _ref.edge_similarity_backward(*args)
    return _ops().edge_similarity_backward(*args)


def edge_softmax(rowptr, logits):
    if not _kernel_dtype(logits):
        return _ref.edge_softmax(rowptr, logits)
    return _ops().edge_softmax(rowptr, logits)


def edge_softmax_backward(rowptr, p, grad_p):
    if not _kernel_dtype(p):
        return _ref.edge_softmax_backward(rowptr, p, grad_p)
    return _ops().edge_softmax_backward(rowptr, p, grad_p)


def structure_kl_forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    args = (rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau)
    if not _pair_rows_fit(s_dst, p_dst):
        return _ref.structure_kl_forward(*args)
    return _ops().structure_kl_forward(*args)


def structure_kl_backward(rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src, lse_s, lse_p, kl,
                          grad_kl, kernel, sigma, degree, coef, tau, peer_grad):
    args = (rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src, lse_s, lse_p, kl, grad_kl, kernel,
            sigma, degree, coef, tau, peer_grad)
    if not _pair_rows_fit(s_dst, p_dst):
        return _ref.structure_kl_backward(*args)
    return _ops().structure_kl_backward(*args)


def gat_aggregate_forward(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops):
    args = (rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops)
    if not _kernel_dtype(x):
        return _ref.gat_aggregate_forward(*args)
    return _ops().gat_aggregate_forward(*args)


def gat_aggregate_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
                           negative_slope, dropout, seed, add_self_loops):
    args = (rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out, negative_slope, dropout,
            seed, add_self_loops)
    if not _kernel_dtype(x):
        return _ref.gat_aggregate_backward(*args)
    return _ops().gat_aggregate_backward(*args)
