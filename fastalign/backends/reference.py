"""The pure-PyTorch reference of every backend function: the semantics of fastalign.

Each function works on raw CSR tensors (``rowptr``, ``col``; the destination of an edge
is its CSR row) and contiguous features. The reference favours clarity: it gathers
per-edge tensors (E x F) freely. Compiled backends implement the same signatures and are
tested against these functions; they must not materialise E x F tensors.

Similarity kernels (``kernel``, with ``sigma``, ``degree``, ``coef``), for an edge
j -> i with a = x_dst[i], b = x_src[j]:
    l1      exp(-||a - b||_1 / sigma)
    rbf     exp(-||a - b||^2 / (2 sigma^2))
    linear  a . b
    poly    (a . b + coef) ^ degree
    cosine  a . b / (max(||a||, eps) max(||b||, eps)),  eps = 1e-8
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import BACKEND_FUNCTIONS
from ..attention_dropout import attention_keep, dropout_scale
from ..validation import acc_dtype, arg_dtype

AVAILABLE = True
FUNCTIONS = frozenset(BACKEND_FUNCTIONS)  # the reference implements every one
# The structure KL's per-node state (kl and the log-sum-exps) is double whatever the
# features' dtype, as in the C++ kernels: at logits of ~1e7 float32 log-probabilities
# are off by ~1.
STRUCTURE_KL_STATE_DTYPE = {d: (torch.float64, torch.float64)
                            for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
COSINE_EPS = 1e-8


def supports(device: torch.device) -> bool:
    return True


# --------------------------------------------------------------------------- helpers
def csr_row(rowptr: Tensor, num_edges: int) -> Tensor:
    """The destination (CSR row) of each edge, int64."""
    counts = rowptr[1:].long() - rowptr[:-1].long()
    rows = torch.arange(counts.numel(), device=rowptr.device)
    return torch.repeat_interleave(rows, counts, output_size=num_edges)


def _segment_sum(values: Tensor, row: Tensor, num_rows: int) -> Tensor:
    out = values.new_zeros((num_rows,) + values.shape[1:])
    return out.index_add_(0, row, values)


def _segment_max(values: Tensor, row: Tensor, num_rows: int) -> Tensor:
    out = values.new_full((num_rows,) + values.shape[1:], float("-inf"))
    index = row.view((-1,) + (1,) * (values.dim() - 1)).expand_as(values)
    return out.scatter_reduce_(0, index, values, "amax", include_self=True)


# --------------------------------------------------------------------------- spmm
def spmm_forward(
    rowptr: Tensor, col: Tensor, weight: Optional[Tensor], x: Tensor, reduce: str
) -> Tuple[Tensor, Tensor]:
    """out[i] = reduce_{e = (j -> i)} w_e x[j]; empty rows give 0.

    For ``reduce="max"`` also returns ``arg [num_dst, F]`` (int32, or int64 past 2**31 - 1
    edges: ``validation.arg_dtype``): the edge position that
    gave each maximum (the first one on ties), -1 for empty rows; otherwise an empty
    tensor. NaN propagates, as in ``torch.amax``: a NaN message makes the row's maximum
    NaN, and ``arg`` is the first NaN edge, whatever the edge order otherwise.
    ``reduce="amax"``: the same maximum, without ``arg`` (an empty tensor).
    """
    num_dst, num_edges = rowptr.numel() - 1, col.numel()
    acc = acc_dtype(x.dtype)
    row = csr_row(rowptr, num_edges)
    msg = x.index_select(0, col.long()).to(acc)
    if weight is not None:
        msg = msg * weight.to(acc).unsqueeze(1)
    if reduce in ("sum", "mean"):
        out = _segment_sum(msg, row, num_dst)
        if reduce == "mean":
            deg = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(acc)
            out = out / deg.unsqueeze(1)
        return out.to(x.dtype), x.new_empty(0, dtype=torch.int64)
    if reduce not in ("max", "amax"):
        raise ValueError(f"unknown reduce {reduce!r}")
    feat = x.size(1)
    out = msg.new_full((num_dst, feat), float("-inf"))
    out.scatter_reduce_(0, row.unsqueeze(1).expand(-1, feat), msg, "amax", include_self=True)
    out[rowptr[1:] == rowptr[:-1]] = 0  # rows without an edge
    if reduce == "amax":
        return out.to(x.dtype), x.new_empty(0, dtype=torch.int64)
    # First edge reaching the maximum (a NaN maximum: the first NaN), per (row, feature).
    best = out.index_select(0, row)
    hit = (msg == best) | (torch.isnan(msg) & torch.isnan(best))
    pos = torch.arange(num_edges, device=x.device).unsqueeze(1).expand(-1, feat)
    pos = torch.where(hit, pos, torch.full_like(pos, num_edges))
    arg = torch.full((num_dst, feat), num_edges, dtype=torch.int64, device=x.device)
    arg.scatter_reduce_(0, row.unsqueeze(1).expand(-1, feat), pos, "amin", include_self=True)
    arg[arg == num_edges] = -1
    return out.to(x.dtype), arg.to(arg_dtype(num_edges))


def spmm_max_backward(
    col: Tensor,
    rowptr_t: Tensor,
    col_t: Tensor,
    perm_t: Tensor,
    weight: Optional[Tensor],
    x: Tensor,
    arg: Tensor,
    grad_out: Tensor,
    need_weight_grad: bool,
) -> Tuple[Tensor, Tensor]:
    """Gradients of the max reduction: each output element routes its gradient to the
    edge in ``arg``. Returns (grad_x, grad_weight or an empty tensor).

    ``(rowptr_t, col_t, perm_t)`` is the graph's transpose (``Graph.transpose()``), for
    kernels that gather grad_x by source node instead of scattering it:
    grad_x[j, f] = sum over j's transposed edges k (destination i = col_t[k], edge
    e = perm_t[k]) of [arg[i, f] == e] * w_e * grad_out[i, f]. The reference scatters
    and ignores them.
    """
    acc = acc_dtype(x.dtype)
    if col.numel() == 0:  # no edge won anything
        grad_w = x.new_zeros(0) if need_weight_grad else x.new_empty(0)
        return torch.zeros_like(x), grad_w
    valid = arg >= 0
    edge = arg.clamp(min=0).long()
    src = col.long()[edge]
    g = torch.where(valid, grad_out.to(acc), torch.zeros((), dtype=acc, device=x.device))
    scale = weight.to(acc)[edge] if weight is not None else 1.0
    grad_x = torch.zeros(x.shape, dtype=acc, device=x.device).scatter_add_(0, src, g * scale)
    grad_w = x.new_empty(0)
    if need_weight_grad:
        contrib = g * torch.gather(x.to(acc), 0, src)
        grad_w = torch.zeros(col.numel(), dtype=acc, device=x.device)
        grad_w.index_add_(0, edge.flatten(), contrib.flatten())
        grad_w = grad_w.to(weight.dtype if weight is not None else x.dtype)
    return grad_x.to(x.dtype), grad_w


def sddmm(rowptr: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per edge e = (j -> i): a[i] . b[j] (the edge-weight gradient of spmm)."""
    acc = acc_dtype(a.dtype)
    row = csr_row(rowptr, col.numel())
    out = (a.index_select(0, row).to(acc) * b.index_select(0, col.long()).to(acc)).sum(-1)
    return out.to(a.dtype)


# --------------------------------------------------------------------------- gcn
def gcn_aggregate(
    rowptr: Tensor,
    col: Tensor,
    weight: Optional[Tensor],
    dis: Tensor,
    loop_weight: Optional[Tensor],
    x: Tensor,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """out[i] = dis[i] * (sum_{e=(j->i)} w_e dis[j] x[j] + loop_weight[i] dis[i] x[i]) + bias.

    ``dis`` is deg^-1/2 (0 for zero degree). With ``loop_weight`` (self loops added),
    existing self-loop edges are skipped: their weight is already in ``loop_weight``.
    ``bias`` ([F], a GCN layer's) is added in the accumulation type, before the one
    rounding to ``x``'s dtype.
    """
    acc = acc_dtype(x.dtype)
    num_dst = rowptr.numel() - 1
    row = csr_row(rowptr, col.numel())
    colv = col.long()
    dis_a = dis.to(acc)
    coef = dis_a[row] * dis_a[colv]
    if weight is not None:
        coef = coef * weight.to(acc)
    messages = x.index_select(0, colv).to(acc) * coef.unsqueeze(1)
    if loop_weight is not None:
        # skipped, not multiplied by 0: an inf feature on a stored loop would give NaN
        messages = torch.where((row != colv).unsqueeze(1), messages, messages.new_zeros(()))
    out = _segment_sum(messages, row, num_dst)
    if loop_weight is not None:
        out = out + (loop_weight.to(acc) * dis_a * dis_a).unsqueeze(1) * x.to(acc)
    if bias is not None:
        out = out + bias.to(acc)
    return out.to(x.dtype)


# --------------------------------------------------------------------------- similarity
def pairwise(kernel: str, a: Tensor, b: Tensor, sigma: float, degree: int, coef: float) -> Tensor:
    """The similarity kernel on matched rows of a and b ([E, F] -> [E])."""
    if kernel == "l1":
        return torch.exp(-(a - b).abs().sum(-1) / sigma)
    if kernel == "rbf":
        return torch.exp(-((a - b) ** 2).sum(-1) / (2.0 * sigma * sigma))
    if kernel == "linear":
        return (a * b).sum(-1)
    if kernel == "poly":
        return ((a * b).sum(-1) + coef) ** degree
    if kernel == "cosine":
        au, ma, na = _scaled_rows(a)
        bu, mb, nb = _scaled_rows(b)
        # a.b / (max(|a|, eps) max(|b|, eps)) as (au.bu) (ma / |a|_eps) (mb / |b|_eps):
        # no sum of squares or product of norms that could overflow
        s = (au * bu).sum(-1) * (ma / na.clamp(min=COSINE_EPS)) * (mb / nb.clamp(min=COSINE_EPS))
        return s.to(a.dtype)
    raise ValueError(f"unknown kernel {kernel!r}")


def _scaled_rows(a: Tensor):
    """(a / m, m, |a|) in float64 with m the largest |entry| of each row (1 for a zero
    row): |a| = m |a / m| stays finite wherever it is representable, whatever the
    magnitude of the entries (float32 rows of norm 1e20 included)."""
    a = a.double()
    m = a.abs().amax(-1)
    m = torch.where(m > 0, m, torch.ones_like(m))
    au = a / m.unsqueeze(-1)
    return au, m, m * au.norm(dim=-1)


def pairwise_backward(
    kernel: str, a: Tensor, b: Tensor, s: Tensor, g: Tensor, sigma: float, degree: int, coef: float
) -> Tuple[Tensor, Tensor]:
    """Gradients of ``pairwise`` w.r.t. a and b, given s and the upstream gradient g ([E])."""
    g = g.unsqueeze(1)
    if kernel == "l1":
        d = torch.sign(a - b) * (-(s / sigma)).unsqueeze(1) * g
        return d, -d
    if kernel == "rbf":
        d = (a - b) * (-(s / (sigma * sigma))).unsqueeze(1) * g
        return d, -d
    if kernel == "linear":
        return b * g, a * g
    if kernel == "poly":
        if degree == 0:
            return torch.zeros_like(a), torch.zeros_like(b)
        dot = (a * b).sum(-1)
        f = (degree * (dot + coef) ** (degree - 1)).unsqueeze(1) * g
        return b * f, a * f
    if kernel == "cosine":
        # d/da = b / (|a| |b|) - a s / |a|^2, each term a product of ratios (float64)
        _, _, na_raw = _scaled_rows(a)
        _, _, nb_raw = _scaled_rows(b)
        na, nb = na_raw.clamp(min=COSINE_EPS), nb_raw.clamp(min=COSINE_EPS)
        a64, b64, s64, g64 = a.double(), b.double(), s.double().unsqueeze(1), g.double()
        # Below eps the norm is a constant, so its derivative term vanishes.
        ka = torch.where(na_raw > COSINE_EPS, 1.0, 0.0).unsqueeze(1)
        kb = torch.where(nb_raw > COSINE_EPS, 1.0, 0.0).unsqueeze(1)
        na, nb = na.unsqueeze(1), nb.unsqueeze(1)
        ga = ((b64 / nb) / na - ka * (a64 / na) * s64 / na) * g64
        gb = ((a64 / na) / nb - kb * (b64 / nb) * s64 / nb) * g64
        return ga.to(a.dtype), gb.to(b.dtype)
    raise ValueError(f"unknown kernel {kernel!r}")


def _endpoints(rowptr: Tensor, col: Tensor, x_dst: Tensor, x_src: Tensor):
    row = csr_row(rowptr, col.numel())
    acc = acc_dtype(x_dst.dtype)
    return row, x_dst.index_select(0, row).to(acc), x_src.index_select(0, col.long()).to(acc)


def edge_similarity(
    rowptr, col, x_dst, x_src, kernel: str, sigma: float, degree: int, coef: float
) -> Tensor:
    """s_e = k(x_dst[i], x_src[j]) for each edge e = (j -> i)."""
    _, a, b = _endpoints(rowptr, col, x_dst, x_src)
    return pairwise(kernel, a, b, sigma, degree, coef).to(x_dst.dtype)


def edge_similarity_backward(
    rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s,
    kernel: str, sigma: float, degree: int, coef: float,
) -> Tuple[Tensor, Tensor]:
    """(grad x_dst, grad x_src) of ``edge_similarity`` given grad_s ([E])."""
    row, a, b = _endpoints(rowptr, col, x_dst, x_src)
    s = pairwise(kernel, a, b, sigma, degree, coef)
    ga, gb = pairwise_backward(kernel, a, b, s, grad_s.to(a.dtype), sigma, degree, coef)
    grad_dst = _segment_sum(ga, row, x_dst.size(0)).to(x_dst.dtype)
    grad_src = _segment_sum(gb, col.long(), x_src.size(0)).to(x_src.dtype)
    return grad_dst, grad_src


# --------------------------------------------------------------------------- softmax
def edge_softmax(rowptr: Tensor, logits: Tensor) -> Tensor:
    """Softmax of per-edge logits over each destination's in-edges."""
    num_dst = rowptr.numel() - 1
    row = csr_row(rowptr, logits.numel())
    acc = acc_dtype(logits.dtype)
    z = logits.to(acc)
    m = _segment_max(z, row, num_dst)
    e = torch.exp(z - m[row])
    return (e / _segment_sum(e, row, num_dst)[row]).to(logits.dtype)


def edge_softmax_backward(rowptr: Tensor, p: Tensor, grad_p: Tensor) -> Tensor:
    """grad logits = p * (grad_p - sum_row(p * grad_p))."""
    num_dst = rowptr.numel() - 1
    row = csr_row(rowptr, p.numel())
    acc = acc_dtype(p.dtype)
    pa, ga = p.to(acc), grad_p.to(acc)
    dot = _segment_sum(pa * ga, row, num_dst)
    return (pa * (ga - dot[row])).to(p.dtype)


# --------------------------------------------------------------------------- structure KL
def _log_softmax_rows(z: Tensor, row: Tensor, num_dst: int) -> Tuple[Tensor, Tensor]:
    """(log-softmax per edge, log-sum-exp per row; -inf for empty rows); z may carry
    trailing dimensions (one softmax per column, as the heads of attention)."""
    m = _segment_max(z, row, num_dst)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    lse = torch.log(_segment_sum(torch.exp(z - m_safe[row]), row, num_dst)) + m_safe
    return z - lse[row], lse


def structure_kl_forward(
    rowptr, col, s_dst, s_src, p_dst, p_src,
    kernel: str, sigma: float, degree: int, coef: float, tau: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per destination i: KL(q_i || p_i) = sum_{e in i} q_e (log q_e - log p_e), with
    p = softmax(k(student)/tau) and q = softmax(k(peer)/tau) over i's in-edges.

    Returns (kl [num_dst], lse_student [num_dst], lse_peer [num_dst]) in float64, the
    log-sum-exps of the scaled logits (the per-node state the backward recomputes from;
    -inf where a node has no in-edge, and kl 0 there).
    """
    num_dst = rowptr.numel() - 1
    row, a_s, b_s = _endpoints(rowptr, col, s_dst, s_src)
    _, a_p, b_p = _endpoints(rowptr, col, p_dst, p_src)
    # similarities in the features' accumulation dtype, the softmax state in double
    # (STRUCTURE_KL_STATE_DTYPE)
    z_s = pairwise(kernel, a_s, b_s, sigma, degree, coef).double() / tau
    z_p = pairwise(kernel, a_p, b_p, sigma, degree, coef).double() / tau
    logp, lse_s = _log_softmax_rows(z_s, row, num_dst)
    logq, lse_p = _log_softmax_rows(z_p, row, num_dst)
    kl = _segment_sum(torch.exp(logq) * (logq - logp), row, num_dst)
    return kl, lse_s, lse_p


def structure_kl_backward(
    rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
    lse_s, lse_p, kl, grad_kl,
    kernel: str, sigma: float, degree: int, coef: float, tau: float, peer_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the per-node KL w.r.t. the four embeddings.

    With g_i the upstream gradient of node i: d/dz_s = g_i (p_e - q_e) and
    d/dz_q = g_i q_e (log q_e - log p_e - kl_i), each divided by tau and chained through
    the similarity kernel. The peer gradients are empty tensors unless ``peer_grad``.
    """
    row, a_s, b_s = _endpoints(rowptr, col, s_dst, s_src)
    acc = a_s.dtype
    sim_s = pairwise(kernel, a_s, b_s, sigma, degree, coef)
    # the log-probabilities from the double state: at logits of ~1e7 a float32
    # difference of logit and log-sum-exp is off by ~1
    g = grad_kl.double()[row]
    logp = sim_s.double() / tau - lse_s.double()[row]
    _, a_p, b_p = _endpoints(rowptr, col, p_dst, p_src)
    sim_p = pairwise(kernel, a_p, b_p, sigma, degree, coef)
    logq = sim_p.double() / tau - lse_p.double()[row]
    q = torch.exp(logq)
    d_sim_s = (g * (torch.exp(logp) - q) / tau).to(acc)
    ga, gb = pairwise_backward(kernel, a_s, b_s, sim_s, d_sim_s, sigma, degree, coef)
    grads = [
        _segment_sum(ga, row, s_dst.size(0)).to(s_dst.dtype),
        _segment_sum(gb, col.long(), s_src.size(0)).to(s_src.dtype),
    ]
    if peer_grad:
        d_sim_p = (g * q * (logq - logp - kl.double()[row]) / tau).to(acc)
        ga, gb = pairwise_backward(kernel, a_p, b_p, sim_p, d_sim_p, sigma, degree, coef)
        grads += [
            _segment_sum(ga, row, p_dst.size(0)).to(p_dst.dtype),
            _segment_sum(gb, col.long(), p_src.size(0)).to(p_src.dtype),
        ]
    else:
        grads += [p_dst.new_empty(0), p_src.new_empty(0)]
    return tuple(grads)


# --------------------------------------------------------------------------- attention
# Attention dropout: the mask is fastalign.attention_dropout.attention_keep.


def attention_edges(rowptr: Tensor, col: Tensor, num_src: int, add_self_loops: bool):
    """(dst, src, edge id) of every attended edge: the stored edges, and with
    ``add_self_loops`` (as PyG's GATConv) the stored self loops removed and one loop
    i -> i added for each i < min(num_src, num_dst), with edge id num_edges + i."""
    num_dst, num_edges = rowptr.numel() - 1, col.numel()
    dst, src = csr_row(rowptr, num_edges), col.long()
    eid = torch.arange(num_edges, device=col.device)
    if add_self_loops:
        keep = src != dst
        loops = torch.arange(min(num_src, num_dst), device=col.device)
        dst = torch.cat([dst[keep], loops])
        src = torch.cat([src[keep], loops])
        eid = torch.cat([eid[keep], loops + num_edges])
    return dst, src, eid


def attention(rowptr, col, num_src, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops):
    """Per attended edge (``attention_edges``' order): (dst, src, edge id, pre-activation z,
    softmax a, dropout factor k), and the log-sum-exp per (row, head). Differentiable in
    the attention terms (fastalign.nn.GATConv returns a k when asked for the attention)."""
    num_dst, heads = rowptr.numel() - 1, alpha_src.size(1)
    acc = acc_dtype(alpha_src.dtype)
    dst, src, eid = attention_edges(rowptr, col, num_src, add_self_loops)
    z = alpha_src.to(acc)[src]
    if alpha_dst is not None:
        z = z + alpha_dst.to(acc)[dst]
    logp, lse = _log_softmax_rows(torch.nn.functional.leaky_relu(z, negative_slope), dst, num_dst)
    a = torch.exp(logp)
    if dropout > 0:
        k = attention_keep(seed, eid, heads, dropout).to(acc) * dropout_scale(dropout)
    else:
        k = torch.ones_like(a)
    return dst, src, eid, z, a, k, lse


def gat_aggregate_forward(
    rowptr: Tensor, col: Tensor, x: Tensor, alpha_src: Tensor, alpha_dst: Optional[Tensor],
    negative_slope: float, dropout: float, seed: int, add_self_loops: bool,
) -> Tuple[Tensor, Tensor]:
    """out[i, h] = sum_{j -> i} drop(softmax_j(leaky_relu(alpha_src[j, h] +
    alpha_dst[i, h])))_ij * x[j, h] for ``x`` [num_src, H, C].

    Returns (out [num_dst, H, C] in x's dtype, lse [num_dst, H]: the log-sum-exp of each
    row's logits, -inf for a row with no attended edge, in float64 for float64 inputs and
    float32 otherwise). The softmax is over the undropped logits; dropout then zeroes
    entries (see ``attention_keep``) and rescales the rest.
    """
    dst, src, _, _, a, k, lse = attention(
        rowptr, col, x.size(0), alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops
    )
    acc = a.dtype
    msg = (a * k).unsqueeze(-1) * x.to(acc)[src]
    out = _segment_sum(msg, dst, rowptr.numel() - 1)
    return out.to(x.dtype), lse


def gat_aggregate_backward(
    rowptr: Tensor, col: Tensor, rowptr_t: Tensor, col_t: Tensor, perm_t: Tensor,
    x: Tensor, alpha_src: Tensor, alpha_dst: Optional[Tensor], lse: Tensor,
    grad_out: Tensor, negative_slope: float, dropout: float, seed: int, add_self_loops: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_alpha_src, grad_alpha_dst; the last empty without alpha_dst).

    With g_i the output gradient and D_i = g_i . out_i = sum_j a_ij k_ij g_i . x_j (per
    node and head; recomputed, so the output need not be saved):
    d out_i / d a_ij gives g_i . x_j, the softmax turns it into
    dz_ij = a_ij (k_ij g_i . x_j - D_i) leaky_relu'(z_ij), and
    grad_x[j] = sum_i a_ij k_ij g_i, grad_alpha_src[j] = sum_i dz_ij,
    grad_alpha_dst[i] = sum_j dz_ij.
    """
    acc = acc_dtype(x.dtype)
    dst, src, _, z, a, k, _ = attention(
        rowptr, col, x.size(0), alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops
    )
    g = grad_out.to(acc)
    g_e = g[dst]
    dot = (g_e * x.to(acc)[src]).sum(-1)
    d_row = _segment_sum(a * k * dot, dst, rowptr.numel() - 1)
    slope = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, negative_slope))
    dz = a * (k * dot - d_row[dst]) * slope
    grad_x = _segment_sum((a * k).unsqueeze(-1) * g_e, src, x.size(0))
    grad_src = _segment_sum(dz, src, x.size(0))
    grad_dst = (
        _segment_sum(dz, dst, rowptr.numel() - 1).to(alpha_dst.dtype)
        if alpha_dst is not None else x.new_empty(0)
    )
    return grad_x.to(x.dtype), grad_src.to(alpha_src.dtype), grad_dst
