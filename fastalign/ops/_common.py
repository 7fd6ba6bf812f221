"""Input checks and small helpers shared by the op modules."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import backends
from .. import validation as V
from ..graph import Graph

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNELS = ("l1", "rbf", "linear", "poly", "cosine")
DEFAULT_SIGMA = {"l1": 100.0, "rbf": 1.0}
# distance kernels: sigma="auto" takes their scale from the embeddings (ops/edge_similarity.py)
AUTO_SIGMA_KERNELS = ("l1", "rbf")
AUTO = "auto"


def as_graph(graph, x: Optional[Tensor] = None) -> Graph:
    """Accept a Graph or anything Graph.coerce takes (built once per call: pass a Graph
    to reuse the CSR and its caches)."""
    if isinstance(graph, Graph):
        return graph
    num_nodes = x.size(0) if isinstance(x, Tensor) and x.dim() >= 1 else None
    return Graph.coerce(graph, num_nodes=num_nodes)


def check_placement(name: str, x, graph: Graph) -> None:
    """A floating tensor on the graph's device (any shape)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.device != graph.device:
        raise ValueError(f"{name} is on {x.device} but the graph is on {graph.device}")


def check_features(name: str, x, num_rows: int, graph: Graph, side: str, dim: int = 2,
                   layout: str = "[num_nodes, features]") -> Tensor:
    """A ``dim``-D floating tensor with ``num_rows`` rows on the graph's device, contiguous."""
    check_placement(name, x, graph)
    if x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {layout}, got shape {list(x.shape)}")
    if x.size(0) != num_rows:
        nodes = f"{side} nodes" if side else "nodes"  # no double space for an unnamed side
        raise ValueError(f"{name} has {x.size(0)} rows but the graph has {num_rows} {nodes}")
    return x.contiguous()


def check_edge_values(name: str, values, graph: Graph, dtype=None) -> Optional[Tensor]:
    """Optional per-edge values in the graph's internal order, cast to ``dtype`` when given."""
    return V.check_edge_values(name, values, graph.num_edges, graph.device, dtype)


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


# The smallest normal float32: a scale below it (or a denominator built from it, such as
# rbf's 2 sigma^2) is 0 or denormal in the kernels' float32 arithmetic, and 0 / 0 is NaN.
MIN_SCALE = float(torch.finfo(torch.float32).tiny)
MAX_DEGREE = 2**31 - 1  # the kernels take the degree as a C int


def real_number(name: str, value) -> float:
    """A finite real number (int or float, not a bool, a string or a tensor of several).
    Finiteness is tested by comparisons, which ``torch.compile(dynamic=True)`` traces on
    a symbolic float (``math.isfinite`` it cannot)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number, got a tensor of shape {list(value.shape)}")
        value = value.item()
    value = float(value)
    if not (value == value and value - value == 0):  # NaN and +-inf fail these
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def is_auto(sigma) -> bool:
    return isinstance(sigma, str) and sigma == AUTO


def kernel_params(kernel: str, sigma, degree, coef) -> Tuple[str, float, int, float]:
    """The custom ops' kernel arguments; ``sigma="auto"`` gives sigma 1 (the caller
    divides the features by their scale, ops/edge_similarity.py)."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"unknown similarity kernel {kernel!r}; choose one of {KERNELS}")
    if isinstance(sigma, str):
        if sigma != AUTO:
            raise TypeError(f"sigma must be a positive real number or {AUTO!r}, got str ({sigma!r})")
        if kernel not in AUTO_SIGMA_KERNELS:
            raise ValueError(
                f"sigma={AUTO!r} is a distance scale, for the {' and '.join(AUTO_SIGMA_KERNELS)} "
                f"kernels; the {kernel} kernel has no sigma"
            )
        sigma = 1.0
    if sigma is None:
        sigma = DEFAULT_SIGMA.get(kernel, 1.0)
    sigma = real_number("sigma", sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    low = {"l1": MIN_SCALE, "rbf": math.sqrt(MIN_SCALE / 2)}.get(kernel)
    if low is not None and sigma < low:
        raise ValueError(
            f"sigma = {sigma:g} is too small for the {kernel} kernel: its denominator "
            f"({'sigma' if kernel == 'l1' else '2 sigma^2'}) underflows float32 below sigma = {low:.3g} "
            "(every similarity would be 0 or NaN)"
        )
    if isinstance(degree, bool) or not isinstance(degree, numbers.Integral):
        raise TypeError(f"degree must be an int, got {type(degree).__name__} ({degree!r})")
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be an integer in [0, 2**31 - 1], got {degree}")
    return kernel, sigma, int(degree), real_number("coef", coef)


def check_tau(tau) -> float:
    tau = real_number("tau", tau)
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if tau < MIN_SCALE:
        raise ValueError(
            f"tau = {tau:g} is too small: logits / tau overflow float32 below {MIN_SCALE:.3g} "
            "(the softmax would be NaN)"
        )
    return tau


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
