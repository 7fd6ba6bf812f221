"""What the Triton sections of the op tests share: the Triton backend and the reference
called directly, tiny graphs, float64 features (kernels and reference must agree to
rounding). Imported only under the Triton interpreter (TRITON_INTERPRET=1 set before
triton is imported: triton.jit decides per kernel, at import, whether it is interpreted)."""

import importlib
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    raise ImportError("triton_interpreter needs TRITON_INTERPRET=1 before triton is imported")

from fastalign.kernels import segments, spmm as kspmm  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from helpers import case_graphs  # noqa: E402

if not isinstance(kspmm.agg_kernel, InterpretedFunction):  # imported too early
    pytest.skip("fastalign.kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

__all__ = ["close", "graph", "interpreted", "KERNELS", "NO_SPLIT", "ref", "segments", "SPLITS", "tb"]

ref = importlib.import_module("fastalign.backends.reference")
tb = importlib.import_module("fastalign.backends.triton")
interpreted = pytest.mark.triton_interpreter

GRAPHS = dict(case_graphs())
KERNELS = {  # kernel: (sigma, degree, coef)
    "l1": (2.0, 2, 1.0), "rbf": (1.5, 2, 1.0), "linear": (1.0, 2, 1.0),
    "poly": (1.0, 3, 0.5), "cosine": (1.0, 2, 1.0),
}
NO_SPLIT = 10**9
SPLITS = (NO_SPLIT, 4)  # 4: hub rows and rows of more than 4 edges cut into segments


def close(a, b, tol=1e-10):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y, tol)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if a.numel():
        torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)


def graph(name, index_dtype=None):
    g = GRAPHS[name]
    return g.to(index_dtype=index_dtype) if index_dtype is not None else g
