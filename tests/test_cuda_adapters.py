"""The CUDA backend's adapters (fastalign/backends/cuda.py), without a GPU: each sends
inputs its kernels take to the fastalign_cuda op of the same name (a stand-in records the
call here) and everything else to the reference, with the reference's signature."""

import inspect

import pytest
import torch

from fastalign import backends
from fastalign.backends import BACKEND_FUNCTIONS, reference
from fastalign.backends import cuda as cu
from helpers import case_graphs, CUDA_CASES, GPU_DRY_RUN


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def op(*args, **kwargs):
            self.calls.append(name)
            return name

        return op


@pytest.fixture
def ops(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(cu, "_ops", lambda: rec)
    return rec


def test_every_backend_function_has_an_adapter_with_the_references_parameters():
    for name in BACKEND_FUNCTIONS:
        fn = getattr(cu, name)
        assert list(inspect.signature(fn).parameters) == list(inspect.signature(getattr(reference, name)).parameters)


def _args(dtype, width=4):
    g = dict(case_graphs())["square"]
    x = torch.randn(g.num_src, width).to(dtype)
    return g, x


@pytest.mark.parametrize("dtype,kernel", [(torch.float32, True), (torch.bfloat16, True), (torch.float64, False)])
def test_dtype_decides(ops, dtype, kernel):
    g, x = _args(dtype)
    out = cu.spmm_forward(g.rowptr, g.col, None, x, "sum")
    assert (out == "spmm_forward") == kernel
    if not kernel:  # the reference's result
        torch.testing.assert_close(out[0], reference.spmm_forward(g.rowptr, g.col, None, x, "sum")[0])
    h = x.view(-1, 2, 2)
    a = torch.randn(g.num_src, 2).to(dtype)
    got = cu.gat_aggregate_forward(g.rowptr, g.col, h, a, a, 0.2, 0.0, 0, True)
    assert (got == "gat_aggregate_forward") == kernel
    assert ops.calls == (["spmm_forward", "gat_aggregate_forward"] if kernel else [])


def test_pair_kernels_fall_back_for_rows_wider_than_a_tile(ops):
    g, x = _args(torch.float32, width=8)
    assert cu.edge_similarity(g.rowptr, g.col, x, x, "l1", 1.0, 2, 1.0) == "edge_similarity"
    wide = torch.randn(g.num_src, 4097)  # wider than 128 vectors (and not a multiple of a vector)
    out = cu.edge_similarity(g.rowptr, g.col, wide, wide, "l1", 1.0, 2, 1.0)
    torch.testing.assert_close(out, reference.edge_similarity(g.rowptr, g.col, wide, wide, "l1", 1.0, 2, 1.0))
    # sddmm also needs one dtype on both sides
    assert cu.sddmm(g.rowptr, g.col, x, x) == "sddmm"
    out = cu.sddmm(g.rowptr, g.col, x, x.to(torch.bfloat16))
    assert isinstance(out, torch.Tensor)
    assert ops.calls == ["edge_similarity", "sddmm"]


def test_keyword_arguments_are_seen(ops):
    g, x = _args(torch.float64)
    out = cu.spmm_forward(g.rowptr, g.col, weight=None, x=x, reduce="mean")
    torch.testing.assert_close(out[0], reference.spmm_forward(g.rowptr, g.col, None, x, "mean")[0])
    assert cu.spmm_forward(g.rowptr, g.col, weight=None, x=x.float(), reduce="mean") == "spmm_forward"


# ------------------------------------------------------------------ CUDA, on a device
# The backend as a whole on a GPU (its kernels' cases: tests/ops, `pytest -m cuda`).
if CUDA_CASES and not GPU_DRY_RUN:
    from cuda_gpu import cuda_case, DEV

    @cuda_case
    def test_cuda_lists_every_backend_function():
        assert backends.get("cuda").FUNCTIONS == frozenset(BACKEND_FUNCTIONS)
        assert backends.resolve("spmm", "cuda", torch.device(DEV), ("spmm_forward",)) == "cuda"
