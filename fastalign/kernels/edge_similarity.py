"""edge_similarity: s_e = k(x_dst[i], x_src[j]) per edge e = (j -> i), and its backward.

Forward: one program per row (or segment of a long row) keeps its destination row and
walks its edges in blocks, accumulating each edge's statistic over the feature blocks
(similarity.row_sims); one scalar written per edge.

Backward, both sides by rows (no atomics): grad_dst[i] = sum_{e in row i} g_e dk/da, by
CSR rows; grad_src[j] = sum over j's out-edges g_e dk/db, by the rows of the transpose
(fixed row = the source, gathered rows = its destinations, g gathered through perm_t).
Each program owns one feature block of one row's gradient and recomputes the edge
similarities it needs (a second pass over the features only when F > BLOCK_F).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..validation import acc_dtype
from .heuristics import heuristic, launch, tl_acc
from .launch import launcher
from .segments import combine_sum, row_plan, vmask, work_item
from .similarity import KINDS, row_sims, sim_grad, sq_norm


@triton.jit
def edge_sim_kernel(
    rowptr, col, x_dst, x_src, out, seg_row, seg_start, seg_end, num_rows, split, F,
    sigma, coef,
    KIND: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    a_row = x_dst + row * F
    na2 = 0.0
    if KIND == 4:
        na2 = sq_norm(a_row, F, ACC, BLOCK_F)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
        j = tl.load(col + eo, mask=em, other=0).to(tl.int64)
        s, st, nb2 = row_sims(a_row, x_src, j, em, F, na2, sigma, coef, KIND, DEGREE, ACC, BLOCK_E, BLOCK_F)
        tl.store(out + eo, s.to(out.dtype.element_ty), mask=em)


@triton.jit
def edge_sim_grad_kernel(
    rowptr, idx, perm, fixed, gath, grad_s, out, part,
    seg_row, seg_start, seg_end, num_rows, split, F, sigma, coef,
    HAS_PERM: tl.constexpr, KIND: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """out[row, fblock] = sum over the row's edges of grad_s[e] dk(fixed[row], gath[idx])/da."""
    pid = tl.program_id(0).to(tl.int64)
    fo = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fm = fo < F
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    a_row = fixed + row * F
    na2 = 0.0
    if KIND == 4:
        na2 = sq_norm(a_row, F, ACC, BLOCK_F)
    a = tl.load(a_row + fo, mask=fm, other=0.0).to(ACC)
    g = tl.zeros([BLOCK_F], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
        j = tl.load(idx + eo, mask=em, other=0).to(tl.int64)
        s, st, nb2 = row_sims(a_row, gath, j, em, F, na2, sigma, coef, KIND, DEGREE, ACC, BLOCK_E, BLOCK_F)
        e = eo
        if HAS_PERM:
            e = tl.load(perm + eo, mask=em, other=0)
        c = tl.load(grad_s + e, mask=em, other=0.0).to(ACC)
        c = tl.where(em, c, 0.0)
        b = tl.load(gath + j[:, None] * F + fo[None, :], mask=em[:, None] & fm[None, :], other=0.0).to(ACC)
        g += sim_grad(a, b, s, st, nb2, na2, c, sigma, coef, KIND, DEGREE)
    tl.store(part + seg * F + fo, g, mask=vmask(fm, is_seg))
    tl.store(out + row * F + fo, g.to(out.dtype.element_ty), mask=vmask(fm, is_row))


def _check_kernel(kernel: str) -> int:
    if kernel not in KINDS:
        raise ValueError(f"unknown kernel {kernel!r}")
    return KINDS[kernel]


@launcher
def edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef):
    kind = _check_kernel(kernel)
    x_dst, x_src = x_dst.contiguous(), x_src.contiguous()
    out = torch.empty(col.numel(), dtype=x_dst.dtype, device=x_dst.device)
    plan = row_plan(rowptr)
    if col.numel() == 0:
        return out
    F = x_dst.size(1)

    def run(cfg):
        edge_sim_kernel[(plan.num_programs,)](
            rowptr, col, x_dst, x_src, out, plan.seg_row, plan.seg_start, plan.seg_end,
            plan.num_rows, plan.split, F, float(sigma), float(coef),
            KIND=kind, DEGREE=int(degree), ACC=tl_acc(x_dst.dtype),
            BLOCK_E=cfg.BLOCK_E, BLOCK_F=cfg.BLOCK_F, num_warps=cfg.num_warps,
        )

    key = ("edge_sim", kind, int(degree), F, x_dst.dtype)
    launch(plan, key, heuristic(plan, F, x_dst.dtype), run, x_dst.device)
    return out


def side_grad(rowptr, idx, perm, fixed, gath, grad_s, kind, sigma, degree, coef):
    """One side of the backward: rows of ``rowptr`` own rows of ``fixed``."""
    out = torch.empty_like(fixed)  # every row is written: short rows by their program,
    F = fixed.size(1)               # long rows by the combine pass
    if idx.numel() == 0 or F == 0 or fixed.size(0) == 0:
        return out.zero_()
    plan = row_plan(rowptr)
    part = torch.empty((max(plan.num_segs, 1), F), dtype=acc_dtype(fixed.dtype), device=fixed.device)

    def run(cfg):
        grid = (plan.num_programs, triton.cdiv(F, cfg.BLOCK_F))
        edge_sim_grad_kernel[grid](
            rowptr, idx, perm if perm is not None else idx, fixed, gath, grad_s, out, part,
            plan.seg_row, plan.seg_start, plan.seg_end, plan.num_rows, plan.split, F,
            float(sigma), float(coef), HAS_PERM=perm is not None, KIND=kind,
            DEGREE=int(degree), ACC=tl_acc(fixed.dtype),
            BLOCK_E=cfg.BLOCK_E, BLOCK_F=cfg.BLOCK_F, num_warps=cfg.num_warps,
        )
        combine_sum(plan, part, out, cfg.BLOCK_F, tl_acc(fixed.dtype))

    key = ("edge_sim_grad", kind, int(degree), F, fixed.dtype, perm is not None)
    # up to 256 features per block: each extra block recomputes the similarities
    launch(plan, key, heuristic(plan, F, fixed.dtype, cap=256, tile=2048), run, fixed.device)
    return out


@launcher
def edge_similarity_backward(
    rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef
):
    kind = _check_kernel(kernel)
    x_dst, x_src, grad_s = x_dst.contiguous(), x_src.contiguous(), grad_s.contiguous()
    grad_dst = side_grad(rowptr, col, None, x_dst, x_src, grad_s, kind, sigma, degree, coef)
    grad_src = side_grad(rowptr_t, col_t, perm_t, x_src, x_dst, grad_s, kind, sigma, degree, coef)
    return grad_dst, grad_src
