"""Helpers shared by the op modules: the Graph of a call, the backend choice, the transpose
and the one backend-dependent input check (cosine's range). Every other input check is
in fastalign.validation."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from ..graph import Graph

def as_graph(graph, x: Optional[Tensor] = None) -> Graph:
    """Accept a Graph or anything Graph.coerce takes (built once per call: pass a Graph
    to reuse the CSR and its caches)."""
    if isinstance(graph, Graph):
        return graph
    num_nodes = x.size(0) if isinstance(x, Tensor) and x.dim() >= 1 else None
    return Graph.coerce(graph, num_nodes=num_nodes)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_cosine_range(kernel: str, backend: str, *features: Tensor) -> None:
    """Backends that sum cosine's squares in the features' precision (float32 for
    16/32-bit inputs; ``backends.cosine_overflow_safe``) overflow for entries above
    sqrt(FLOAT32_MAX / 2F): refuse those inputs instead of returning NaN."""
    if kernel != "cosine" or backends.cosine_overflow_safe(backend):
        return
    for t in features:
        if t.dtype == torch.float64 or t.numel() == 0:
            continue
        limit = math.sqrt(FLOAT32_MAX / (2 * max(t.size(1), 1)))
        top = float(t.detach().abs().amax())
        if math.isfinite(top) and top > limit:
            raise ValueError(
                f"cosine on the {backend!r} backend sums squares in float32: entries up to {top:.3g} "
                f"overflow them at width {t.size(1)} (limit {limit:.3g}). Cosine does not change "
                "when a row is scaled: rescale the features, pass float64, or use backend='cpu'/'torch'"
            )


def transpose_for(graph: Graph, needed: bool):
    """(rowptr_t, col_t, perm_t) when a backward will need them, else Nones (so that a
    forward-only call never builds the transpose)."""
    if not needed:
        return None, None, None
    return graph.transpose()


def transposed_weight(graph: Graph, weight: Tensor, perm_t: Tensor) -> Tensor:
    """Edge weights in the order of the graph's transpose. The graph's own weights (in
    this dtype) are gathered once and cached; other weights are gathered per call."""
    own = graph.edge_weight
    if own is not None and weight.data_ptr() == own.data_ptr() and weight.dtype == own.dtype:
        key = ("weight_t", weight.dtype)
        return graph._cached(key, lambda: weight.detach()[perm_t], uses_weight=True)
    return weight.detach()[perm_t]


def resolve(op: str, backend, device, functions) -> str:
    return backends.resolve(op, backend, device, functions)


def impl(backend: str):
    return backends.get(backend)
