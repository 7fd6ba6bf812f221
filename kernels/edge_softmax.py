"""edge_softmax: p_e = softmax of per-edge logits over each destination's in-edges, and
its backward grad_z = p * (g - sum_row(p * g)).

A short row is one program with two passes over its edges: an online (max, sum) kept
per lane (no per-step reductions, merged once at the end), then the normalised write.
A long row's segments store (max, sum) partials; a combine pass merges them in segment
order into per-row state; a last pass over the segments writes the outputs. The
backward has the same shape with the row statistic sum(p * g).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .heuristics import acc_dtype, softmax_block, torch_acc
from .launch import launcher
from .segments import row_plan, work_item

FWD = tl.constexpr(0)
BWD = tl.constexpr(1)


@triton.jit
def _row_stat(a_ptr, b_ptr, start, end, MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """FWD: (max, sum exp(z - max)) of logits a[start:end] (max -inf when empty).
    BWD: (0, sum a * b) of p = a and g = b."""
    m = tl.full([BLOCK_E], float("-inf"), ACC)
    acc = tl.zeros([BLOCK_E], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
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
        if MODE == 0:
            z = tl.load(a_ptr + eo, mask=em, other=0.0).to(ACC)
            r = tl.exp(z - mx_safe) / tot
        else:
            p = tl.load(a_ptr + eo, mask=em, other=0.0).to(ACC)
            g = tl.load(b_ptr + eo, mask=em, other=0.0).to(ACC)
            r = p * (g - tot)
        tl.store(out + eo, r.to(out.dtype.element_ty), mask=em)


@triton.jit
def softmax_rows_kernel(
    rowptr, a_ptr, b_ptr, out, part, seg_row, seg_start, seg_end, num_rows, split,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    mx, tot = _row_stat(a_ptr, b_ptr, start, end, MODE, ACC, BLOCK_E)
    tl.store(part + 2 * seg, mx, mask=is_seg)
    tl.store(part + 2 * seg + 1, tot, mask=is_seg)
    _write(a_ptr, b_ptr, out, start, tl.where(is_row, end, start), mx, tot, MODE, ACC, BLOCK_E)


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
    acc, tacc = acc_dtype(a.dtype), torch_acc(a.dtype)
    part = torch.empty(2 * max(plan.num_segs, 1), dtype=tacc, device=a.device)
    be, _, warps = softmax_block(plan)
    softmax_rows_kernel[(plan.num_programs,)](
        rowptr, a, b, out, part, plan.seg_row, plan.seg_start, plan.seg_end,
        plan.num_rows, plan.split, MODE=mode, ACC=acc, BLOCK_E=be, num_warps=warps,
    )
    if plan.num_long:
        stats = torch.empty(2 * plan.num_long, dtype=tacc, device=a.device)
        softmax_combine_kernel[(plan.num_long,)](plan.long_seg_ptr, part, stats, MODE=mode)
        softmax_seg_write_kernel[(plan.num_segs,)](
            plan.seg_start, plan.seg_end, plan.seg_long, a, b, out, stats,
            MODE=mode, ACC=acc, BLOCK_E=be, num_warps=warps,
        )
    return out


@launcher
def edge_softmax(rowptr, logits):
    return _run(rowptr, logits, None, 0)


@launcher
def edge_softmax_backward(rowptr, p, grad_p):
    return _run(rowptr, p, grad_p, 1)
