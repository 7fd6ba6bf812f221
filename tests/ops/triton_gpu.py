"""What the Triton-on-a-GPU sections of the op tests share: the Triton backend and the
reference called directly on the same device; a power-law graph, a hub of in-degree
60,000 (beyond Reddit's ~50k) and a source of out-degree 60,000 (a long row of the
transpose); features; the relative error of a whole output, ||out - ref|| / ||ref||,
against a few units in the last place of the output dtype. Low-precision inputs are
compared with the reference run on the same inputs (both accumulate in float32).

Imported only where helpers.TRITON_GPU_CASES holds. In the dry run
(FASTALIGN_GPU_TESTS_ON_CPU=1 TRITON_INTERPRET=1, no GPU) the kernels run interpreted on
CPU tensors, on graphs a tenth the size, float32 only (the interpreter's float16 /
bfloat16 arithmetic is wrong): about 20 minutes."""

import importlib

import pytest
import torch

from fastalign import Graph
from helpers import GPU_DRY_RUN, GPU_DTYPES, REL_TOL, rel_err, TRITON_GPU_CASES, power_law_edge_index

if not TRITON_GPU_CASES:  # pragma: no cover
    raise ImportError("triton_gpu needs a CUDA device, or FASTALIGN_GPU_TESTS_ON_CPU=1 with TRITON_INTERPRET=1")

__all__ = ["DEV", "dtypes", "feats", "HUB", "hub", "KERNELS", "params", "power_law", "REF", "rel_close",
           "SCALE", "src_hub", "TB", "triton_gpu_case"]

REF = importlib.import_module("fastalign.backends.reference")
TB = importlib.import_module("fastalign.backends.triton")
DEV = "cpu" if GPU_DRY_RUN else "cuda"
SCALE = 10 if GPU_DRY_RUN else 1  # graph sizes divided by this
HUB = 60_000 // SCALE
triton_gpu_case = pytest.mark.triton_gpu
KERNELS = {"l1": (None, 2, 1.0), "rbf": (None, 2, 1.0), "linear": (1.0, 2, 1.0),
           "poly": (1.0, 3, 1.0), "cosine": (1.0, 2, 1.0)}


def dtypes(cases=GPU_DTYPES):
    """The parameter values (dtypes, or tuples starting with one) this run can check:
    float32 only in the dry run."""
    first = lambda c: c[0] if isinstance(c, tuple) else c  # noqa: E731
    return [c for c in cases if not GPU_DRY_RUN or first(c) == torch.float32]


def params(kernel, width):
    sigma, degree, coef = KERNELS[kernel]
    if sigma is None:  # keep similarities well scaled
        sigma = float(width) if kernel == "l1" else float(width) ** 0.5
    return sigma, degree, coef


def rel_close(out, ref, dtype, what=""):
    if isinstance(out, (tuple, list)):
        for i, (a, b) in enumerate(zip(out, ref)):
            rel_close(a, b, dtype, f"{what}[{i}]")
        return
    assert out.shape == ref.shape and out.dtype == ref.dtype, (what, out.shape, ref.shape, out.dtype, ref.dtype)
    if out.numel() == 0 or not out.is_floating_point():
        assert torch.equal(out, ref), what
        return
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), fin), f"{what}: non-finite pattern differs"
    err = rel_err(out[fin], ref[fin])
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3g} > {REL_TOL[dtype]}"


_CACHE = {}


def power_law(index_dtype, n=3000 // SCALE, e=40_000 // SCALE):
    key = ("pl", index_dtype, n, e)
    if key not in _CACHE:
        ei = power_law_edge_index(n, e, seed=1).to(index_dtype)
        _CACHE[key] = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
    return _CACHE[key]


def hub(index_dtype, degree=HUB, n=5000 // SCALE):
    """A hub of in-degree 60,000 beside a power-law graph."""
    key = ("hub", index_dtype)
    if key not in _CACHE:
        gen = torch.Generator().manual_seed(3)
        hub_e = torch.stack([torch.randint(0, n, (degree,), generator=gen), torch.zeros(degree, dtype=torch.long)])
        ei = torch.cat([hub_e, power_law_edge_index(n, 30_000 // SCALE, seed=2)], 1).to(index_dtype)
        _CACHE[key] = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
    return _CACHE[key]


def src_hub(index_dtype, degree=HUB, n=5000 // SCALE):
    """A source of out-degree 60,000 (a hub row of the transpose, with duplicate edges)
    beside a power-law graph: the max backward splits it into segments."""
    key = ("src_hub", index_dtype)
    if key not in _CACHE:
        gen = torch.Generator().manual_seed(4)
        hub_e = torch.stack([torch.zeros(degree, dtype=torch.long), torch.randint(0, n, (degree,), generator=gen)])
        ei = torch.cat([hub_e, power_law_edge_index(n, 30_000 // SCALE, seed=5)], 1).to(index_dtype)
        _CACHE[key] = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
    return _CACHE[key]


def feats(n, width, dtype, seed):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    return torch.randn(n, width, generator=gen, device=DEV).to(dtype)
