"""SpMM over a CSR by destination: out[i] = reduce_{e=(j->i)} c_e x[j] (sum | mean | max),
its backward pieces (sddmm, max backward) and the aggregation kernel GCN shares.

Forward: one program per (row, feature block) gathers its neighbours' feature slices as a
[BLOCK_E, BLOCK_F] tile per step and reduces it in registers (float32, or float64 for
float64 inputs); long rows are cut into segments whose partials a second pass combines
in order (see segments.py), so hubs are neither serialised nor summed with atomics. The
edge coefficient c_e is the edge weight, or for GCN w_e * dis[j] (self loops skipped
when loop weights are given), with the per-row epilogue dis[i] * (acc + lw_i dis_i x_i):
the normalisation is fused, no normalised edge weights are built.

Backward for x of sum/mean is this same forward on the transpose (called by the op), so
no atomics there; for edge weights an SDDMM (the ``linear`` edge similarity). The max
backward routes each output element's gradient to its arg edge: that is a scatter
without a transpose in its signature, so it uses float32 atomics (declared: the order of
additions into one grad_x element varies); with torch's deterministic mode on it falls
back to the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .heuristics import acc_dtype, heuristic, launch, torch_acc
from .segments import row_plan, vmask, work_item

SUM = tl.constexpr(0)
MEAN = tl.constexpr(1)
MAX = tl.constexpr(2)
REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2}


@triton.jit
def _agg_range(
    start, end, row, col, weight, dis, x, F, fo, fm,
    REDUCE: tl.constexpr, HAS_W: tl.constexpr, GCN: tl.constexpr, SKIP_LOOPS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Reduce edges [start, end) of ``row`` for features ``fo``: (acc [BF], arg [BF])."""
    acc2 = tl.zeros([BLOCK_E, BLOCK_F], dtype=ACC)  # sum: reduce once, after the loop
    mx = tl.full([BLOCK_F], float("-inf"), ACC)
    arg = tl.full([BLOCK_F], -1, tl.int64)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
        j = tl.load(col + eo, mask=em, other=0).to(tl.int64)
        v = tl.load(
            x + j[:, None] * F + fo[None, :], mask=em[:, None] & fm[None, :], other=0.0
        ).to(ACC)
        if GCN:
            c = tl.load(dis + j, mask=em, other=0.0).to(ACC)
            if HAS_W:
                c = c * tl.load(weight + eo, mask=em, other=0.0).to(ACC)
            if SKIP_LOOPS:
                c = tl.where(j == row, 0.0, c)
            v = v * c[:, None]
        elif HAS_W:
            v = v * tl.load(weight + eo, mask=em, other=0.0).to(ACC)[:, None]
        if REDUCE == 2:
            v = tl.where(em[:, None], v, float("-inf"))
            bmax = tl.max(v, axis=0)
            # first edge reaching the block max; strict '>' below keeps earlier blocks
            pos = tl.where((v == bmax[None, :]) & em[:, None], eo[:, None], end)
            bpos = tl.min(pos, axis=0)
            upd = (bmax > mx) | ((arg < 0) & (bpos < end))
            mx = tl.where(upd, bmax, mx)
            arg = tl.where(upd, bpos, arg)
        else:
            acc2 += v
    if REDUCE == 2:
        acc = mx
    else:
        acc = tl.sum(acc2, axis=0)
    return acc, arg


@triton.jit
def _agg_epilogue(
    acc, arg, row, deg, dis, loopw, x, F, fo, fm,
    REDUCE: tl.constexpr, GCN: tl.constexpr, HAS_LOOP: tl.constexpr, ACC: tl.constexpr,
):
    if REDUCE == 1:
        acc = acc / tl.maximum(deg, 1).to(ACC)
    if REDUCE == 2:
        acc = tl.where(arg < 0, 0.0, acc)  # empty rows give 0
    if GCN:
        di = tl.load(dis + row).to(ACC)
        if HAS_LOOP:
            xi = tl.load(x + row * F + fo, mask=fm, other=0.0).to(ACC)
            acc = acc + tl.load(loopw + row).to(ACC) * di * xi
        acc = acc * di
    return acc


@triton.jit
def agg_kernel(
    rowptr, col, weight, dis, loopw, x, out, arg_out, part, part_arg,
    seg_row, seg_start, seg_end, num_rows, split, F,
    REDUCE: tl.constexpr, HAS_W: tl.constexpr, GCN: tl.constexpr, HAS_LOOP: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Unified row grid (rows, then segments of long rows) x feature blocks."""
    pid = tl.program_id(0).to(tl.int64)
    fo = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    acc, arg = _agg_range(
        start, end, row, col, weight, dis, x, F, fo, fm,
        REDUCE, HAS_W, GCN, HAS_LOOP, ACC, BLOCK_E, BLOCK_F,
    )
    # a segment stores its raw partial; the combine pass finishes the row
    tl.store(part + seg * F + fo, acc, mask=vmask(fm, is_seg))
    if REDUCE == 2:
        tl.store(part_arg + seg * F + fo, arg, mask=vmask(fm, is_seg))
    res = _agg_epilogue(acc, arg, row, end - start, dis, loopw, x, F, fo, fm, REDUCE, GCN, HAS_LOOP, ACC)
    tl.store(out + row * F + fo, res.to(out.dtype.element_ty), mask=vmask(fm, is_row))
    if REDUCE == 2:
        tl.store(arg_out + row * F + fo, arg, mask=vmask(fm, is_row))


@triton.jit
def agg_combine_kernel(
    long_rows, long_seg_ptr, rowptr, part, part_arg, dis, loopw, x, out, arg_out, F,
    REDUCE: tl.constexpr, GCN: tl.constexpr, HAS_LOOP: tl.constexpr,
    ACC: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Finish each long row from its segments' partials, in segment order."""
    l = tl.program_id(0).to(tl.int64)
    fo = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    row = tl.load(long_rows + l)
    s0 = tl.load(long_seg_ptr + l)
    s1 = tl.load(long_seg_ptr + l + 1)
    deg = tl.load(rowptr + row + 1).to(tl.int64) - tl.load(rowptr + row).to(tl.int64)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    if REDUCE == 2:
        acc = tl.full([BLOCK_F], float("-inf"), ACC)
    arg = tl.full([BLOCK_F], -1, tl.int64)
    for s in range(s0, s1):
        v = tl.load(part + s * F + fo, mask=fm, other=0.0)
        if REDUCE == 2:
            a = tl.load(part_arg + s * F + fo, mask=fm, other=-1)
            upd = (v > acc) | ((arg < 0) & (a >= 0))
            acc = tl.where(upd, v, acc)
            arg = tl.where(upd, a, arg)
        else:
            acc += v
    res = _agg_epilogue(acc, arg, row, deg, dis, loopw, x, F, fo, fm, REDUCE, GCN, HAS_LOOP, ACC)
    tl.store(out + row * F + fo, res.to(out.dtype.element_ty), mask=fm)
    if REDUCE == 2:
        tl.store(arg_out + row * F + fo, arg, mask=fm)


def aggregate(
    rowptr: torch.Tensor,
    col: torch.Tensor,
    weight: Optional[torch.Tensor],
    x: torch.Tensor,
    reduce: str = "sum",
    dis: Optional[torch.Tensor] = None,
    loop_weight: Optional[torch.Tensor] = None,
):
    """(out [num_dst, F], arg [num_dst, F] int64 for max else empty)."""
    x = x.contiguous()
    code = REDUCE_CODES[reduce]
    num_dst, F = rowptr.numel() - 1, x.size(1)
    out = torch.empty((num_dst, F), dtype=x.dtype, device=x.device)
    arg = torch.empty((num_dst, F) if code == 2 else (0,), dtype=torch.int64, device=x.device)
    if num_dst == 0 or F == 0:
        return out, arg
    gcn = dis is not None
    plan = row_plan(rowptr)
    acc, tacc = acc_dtype(x.dtype), torch_acc(x.dtype)
    part = torch.empty((max(plan.num_segs, 1), F), dtype=tacc, device=x.device)
    part_arg = torch.empty((max(plan.num_segs, 1), F) if code == 2 else (1,), dtype=torch.int64, device=x.device)
    arg_ptr = arg if code == 2 else part_arg
    w = weight.contiguous() if weight is not None else x
    d = dis.contiguous() if gcn else x
    lw = loop_weight.contiguous() if loop_weight is not None else d
    flags = dict(
        REDUCE=code, HAS_W=weight is not None, GCN=gcn, HAS_LOOP=loop_weight is not None, ACC=acc
    )

    def run(cfg):
        grid = (plan.num_programs, triton.cdiv(F, cfg.BLOCK_F))
        agg_kernel[grid](
            rowptr, col, w, d, lw, x, out, arg_ptr, part, part_arg,
            plan.seg_row, plan.seg_start, plan.seg_end, plan.num_rows, plan.split, F,
            **flags, BLOCK_E=cfg.BLOCK_E, BLOCK_F=cfg.BLOCK_F, num_warps=cfg.num_warps,
        )
        if plan.num_long:
            agg_combine_kernel[(plan.num_long, triton.cdiv(F, cfg.BLOCK_F))](
                plan.long_rows, plan.long_seg_ptr, rowptr, part, part_arg, d, lw, x, out,
                arg_ptr, F, REDUCE=code, GCN=gcn, HAS_LOOP=loop_weight is not None, ACC=acc,
                BLOCK_F=cfg.BLOCK_F,
            )

    key = ("agg", code, weight is not None, gcn, F, x.dtype)
    launch(plan, key, heuristic(plan, F, x.dtype), run, x.device)
    return out, arg


def spmm_forward(rowptr, col, weight, x, reduce):
    if reduce not in REDUCE_CODES:
        raise ValueError(f"unknown reduce {reduce!r}")
    return aggregate(rowptr, col, weight, x, reduce)


def sddmm(rowptr, col, a, b):
    """Per edge e = (j -> i): a[i] . b[j] (the ``linear`` edge similarity)."""
    from .edge_similarity import edge_similarity

    return edge_similarity(rowptr, col, a, b, "linear", 1.0, 1, 0.0)


# --------------------------------------------------------------------------- max backward
@triton.jit
def max_backward_kernel(
    col, weight, x, arg, grad_out, grad_x, grad_w, F,
    HAS_W: tl.constexpr, NEED_W: tl.constexpr, ACC: tl.constexpr, BLOCK_F: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    fo = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    a = tl.load(arg + i * F + fo, mask=fm, other=-1)
    valid = fm & (a >= 0)
    e = tl.where(valid, a, 0)
    j = tl.load(col + e, mask=valid, other=0).to(tl.int64)
    g = tl.load(grad_out + i * F + fo, mask=valid, other=0.0).to(ACC)
    gx = g
    if HAS_W:
        gx = g * tl.load(weight + e, mask=valid, other=0.0).to(ACC)
    tl.atomic_add(grad_x + j * F + fo, gx, mask=valid)
    if NEED_W:
        xv = tl.load(x + j * F + fo, mask=valid, other=0.0).to(ACC)
        tl.atomic_add(grad_w + e, g * xv, mask=valid)


def spmm_max_backward(col, weight, x, arg, grad_out, need_weight_grad):
    if torch.are_deterministic_algorithms_enabled():
        from fastalign.backends import torch as reference

        return reference.spmm_max_backward(col, weight, x, arg, grad_out, need_weight_grad)
    tacc = torch_acc(x.dtype)
    num_dst, F = arg.shape if arg.dim() == 2 else (0, x.size(1))
    grad_x = torch.zeros(x.shape, dtype=tacc, device=x.device)
    grad_w = torch.zeros(col.numel() if need_weight_grad else 1, dtype=tacc, device=x.device)
    if num_dst > 0 and F > 0:
        bf = min(max(triton.next_power_of_2(F), 16), 256)
        max_backward_kernel[(num_dst, triton.cdiv(F, bf))](
            col, weight if weight is not None else x, x.contiguous(), arg.contiguous(),
            grad_out.contiguous(), grad_x, grad_w, F,
            HAS_W=weight is not None, NEED_W=bool(need_weight_grad), ACC=acc_dtype(x.dtype),
            BLOCK_F=bf,
        )
    gw = x.new_empty(0)
    if need_weight_grad:
        gw = grad_w.to(weight.dtype if weight is not None else x.dtype)
    return grad_x.to(x.dtype), gw
