"""Triton GPU kernels of fastalign (installed as ``fastalign.kernels``).

Importable without triton; ``AVAILABLE`` says whether triton is there.
"""

try:
    import triton  # noqa: F401

    AVAILABLE = True
except ImportError:  # pragma: no cover - triton is optional
    AVAILABLE = False
