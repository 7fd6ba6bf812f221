"""structure_kl fused: per destination i, KL(q_i || p_i) between the peer's and the
student's local structures, p = softmax(k(h_s)/tau), q = softmax(k(h_p)/tau) over i's
in-edges — without any E-sized or E x F buffer.

Forward, one pass per row: each edge block's similarities for both students are
accumulated over the feature blocks, and an online softmax kept per lane tracks, for the
student, (m_s, l_s = sum e^{z_s - m_s}) and for the peer (m_p, l_p, A = sum e^{z_p - m_p}
(z_p - z_s)). Then, with lse = m + log l,

    kl_i = sum_e q_e (log q_e - log p_e) = A / l_p - lse_p + lse_s.

Only (kl, lse_s, lse_p) per node are saved. Long rows: segments store the five partials,
merged in segment order by a combine pass (deterministic).

Backward, by recomputation from that per-node state: for edge e = (j -> i),
logp = z_s - lse_s[i], logq = z_p - lse_p[i],
    dL/dsim_s = g_i (p - q) / tau,   dL/dsim_p = g_i q (logq - logp - kl_i) / tau,
chained through the kernel (similarity.sim_grad). Destination gradients by CSR rows;
source gradients by the transpose's rows, each edge's terms recomputed from the
destination's state (gathered by col_t). Each program owns one feature block of one row's
gradient; the peer's gradients only when asked (peer_grad).

Opt-in (FASTALIGN_TRITON_SKL_BACKWARD=atomic): the destination pass also scatters each
edge's source-side gradient with float32 atomics, skipping the transpose pass (two passes
over the edges' features instead of three; non-deterministic order of additions; off
under torch.use_deterministic_algorithms).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import settings
from ..validation import acc_dtype
from .heuristics import block_f, heuristic, launch, tl_acc
from .launch import launcher
from .segments import combine_sum, row_plan, vmask, work_item
from .similarity import KINDS, row_sims, sim_grad, sim_grad_other, sq_norm


@triton.jit
def _safe(m):
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def skl_fwd_kernel(
    rowptr, col, s_dst, s_src, p_dst, p_src, kl, lse_s, lse_p, part,
    seg_row, seg_start, seg_end, num_rows, split, FS, FP, sigma, coef, tau,
    KIND: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_FS: tl.constexpr, BLOCK_FP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    as_row = s_dst + row * FS
    ap_row = p_dst + row * FP
    na2_s = 0.0
    na2_p = 0.0
    if KIND == 4:
        na2_s = sq_norm(as_row, FS, ACC, BLOCK_FS)
        na2_p = sq_norm(ap_row, FP, ACC, BLOCK_FP)
    m_s = tl.full([BLOCK_E], float("-inf"), ACC)
    l_s = tl.zeros([BLOCK_E], dtype=ACC)
    m_p = tl.full([BLOCK_E], float("-inf"), ACC)
    l_p = tl.zeros([BLOCK_E], dtype=ACC)
    a_p = tl.zeros([BLOCK_E], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
        j = tl.load(col + eo, mask=em, other=0).to(tl.int64)
        ss, st_s, nb_s = row_sims(as_row, s_src, j, em, FS, na2_s, sigma, coef, KIND, DEGREE, ACC, BLOCK_E, BLOCK_FS)
        sp, st_p, nb_p = row_sims(ap_row, p_src, j, em, FP, na2_p, sigma, coef, KIND, DEGREE, ACC, BLOCK_E, BLOCK_FP)
        zs = tl.where(em, ss / tau, float("-inf"))
        zp = tl.where(em, sp / tau, float("-inf"))
        # per-lane online softmax (no cross-lane reduction inside the loop)
        mn = tl.maximum(m_s, zs)
        ms = _safe(mn)
        l_s = l_s * tl.exp(m_s - ms) + tl.exp(zs - ms)
        m_s = mn
        mn = tl.maximum(m_p, zp)
        ms = _safe(mn)
        alpha = tl.exp(m_p - ms)
        ep = tl.exp(zp - ms)
        l_p = l_p * alpha + ep
        a_p = a_p * alpha + tl.where(em, ep * (zp - zs), 0.0)
        m_p = mn
    # merge the lanes
    ms_row = tl.max(m_s, axis=0)
    ls_row = tl.sum(l_s * tl.exp(m_s - _safe(ms_row)), axis=0)
    mp_row = tl.max(m_p, axis=0)
    scale = tl.exp(m_p - _safe(mp_row))
    lp_row = tl.sum(l_p * scale, axis=0)
    ap_row_ = tl.sum(a_p * scale, axis=0)
    base = part + 5 * seg
    tl.store(base, ms_row, mask=is_seg)
    tl.store(base + 1, ls_row, mask=is_seg)
    tl.store(base + 2, mp_row, mask=is_seg)
    tl.store(base + 3, lp_row, mask=is_seg)
    tl.store(base + 4, ap_row_, mask=is_seg)
    _finish(row, ms_row, ls_row, mp_row, lp_row, ap_row_, kl, lse_s, lse_p, is_row)


@triton.jit
def _finish(row, m_s, l_s, m_p, l_p, a_p, kl, lse_s, lse_p, mask):
    # empty row: m = -inf, l = 0, so lse = -inf and kl = 0
    lse_sv = _safe(m_s) + tl.log(l_s)
    lse_pv = _safe(m_p) + tl.log(l_p)
    klv = tl.where(l_p > 0, a_p / l_p - (lse_pv - lse_sv), 0.0)
    tl.store(lse_s + row, lse_sv.to(lse_s.dtype.element_ty), mask=mask)
    tl.store(lse_p + row, lse_pv.to(lse_p.dtype.element_ty), mask=mask)
    tl.store(kl + row, klv.to(kl.dtype.element_ty), mask=mask)


@triton.jit
def skl_combine_kernel(long_rows, long_seg_ptr, part, kl, lse_s, lse_p):
    l = tl.program_id(0).to(tl.int64)
    row = tl.load(long_rows + l)
    s0 = tl.load(long_seg_ptr + l)
    s1 = tl.load(long_seg_ptr + l + 1)
    m_s = tl.load(part + 5 * s0)
    l_s = tl.load(part + 5 * s0 + 1)
    m_p = tl.load(part + 5 * s0 + 2)
    l_p = tl.load(part + 5 * s0 + 3)
    a_p = tl.load(part + 5 * s0 + 4)
    for s in range(s0 + 1, s1):
        m2 = tl.load(part + 5 * s)
        mn = tl.maximum(m_s, m2)
        l_s = l_s * tl.exp(m_s - _safe(mn)) + tl.load(part + 5 * s + 1) * tl.exp(m2 - _safe(mn))
        m_s = mn
        m2 = tl.load(part + 5 * s + 2)
        mn = tl.maximum(m_p, m2)
        a1 = tl.exp(m_p - _safe(mn))
        a2 = tl.exp(m2 - _safe(mn))
        l_p = l_p * a1 + tl.load(part + 5 * s + 3) * a2
        a_p = a_p * a1 + tl.load(part + 5 * s + 4) * a2
        m_p = mn
    _finish(row, m_s, l_s, m_p, l_p, a_p, kl, lse_s, lse_p, True)


@triton.jit
def skl_grad_kernel(
    rowptr, idx, s_fix, s_gath, p_fix, p_gath, lse_s, lse_p, kl, gkl,
    g_s, g_p, part_s, part_p, gsrc_s, gsrc_p,
    seg_row, seg_start, seg_end, num_rows, split, FS, FP, sigma, coef, tau,
    TRANSPOSED: tl.constexpr, PEER: tl.constexpr, SRC_ATOMIC: tl.constexpr,
    KIND: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_FS: tl.constexpr, BLOCK_FP: tl.constexpr,
):
    """Gradient rows of the fixed side. TRANSPOSED: rows are sources (transpose CSR) and
    the per-node state belongs to the gathered destinations; else to the row itself.
    SRC_ATOMIC (opt-in, destination side only): also scatter each edge's gathered-side
    gradient into gsrc_* (float32) with atomics, so that no transpose pass is needed."""
    pid = tl.program_id(0).to(tl.int64)
    fb = tl.program_id(1)
    fos = fb * BLOCK_FS + tl.arange(0, BLOCK_FS)
    fms = fos < FS
    fop = fb * BLOCK_FP + tl.arange(0, BLOCK_FP)
    fmp = fop < FP
    row, start, end, is_row, is_seg, seg = work_item(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split
    )
    as_row = s_fix + row * FS
    ap_row = p_fix + row * FP
    na2_s = 0.0
    na2_p = 0.0
    if KIND == 4:
        na2_s = sq_norm(as_row, FS, ACC, BLOCK_FS)
        na2_p = sq_norm(ap_row, FP, ACC, BLOCK_FP)
    a_s = tl.load(as_row + fos, mask=fms, other=0.0).to(ACC)
    a_p = tl.load(ap_row + fop, mask=fmp, other=0.0).to(ACC)
    if not TRANSPOSED:
        r_lse_s = tl.load(lse_s + row).to(ACC)
        r_lse_p = tl.load(lse_p + row).to(ACC)
        r_kl = tl.load(kl + row).to(ACC)
        r_g = tl.load(gkl + row).to(ACC)
    gs = tl.zeros([BLOCK_FS], dtype=ACC)
    gp = tl.zeros([BLOCK_FP], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo = e0 + tl.arange(0, BLOCK_E)
        em = eo < end
        j = tl.load(idx + eo, mask=em, other=0).to(tl.int64)
        ss, st_s, nb_s = row_sims(as_row, s_gath, j, em, FS, na2_s, sigma, coef, KIND, DEGREE, ACC, BLOCK_E, BLOCK_FS)
        sp, st_p, nb_p = row_sims(ap_row, p_gath, j, em, FP, na2_p, sigma, coef, KIND, DEGREE, ACC, BLOCK_E, BLOCK_FP)
        if TRANSPOSED:
            n_lse_s = tl.load(lse_s + j, mask=em, other=0.0).to(ACC)
            n_lse_p = tl.load(lse_p + j, mask=em, other=0.0).to(ACC)
            n_kl = tl.load(kl + j, mask=em, other=0.0).to(ACC)
            n_g = tl.load(gkl + j, mask=em, other=0.0).to(ACC)
        else:
            n_lse_s = r_lse_s
            n_lse_p = r_lse_p
            n_kl = r_kl
            n_g = r_g
        logp = ss / tau - n_lse_s
        logq = sp / tau - n_lse_p
        q = tl.exp(logq)
        c_s = tl.where(em, n_g * (tl.exp(logp) - q) / tau, 0.0)
        b_s = tl.load(
            s_gath + j[:, None] * FS + fos[None, :], mask=em[:, None] & fms[None, :], other=0.0
        ).to(ACC)
        gs += sim_grad(a_s, b_s, ss, st_s, nb_s, na2_s, c_s, sigma, coef, KIND, DEGREE)
        if SRC_ATOMIC:
            t_s = sim_grad_other(a_s, b_s, ss, st_s, nb_s, na2_s, c_s, sigma, coef, KIND, DEGREE)
            tl.atomic_add(gsrc_s + j[:, None] * FS + fos[None, :], t_s, mask=em[:, None] & fms[None, :])
        if PEER:
            c_p = tl.where(em, n_g * q * (logq - logp - n_kl) / tau, 0.0)
            b_p = tl.load(
                p_gath + j[:, None] * FP + fop[None, :], mask=em[:, None] & fmp[None, :], other=0.0
            ).to(ACC)
            gp += sim_grad(a_p, b_p, sp, st_p, nb_p, na2_p, c_p, sigma, coef, KIND, DEGREE)
            if SRC_ATOMIC:
                t_p = sim_grad_other(a_p, b_p, sp, st_p, nb_p, na2_p, c_p, sigma, coef, KIND, DEGREE)
                tl.atomic_add(gsrc_p + j[:, None] * FP + fop[None, :], t_p, mask=em[:, None] & fmp[None, :])
    tl.store(part_s + seg * FS + fos, gs, mask=vmask(fms, is_seg))
    tl.store(g_s + row * FS + fos, gs.to(g_s.dtype.element_ty), mask=vmask(fms, is_row))
    if PEER:
        tl.store(part_p + seg * FP + fop, gp, mask=vmask(fmp, is_seg))
        tl.store(g_p + row * FP + fop, gp.to(g_p.dtype.element_ty), mask=vmask(fmp, is_row))


def _kind(kernel):
    if kernel not in KINDS:
        raise ValueError(f"unknown kernel {kernel!r}")
    return KINDS[kernel]


def _config(plan, fs, fp, dtype):
    # Feature blocks up to 256 wide: the backward recomputes the similarities once per
    # feature block, so one block covers the common widths. The tile budget is shared
    # by the two students' tiles.
    cfg = heuristic(plan, max(fs, fp), dtype, cap=256, tile=2048)
    return cfg, block_f(fs, dtype, 256), block_f(fp, dtype, 256)


@launcher
def structure_kl_forward(rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau):
    kind = _kind(kernel)
    s_dst, s_src, p_dst, p_src = (t.contiguous() for t in (s_dst, s_src, p_dst, p_src))
    num_dst = rowptr.numel() - 1
    dev, tacc = s_dst.device, acc_dtype(s_dst.dtype)
    kl = torch.empty(num_dst, dtype=s_dst.dtype, device=dev)
    lse_s = torch.empty(num_dst, dtype=tacc, device=dev)
    lse_p = torch.empty(num_dst, dtype=tacc, device=dev)
    if num_dst == 0:
        return kl, lse_s, lse_p
    plan = row_plan(rowptr)
    FS, FP = s_dst.size(1), p_dst.size(1)
    part = torch.empty(5 * max(plan.num_segs, 1), dtype=tacc, device=dev)
    base, bfs, bfp = _config(plan, FS, FP, s_dst.dtype)
    acc = tl_acc(s_dst.dtype)

    def run(cfg):
        skl_fwd_kernel[(plan.num_programs,)](
            rowptr, col, s_dst, s_src, p_dst, p_src, kl, lse_s, lse_p, part,
            plan.seg_row, plan.seg_start, plan.seg_end, plan.num_rows, plan.split, FS, FP,
            float(sigma), float(coef), float(tau), KIND=kind, DEGREE=int(degree), ACC=acc,
            BLOCK_E=cfg.BLOCK_E, BLOCK_FS=bfs, BLOCK_FP=bfp, num_warps=cfg.num_warps,
        )
        if plan.num_long:
            skl_combine_kernel[(plan.num_long,)](plan.long_rows, plan.long_seg_ptr, part, kl, lse_s, lse_p)

    key = ("skl_fwd", kind, int(degree), FS, FP, s_dst.dtype)
    launch(plan, key, base, run, dev)
    return kl, lse_s, lse_p


def _side(rowptr, idx, s_fix, s_gath, p_fix, p_gath, lse_s, lse_p, kl, gkl,
          transposed, peer, kind, sigma, degree, coef, tau, src_acc=None):
    """One side of the backward (see skl_grad_kernel); ``src_acc``: the opt-in atomic
    mode's float32 (grad s_src, grad p_src) accumulators, destination side only."""
    FS, FP = s_fix.size(1), p_fix.size(1)
    dev, tacc, acc = s_fix.device, acc_dtype(s_fix.dtype), tl_acc(s_fix.dtype)
    g_s = torch.empty_like(s_fix)
    g_p = torch.empty_like(p_fix) if peer else s_fix.new_empty(0)
    if idx.numel() == 0 or s_fix.size(0) == 0:
        return g_s.zero_(), g_p.zero_()
    plan = row_plan(rowptr)
    base, bfs, bfp = _config(plan, FS, FP, s_fix.dtype)
    nfb = max(triton.cdiv(FS, bfs), triton.cdiv(FP, bfp) if peer else 0, 1)
    nseg = max(plan.num_segs, 1)
    part_s = torch.empty((nseg, FS), dtype=tacc, device=dev)
    part_p = torch.empty((nseg, FP), dtype=tacc, device=dev) if peer else part_s
    gp_arg = g_p if peer else g_s
    gsrc_s, gsrc_p = src_acc if src_acc is not None else (part_s, part_p)

    def run(cfg):
        skl_grad_kernel[(plan.num_programs, nfb)](
            rowptr, idx, s_fix, s_gath, p_fix, p_gath, lse_s, lse_p, kl, gkl,
            g_s, gp_arg, part_s, part_p, gsrc_s, gsrc_p,
            plan.seg_row, plan.seg_start, plan.seg_end, plan.num_rows, plan.split, FS, FP,
            float(sigma), float(coef), float(tau), TRANSPOSED=transposed, PEER=peer,
            SRC_ATOMIC=src_acc is not None, KIND=kind, DEGREE=int(degree), ACC=acc,
            BLOCK_E=cfg.BLOCK_E, BLOCK_FS=bfs, BLOCK_FP=bfp, num_warps=cfg.num_warps,
        )
        combine_sum(plan, part_s, g_s, bfs, acc)
        if peer:
            combine_sum(plan, part_p, g_p, bfp, acc)

    key = ("skl_grad", kind, int(degree), FS, FP, s_fix.dtype, transposed, peer)
    if src_acc is not None:
        # accumulating launches are not idempotent: never tuned, the recompute
        # variant's tuned config (or the heuristic) is used
        run(plan.configs.get(key, base))
    else:
        launch(plan, key, base, run, dev)
    return g_s, g_p


def atomic_backward() -> bool:
    """The opt-in single-pass backward (FASTALIGN_TRITON_SKL_BACKWARD=atomic): source
    gradients scattered with float32 atomics in the destination pass, instead of a
    second, transpose pass that recomputes every edge. Fewer bytes (two passes over the
    edges' features instead of three) but non-deterministic summation order; never used
    while torch.use_deterministic_algorithms(True) is on."""
    return (
        settings.triton_atomic_skl_backward()
        and not torch.are_deterministic_algorithms_enabled()
    )


@launcher
def structure_kl_backward(
    rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
    lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad,
):
    kind = _kind(kernel)
    s_dst, s_src, p_dst, p_src = (t.contiguous() for t in (s_dst, s_src, p_dst, p_src))
    lse_s, lse_p, kl, grad_kl = (t.contiguous() for t in (lse_s, lse_p, kl, grad_kl))
    peer = bool(peer_grad)
    args = (lse_s, lse_p, kl, grad_kl)
    params = (kind, sigma, degree, coef, tau)
    if atomic_backward():
        tacc = acc_dtype(s_src.dtype)
        acc_s = torch.zeros(s_src.shape, dtype=tacc, device=s_src.device)
        acc_p = torch.zeros(p_src.shape, dtype=tacc, device=p_src.device) if peer else acc_s
        g_s_dst, g_p_dst = _side(rowptr, col, s_dst, s_src, p_dst, p_src, *args, False, peer, *params,
                                 src_acc=(acc_s, acc_p))
        g_s_src, g_p_src = acc_s.to(s_src.dtype), acc_p.to(p_src.dtype)
    else:
        g_s_dst, g_p_dst = _side(rowptr, col, s_dst, s_src, p_dst, p_src, *args, False, peer, *params)
        g_s_src, g_p_src = _side(rowptr_t, col_t, s_src, s_dst, p_src, p_dst, *args, True, peer, *params)
    if not peer:
        g_p_dst, g_p_src = p_dst.new_empty(0), p_src.new_empty(0)
    return g_s_dst, g_s_src, g_p_dst, g_p_src
