"""Adapter to the C++/OpenMP kernels (csrc/cpu), registered by ``fastalign._C`` as
``torch.ops.fastalign_cpu.<name>`` for the CPU dispatch key.

The kernels take float32, float64, float16 and bfloat16 features and int32/int64
indices. The half types are read and written as stored (half the bytes of float32) and
computed in float32, as the reference (``fastalign.backends.reference``) defines them.
``FUNCTIONS`` lists what the extension registers; functions it does not provide are not
listed, so the automatic choice falls back to the reference for them.
"""

from __future__ import annotations

import functools

import torch

from .. import extensions
from . import reference

_C = extensions.load("_C")  # loading the library registers the fastalign_cpu ops

AVAILABLE = _C is not None
FUNCTIONS = frozenset(getattr(_C, "FUNCTIONS", ())) if _C is not None else frozenset()
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The dtypes of the optional fast paths; their gradient state is float32 for the half
# types (``fastalign.ops._common.acc_dtype``).
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


def _kernel(name: str):
    """Backend function ``name``: the fastalign_cpu op of that name, with the reference's
    signature (the kernels take every floating dtype the ops accept)."""

    @functools.wraps(getattr(reference, name))
    def run(*args, **kwargs):
        return getattr(_ops(), name)(*args, **kwargs)

    run.__doc__ = f"The C++ kernel of the reference's {name}."
    return run


for _name in ("spmm_forward", "sddmm", "gcn_aggregate", "edge_similarity", "edge_similarity_backward",
              "edge_softmax", "edge_softmax_backward", "structure_kl_forward", "structure_kl_backward",
              "gat_aggregate_forward", "gat_aggregate_backward"):
    globals()[_name] = _kernel(_name)


def spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad):
    """The C++ kernel of the reference's spmm_max_backward. It walks destination rows
    (one thread per row range, no atomics): it takes no transpose."""
    return _ops().spmm_max_backward(col, weight, x, arg, grad_out, need_weight_grad)


def structure_kl_forward_with_grad_state(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    """The forward plus the student's gradient state (in float32 for half-type
    embeddings; see ``fastalign.backends.OPTIONAL_FUNCTIONS``)."""
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
