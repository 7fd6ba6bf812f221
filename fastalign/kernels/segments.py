"""Row/segment work plans: how a CSR's rows are cut into programs.

Every row kernel runs one program per CSR row. A row whose degree is above ``split``
(a hub: Reddit-sized graphs have rows of degree ~50,000) would serialise the launch, so
it is cut into segments of at most ``split`` edges, each its own program; a second,
deterministic pass combines the segments of a row in order (no atomics). The unified
grid of a row kernel is ``num_rows + num_segs`` programs: program ``p < num_rows`` takes
row ``p`` (and does nothing if that row is long), program ``num_rows + s`` takes segment
``s``.

A plan depends only on ``rowptr``; it is built once (one host sync for the degree
statistics) and cached, keyed by the rowptr tensor's identity (storage address, size,
dtype, device and version counter). The cache holds a reference to ``rowptr`` itself,
so the address cannot be reused by another tensor while the entry lives: a stale plan
can never be served for different data. Block-size choices (``plan.configs``) are cached
on the same plan, i.e. per graph (and per transpose, which has its own rowptr).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import settings

MAX_PLANS = 64
_PLANS: "OrderedDict[tuple, RowPlan]" = OrderedDict()
_LOCK = threading.Lock()
_SPLIT_OVERRIDE: Optional[int] = None


def split_length(avg_degree: float) -> int:
    """Longest row handled by one program: ~4x the mean degree, so that the longest
    program costs a few average ones, clamped to [256, 4096] edges (at least a few
    blocks of edges per segment; not so short that the combine pass dominates)."""
    if _SPLIT_OVERRIDE is not None:
        return _SPLIT_OVERRIDE
    forced = settings.triton_split()
    if forced is not None:
        return forced
    want = triton.next_power_of_2(max(1, int(4 * avg_degree)))
    return int(min(max(want, 256), 4096))


class force_split:
    """Context manager for tests: cut rows longer than ``n`` edges (exercises the hub
    path on small graphs)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        global _SPLIT_OVERRIDE
        self.prev, _SPLIT_OVERRIDE = _SPLIT_OVERRIDE, int(self.n)
        return self

    def __exit__(self, *exc):
        global _SPLIT_OVERRIDE
        _SPLIT_OVERRIDE = self.prev


class RowPlan:
    """Degree statistics and the segments of the long rows of one CSR.

    Attributes (index tensors are int64 on rowptr's device; 1-element dummies when a
    plan has no long row, so kernels always get a valid pointer):
        num_rows, num_edges, max_degree, avg_degree, split
        num_long (L), num_segs (S)
        long_rows [L]: the rows cut into segments
        long_seg_ptr [L+1]: segments of long row l are long_seg_ptr[l] .. [l+1]
        seg_row, seg_start, seg_end, seg_long [S]: row, edge range, long-row index
        configs: tuned / heuristic block sizes, keyed by (op, widths, dtype)
    """

    def __init__(self, rowptr: torch.Tensor, split: int):
        dev = rowptr.device
        rp = rowptr.to(torch.int64)
        self.num_rows = rowptr.numel() - 1
        self.num_edges = int(rp[-1]) if self.num_rows >= 0 else 0
        deg = rp[1:] - rp[:-1]
        self.max_degree = int(deg.max()) if self.num_rows > 0 else 0
        self.avg_degree = self.num_edges / max(self.num_rows, 1)
        self.split = split
        self.configs: dict = {}
        dummy = torch.zeros(1, dtype=torch.int64, device=dev)
        if self.max_degree <= split:
            self.num_long = self.num_segs = 0
            self.long_rows = self.seg_row = self.seg_start = self.seg_end = self.seg_long = dummy
            self.long_seg_ptr = torch.zeros(2, dtype=torch.int64, device=dev)
            return
        long_rows = torch.nonzero(deg > split).flatten()
        nseg = (deg[long_rows] + split - 1) // split
        seg_ptr = torch.zeros(long_rows.numel() + 1, dtype=torch.int64, device=dev)
        torch.cumsum(nseg, 0, out=seg_ptr[1:])
        num_segs = int(seg_ptr[-1])
        seg_long = torch.repeat_interleave(
            torch.arange(long_rows.numel(), device=dev), nseg, output_size=num_segs
        )
        seg_row = long_rows[seg_long]
        local = torch.arange(num_segs, device=dev) - seg_ptr[seg_long]
        seg_start = rp[seg_row] + local * split
        seg_end = torch.minimum(seg_start + split, rp[seg_row + 1])
        self.num_long, self.num_segs = long_rows.numel(), num_segs
        self.long_rows, self.long_seg_ptr = long_rows.contiguous(), seg_ptr
        self.seg_row, self.seg_start = seg_row.contiguous(), seg_start.contiguous()
        self.seg_end, self.seg_long = seg_end.contiguous(), seg_long.contiguous()

    @property
    def num_programs(self) -> int:
        """Programs of a unified row grid: every row, then every segment."""
        return self.num_rows + self.num_segs

    def __repr__(self):
        return (
            f"RowPlan(rows={self.num_rows}, edges={self.num_edges}, max_deg={self.max_degree}, "
            f"avg_deg={self.avg_degree:.1f}, split={self.split}, long={self.num_long}, "
            f"segs={self.num_segs})"
        )


def row_plan(rowptr: torch.Tensor) -> RowPlan:
    """The (cached) plan of a CSR's rows."""
    key = (
        rowptr.data_ptr(), rowptr.numel(), rowptr.dtype, str(rowptr.device),
        rowptr._version, _SPLIT_OVERRIDE,
    )
    with _LOCK:
        hit = _PLANS.get(key)
        if hit is not None:
            _PLANS.move_to_end(key)
            return hit[1]
    num_edges = int(rowptr[-1]) if rowptr.numel() > 0 else 0
    split = split_length(num_edges / max(rowptr.numel() - 1, 1))
    plan = RowPlan(rowptr, split)
    with _LOCK:
        _PLANS[key] = (rowptr, plan)  # the reference pins the address (see module doc)
        while len(_PLANS) > MAX_PLANS:
            _PLANS.popitem(last=False)
    return plan



# --------------------------------------------------------------------------- jit helpers
@triton.jit
def work_item(pid, rowptr, seg_row, seg_start, seg_end, num_rows, split):
    """(row, start, end, is_row, is_seg, seg) of program ``pid`` (int64) of a unified
    row grid. ``is_row``: a whole short row, whose program writes the final result;
    ``is_seg``: segment ``seg`` of a long row, whose program writes a partial. A long
    row's own program gets an empty range and neither flag."""
    is_seg = pid >= num_rows
    seg = tl.where(is_seg, pid - num_rows, 0)
    r = tl.where(is_seg, 0, pid)
    r_start = tl.load(rowptr + r).to(tl.int64)
    r_end = tl.load(rowptr + r + 1).to(tl.int64)
    is_row = (r_end - r_start <= split) & (~is_seg)
    r_end = tl.where(is_row, r_end, r_start)
    s_row = tl.load(seg_row + seg)
    s_start = tl.load(seg_start + seg)
    s_end = tl.load(seg_end + seg)
    row = tl.where(is_seg, s_row, r)
    start = tl.where(is_seg, s_start, r_start)
    end = tl.where(is_seg, s_end, r_end)
    return row, start, end, is_row, is_seg, seg


@triton.jit
def vmask(m, flag):
    """``m & flag`` for a vector mask and a scalar flag. Spelled out because the
    interpreter turns scalar-bool & vector-bool into an int32 mask (and rejects it);
    the compiler folds the extra arithmetic away."""
    return m & ((m.to(tl.int32) * 0 + flag.to(tl.int32)) != 0)


@triton.jit
def combine_sum_kernel(
    long_rows, long_seg_ptr, part, out, F,
    ACC: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """out[long_rows[l]] = sum of the partial rows of l's segments, in segment order
    (deterministic)."""
    l = tl.program_id(0).to(tl.int64)
    fo = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    row = tl.load(long_rows + l)
    s0 = tl.load(long_seg_ptr + l)
    s1 = tl.load(long_seg_ptr + l + 1)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    for s in range(s0, s1):
        acc += tl.load(part + s * F + fo, mask=fm, other=0.0)
    tl.store(out + row * F + fo, acc.to(out.dtype.element_ty), mask=fm)


def combine_sum(plan: RowPlan, part: torch.Tensor, out: torch.Tensor, block_f: int, acc) -> None:
    """Launch ``combine_sum_kernel`` for the long rows of ``plan`` (no-op without any)."""
    if plan.num_long == 0 or out.size(1) == 0:
        return
    F = out.size(1)
    grid = (plan.num_long, triton.cdiv(F, block_f))
    combine_sum_kernel[grid](
        plan.long_rows, plan.long_seg_ptr, part, out, F, ACC=acc, BLOCK_F=block_f
    )
