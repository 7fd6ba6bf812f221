"""Adapter to the hand-written CUDA kernels of ``fastalign._C_cuda`` (csrc/cuda; built only
where torch has CUDA and a toolkit is found).

The extension registers the backend functions as ``torch.ops.fastalign_cuda.*`` for the
CUDA dispatch key and lists them in ``_C_cuda.FUNCTIONS``. The kernels take float32,
float16 and bfloat16 (float32 accumulation); this adapter sends float64 inputs, and
per-edge ("pair") ops whose feature rows are wider than a kernel tile holds, to the
reference, so every listed function accepts everything the reference does.
"""

from __future__ import annotations

import functools
import inspect

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


# backend function -> (when the kernel applies, given ``arg(name)`` -> that argument; the
# kernel call where it is not the fastalign_cuda op of the same name and arguments).
# Otherwise the reference runs, so every function accepts what the reference does.
def _x_fits(name):
    return lambda arg: _kernel_dtype(arg(name))


def _pair_rows_fit(name, *others):
    """The dtype fits and rows of ``name`` (and of ``others``) fit one pair-kernel tile."""
    def applies(arg):
        t = arg(name)
        return _kernel_dtype(t) and _pair_fits(t.dtype, t.size(1), *(arg(o).size(1) for o in others))
    return applies


def _sddmm_fits(arg):
    a, b = arg("a"), arg("b")
    return _kernel_dtype(a, b) and a.dtype == b.dtype and _pair_fits(a.dtype, a.size(1))


def _spmm_max_backward_kernel(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad):
    """grad_x gathered over the transpose (no atomics); grad_w by destination rows."""
    return _ops().spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out.to(x.dtype),
                                    need_weight_grad)


_KERNELS = {
    "spmm_forward": (_x_fits("x"), None),
    "spmm_max_backward": (_x_fits("x"), _spmm_max_backward_kernel),
    "sddmm": (_sddmm_fits, None),
    "gcn_aggregate": (_x_fits("x"), None),
    "edge_similarity": (_pair_rows_fit("x_dst"), None),
    "edge_similarity_backward": (_pair_rows_fit("x_dst"), None),
    "edge_softmax": (_x_fits("logits"), None),
    "edge_softmax_backward": (_x_fits("p"), None),
    "structure_kl_forward": (_pair_rows_fit("s_dst", "p_dst"), None),
    "structure_kl_backward": (_pair_rows_fit("s_dst", "p_dst"), None),
    "gat_aggregate_forward": (_x_fits("x"), None),
    "gat_aggregate_backward": (_x_fits("x"), None),
}


def _adapter(name: str, applies, kernel):
    """Backend function ``name``: the CUDA kernel where ``applies``, else the reference
    (same signature as the reference's)."""
    fallback = getattr(_ref, name)
    position = {p: k for k, p in enumerate(inspect.signature(fallback).parameters)}

    @functools.wraps(fallback)
    def run(*args, **kwargs):
        def arg(n):
            k = position[n]
            return args[k] if k < len(args) else kwargs[n]

        if not applies(arg):
            return fallback(*args, **kwargs)
        return (kernel or getattr(_ops(), name))(*args, **kwargs)

    run.__doc__ = f"CUDA kernel where it applies (float32/float16/bfloat16), else the reference's {name}."
    return run


for _name, (_applies, _kernel) in _KERNELS.items():
    globals()[_name] = _adapter(_name, _applies, _kernel)
