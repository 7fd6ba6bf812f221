"""The wrapper every public launcher of fastalign.kernels goes through.

* Triton launches a kernel on the *current* CUDA device, not on its arguments' device:
  a tensor on cuda:1 launched from a process whose current device is cuda:0 fails or
  reads the wrong memory. Each launcher (with every allocation, plan and timing it
  makes) runs under ``torch.cuda.device`` of its first tensor argument.
* The kernels index raw pointers: every tensor argument (index tensors included) is made
  contiguous first (a no-op for tensors that already are).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Optional

import torch


def input_device(args) -> Optional[torch.device]:
    """The device of the first tensor among ``args``."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def device_guard(device: Optional[torch.device]):
    """``torch.cuda.device(device)`` for a CUDA device, else a no-op context."""
    if device is not None and device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _contiguous(a: Any) -> Any:
    return a.contiguous() if isinstance(a, torch.Tensor) else a


def launcher(fn: Callable) -> Callable:
    """Mark ``fn`` as a public launcher: contiguous tensors, run on their device."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        args = tuple(_contiguous(a) for a in args)
        kwargs = {k: _contiguous(v) for k, v in kwargs.items()}
        with device_guard(input_device(args + tuple(kwargs.values()))):
            return fn(*args, **kwargs)

    run.is_launcher = True
    return run
