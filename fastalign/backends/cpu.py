"""Adapter to the C++/OpenMP kernels of the compiled extension ``fastalign._C``.

Each backend function listed in ``FUNCTIONS`` forwards to the extension; functions the
extension does not provide are not listed, so the automatic choice falls back to the
reference for them.
"""

from __future__ import annotations

import torch

try:
    from .. import _C  # noqa: F401
except ImportError:  # built without the extension
    _C = None

AVAILABLE = _C is not None
FUNCTIONS = frozenset(getattr(_C, "FUNCTIONS", ())) if _C is not None else frozenset()


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def __getattr__(name):
    if name in FUNCTIONS:
        return getattr(_C, name)
    raise AttributeError(name)
