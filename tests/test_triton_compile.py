"""Every Triton kernel compiles for Hopper (sm_90), for each feature dtype and index dtype
specialisation the backend launches: a kernel that does not compile cannot land.

No GPU needed: ``triton.compile`` with an explicit GPUTarget runs the whole pipeline
(TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) on the CPU. Skipped under the interpreter
(the kernels are then InterpretedFunctions, which have no compiler front end)."""

from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":  # pragma: no cover
    pytest.skip("kernels are interpreted in this process", allow_module_level=True)

import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastalign.kernels import edge_similarity, edge_softmax, gat_aggregate, segments, spmm, structure_kl  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)

# argument name -> type class
IDX = {"rowptr", "col", "idx", "rowptr_t", "col_t"}
I64 = {"perm", "seg_row", "seg_start", "seg_end", "seg_long", "long_rows", "long_seg_ptr",
       "part_arg", "perm_t"}
ACCP = {"part", "stats", "lse_s", "lse_p", "part_s", "part_p", "grad_w", "gsrc_s", "gsrc_p", "lse", "d_row",
        "params", "part_m", "part_acc", "part_src", "part_x"}
INTS = {"num_rows", "split", "first", "F", "FS", "FP", "num_edges", "num_loops", "seed", "threshold", "H", "C"}
FLOATS = {"sigma", "coef", "tau"}
FEAT_T = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}


WINNERS = {"arg", "arg_out"}  # the max reduction's winning edges: int32 unless E >= 2**31


def signature(fn, feat: str, index: str, winners: str = "i32"):
    acc = "*fp64" if feat == "fp64" else "*fp32"
    sig = {}
    for p in fn.params:
        n = p.name
        if p.is_constexpr:
            sig[n] = "constexpr"
        elif n in WINNERS:
            sig[n] = "*" + winners
        elif n in IDX:
            sig[n] = "*" + index
        elif n in I64:
            sig[n] = "*i64"
        elif n in ACCP:
            sig[n] = acc
        elif n in INTS:
            sig[n] = "i32"
        elif n in FLOATS:
            sig[n] = "fp32"
        else:
            sig[n] = FEAT_T[feat]
    return sig


def acc_of(feat):
    return tl.float64 if feat == "fp64" else tl.float32


# (feature dtype, index dtype) pairs: every feature dtype with int32 indices, and int64
# indices with float32 and bfloat16 (the index dtype only changes the index loads, whose
# code does not depend on the feature dtype: float16 and float64 with int64 add nothing)
DTYPE_PAIRS = [(f, "i32") for f in ("fp32", "bf16", "fp16", "fp64")] + [("fp32", "i64"), ("bf16", "i64")]


def cases():
    """Every kernel for each pair of DTYPE_PAIRS; every constexpr variant once (float32 /
    int32), and the main ones for the other pairs."""
    out = []
    for feat, index in DTYPE_PAIRS:
        full = feat == "fp32" and index == "i32"
        aggs = ((0, 1, 0, 0), (1, 0, 0, 0), (2, 1, 0, 0), (0, 1, 1, 1), (0, 0, 1, 0))
        for reduce, has_w, gcn, loop in aggs if full else aggs[2:4]:
            ce = dict(REDUCE=reduce, HAS_W=has_w, GCN=gcn, HAS_LOOP=loop, BLOCK_E=32, BLOCK_F=64)
            out.append((spmm.agg_kernel, feat, index, ce))
            ce = dict(REDUCE=reduce, GCN=gcn, HAS_LOOP=loop, BLOCK_F=64)
            out.append((spmm.agg_combine_kernel, feat, index, ce))
        rows_cases = ((0, 1, 0, 0, 8, 8), (1, 0, 0, 0, 2, 32), (0, 1, 1, 1, 64, 1), (0, 0, 1, 0, 16, 4))
        for reduce, has_w, gcn, loop, rows, row_e in rows_cases if full else rows_cases[2:3]:
            out.append((spmm.agg_rows_kernel, feat, index, dict(
                REDUCE=reduce, HAS_W=has_w, GCN=gcn, HAS_LOOP=loop, ROWS=rows, ROW_E=row_e, BLOCK_F=64)))
        for has_w, need_w in ((0, 0), (1, 0), (0, 1), (1, 1)) if full else ((1, 1),):
            out.append((spmm.max_backward_kernel, feat, index,
                        dict(HAS_W=has_w, NEED_W=need_w, BLOCK_E=32, BLOCK_F=64)))
        if full:  # int64 winners (graphs of 2**31 edges or more)
            ce = dict(REDUCE=2, HAS_W=1, GCN=0, HAS_LOOP=0, BLOCK_E=32, BLOCK_F=64, _winners="i64")
            out.append((spmm.agg_kernel, feat, index, ce))
            out.append((spmm.agg_combine_kernel, feat, index, dict(REDUCE=2, GCN=0, HAS_LOOP=0, BLOCK_F=64,
                                                                    _winners="i64")))
            out.append((spmm.max_backward_kernel, feat, index,
                        dict(HAS_W=1, NEED_W=1, BLOCK_E=32, BLOCK_F=64, _winners="i64")))
        out.append((segments.combine_sum_kernel, feat, index, dict(BLOCK_F=128)))
        for mode in (0, 1) if full else (0,):
            for rows, row_e in ((4, 64), (64, 4), (1, 1024)) if full else ((4, 64),):
                out.append((edge_softmax.softmax_rows_kernel, feat, index, dict(MODE=mode, ROWS=rows, ROW_E=row_e)))
            out.append((edge_softmax.softmax_seg_stat_kernel, feat, index, dict(MODE=mode, BLOCK_E=128)))
            out.append((edge_softmax.softmax_combine_kernel, feat, index, dict(MODE=mode)))
            out.append((edge_softmax.softmax_seg_write_kernel, feat, index, dict(MODE=mode, BLOCK_E=128)))
        out.append((structure_kl.skl_combine_kernel, feat, index, {}))
        gat = dict(BLOCK_E=32, HP=8, CP=8)
        for has_dst, loops, dropout in ((1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0)) if full else ((1, 1, 1),):
            out.append((gat_aggregate.gat_forward_kernel, feat, index,
                        dict(gat, HAS_DST=has_dst, LOOPS=loops, DROPOUT=dropout)))
            out.append((gat_aggregate.gat_src_grad_kernel, feat, index,
                        dict(gat, HAS_DST=has_dst, LOOPS=loops, DROPOUT=dropout)))
            out.append((gat_aggregate.gat_dst_grad_kernel, feat, index,
                        dict(gat, HAS_DST=has_dst, LOOPS=loops, DROPOUT=dropout)))
        heads = dict(HP=8, CP=8)
        out.append((gat_aggregate.gat_forward_combine_kernel, feat, index, heads))
        out.append((gat_aggregate.gat_src_grad_combine_kernel, feat, index, heads))
        for has_dst in (0, 1) if full else (1,):
            out.append((gat_aggregate.gat_dst_grad_combine_kernel, feat, index, dict(HP=8, HAS_DST=has_dst)))
        for kind in range(5) if full else (4,):
            for degree in ((0, 3) if kind == 3 else (2,)):
                k = dict(KIND=kind, DEGREE=degree)
                out.append((edge_similarity.edge_sim_kernel, feat, index, dict(k, BLOCK_E=32, BLOCK_F=64)))
                out.append((edge_similarity.edge_sim_grad_kernel, feat, index,
                            dict(k, HAS_PERM=1, BLOCK_E=32, BLOCK_F=64)))
                out.append((structure_kl.skl_fwd_kernel, feat, index,
                            dict(k, BLOCK_E=32, BLOCK_FS=64, BLOCK_FP=32)))
                for transposed in (0, 1):
                    out.append((structure_kl.skl_grad_kernel, feat, index,
                                dict(k, TRANSPOSED=transposed, PEER=int(full or transposed),
                                     SRC_ATOMIC=0, BLOCK_E=16, BLOCK_FS=128, BLOCK_FP=64)))
                if feat in ("fp32", "bf16") and index == "i32":  # the opt-in atomic backward
                    out.append((structure_kl.skl_grad_kernel, feat, index,
                                dict(k, TRANSPOSED=0, PEER=1, SRC_ATOMIC=1, BLOCK_E=16,
                                     BLOCK_FS=128, BLOCK_FP=64)))
    # the warp counts the heuristic and the tuner use, on small and large tiles
    for warps, be, bf in ((2, 16, 16), (2, 16, 64), (8, 128, 64)):
        out.append((spmm.agg_kernel, "fp32", "i32",
                    dict(REDUCE=0, HAS_W=0, GCN=0, HAS_LOOP=0, BLOCK_E=be, BLOCK_F=bf, _num_warps=warps)))
        out.append((spmm.max_backward_kernel, "bf16", "i64",
                    dict(HAS_W=1, NEED_W=1, BLOCK_E=be, BLOCK_F=bf, _num_warps=warps)))
        out.append((structure_kl.skl_grad_kernel, "bf16", "i64",
                    dict(KIND=0, DEGREE=2, TRANSPOSED=1, PEER=1, SRC_ATOMIC=0, BLOCK_E=be, BLOCK_FS=bf, BLOCK_FP=bf,
                         _num_warps=warps)))
    # force_warps(8): the heaviest kernels at the benchmark's F = 64 tiles, as bench/bench_gpu.py times them
    for feat in ("fp32", "bf16"):
        out.append((spmm.agg_kernel, feat, "i32",
                    dict(REDUCE=2, HAS_W=0, GCN=0, HAS_LOOP=0, BLOCK_E=64, BLOCK_F=64, _num_warps=8)))
        out.append((structure_kl.skl_fwd_kernel, feat, "i32",
                    dict(KIND=0, DEGREE=2, BLOCK_E=64, BLOCK_FS=64, BLOCK_FP=64, _num_warps=8)))
        out.append((structure_kl.skl_grad_kernel, feat, "i32",
                    dict(KIND=0, DEGREE=2, TRANSPOSED=1, PEER=0, SRC_ATOMIC=0, BLOCK_E=64, BLOCK_FS=64,
                         BLOCK_FP=64, _num_warps=8)))
    return out


CASES = cases()


def _id(case):
    fn, feat, index, ce = case
    return f"{fn.__name__}-{feat}-{index}-" + "-".join(f"{k}{v}" for k, v in ce.items())


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_compiles_for_sm90(case):
    fn, feat, index, ce = case
    ce = dict(ce)
    warps = ce.pop("_num_warps", 4)
    winners = ce.pop("_winners", "i32")
    if "ACC" in fn.arg_names:
        ce["ACC"] = acc_of(feat)
    src = ASTSource(fn, signature(fn, feat, index, winners), ce)
    compiled = triton.compile(src, target=TARGET, options={"num_warps": warps})
    assert len(compiled.asm["cubin"]) > 0


# --------------------------------------------------------------------------- launchers
def test_every_public_launcher_runs_on_its_inputs_device():
    """The Triton backend's functions all go through kernels.launch.launcher: contiguous
    tensors, launched under torch.cuda.device of their inputs (Triton launches on the
    current device otherwise)."""
    import torch

    from fastalign.backends import BACKEND_FUNCTIONS, triton as tb
    from fastalign.kernels import launch

    for name in BACKEND_FUNCTIONS:
        fn = getattr(tb, name)
        assert getattr(fn, "is_launcher", False), f"{name} is not wrapped by kernels.launch.launcher"
    guard = launch.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(launch.device_guard(torch.device("cpu")), torch.cuda.device)
    a, b = torch.zeros(2, device="meta"), torch.zeros(3)
    assert launch.input_device((None, "x", a, b)) == torch.device("meta")

    seen = []

    @launch.launcher
    def probe(rowptr, col, x):
        seen.append((rowptr.is_contiguous(), col.is_contiguous(), x.is_contiguous()))
        return x

    strided = torch.arange(20)[::2]
    probe(strided, strided, torch.zeros(4, 3).t())
    assert seen == [(True, True, True)]


def test_forced_warps_are_used_and_never_cached():
    """heuristics.force_warps: the kernels named get the warp count asked for, inside the
    context only, and the choice is not kept in the graph's plan."""
    import torch

    from fastalign.kernels import heuristics as H

    class Plan:
        configs: dict = {}
        num_edges = 10

    plan, base = Plan(), H.Config(32, 64, 4)
    with H.force_warps(8, ("skl_fwd",)):
        assert H.choose(plan, ("skl_fwd", 0), base, lambda cfg: None, torch.device("cpu")).num_warps == 8
        assert H.choose(plan, ("agg", 0), base, lambda cfg: None, torch.device("cpu")).num_warps == 4
    assert ("skl_fwd", 0) not in plan.configs
    assert H.choose(plan, ("skl_fwd", 0), base, lambda cfg: None, torch.device("cpu")).num_warps == 4
