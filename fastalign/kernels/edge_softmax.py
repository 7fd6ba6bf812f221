"""edge_softmax: p_e = softmax of per-edge logits over each destination's in-edges, and
its backward grad_z = p * (g - sum_row(p * g)).

Short rows are packed: one program takes ROWS consecutive rows as a [ROWS, ROW_E] tile
(ROW_E lanes per row, about the mean degree), so a graph of mean degree ~50 runs a few
rows per program instead of millions of one-row programs whose few loads leave the
program waiting on memory. Each row gets two passes over its edges: an online
(max, sum) kept per lane (no per-step reductions, merged once at the end), then the
normalised write. A long row's segments store (max, sum) partials; a combine pass
merges them in segment order into per-row state; a last pass over the segments writes
the outputs. The backward has the same shape with the row statistic sum(p * g). Each
row's result depends only on its own edges and the lane width, never on which rows
share its program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..validation import acc_dtype
from .heuristics import softmax_block, softmax_rows, tl_acc
from .launch import launcher
from .segments import row_plan

FWD = tl.constexpr(0)
BWD = tl.constexpr(1)


@triton.jit
def _stat_step(m, acc, a_ptr, b_ptr, eo, em, MODE: tl.constexpr, ACC: tl.constexpr):
    """One step of a row statistic over the edges ``eo`` (any tile shape), per lane.
    FWD: online (max, sum exp(z - max)) of the logits a; BWD: (-, sum a * b)."""
    if MODE == 0:
        z = tl.load(a_ptr + eo, mask=em, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, z)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(m - m_safe) + tl.exp(z - m_safe)
        m = m_new
    else:
        p = tl.load(a_ptr + eo, mask=em, other=0.0).to(ACC)
        g = tl.load(b_ptr + eo, mask=em, other=0.0).to(ACC)
        acc += p * g
    return m, acc


@triton.jit
def _out_value(a_ptr, b_ptr, eo, em, mx_safe, tot, MODE: tl.constexpr, ACC: tl.constexpr):
    """The outputs at ``eo`` from their row's statistic (broadcast to the tile)."""
    if MODE == 0:
        z = tl.load(a_ptr + eo, mask=em, other=0.0).to(ACC)
        r = tl.exp(z - mx_safe) / tot
    else:
        p = tl.load(a_ptr + eo, mask=em, other=0.0).to(ACC)
        g = tl.load(b_ptr + eo, mask=em, other=0.0).to(ACC)
        r = p * (g - tot)
    return r


@triton.jit
def _row_stat(a_ptr, b_ptr, start, end, MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """FWD: (max, sum exp(z - max)) of logits a[start:end] (max -inf when empty).
    BWD: (0, sum a * b) of p = a and g = b."""
    m = tl.full([BLOCK_E], float("-inf"), ACC)
    acc = tl.zeros([BLOCK_E], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        m, acc = _stat_step(m, acc, a_ptr, b_ptr, eo, eo < end, MODE, ACC)
    if MODE == 0:
        mx = tl.max(m, axis=0)
        mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
        tot = tl.sum(acc * tl.exp(m - mx_safe), axis=0)
    else:
        mx = tl.sum(acc, axis=0) * 0.0
        tot = tl.sum(acc, axis=0)
    return mx, tot


@triton.jit
def _write(a_ptr, b_ptr, out, start, end, mx, tot, MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
        r = _out_value(a_ptr, b_ptr, eo, em, mx_safe, tot, MODE, ACC)
        tl.store(out + eo, r.to(out.dtype.element_ty), mask=em)


@triton.jit
def softmax_rows_kernel(
    rowptr, a_ptr, b_ptr, out, num_rows, split,
    MODE: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr, ROW_E: tl.constexpr,
):
    """Rows pid * ROWS .. + ROWS, each finished here unless it is long (its segments
    do it). Lane k of a row takes its edges k, k + ROW_E, ...; the per-lane states are
    merged per row at the end, as in _row_stat."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rm = rows < num_rows
    rs = tl.load(rowptr + rows, mask=rm, other=0).to(tl.int64)
    re = tl.load(rowptr + rows + 1, mask=rm, other=0).to(tl.int64)
    re = tl.where(rm & (re - rs <= split), re, rs)  # long rows: empty here
    n = tl.max(re - rs, axis=0)
    lane = tl.arange(0, ROW_E)
    m = tl.full([ROWS, ROW_E], float("-inf"), ACC)
    acc = tl.zeros([ROWS, ROW_E], dtype=ACC)
    for k0 in range(0, n, ROW_E):
        eo = rs[:, None] + k0 + lane[None, :]
        m, acc = _stat_step(m, acc, a_ptr, b_ptr, eo, eo < re[:, None], MODE, ACC)
    if MODE == 0:
        mx = tl.max(m, axis=1)
        mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
        tot = tl.sum(acc * tl.exp(m - mx_safe[:, None]), axis=1)
        tot = tl.where(re > rs, tot, 1.0)  # empty rows write nothing: keep their lanes finite
    else:
        mx_safe = tl.zeros([ROWS], dtype=ACC)
        tot = tl.sum(acc, axis=1)
    for k0 in range(0, n, ROW_E):
        eo = rs[:, None] + k0 + lane[None, :]
        em = eo < re[:, None]
        r = _out_value(a_ptr, b_ptr, eo, em, mx_safe[:, None], tot[:, None], MODE, ACC)
        tl.store(out + eo, r.to(out.dtype.element_ty), mask=em)


@triton.jit
def softmax_seg_stat_kernel(
    seg_start, seg_end, a_ptr, b_ptr, part,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """The (max, sum) partial of one segment of a long row."""
    s = tl.program_id(0).to(tl.int64)
    mx, tot = _row_stat(a_ptr, b_ptr, tl.load(seg_start + s), tl.load(seg_end + s), MODE, ACC, BLOCK_E)
    tl.store(part + 2 * s, mx)
    tl.store(part + 2 * s + 1, tot)


@triton.jit
def softmax_combine_kernel(long_seg_ptr, part, stats, MODE: tl.constexpr):
    """Merge a long row's segment partials in order into stats[2l], stats[2l+1]."""
    l = tl.program_id(0).to(tl.int64)
    s0 = tl.load(long_seg_ptr + l)
    s1 = tl.load(long_seg_ptr + l + 1)
    mx = tl.load(part + 2 * s0)
    tot = tl.load(part + 2 * s0 + 1)
    for s in range(s0 + 1, s1):
        m2 = tl.load(part + 2 * s)
        t2 = tl.load(part + 2 * s + 1)
        if MODE == 0:
            m_new = tl.maximum(mx, m2)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            tot = tot * tl.exp(mx - m_safe) + t2 * tl.exp(m2 - m_safe)
            mx = m_new
        else:
            tot = tot + t2
    tl.store(stats + 2 * l, mx)
    tl.store(stats + 2 * l + 1, tot)


@triton.jit
def softmax_seg_write_kernel(
    seg_start, seg_end, seg_long, a_ptr, b_ptr, out, stats,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    start = tl.load(seg_start + s)
    end = tl.load(seg_end + s)
    l = tl.load(seg_long + s)
    _write(a_ptr, b_ptr, out, start, end, tl.load(stats + 2 * l), tl.load(stats + 2 * l + 1), MODE, ACC, BLOCK_E)


def _run(rowptr, a, b, mode):
    a = a.contiguous()
    b = b.contiguous() if b is not None else a
    out = torch.empty_like(a)
    if a.numel() == 0:
        return out
    plan = row_plan(rowptr)
    acc, tacc = tl_acc(a.dtype), acc_dtype(a.dtype)
    rows, row_e, warps = softmax_rows(plan)
    softmax_rows_kernel[(triton.cdiv(plan.num_rows, rows),)](
        rowptr, a, b, out, plan.num_rows, plan.split,
        MODE=mode, ACC=acc, ROWS=rows, ROW_E=row_e, num_warps=warps,
    )
    if plan.num_long:
        be, _, seg_warps = softmax_block(plan)
        part = torch.empty(2 * plan.num_segs, dtype=tacc, device=a.device)
        softmax_seg_stat_kernel[(plan.num_segs,)](
            plan.seg_start, plan.seg_end, a, b, part, MODE=mode, ACC=acc, BLOCK_E=be,
            num_warps=seg_warps,
        )
        stats = torch.empty(2 * plan.num_long, dtype=tacc, device=a.device)
        softmax_combine_kernel[(plan.num_long,)](plan.long_seg_ptr, part, stats, MODE=mode)
        softmax_seg_write_kernel[(plan.num_segs,)](
            plan.seg_start, plan.seg_end, plan.seg_long, a, b, out, stats,
            MODE=mode, ACC=acc, BLOCK_E=be, num_warps=seg_warps,
        )
    return out


@launcher
def edge_softmax(rowptr, logits):
    return _run(rowptr, logits, None, 0)


@launcher
def edge_softmax_backward(rowptr, p, grad_p):
    return _run(rowptr, p, grad_p, 1)
