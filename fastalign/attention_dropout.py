"""The attention-dropout mask of gat_aggregate, defined once for every backend (C++ and
CUDA: csrc/attention_dropout.h; Triton: fastalign/kernels/gat_aggregate.py).

Attention dropout draws its mask from a counter-based hash of (seed, edge, head), so a
backward regenerates it instead of storing it and every backend draws the same mask.
Edge ids: a stored edge is its internal position e; the self loop added for node i is
num_edges + i. For idx = edge * heads + head (int64), with fmix32 MurmurHash3's 32-bit
finaliser: bits = fmix32(lo32(idx) ^ fmix32(hi32(idx) ^ seed)); the entry is kept when
bits >> 8 (24 uniform bits) >= ceil(dropout * 2^24), and kept entries are scaled by
1 / (1 - dropout) (0 when dropout is 1: everything is dropped).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def dropout_threshold(dropout: float) -> int:
    """The 24-bit threshold below which an entry is dropped."""
    return min(int(math.ceil(dropout * 16777216.0)), 16777216)


def dropout_scale(dropout: float) -> float:
    return 1.0 / (1.0 - dropout) if dropout < 1.0 else 0.0


def _mul32(a: Tensor, c: int) -> Tensor:
    """(a * c) mod 2^32 for int64 ``a`` in [0, 2^32), exact in int64 (16-bit halves of c)."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h: Tensor) -> Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def attention_keep(seed: int, edge_ids: Tensor, heads: int, dropout: float) -> Tensor:
    """The dropout mask [len(edge_ids), heads] (bool: kept) of attention entries."""
    idx = edge_ids.long().unsqueeze(1) * heads + torch.arange(heads, device=edge_ids.device)
    bits = _fmix32((idx & _M32) ^ _fmix32(((idx >> 32) ^ (seed & _M32)) & _M32))
    return (bits >> 8) >= dropout_threshold(dropout)
