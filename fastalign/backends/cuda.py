"""Adapter to the hand-written CUDA kernels of ``fastalign._C_cuda`` (built only where
torch has CUDA and a toolkit is found)."""

from __future__ import annotations

import torch

try:
    from .. import _C_cuda  # noqa: F401
except ImportError:
    _C_cuda = None

AVAILABLE = _C_cuda is not None
FUNCTIONS = frozenset(getattr(_C_cuda, "FUNCTIONS", ())) if _C_cuda is not None else frozenset()


def supports(device: torch.device) -> bool:
    return device.type == "cuda"
