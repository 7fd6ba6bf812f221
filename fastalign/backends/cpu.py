"""Adapter to the C++/OpenMP kernels (csrc/cpu) of ``fastalign._C``, registered as
``torch.ops.fastalign_cpu.<name>`` for the CPU dispatch key (schemas: ``schemas.py``).

The kernels take float32, float64, float16 and bfloat16 features and int32/int64
indices. The half types are read and written as stored (half the bytes of float32) and
computed in float32, as the reference (``fastalign.backends.reference``) defines them.
``FUNCTIONS`` is what the extension registers; functions it does not provide are not
listed, so the automatic choice falls back to the reference for them.
"""

from __future__ import annotations

import torch

from .. import extensions
from . import schemas

schemas.define("fastalign_cpu")
_C = extensions.load("_C")  # loading the library registers the kernels

AVAILABLE = _C is not None
FUNCTIONS = schemas.registered("fastalign_cpu", "CPU") if AVAILABLE else frozenset()
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The dtypes of the optional fast paths; their gradient state is float32 for the half
# types (``fastalign.validation.acc_dtype``).
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


# Each backend function is the fastalign_cpu op of that name, same arguments.
def spmm_forward(rowptr, col, weight, x, reduce):
    return _ops().spmm_forward(rowptr, col, weight, x, reduce)


def spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad):
    """Walks destination rows (one thread per row range, no atomics): the transpose is
    not used."""
    return _ops().spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad)


def sddmm(rowptr, col, a, b):
    return _ops().sddmm(rowptr, col, a, b)


def gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias=None):
    return _ops().gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias)


def edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef):
    return _ops().edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)


def edge_similarity_backward(rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree,
                             coef):
    return _ops().edge_similarity_backward(rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel,
                                           sigma, degree, coef)


def edge_softmax(rowptr, logits):
    return _ops().edge_softmax(rowptr, logits)


def edge_softmax_backward(rowptr, p, grad_p):
    return _ops().edge_softmax_backward(rowptr, p, grad_p)


def structure_kl_forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    return _ops().structure_kl_forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau)


def structure_kl_backward(rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src, lse_s, lse_p, kl,
                          grad_kl, kernel, sigma, degree, coef, tau, peer_grad):
    return _ops().structure_kl_backward(rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src, lse_s,
                                        lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad)


def structure_kl_forward_with_grad_state(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    """The forward plus the student's gradient state (in float32 for half-type
    embeddings; see ``schemas.OPTIONAL_SCHEMAS``)."""
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


def gat_aggregate_forward(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops):
    return _ops().gat_aggregate_forward(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed,
                                        add_self_loops)


def gat_aggregate_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
                           negative_slope, dropout, seed, add_self_loops):
    return _ops().gat_aggregate_backward(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse,
                                         grad_out, negative_slope, dropout, seed, add_self_loops)


def linear(x, weight, bias):
    """``x w^T + bias``: the AVX-512 kernel for float32 and 16, 32, 48 or 64 outputs,
    torch's product (``at::linear``) for everything else."""
    return _ops().linear(x, weight, bias)
