"""Adapter to the Triton kernels in ``fastalign.kernels`` (CUDA tensors; CPU tensors
only under the Triton interpreter, TRITON_INTERPRET=1, for tests)."""

from __future__ import annotations

import os

import torch

try:
    from .. import kernels as _kernels
    AVAILABLE = bool(_kernels.AVAILABLE)
except ImportError:  # pragma: no cover
    _kernels = None
    AVAILABLE = False

FUNCTIONS = frozenset()


def supports(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
