"""The similarity kernels' math as @triton.jit helpers, shared by edge_similarity,
structure_kl and sddmm (which is the ``linear`` kernel).

Layout every row kernel uses: one *fixed* row vector ``a`` (the program's own node) and
a tile ``b`` of gathered rows ``[BLOCK_E, BLOCK_F]`` (its neighbours). A similarity is a
reduction over the whole feature width, so it is accumulated block by block as a
per-edge statistic (``sim_stats``) and finished once (``sim_value``):

    kind     statistic            value
    l1       sum |a - b|          exp(-st / sigma)
    rbf      sum (a - b)^2        exp(-st / (2 sigma^2))
    linear   a . b                st
    poly     a . b                (st + coef)^DEGREE
    cosine   a . b  (+ |b|^2)     st / (max(|a|, eps) max(|b|, eps))

All five kernels are symmetric, k(a, b) = k(b, a), so dk/db (a, b) = dk/da evaluated at
(b, a): one gradient helper (``sim_grad``, w.r.t. the fixed row) serves the destination
side (fixed = destination, gathered = sources, by CSR rows) and the source side (fixed =
source, gathered = destinations, by transpose rows). No atomics. (``sim_grad_other``
gives the gathered side's per-edge gradient tile, for the opt-in single-pass backward of
structure_kl that scatters it with atomics.)

Masked lanes: loads use ``other=0`` for both a and b, which makes every statistic and
value finite; callers zero the per-edge upstream coefficient ``c`` of masked edges.
"""

import triton
import triton.language as tl

L1 = tl.constexpr(0)
RBF = tl.constexpr(1)
LINEAR = tl.constexpr(2)
POLY = tl.constexpr(3)
COSINE = tl.constexpr(4)
COSINE_EPS = tl.constexpr(1e-8)

KINDS = {"l1": 0, "rbf": 1, "linear": 2, "poly": 3, "cosine": 4}


@triton.jit
def ipow(x, N: tl.constexpr):
    """x ** N for a compile-time integer N >= 0 (exact, by repeated products)."""
    r = x * 0.0 + 1.0
    for _ in tl.static_range(N):
        r = r * x
    return r


@triton.jit
def sim_stats(a, b, KIND: tl.constexpr):
    """Per-edge statistics of one feature block: (st [BE], |b|^2 [BE] for cosine)."""
    if KIND == 0:
        st = tl.sum(tl.abs(a[None, :] - b), axis=1)
    elif KIND == 1:
        d = a[None, :] - b
        st = tl.sum(d * d, axis=1)
    else:
        st = tl.sum(a[None, :] * b, axis=1)
    if KIND == 4:
        nb2 = tl.sum(b * b, axis=1)
    else:
        nb2 = st * 0.0
    return st, nb2


@triton.jit
def sim_value(st, nb2, na2, sigma, coef, KIND: tl.constexpr, DEGREE: tl.constexpr):
    """The similarity from the full-width statistics."""
    if KIND == 0:
        s = tl.exp(-st / sigma)
    elif KIND == 1:
        s = tl.exp(-st / (2.0 * sigma * sigma))
    elif KIND == 2:
        s = st
    elif KIND == 3:
        s = ipow(st + coef, DEGREE)
    else:
        na = tl.maximum(tl.sqrt(na2), COSINE_EPS)
        nb = tl.maximum(tl.sqrt(nb2), COSINE_EPS)
        s = st / (na * nb)
    return s


@triton.jit
def sq_norm(a_row, F, ACC: tl.constexpr, BLOCK_F: tl.constexpr):
    """|a|^2 of one row (the fixed row's norm, needed by cosine)."""
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    for f0 in range(0, F, BLOCK_F):
        fo = f0 + tl.arange(0, BLOCK_F)
        a = tl.load(a_row + fo, mask=fo < F, other=0.0).to(ACC)
        acc += a * a
    return tl.sum(acc, axis=0)


@triton.jit
def row_sims(
    a_row, b_base, idx, emask, F, na2, sigma, coef,
    KIND: tl.constexpr, DEGREE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Similarities of the fixed row ``a_row`` with rows ``idx`` ([BLOCK_E], int64) of
    ``b_base``, over the full width F. Returns (s, st, nb2), each [BLOCK_E]."""
    st = tl.zeros([BLOCK_E], dtype=ACC)
    nb2 = tl.zeros([BLOCK_E], dtype=ACC)
    for f0 in range(0, F, BLOCK_F):
        fo = f0 + tl.arange(0, BLOCK_F)
        fm = fo < F
        a = tl.load(a_row + fo, mask=fm, other=0.0).to(ACC)
        b = tl.load(
            b_base + idx[:, None] * F + fo[None, :],
            mask=emask[:, None] & fm[None, :], other=0.0,
        ).to(ACC)
        st_blk, nb2_blk = sim_stats(a, b, KIND)
        st += st_blk
        nb2 += nb2_blk
    s = sim_value(st, nb2, na2, sigma, coef, KIND, DEGREE)
    return s, st, nb2


@triton.jit
def sim_grad(a, b, s, st, nb2, na2, c, sigma, coef, KIND: tl.constexpr, DEGREE: tl.constexpr):
    """sum_e c_e * dk(a, b_e)/da over the tile's edges, for one feature block: [BLOCK_F].

    a: [BF] block of the fixed row; b: [BE, BF] block of the gathered rows; s, st, nb2:
    per-edge value and statistics from ``row_sims``; c: [BE] upstream gradient (0 on
    masked edges)."""
    if KIND == 0:
        d = a[None, :] - b
        sgn = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        u = -(s * c) / sigma
        g = tl.sum(sgn * u[:, None], axis=0)
    elif KIND == 1:
        u = -(s * c) / (sigma * sigma)
        g = tl.sum((a[None, :] - b) * u[:, None], axis=0)
    elif KIND == 2:
        g = tl.sum(b * c[:, None], axis=0)
    elif KIND == 3:
        if DEGREE == 0:
            g = tl.sum(b * 0.0, axis=0)
        else:
            u = c * DEGREE * ipow(st + coef, DEGREE - 1)
            g = tl.sum(b * u[:, None], axis=0)
    else:
        na_raw = tl.sqrt(na2)
        na = tl.maximum(na_raw, COSINE_EPS)
        nb = tl.maximum(tl.sqrt(nb2), COSINE_EPS)
        inv = 1.0 / (na * nb)
        # Below eps the norm is a constant: its derivative term vanishes.
        sa = tl.where(na_raw > COSINE_EPS, s / (na * na), 0.0)
        g = tl.sum(b * (c * inv)[:, None], axis=0) - a * tl.sum(c * sa, axis=0)
    return g


@triton.jit
def sim_grad_other(a, b, s, st, nb2, na2, c, sigma, coef, KIND: tl.constexpr, DEGREE: tl.constexpr):
    """c_e * dk(a, b_e)/db_e per edge, for one feature block: [BLOCK_E, BLOCK_F] (the
    gathered rows' gradient tile; same arguments as ``sim_grad``)."""
    if KIND == 0:
        d = a[None, :] - b
        sgn = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        g = sgn * ((s * c) / sigma)[:, None]
    elif KIND == 1:
        g = (a[None, :] - b) * ((s * c) / (sigma * sigma))[:, None]
    elif KIND == 2:
        g = a[None, :] * c[:, None]
    elif KIND == 3:
        if DEGREE == 0:
            g = b * 0.0
        else:
            u = c * DEGREE * ipow(st + coef, DEGREE - 1)
            g = a[None, :] * u[:, None]
    else:
        na = tl.maximum(tl.sqrt(na2), COSINE_EPS)
        nb_raw = tl.sqrt(nb2)
        nb = tl.maximum(nb_raw, COSINE_EPS)
        inv = 1.0 / (na * nb)
        sb = tl.where(nb_raw > COSINE_EPS, s / (nb * nb), 0.0)
        g = a[None, :] * (c * inv)[:, None] - b * (c * sb)[:, None]
    return g
