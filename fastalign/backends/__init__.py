"""Backend registry and automatic choice.

Every op has a pure-PyTorch reference (``torch``) that defines its semantics. Compiled
backends (``cpu``: C++/OpenMP, ``triton`` and ``cuda``: GPU kernels) implement some or
all of the backend functions of ``schemas.SCHEMAS``; each backend module states which ones
in ``FUNCTIONS`` and whether it can run on a device in ``supports(device)``.

Choice: an explicit ``backend=`` argument wins, then the ``FASTALIGN_BACKEND``
environment variable, then the first backend in ``PREFERENCE[device type]`` that is
available and implements the op.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType
from typing import Optional

import torch

from .. import settings
from .schemas import BACKEND_FUNCTIONS, OPTIONAL_FUNCTIONS

BACKENDS = ("torch", "cpu", "triton", "cuda")
ENV_VAR = settings.BACKEND

# Automatic choice per device type, best first; the reference is always the last resort.
PREFERENCE = {
    "cpu": ("cpu", "torch"),
    "cuda": ("triton", "cuda", "torch"),
}

_MODULES = {
    "torch": "fastalign.backends.reference",
    "cpu": "fastalign.backends.cpu",
    "triton": "fastalign.backends.triton",
    "cuda": "fastalign.backends.cuda",
}


@lru_cache(maxsize=None)
def _load(name: str) -> Optional[ModuleType]:
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError:
        return None
    if not getattr(module, "AVAILABLE", True):
        return None
    return module


def get(name: str) -> ModuleType:
    """The backend module ``name``; raises if it is not available in this install."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    module = _load(name)
    if module is None:
        from ..extensions import why_unavailable

        why = why_unavailable(name)
        if name == "triton" and why is None:
            why = "triton is not installed (pip install triton)"
        raise ValueError(f"backend {name!r} is not available in this installation" + (f": {why}" if why else ""))
    return module


def is_available(name: str, device: Optional[torch.device] = None) -> bool:
    module = _load(name) if name in BACKENDS else None
    if module is None:
        return False
    return device is None or module.supports(torch.device(device))


def implements(name: str, function: str) -> bool:
    module = _load(name)
    return module is not None and function in module.FUNCTIONS


def _constant_in_compiled_code(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing torch._dynamo at
    import time (2-3 s, paid by every ``fastalign`` command): it only sets the marker
    dynamo reads when it traces a call of ``fn`` (tests/test_custom_ops.py checks that
    torch's decorator still sets just this)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_in_compiled_code
def has_fast_path(name: str, functions: tuple, dtype: torch.dtype) -> bool:
    """Whether backend ``name`` has the optional ``functions`` for inputs of ``dtype``
    (listed in its ``FAST_PATH_DTYPES``). Decided at trace time under torch.compile."""
    module = _load(name)
    return (
        module is not None
        and all(f in module.FUNCTIONS for f in functions)
        and dtype in getattr(module, "FAST_PATH_DTYPES", ())
    )


def structure_kl_state_dtype(name: str, dtype: torch.dtype):
    """(kl dtype, log-sum-exp dtype) of backend ``name``'s structure-KL forward for
    features of ``dtype`` (the fake kernels must know them): the backend's
    ``STRUCTURE_KL_STATE_DTYPE`` entry, else kl in ``dtype`` and the log-sum-exps in
    float64 for float64, float32 otherwise. The public op returns kl in ``dtype``."""
    module = _load(name)
    table = getattr(module, "STRUCTURE_KL_STATE_DTYPE", {}) if module is not None else {}
    return table.get(dtype, (dtype, torch.float64 if dtype == torch.float64 else torch.float32))


@_constant_in_compiled_code
def cosine_overflow_safe(name: str) -> bool:
    """Whether backend ``name`` computes the cosine kernel without overflow for any finite
    float32 input (its ``COSINE_OVERFLOW_SAFE``, True unless a backend says otherwise)."""
    module = _load(name)
    return bool(getattr(module, "COSINE_OVERFLOW_SAFE", True)) if module is not None else True


def available_backends(device="cpu") -> list:
    """The backends that can run on ``device`` in this installation."""
    return [b for b in BACKENDS if is_available(b, device)]


@_constant_in_compiled_code
def resolve(op: str, backend: Optional[str], device: torch.device, functions=()) -> str:
    """The concrete backend name to run ``op`` (needing backend ``functions``) on ``device``.

    Under torch.compile the choice is made once, at trace time, and baked into the graph.
    """
    functions = functions or (op,)
    requested = backend if backend not in (None, "auto") else settings.backend()
    if requested not in (None, "auto"):
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; choose one of {BACKENDS} or 'auto'")
        module = get(requested)
        if not module.supports(device):
            raise ValueError(f"backend {requested!r} cannot run on device {device}")
        missing = [f for f in functions if f not in module.FUNCTIONS]
        if missing:
            raise ValueError(f"backend {requested!r} does not implement {op} ({', '.join(missing)})")
        return requested
    order = PREFERENCE.get(device.type, ("torch",))
    for name in order:
        module = _load(name)
        if module is not None and module.supports(device) and all(
            f in module.FUNCTIONS for f in functions
        ):
            return name
    return "torch"
