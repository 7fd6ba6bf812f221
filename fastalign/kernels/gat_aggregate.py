"""gat_aggregate: fused graph attention (fastalign/ops/gat_aggregate.py has the formulas).

Tiles are [edges, heads, channels] (heads and channels padded to powers of two).

* Forward, one program per destination row: a pass over the row's edges for the
  per-head max of the logits, a second for the sums of exp and the weighted features;
  the row's added self loop is attended after its edges. Stores out and the per-head
  log-sum-exp, nothing per edge.
* Backward, by recomputation: one program per destination row gives D_i = g_i . out_i
  and grad_alpha_dst; one program per source row walks the transpose for grad_x and
  grad_alpha_src (no atomics).

The dropout mask is the counter hash of ``fastalign.attention_dropout.attention_keep``
in uint64-held 32-bit arithmetic, regenerated wherever an edge is visited. Hub rows are
cut into segments (``segments.row_plan``), each its own program writing a partial
state; a combine kernel per long row merges them in segment order (no atomics), the row's
added self loop attended by its last segment.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..attention_dropout import dropout_scale, dropout_threshold
from ..validation import acc_dtype
from .heuristics import tl_acc
from .launch import launcher
from .segments import row_plan, vmask, work_item

BLOCK_EDGES = 32


@triton.jit
def _fmix32(h):
    """MurmurHash3's finaliser of h < 2^32 held in uint64 (products masked to 32 bits)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


@triton.jit
def _dropout_factor(edge, hh, H, seed, threshold, scale, DROPOUT: tl.constexpr, ACC: tl.constexpr):
    """[E, HP] factors of edge ids ``edge`` [E] and heads ``hh`` [HP]: 1 without dropout,
    else 0 or ``scale`` (the hash of fastalign.attention_dropout)."""
    if DROPOUT:
        idx = edge.to(tl.uint64)[:, None] * H + hh.to(tl.uint64)[None, :]
        lo = idx & 0xFFFFFFFF
        hi = idx >> 32
        bits = _fmix32(lo ^ _fmix32(hi ^ seed.to(tl.uint64)))
        return tl.where((bits >> 8) >= threshold, scale, 0.0).to(ACC)
    else:
        return tl.full([edge.shape[0], hh.shape[0]], 1.0, ACC)


@triton.jit
def _leaky(z, slope):
    return tl.where(z > 0, z, z * slope)


@triton.jit
def _masks(H, C, HP: tl.constexpr, CP: tl.constexpr):
    """(head offsets, channel offsets, head mask, [HP, CP] mask)."""
    hh = tl.arange(0, HP)
    cc = tl.arange(0, CP)
    hm = hh < H
    return hh, cc, hm, hm[:, None] & (cc < C)[None, :]


@triton.jit
def _tiles(params, H, C, ACC: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr):
    """``_masks`` and (negative slope, dropout scale), read from a tensor: a Python float
    argument would be float32."""
    hh, cc, hm, tile = _masks(H, C, HP, CP)
    return hh, cc, hm, tile, tl.load(params).to(ACC), tl.load(params + 1).to(ACC)


@triton.jit
def _long_row(long_rows, long_seg_ptr):
    """(row, first segment, end segment) of a combine program's long row."""
    l = tl.program_id(0).to(tl.int64)
    return tl.load(long_rows + l), tl.load(long_seg_ptr + l), tl.load(long_seg_ptr + l + 1)


@triton.jit
def _dst_terms(a_dst, i, H, hh, hm, HAS_DST: tl.constexpr, ACC: tl.constexpr, HP: tl.constexpr):
    """alpha_dst[i] per head (0 without destination terms)."""
    if HAS_DST:
        return tl.load(a_dst + i * H + hh, mask=hm, other=0.0).to(ACC)
    else:
        return tl.zeros([HP], dtype=ACC)


@triton.jit
def _edge_block(col, e0, end, row, LOOPS: tl.constexpr, BLOCK_E: tl.constexpr):
    """(edge positions, neighbours, attended) of the block of edges from e0 of a row whose
    edges end at ``end``: a stored self loop is not attended when loops are added."""
    eo = e0 + tl.arange(0, BLOCK_E)
    valid = eo < end
    j = tl.load(col + eo, mask=valid, other=0).to(tl.int64)
    if LOOPS:
        valid = valid & (j != row)
    return eo, j, valid


@triton.jit
def _program(pid, rowptr, seg_row, seg_start, seg_end, num_rows, split, num_loops, LOOPS: tl.constexpr):
    """(row, start, end, is_row, is_seg, seg, with_loop) of program ``pid`` of a unified
    row grid (segments.work_item); ``with_loop``: this program attends the row's added
    self loop (a whole row's program, or the last segment of a long row)."""
    row, start, end, is_row, is_seg, seg = work_item(pid, rowptr, seg_row, seg_start, seg_end, num_rows, split)
    last = end == tl.load(rowptr + row + 1).to(tl.int64)
    with_loop = (is_row | (is_seg & last)) & (row < num_loops)
    if not LOOPS:
        with_loop = with_loop & (row < 0)
    return row, start, end, is_row, is_seg, seg, with_loop


@triton.jit
def gat_forward_kernel(
    rowptr, col, x, a_src, a_dst, out, lse, part_m, part_s, part_acc, seg_row, seg_start, seg_end, num_rows,
    split, num_edges, num_loops, params, seed, threshold,
    H, C, HAS_DST: tl.constexpr, LOOPS: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr,
):
    """A whole row: out and lse. A segment of a long row: its (max, sum, features) partial."""
    pid = tl.program_id(0).to(tl.int64)
    i, start, end, is_row, is_seg, seg, with_loop = _program(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split, num_loops, LOOPS)
    hh, cc, hm, tile, slope, scale = _tiles(params, H, C, ACC, HP, CP)
    ad = _dst_terms(a_dst, i, H, hh, hm, HAS_DST, ACC, HP)
    loop_h = vmask(hm, with_loop)  # the row's added loop, per head
    z_loop = tl.load(a_src + i * H + hh, mask=loop_h, other=0.0).to(ACC) + ad
    e_loop = tl.where(loop_h, _leaky(z_loop, slope), float("-inf"))

    m = e_loop
    for e0 in range(start, end, BLOCK_E):
        eo, j, valid = _edge_block(col, e0, end, i, LOOPS, BLOCK_E)
        z = tl.load(a_src + j[:, None] * H + hh[None, :], mask=valid[:, None] & hm[None, :], other=0.0).to(ACC)
        e = tl.where(valid[:, None] & hm[None, :], _leaky(z + ad[None, :], slope), float("-inf"))
        m = tl.maximum(m, tl.max(e, axis=0))
    m_safe = tl.where(m == float("-inf"), 0.0, m)

    s = tl.zeros([HP], dtype=ACC)
    acc = tl.zeros([HP, CP], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo, j, valid = _edge_block(col, e0, end, i, LOOPS, BLOCK_E)
        vm = valid[:, None] & hm[None, :]
        z = tl.load(a_src + j[:, None] * H + hh[None, :], mask=vm, other=0.0).to(ACC)
        p = tl.where(vm, tl.exp(_leaky(z + ad[None, :], slope) - m_safe[None, :]), 0.0)
        s += tl.sum(p, axis=0)
        w = p * _dropout_factor(eo, hh, H, seed, threshold, scale, DROPOUT, ACC)
        xv = tl.load(x + (j[:, None, None] * H + hh[None, :, None]) * C + cc[None, None, :],
                     mask=valid[:, None, None] & tile[None, :, :], other=0.0).to(ACC)
        acc += tl.sum(w[:, :, None] * xv, axis=0)
    p_loop = tl.where(loop_h, tl.exp(e_loop - m_safe), 0.0)
    s += p_loop
    k_loop = tl.sum(_dropout_factor(tl.full([1], 0, tl.int64) + num_edges + i, hh, H, seed, threshold, scale,
                                    DROPOUT, ACC), axis=0)
    x_loop = tl.load(x + (i * H + hh[:, None]) * C + cc[None, :], mask=tile & loop_h[:, None], other=0.0).to(ACC)
    acc += (p_loop * k_loop)[:, None] * x_loop

    # a segment: its partial, under its own max
    tl.store(part_m + seg * H + hh, m, mask=vmask(hm, is_seg))
    tl.store(part_s + seg * H + hh, s, mask=vmask(hm, is_seg))
    tl.store(part_acc + (seg * H + hh[:, None]) * C + cc[None, :], acc, mask=vmask(tile, is_seg))
    # a whole row: the result
    inv = tl.where(s > 0, 1.0 / tl.where(s > 0, s, 1.0), 0.0)
    o = acc * inv[:, None]
    tl.store(out + (i * H + hh[:, None]) * C + cc[None, :], o.to(out.dtype.element_ty), mask=vmask(tile, is_row))
    row_lse = tl.where(s > 0, m_safe + tl.log(tl.where(s > 0, s, 1.0)), float("-inf"))
    tl.store(lse + i * H + hh, row_lse.to(lse.dtype.element_ty), mask=vmask(hm, is_row))


@triton.jit
def gat_forward_combine_kernel(
    long_rows, long_seg_ptr, part_m, part_s, part_acc, out, lse, H, C, ACC: tl.constexpr,
    HP: tl.constexpr, CP: tl.constexpr,
):
    """A long row's segment partials merged in segment order (online max), then out, lse."""
    row, s0, s1 = _long_row(long_rows, long_seg_ptr)
    hh, cc, hm, tile = _masks(H, C, HP, CP)
    m = tl.full([HP], float("-inf"), ACC)
    s = tl.zeros([HP], dtype=ACC)
    acc = tl.zeros([HP, CP], dtype=ACC)
    for q in range(s0, s1):
        mq = tl.load(part_m + q * H + hh, mask=hm, other=float("-inf"))
        sq = tl.load(part_s + q * H + hh, mask=hm, other=0.0)
        aq = tl.load(part_acc + (q * H + hh[:, None]) * C + cc[None, :], mask=tile, other=0.0)
        m_new = tl.maximum(m, mq)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        c0 = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_safe))
        c1 = tl.where(mq == float("-inf"), 0.0, tl.exp(mq - m_safe))
        s = s * c0 + sq * c1
        acc = acc * c0[:, None] + aq * c1[:, None]
        m = m_new
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    inv = tl.where(s > 0, 1.0 / tl.where(s > 0, s, 1.0), 0.0)
    tl.store(out + (row * H + hh[:, None]) * C + cc[None, :], (acc * inv[:, None]).to(out.dtype.element_ty),
             mask=tile)
    row_lse = tl.where(s > 0, m_safe + tl.log(tl.where(s > 0, s, 1.0)), float("-inf"))
    tl.store(lse + row * H + hh, row_lse.to(lse.dtype.element_ty), mask=hm)


@triton.jit
def _edge_grads(z, lse_i, d_i, k, dot, slope, valid):
    """(a k, dz) of edges with pre-activations z [E, HP] (0 where not ``valid``)."""
    a = tl.where(valid, tl.exp(_leaky(z, slope) - lse_i), 0.0)
    dz = a * (k * dot - d_i) * tl.where(z > 0, 1.0, slope)
    return a * k, dz


@triton.jit
def gat_dst_grad_kernel(
    rowptr, col, x, a_src, a_dst, lse, d_row, g, grad_dst, part, seg_row, seg_start, seg_end, num_rows, split,
    num_edges, num_loops, params, seed, threshold,
    H, C, HAS_DST: tl.constexpr, LOOPS: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr,
):
    """Per destination row: D_i = g_i . out_i = sum_j a k (g_i . x_j) into d_row, and
    grad_alpha_dst = sum_j a (k g_i . x_j - D_i) l' = S1 - D_i S2 (l' the leaky ReLU's
    slope at z; D_i is known only at the row's end). A segment stores (S1, S2, D)."""
    pid = tl.program_id(0).to(tl.int64)
    i, start, end, is_row, is_seg, seg, with_loop = _program(
        pid, rowptr, seg_row, seg_start, seg_end, num_rows, split, num_loops, LOOPS)
    hh, cc, hm, tile, slope, scale = _tiles(params, H, C, ACC, HP, CP)
    ad = _dst_terms(a_dst, i, H, hh, hm, HAS_DST, ACC, HP)
    lse_i = tl.load(lse + i * H + hh, mask=hm, other=0.0).to(ACC)
    g_i = tl.load(g + (i * H + hh[:, None]) * C + cc[None, :], mask=tile, other=0.0).to(ACC)
    s1 = tl.zeros([HP], dtype=ACC)
    s2 = tl.zeros([HP], dtype=ACC)
    d = tl.zeros([HP], dtype=ACC)
    for e0 in range(start, end, BLOCK_E):
        eo, j, valid = _edge_block(col, e0, end, i, LOOPS, BLOCK_E)
        vm = valid[:, None] & hm[None, :]
        z = tl.load(a_src + j[:, None] * H + hh[None, :], mask=vm, other=0.0).to(ACC) + ad[None, :]
        xv = tl.load(x + (j[:, None, None] * H + hh[None, :, None]) * C + cc[None, None, :],
                     mask=valid[:, None, None] & tile[None, :, :], other=0.0).to(ACC)
        dot = tl.sum(xv * g_i[None, :, :], axis=2)
        k = _dropout_factor(eo, hh, H, seed, threshold, scale, DROPOUT, ACC)
        a = tl.where(vm, tl.exp(_leaky(z, slope) - lse_i[None, :]), 0.0)
        lg = tl.where(z > 0, 1.0, slope)
        s1 += tl.sum(a * k * dot * lg, axis=0)
        s2 += tl.sum(a * lg, axis=0)
        d += tl.sum(a * k * dot, axis=0)
    loop_h = vmask(hm, with_loop)
    z = tl.load(a_src + i * H + hh, mask=loop_h, other=0.0).to(ACC) + ad
    x_i = tl.load(x + (i * H + hh[:, None]) * C + cc[None, :], mask=tile & loop_h[:, None], other=0.0).to(ACC)
    dot = tl.sum(x_i * g_i, axis=1)
    k = tl.sum(_dropout_factor(tl.full([1], 0, tl.int64) + num_edges + i, hh, H, seed, threshold, scale,
                               DROPOUT, ACC), axis=0)
    a = tl.where(loop_h, tl.exp(_leaky(z, slope) - lse_i), 0.0)
    lg = tl.where(z > 0, 1.0, slope)
    s1 += a * k * dot * lg
    s2 += a * lg
    d += a * k * dot
    tl.store(part + (seg * 3 + 0) * H + hh, s1, mask=vmask(hm, is_seg))
    tl.store(part + (seg * 3 + 1) * H + hh, s2, mask=vmask(hm, is_seg))
    tl.store(part + (seg * 3 + 2) * H + hh, d, mask=vmask(hm, is_seg))
    tl.store(d_row + i * H + hh, d.to(d_row.dtype.element_ty), mask=vmask(hm, is_row))
    if HAS_DST:
        tl.store(grad_dst + i * H + hh, (s1 - d * s2).to(grad_dst.dtype.element_ty), mask=vmask(hm, is_row))


@triton.jit
def gat_dst_grad_combine_kernel(
    long_rows, long_seg_ptr, part, d_row, grad_dst, H, HAS_DST: tl.constexpr, ACC: tl.constexpr,
    HP: tl.constexpr,
):
    row, q0, q1 = _long_row(long_rows, long_seg_ptr)
    hh = tl.arange(0, HP)
    hm = hh < H
    s1 = tl.zeros([HP], dtype=ACC)
    s2 = tl.zeros([HP], dtype=ACC)
    d = tl.zeros([HP], dtype=ACC)
    for q in range(q0, q1):
        s1 += tl.load(part + (q * 3 + 0) * H + hh, mask=hm, other=0.0)
        s2 += tl.load(part + (q * 3 + 1) * H + hh, mask=hm, other=0.0)
        d += tl.load(part + (q * 3 + 2) * H + hh, mask=hm, other=0.0)
    tl.store(d_row + row * H + hh, d.to(d_row.dtype.element_ty), mask=hm)
    if HAS_DST:
        tl.store(grad_dst + row * H + hh, (s1 - d * s2).to(grad_dst.dtype.element_ty), mask=hm)


@triton.jit
def gat_src_grad_kernel(
    rowptr_t, col_t, perm_t, x, a_src, a_dst, lse, d_row, g, grad_x, grad_src, part_src, part_x, seg_row,
    seg_start, seg_end, num_rows, split, num_edges, num_loops, params,
    seed, threshold, H, C, HAS_DST: tl.constexpr, LOOPS: tl.constexpr, DROPOUT: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    j, start, end, is_row, is_seg, seg, with_loop = _program(
        pid, rowptr_t, seg_row, seg_start, seg_end, num_rows, split, num_loops, LOOPS)
    hh, cc, hm, tile, slope, scale = _tiles(params, H, C, ACC, HP, CP)
    as_j = tl.load(a_src + j * H + hh, mask=hm, other=0.0).to(ACC)
    x_j = tl.load(x + (j * H + hh[:, None]) * C + cc[None, :], mask=tile, other=0.0).to(ACC)
    gsrc = tl.zeros([HP], dtype=ACC)
    gx = tl.zeros([HP, CP], dtype=ACC)
    for t0 in range(start, end, BLOCK_E):
        to, i, valid = _edge_block(col_t, t0, end, j, LOOPS, BLOCK_E)
        edge = tl.load(perm_t + to, mask=to < end, other=0)
        vm = valid[:, None] & hm[None, :]
        z = tl.zeros([BLOCK_E, HP], dtype=ACC) + as_j[None, :]
        if HAS_DST:
            z += tl.load(a_dst + i[:, None] * H + hh[None, :], mask=vm, other=0.0).to(ACC)
        lse_i = tl.load(lse + i[:, None] * H + hh[None, :], mask=vm, other=0.0).to(ACC)
        d_i = tl.load(d_row + i[:, None] * H + hh[None, :], mask=vm, other=0.0).to(ACC)
        gv = tl.load(g + (i[:, None, None] * H + hh[None, :, None]) * C + cc[None, None, :],
                     mask=valid[:, None, None] & tile[None, :, :], other=0.0).to(ACC)
        dot = tl.sum(gv * x_j[None, :, :], axis=2)
        k = _dropout_factor(edge, hh, H, seed, threshold, scale, DROPOUT, ACC)
        ak, dz = _edge_grads(z, lse_i, d_i, k, dot, slope, vm)
        gsrc += tl.sum(tl.where(vm, dz, 0.0), axis=0)
        gx += tl.sum(tl.where(vm, ak, 0.0)[:, :, None] * gv, axis=0)
    loop_h = vmask(hm, with_loop)
    z = as_j
    if HAS_DST:
        z = z + tl.load(a_dst + j * H + hh, mask=loop_h, other=0.0).to(ACC)
    lse_j = tl.load(lse + j * H + hh, mask=loop_h, other=0.0).to(ACC)
    d_j = tl.load(d_row + j * H + hh, mask=loop_h, other=0.0).to(ACC)
    g_j = tl.load(g + (j * H + hh[:, None]) * C + cc[None, :], mask=tile & loop_h[:, None], other=0.0).to(ACC)
    dot = tl.sum(g_j * x_j, axis=1)
    k = _dropout_factor(tl.full([1], 0, tl.int64) + num_edges + j, hh, H, seed, threshold, scale, DROPOUT, ACC)
    ak, dz = _edge_grads(z[None, :], lse_j[None, :], d_j[None, :], k, dot[None, :], slope, loop_h[None, :])
    gsrc += tl.sum(tl.where(loop_h[None, :], dz, 0.0), axis=0)
    gx += tl.sum(tl.where(loop_h[None, :], ak, 0.0), axis=0)[:, None] * g_j
    tl.store(part_src + seg * H + hh, gsrc, mask=vmask(hm, is_seg))
    tl.store(part_x + (seg * H + hh[:, None]) * C + cc[None, :], gx, mask=vmask(tile, is_seg))
    tl.store(grad_src + j * H + hh, gsrc.to(grad_src.dtype.element_ty), mask=vmask(hm, is_row))
    tl.store(grad_x + (j * H + hh[:, None]) * C + cc[None, :], gx.to(grad_x.dtype.element_ty),
             mask=vmask(tile, is_row))


@triton.jit
def gat_src_grad_combine_kernel(
    long_rows, long_seg_ptr, part_src, part_x, grad_src, grad_x, H, C, ACC: tl.constexpr, HP: tl.constexpr,
    CP: tl.constexpr,
):
    row, q0, q1 = _long_row(long_rows, long_seg_ptr)
    hh, cc, hm, tile = _masks(H, C, HP, CP)
    gsrc = tl.zeros([HP], dtype=ACC)
    gx = tl.zeros([HP, CP], dtype=ACC)
    for q in range(q0, q1):
        gsrc += tl.load(part_src + q * H + hh, mask=hm, other=0.0)
        gx += tl.load(part_x + (q * H + hh[:, None]) * C + cc[None, :], mask=tile, other=0.0)
    tl.store(grad_src + row * H + hh, gsrc.to(grad_src.dtype.element_ty), mask=hm)
    tl.store(grad_x + (row * H + hh[:, None]) * C + cc[None, :], gx.to(grad_x.dtype.element_ty), mask=tile)


@functools.lru_cache(maxsize=64)
def _params(negative_slope: float, scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(negative slope, dropout scale) on the device, made once per value (not a host to
    device copy per launch)."""
    return torch.tensor([negative_slope, scale], dtype=dtype, device=device)


def _options(x, negative_slope, dropout, seed, add_self_loops, num_dst):
    heads, channels = x.size(1), x.size(2)
    return dict(
        params=_params(float(negative_slope), dropout_scale(dropout), acc_dtype(x.dtype), x.device),
        num_loops=min(x.size(0), num_dst) if add_self_loops else 0,
        seed=int(seed) & 0xFFFFFFFF, threshold=dropout_threshold(dropout),
        H=heads, C=channels, LOOPS=bool(add_self_loops), DROPOUT=dropout > 0, ACC=tl_acc(x.dtype),
        BLOCK_E=BLOCK_EDGES, HP=triton.next_power_of_2(max(heads, 1)), CP=triton.next_power_of_2(max(channels, 1)),
    )


def _plan_args(plan):
    return dict(seg_row=plan.seg_row, seg_start=plan.seg_start, seg_end=plan.seg_end, num_rows=plan.num_rows,
                split=plan.split)


def _partial(plan, width, dtype, device):
    return torch.empty((max(plan.num_segs, 1), width), dtype=dtype, device=device)


@launcher
def gat_aggregate_forward(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops):
    num_dst = rowptr.numel() - 1
    out = x.new_empty((num_dst, x.size(1), x.size(2)))
    acc = acc_dtype(x.dtype)
    lse = torch.empty((num_dst, x.size(1)), dtype=acc, device=x.device)
    if num_dst == 0 or x.size(1) == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    has_dst = alpha_dst is not None
    plan = row_plan(rowptr)
    heads, channels = x.size(1), x.size(2)
    part_m, part_s = _partial(plan, heads, acc, x.device), _partial(plan, heads, acc, x.device)
    part_acc = _partial(plan, heads * channels, acc, x.device)
    options = _options(x, negative_slope, dropout, seed, add_self_loops, num_dst)
    gat_forward_kernel[(plan.num_programs,)](
        rowptr, col, x, alpha_src, alpha_dst if has_dst else alpha_src, out, lse, part_m, part_s, part_acc,
        num_edges=col.numel(), HAS_DST=has_dst, **_plan_args(plan), **options,
    )
    if plan.num_long:
        gat_forward_combine_kernel[(plan.num_long,)](
            plan.long_rows, plan.long_seg_ptr, part_m, part_s, part_acc, out, lse, heads, channels,
            ACC=options["ACC"], HP=options["HP"], CP=options["CP"],
        )
    return out, lse


@launcher
def gat_aggregate_backward(
    rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
    negative_slope, dropout, seed, add_self_loops,
):
    num_dst, num_src = rowptr.numel() - 1, x.size(0)
    acc = acc_dtype(x.dtype)
    # every row of these is written (by its program, or a long row's by the combine)
    d_row = torch.empty((num_dst, x.size(1)), dtype=acc, device=x.device)  # g_i . out_i, from the first pass
    lse = lse.to(acc).contiguous()
    grad_x = torch.empty_like(x)
    grad_src = torch.empty_like(alpha_src)
    has_dst = alpha_dst is not None
    grad_dst = torch.empty_like(alpha_dst) if has_dst else x.new_empty(0)
    if x.size(1) == 0:
        return grad_x, grad_src, grad_dst
    heads, channels = x.size(1), x.size(2)
    options = _options(x, negative_slope, dropout, seed, add_self_loops, num_dst)
    a_dst = alpha_dst if has_dst else alpha_src
    if num_dst:
        plan = row_plan(rowptr)
        part = _partial(plan, 3 * heads, acc, x.device)
        gat_dst_grad_kernel[(plan.num_programs,)](
            rowptr, col, x, alpha_src, a_dst, lse, d_row, grad_out, grad_dst if has_dst else d_row, part,
            num_edges=col.numel(), HAS_DST=has_dst, **_plan_args(plan), **options,
        )
        if plan.num_long:
            gat_dst_grad_combine_kernel[(plan.num_long,)](
                plan.long_rows, plan.long_seg_ptr, part, d_row, grad_dst if has_dst else d_row, heads,
                HAS_DST=has_dst, ACC=options["ACC"], HP=options["HP"],
            )
    if num_src:
        plan_t = row_plan(rowptr_t)
        part_src = _partial(plan_t, heads, acc, x.device)
        part_x = _partial(plan_t, heads * channels, acc, x.device)
        gat_src_grad_kernel[(plan_t.num_programs,)](
            rowptr_t, col_t, perm_t, x, alpha_src, a_dst, lse, d_row, grad_out, grad_x, grad_src, part_src,
            part_x, num_edges=col.numel(), HAS_DST=has_dst, **_plan_args(plan_t), **options,
        )
        if plan_t.num_long:
            gat_src_grad_combine_kernel[(plan_t.num_long,)](
                plan_t.long_rows, plan_t.long_seg_ptr, part_src, part_x, grad_src, grad_x, heads, channels,
                ACC=options["ACC"], HP=options["HP"], CP=options["CP"],
            )
    return grad_x, grad_src, grad_dst
