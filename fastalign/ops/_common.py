"""Input checks and small helpers shared by the op modules."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import backends
from ..graph import Graph

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNELS = ("l1", "rbf", "linear", "poly", "cosine")
DEFAULT_SIGMA = {"l1": 100.0, "rbf": 1.0}


def as_graph(graph, x: Optional[Tensor] = None) -> Graph:
    """Accept a Graph or anything Graph.coerce takes (built once per call: pass a Graph
    to reuse the CSR and its caches)."""
    if isinstance(graph, Graph):
        return graph
    num_nodes = x.size(0) if isinstance(x, Tensor) and x.dim() >= 1 else None
    return Graph.coerce(graph, num_nodes=num_nodes)


def check_features(name: str, x, num_rows: int, graph: Graph, side: str) -> Tensor:
    """A 2-D floating tensor with ``num_rows`` rows on the graph's device, contiguous."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_nodes, features], got shape {list(x.shape)}")
    if x.size(0) != num_rows:
        raise ValueError(
            f"{name} has {x.size(0)} rows but the graph has {num_rows} {side} nodes"
        )
    if x.device != graph.device:
        raise ValueError(f"{name} is on {x.device} but the graph is on {graph.device}")
    return x.contiguous()


def check_edge_values(name: str, values, graph: Graph, dtype=None) -> Optional[Tensor]:
    """Optional per-edge values in internal order, cast to ``dtype`` when given."""
    if values is None:
        return None
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {values.dtype}")
    if values.dim() != 1 or values.numel() != graph.num_edges:
        raise ValueError(
            f"{name} must have shape [{graph.num_edges}] (one per edge), got {list(values.shape)}"
        )
    if values.device != graph.device:
        raise ValueError(f"{name} is on {values.device} but the graph is on {graph.device}")
    return (values if dtype is None else values.to(dtype)).contiguous()


def split_pair(
    name: str, x: Union[Tensor, Tuple[Tensor, Tensor]], graph: Graph
) -> Tuple[Tensor, Tensor]:
    """Features of (destination, source) nodes: a single tensor for a square graph or a
    pair ``(x_dst, x_src)`` for any graph, PyG-style."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"{name} must be a tensor or a (x_dst, x_src) pair")
        x_dst = check_features(f"{name}[0] (destination)", x[0], graph.num_dst, graph, "destination")
        x_src = check_features(f"{name}[1] (source)", x[1], graph.num_src, graph, "source")
        if x_dst.dtype != x_src.dtype or x_dst.size(1) != x_src.size(1):
            raise ValueError(
                f"{name}: destination and source features differ in dtype or width "
                f"({x_dst.dtype} x {x_dst.size(1)} vs {x_src.dtype} x {x_src.size(1)})"
            )
        return x_dst, x_src
    if not graph.is_square:
        raise ValueError(
            f"the graph is rectangular ({graph.num_src} sources, {graph.num_dst} destinations): "
            f"pass {name} as a (x_dst, x_src) pair"
        )
    x = check_features(name, x, graph.num_dst, graph, "")
    return x, x


def kernel_params(kernel: str, sigma, degree, coef) -> Tuple[str, float, int, float]:
    if kernel not in KERNELS:
        raise ValueError(f"unknown similarity kernel {kernel!r}; choose one of {KERNELS}")
    if sigma is None:
        sigma = DEFAULT_SIGMA.get(kernel, 1.0)
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if int(degree) != degree or degree < 0:
        raise ValueError(f"degree must be a non-negative integer, got {degree}")
    return kernel, sigma, int(degree), float(coef)


def check_tau(tau) -> float:
    tau = float(tau)
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return tau


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
