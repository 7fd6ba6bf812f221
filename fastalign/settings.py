"""Every environment variable fastalign reads at run time, read here and nowhere else.

=================================  ==========================  =============================================
variable                           values (default first)      effect
=================================  ==========================  =============================================
``FASTALIGN_DATA``                 a folder                    data root when no ``root``/``--root`` is given
                                                               (else ``~/.cache/fastalign/datasets``)
``FASTALIGN_BACKEND``              unset, torch, cpu,          the backend of every op called with
                                   triton, cuda, auto          ``backend=None`` (the automatic choice)
``FASTALIGN_TRITON_SKL_BACKWARD``  recompute, atomic           Triton structure-KL backward: two passes,
                                                               deterministic, or one with float32 atomics
``FASTALIGN_TRITON_PACK_ROWS``     1, 0                        Triton: several short rows per program, or
                                                               one row per program everywhere
``FASTALIGN_TRITON_AUTOTUNE``      0, 1                        Triton (CUDA): time a few launch
                                                               configurations at an op's first call
``FASTALIGN_TRITON_SPLIT``         unset, a positive int       Triton: the longest row one program takes
                                                               (default: from the mean degree)
``FASTALIGN_CUDA_SPLIT``           unset, a positive int       CUDA kernels: the longest row piece one tile
                                                               takes (default: from the edge count)
``TRITON_INTERPRET``               unset, 1                    Triton's own switch: kernels on CPU tensors
                                                               (the Triton backend then supports the CPU)
``THP_MEM_ALLOC_ENABLE``           unset, 1                    torch's own switch (large CPU tensors on 2 MiB
                                                               pages); ``fastalign bench`` only records it
=================================  ==========================  =============================================

Read when used (not at import), so a value set in a running process takes effect at
the next call. Build switches (``FASTALIGN_NO_CUDA``, ``FASTALIGN_BUILD_OPT``) are
read by setup.py; library code never writes ``os.environ``.
"""

from __future__ import annotations

import os
from typing import Optional

DATA = "FASTALIGN_DATA"
BACKEND = "FASTALIGN_BACKEND"


def data_root() -> Optional[str]:
    return os.environ.get(DATA) or None


def backend() -> Optional[str]:
    return os.environ.get(BACKEND) or None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def torch_huge_pages() -> bool:
    """Whether torch's CPU allocator puts large tensors on huge pages (its own switch,
    read here only for the benchmarks' records)."""
    return os.environ.get("THP_MEM_ALLOC_ENABLE", "").strip().lower() in ("1", "true", "on", "yes")


def triton_atomic_skl_backward() -> bool:
    return os.environ.get("FASTALIGN_TRITON_SKL_BACKWARD", "recompute") == "atomic"


def triton_pack_rows() -> bool:
    return os.environ.get("FASTALIGN_TRITON_PACK_ROWS", "1") != "0"


def triton_autotune() -> bool:
    return os.environ.get("FASTALIGN_TRITON_AUTOTUNE", "0") == "1"


def triton_split() -> Optional[int]:
    return _positive_int("FASTALIGN_TRITON_SPLIT")


def cuda_split() -> Optional[int]:
    return _positive_int("FASTALIGN_CUDA_SPLIT")


def _positive_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a positive int, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return n
