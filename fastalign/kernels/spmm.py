"""SpMM over a CSR by destination: out[i] = reduce_{e=(j->i)} c_e x[j] (sum | mean | max),
its backward pieces (sddmm, max backward) and the aggregation kernel GCN shares.

Forward: one program per (row, feature block) gathers its neighbours' feature slices as a
[BLOCK_E, BLOCK_F] tile per step and reduces it in registers (float32, or float64 for
float64 inputs); long rows are cut into segments whose partials a second pass combines
in order (see segments.py), so hubs are neither serialised nor summed with atomics.
Where the mean degree leaves room for several rows in a tile (sum and mean, GCN
included; ``heuristics.rows_packing``), the short rows are packed instead: ROWS rows of
ROW_E lanes as a [ROWS, ROW_E, BLOCK_F] tile per program (agg_rows_kernel), so a graph of
mean degree ~14 runs a program per 8 rows, not one per row with most lanes masked; the
segments of long rows still run through agg_kernel. The
edge coefficient c_e is the edge weight, or for GCN w_e * dis[j] (self loops skipped
when loop weights are given), with the per-row epilogue dis[i] * (acc + lw_i dis_i x_i):
the normalisation is fused, no normalised edge weights are built.

Backward for x of sum/mean is this same forward on the transpose (called by the op), so
no atomics there; for edge weights an SDDMM (the ``linear`` edge similarity). The max
backward gathers too: one program per (row of the transpose = source node j, feature
block) walks j's transposed edges k (destination i, internal edge e = perm_t[k]) and adds
grad_out[i, f] (times w_e) where arg[i, f] == e, reading an output gradient only where
its edge won. Hub sources are split into segments combined in order, and the same pass
writes each edge's weight gradient (every edge belongs to one transposed row), so the
whole max backward is atomic-free and bitwise reproducible. Its cost over the sum
backward: arg is read once per edge (E x F through the transpose, the price of gathering
instead of scattering), which is why arg is int32 whenever the edge count allows.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastalign.validation import arg_dtype

from ..validation import acc_dtype
from .heuristics import heuristic, launch, rows_packing, tl_acc
from .launch import launcher
from .segments import combine_sum, row_plan, vmask, work_item

SUM = tl.constexpr(0)
MEAN = tl.constexpr(1)
MAX = tl.constexpr(2)
REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2}


@triton.jit
def _edge_coef(j, eo, em, row, weight, dis, HAS_W: tl.constexpr, GCN: tl.constexpr,
               SKIP_LOOPS: tl.constexpr, ACC: tl.constexpr):
    """c_e of the edges ``eo`` (sources ``j``, destination ``row``; any tile shape): the
    weight, or for GCN w_e * dis[j], 0 on self loops when their weight is added per row."""
    if GCN:
        c = tl.load(dis + j, mask=em, other=0.0).to(ACC)
        if HAS_W:
            c = c * tl.load(weight + eo, mask=em, other=0.0).to(ACC)
        if SKIP_LOOPS:
            c = tl.where(j == row, 0.0, c)
    else:
        c = tl.load(weight + eo, mask=em, other=0.0).to(ACC)
    return c


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
        if GCN or HAS_W:
            v = v * _edge_coef(j, eo, em, row, weight, dis, HAS_W, GCN, SKIP_LOOPS, ACC)[:, None]
        if REDUCE == 2:
            v = tl.where(em[:, None], v, float("-inf"))
            # NaN propagates (torch.amax): a block holding one has a NaN maximum, won by
            # its first NaN edge; a NaN state is never replaced
            isnan = (v != v) & em[:, None]
            has_nan = tl.max(isnan.to(tl.int32), axis=0) > 0
            nan_pos = tl.min(tl.where(isnan, eo[:, None], end), axis=0)
            bmax = tl.max(tl.where(isnan, float("-inf"), v), axis=0)
            # first edge reaching the block max; strict '>' below keeps earlier blocks
            pos = tl.where((v == bmax[None, :]) & em[:, None], eo[:, None], end)
            bpos = tl.where(has_nan, nan_pos, tl.min(pos, axis=0))
            bmax = tl.where(has_nan, float("nan"), bmax)
            upd = (bmax > mx) | ((arg < 0) & (bpos < end)) | (has_nan & (mx == mx))
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
    seg_row, seg_start, seg_end, num_rows, split, F, first,
    REDUCE: tl.constexpr, HAS_W: tl.constexpr, GCN: tl.constexpr, HAS_LOOP: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Unified row grid (rows, then segments of long rows) x feature blocks, from
    program ``first`` on (``num_rows`` when the packed kernel takes the rows)."""
    pid = tl.program_id(0).to(tl.int64) + first
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
def agg_rows_kernel(
    rowptr, col, weight, dis, loopw, x, out, num_rows, split, F,
    REDUCE: tl.constexpr, HAS_W: tl.constexpr, GCN: tl.constexpr, HAS_LOOP: tl.constexpr,
    ACC: tl.constexpr, ROWS: tl.constexpr, ROW_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Sum / mean (GCN included) of rows pid * ROWS .. + ROWS as a [ROWS, ROW_E, BLOCK_F]
    tile: lane k of a row takes its edges k, k + ROW_E, ... and the lanes are summed per
    row at the end. A long row is left to its segments (agg_kernel, then the combine)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    fo = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    rm = rows < num_rows
    rows = tl.where(rm, rows, 0)  # rows past the end: an empty row 0, never stored
    rs = tl.load(rowptr + rows).to(tl.int64)
    re = tl.load(rowptr + rows + 1).to(tl.int64)
    short = rm & (re - rs <= split)
    re = tl.where(short, re, rs)
    n = tl.max(re - rs, axis=0)
    lane = tl.arange(0, ROW_E)
    acc3 = tl.zeros([ROWS, ROW_E, BLOCK_F], dtype=ACC)
    for k0 in range(0, n, ROW_E):
        eo = rs[:, None] + k0 + lane[None, :]
        em = eo < re[:, None]
        j = tl.load(col + eo, mask=em, other=0).to(tl.int64)
        v = tl.load(
            x + j[:, :, None] * F + fo[None, None, :],
            mask=em[:, :, None] & fm[None, None, :], other=0.0,
        ).to(ACC)
        if GCN or HAS_W:
            c = _edge_coef(j, eo, em, rows[:, None], weight, dis, HAS_W, GCN, HAS_LOOP, ACC)
            v = v * c[:, :, None]
        acc3 += v
    acc = tl.sum(acc3, axis=1)
    res = _agg_epilogue(acc, acc, rows[:, None], (re - rs)[:, None], dis, loopw, x, F,
                        fo[None, :], fm[None, :], REDUCE, GCN, HAS_LOOP, ACC)
    tl.store(out + rows[:, None] * F + fo[None, :], res.to(out.dtype.element_ty),
             mask=short[:, None] & fm[None, :])


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
            # a later segment wins by a greater value, or by a NaN over a number
            upd = (v > acc) | ((arg < 0) & (a >= 0)) | ((v != v) & (acc == acc) & (a >= 0))
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
    """(out [num_dst, F], arg [num_dst, F] in ``arg_dtype(E)`` for max, else empty)."""
    x = x.contiguous()
    code = REDUCE_CODES[reduce]
    num_dst, F = rowptr.numel() - 1, x.size(1)
    out = torch.empty((num_dst, F), dtype=x.dtype, device=x.device)
    arg = torch.empty((num_dst, F) if code == 2 else (0,),
                      dtype=arg_dtype(col.numel()) if code == 2 else torch.int64, device=x.device)
    if num_dst == 0 or F == 0:
        return out, arg
    gcn = dis is not None
    plan = row_plan(rowptr)
    acc, tacc = tl_acc(x.dtype), acc_dtype(x.dtype)
    part = torch.empty((max(plan.num_segs, 1), F), dtype=tacc, device=x.device)
    part_arg = torch.empty((max(plan.num_segs, 1), F) if code == 2 else (1,), dtype=torch.int64, device=x.device)
    arg_ptr = arg if code == 2 else part_arg
    w = weight.contiguous() if weight is not None else x
    d = dis.contiguous() if gcn else x
    lw = loop_weight.contiguous() if loop_weight is not None else d
    flags = dict(
        REDUCE=code, HAS_W=weight is not None, GCN=gcn, HAS_LOOP=loop_weight is not None, ACC=acc
    )

    packed = rows_packing(plan, F, x.dtype) if code != 2 else None

    def run(cfg):
        first = 0
        if packed is not None:  # short rows several per program; segments below
            first = plan.num_rows
            agg_rows_kernel[(triton.cdiv(plan.num_rows, packed.ROWS), triton.cdiv(F, packed.BLOCK_F))](
                rowptr, col, w, d, lw, x, out, plan.num_rows, plan.split, F, **flags,
                ROWS=packed.ROWS, ROW_E=packed.ROW_E, BLOCK_F=packed.BLOCK_F, num_warps=packed.num_warps,
            )
        if plan.num_programs > first:
            grid = (plan.num_programs - first, triton.cdiv(F, cfg.BLOCK_F))
            agg_kernel[grid](
                rowptr, col, w, d, lw, x, out, arg_ptr, part, part_arg,
                plan.seg_row, plan.seg_start, plan.seg_end, plan.num_rows, plan.split, F, first,
                **flags, BLOCK_E=cfg.BLOCK_E, BLOCK_F=cfg.BLOCK_F, num_warps=cfg.num_warps,
            )
        if plan.num_long:
            agg_combine_kernel[(plan.num_long, triton.cdiv(F, cfg.BLOCK_F))](
                plan.long_rows, plan.long_seg_ptr, rowptr, part, part_arg, d, lw, x, out,
                arg_ptr, F, REDUCE=code, GCN=gcn, HAS_LOOP=loop_weight is not None, ACC=acc,
                BLOCK_F=cfg.BLOCK_F,
            )

    key = ("agg", code, weight is not None, gcn, F, x.dtype, packed)
    launch(plan, key, heuristic(plan, F, x.dtype), run, x.device)
    return out, arg


@launcher
def spmm_forward(rowptr, col, weight, x, reduce):
    if reduce == "amax":  # the max kernel, its winners dropped (no kernel of its own yet)
        return aggregate(rowptr, col, weight, x, "max")[0], x.new_empty(0, dtype=torch.int64)
    if reduce not in REDUCE_CODES:
        raise ValueError(f"unknown reduce {reduce!r}")
    return aggregate(rowptr, col, weight, x, reduce)


@launcher
def sddmm(rowptr, col, a, b):
    """Per edge e = (j -> i): a[i] . b[j] (the ``linear`` edge similarity)."""
    from .edge_similarity import edge_similarity

    return edge_similarity(rowptr, col, a, b, "linear", 1.0, 1, 0.0)


# --------------------------------------------------------------------------- max backward
@triton.jit
def max_backward_kernel(
    rowptr, col, perm, weight, x, arg, grad_out, grad_x, grad_w, part,
    seg_row, seg_start, seg_end, num_rows, split, F, num_edges,
    HAS_W: tl.constexpr, NEED_W: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Max backward by source node, over the transpose (rowptr, col = col_t, perm =
    perm_t): unified row grid (rows, then segments of long rows) x feature blocks.

    For source j and its transposed edges k (destination i = col[k], internal edge
    e = perm[k]): grad_x[j, f] = sum_k [arg[i, f] == e] w_e grad_out[i, f], each edge's
    gradient read only where it won. With NEED_W, grad_w[fb, e] = sum over the features
    of block fb of [arg[i, f] == e] grad_out[i, f] x[j, f]: each edge is owned by one
    program per feature block, so no atomics anywhere.
    """
    pid = tl.program_id(0).to(tl.int64)
    fb = tl.program_id(1).to(tl.int64)
    fo = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    acc2 = tl.zeros([BLOCK_E, BLOCK_F], dtype=ACC)  # reduced once, after the loop
    if NEED_W:
        xj = tl.load(x + row * F + fo, mask=fm, other=0.0).to(ACC)  # x[j], j = row
    for k0 in range(start, end, BLOCK_E):
        ko = k0 + tl.arange(0, BLOCK_E)
        km = ko < end
        i = tl.load(col + ko, mask=km, other=0).to(tl.int64)
        e = tl.load(perm + ko, mask=km, other=-2)
        m2 = km[:, None] & fm[None, :]
        a = tl.load(arg + i[:, None] * F + fo[None, :], mask=m2, other=-1)
        hit = (a == e[:, None]) & m2
        g = tl.load(grad_out + i[:, None] * F + fo[None, :], mask=hit, other=0.0).to(ACC)
        if HAS_W:
            acc2 += g * tl.load(weight + e, mask=km, other=0.0).to(ACC)[:, None]
        else:
            acc2 += g
        if NEED_W:
            gw = tl.sum(g * xj[None, :], axis=1)
            tl.store(grad_w + fb * num_edges + e, gw, mask=km)
    acc = tl.sum(acc2, axis=0)
    # a segment stores its partial; combine_sum_kernel adds a row's segments in order
    tl.store(part + seg * F + fo, acc, mask=vmask(fm, is_seg))
    tl.store(grad_x + row * F + fo, acc.to(grad_x.dtype.element_ty), mask=vmask(fm, is_row))


@launcher
def spmm_max_backward(col, rowptr_t, col_t, perm_t, weight, x, arg, grad_out, need_weight_grad):
    """(grad_x, grad_w or empty) of the max reduction, gathered over the transpose:
    deterministic (no atomics), bitwise reproducible run to run."""
    x = x.contiguous()
    num_src, F = x.shape
    num_edges = col.numel()
    acc, tacc = tl_acc(x.dtype), acc_dtype(x.dtype)
    grad_x = torch.empty((num_src, F), dtype=x.dtype, device=x.device)
    if num_src == 0 or F == 0:
        grad_x.zero_()
        gw = x.new_empty(0)
        if need_weight_grad and num_edges > 0:
            gw = torch.zeros(num_edges, dtype=weight.dtype if weight is not None else x.dtype,
                             device=x.device)
        elif need_weight_grad:
            gw = x.new_zeros(0)
        return grad_x, gw
    plan = row_plan(rowptr_t)
    cfg0 = heuristic(plan, F, x.dtype)
    n_fb = triton.cdiv(F, cfg0.BLOCK_F)
    part = torch.empty((max(plan.num_segs, 1), F), dtype=tacc, device=x.device)
    need_w = bool(need_weight_grad) and num_edges > 0
    grad_w = torch.empty((n_fb if need_w else 1, max(num_edges, 1)), dtype=tacc, device=x.device)
    w = weight.contiguous() if weight is not None else x
    arg = arg.contiguous()
    grad_out = grad_out.contiguous()
    perm = perm_t.contiguous()

    def run(cfg):
        grid = (plan.num_programs, triton.cdiv(F, cfg.BLOCK_F))
        max_backward_kernel[grid](
            rowptr_t, col_t, perm, w, x, arg, grad_out, grad_x, grad_w, part,
            plan.seg_row, plan.seg_start, plan.seg_end, plan.num_rows, plan.split, F, num_edges,
            HAS_W=weight is not None, NEED_W=need_w, ACC=acc,
            BLOCK_E=cfg.BLOCK_E, BLOCK_F=cfg.BLOCK_F, num_warps=cfg.num_warps,
        )
        combine_sum(plan, part, grad_x, cfg.BLOCK_F, acc)

    # BLOCK_F fixed by the heuristic (the grad_w partials are laid out per feature block)
    key = ("max_bwd", weight is not None, need_w, F, x.dtype)
    launch(plan, key, cfg0, run, x.device)
    gw = x.new_empty(0)
    if need_weight_grad:
        if need_w:
            gw = grad_w[0].clone()
            for r in range(1, n_fb):  # feature blocks added in a fixed order
                gw += grad_w[r]
            gw = gw.to(weight.dtype if weight is not None else x.dtype)
        else:  # no edge: nothing won (the reference's empty result)
            gw = x.new_zeros(0)
    return grad_x, gw
