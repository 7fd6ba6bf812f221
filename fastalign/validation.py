"""Every input check of fastalign's ops, layers and Graph: nothing a caller passes may
make a kernel read out of bounds, loop for ever, crash the process or return a silent
wrong answer; each refusal is a ``TypeError`` or ``ValueError`` naming the argument.

The op arguments (bottom of this module): features (floating, on the graph's device, one
row per node), per-edge values, similarity kernels and their parameters (sigma, degree,
coef), temperatures, dtype rules (``acc_dtype``, ``arg_dtype``).

The index tensors, what is checked, before any kernel runs, at O(rows + edges) integer reads:

* a CSR (``rowptr``, ``col``): 1-D int32/int64 tensors of one dtype on one device,
  ``rowptr[0] == 0``, non-decreasing, ``rowptr[-1] == col.numel()``, every column in
  ``[0, num_src)``;
* a row pointer alone (``edge_softmax``): the same, against the per-edge values' length;
* an edge permutation (``perm_t``): int64, one entry per edge, values in ``[0, E)``;
* the max reduction's winners (``arg``): int32 or int64, values in ``[-1, E)``, each an
  edge of its own row.

Results are cached per tensor and keyed on the tensors' version counters, so a graph is
scanned once (a :class:`fastalign.Graph` registers the CSR it built as valid without a
scan) and an in-place edit of a checked tensor is seen: its next use is checked again.
The cache holds weak references only, so it keeps no tensor alive, and an entry is used
only for the very tensor object it was made for.

The checks run inside the custom ops' eager kernels, where a host read costs no graph
break under ``torch.compile``.
"""

from __future__ import annotations

import math
import numbers
import threading
import weakref
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

INDEX_DTYPES = (torch.int32, torch.int64)

# Reentrant: a weakref callback (forget_when_collected) runs inside whatever the thread
# is doing when the garbage collector frees the tensor, which can be a section holding
# this lock (any allocation in it may trigger a collection); a plain Lock deadlocks there.
_LOCK = threading.RLock()
# id(tensor) -> (weakref to it, its version when checked, facts); facts is a dict of what
# was established (e.g. {"csr_edges": E, "col_bound": max + 1})
_FACTS: dict = {}


def forget_when_collected(table: dict, lock, key):
    """A weakref callback that drops ``table[key]`` (an entry whose first item is that
    weak reference) once its tensor is collected: the id-keyed caches hold no tensor
    alive and never serve a later tensor that reuses the id. ``lock`` must be reentrant
    (``threading.RLock``): the callback may run in a thread that already holds it."""
    def drop(ref):
        with lock:
            entry = table.get(key)
            if entry is not None and entry[0] is ref:
                del table[key]
    return drop


def _forget(key):
    return forget_when_collected(_FACTS, _LOCK, key)


def version(t: Tensor) -> Optional[int]:
    """The version counter; None where there is none (inference tensors: never cached)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _facts(t: Tensor) -> Optional[dict]:
    """What is known of ``t`` in its current version, or None."""
    entry = _FACTS.get(id(t))
    if entry is None or entry[0]() is not t or entry[1] != version(t) or entry[1] is None:
        return None
    return entry[2]


def _remember(t: Tensor, **facts) -> None:
    if torch.compiler.is_compiling():  # traced code: the op checks at run time instead
        return
    current = version(t)
    if current is None:
        return
    key = id(t)
    with _LOCK:
        entry = _FACTS.get(key)
        if entry is not None and entry[0]() is t and entry[1] == current:
            entry[2].update(facts)
            return
        ref = weakref.ref(t, _forget(key))
        _FACTS[key] = (ref, current, dict(facts))


# ----------------------------------------------------------------------------- types
def check_index_tensor(name: str, t, *, dim: Optional[int] = 1) -> Tensor:
    """An int32 or int64 tensor (of ``dim`` dimensions unless None)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {list(t.shape)}")
    return t


def check_edge_tensor(name: str, values, num_edges: int, device, dtype=None) -> Optional[Tensor]:
    """Optional per-edge values (one floating value per edge, on the graph's device),
    contiguous and cast to ``dtype`` when given."""
    if values is None:
        return None
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {values.dtype}")
    if values.dim() != 1 or values.numel() != num_edges:
        raise ValueError(f"{name} must have shape [{num_edges}] (one per edge), got {list(values.shape)}")
    if values.device != torch.device(device):
        raise ValueError(f"{name} is on {values.device} but the graph is on {device}")
    return (values if dtype is None else values.to(dtype)).contiguous()


def _min_max(t: Tensor):
    mn, mx = torch.aminmax(t)
    return int(mn), int(mx)


# ----------------------------------------------------------------------------- CSR
def check_rowptr(rowptr: Tensor, num_edges: int, what: str = "graph") -> None:
    """``rowptr`` is a valid row pointer over ``num_edges`` edges."""
    rp = _names(what)[0]
    check_index_tensor(f"{what}: {rp}", rowptr)
    if rowptr.numel() < 1:
        raise ValueError(f"{what}: {rp} must have at least one entry (num_rows + 1)")
    facts = _facts(rowptr)
    if facts is not None and facts.get("rowptr_edges") == num_edges:
        return
    first, last = int(rowptr[0]), int(rowptr[-1])
    if first != 0:
        raise ValueError(f"{what}: malformed CSR: {rp}[0] must be 0, got {first}")
    if last != num_edges:
        raise ValueError(f"{what}: malformed CSR: {rp}[-1] = {last} but there are {num_edges} edges")
    if rowptr.numel() > 1 and bool((rowptr[1:] < rowptr[:-1]).any()):
        raise ValueError(f"{what}: malformed CSR: {rp} must be non-decreasing")
    _remember(rowptr, rowptr_edges=num_edges)


def _names(what: str):
    """(rowptr, col) as the caller knows them: rowptr_t / col_t for a transpose."""
    return ("rowptr_t", "col_t") if "transpose" in what else ("rowptr", "col")


def check_columns(col: Tensor, num_src: int, what: str = "graph", name: Optional[str] = None,
                  unit: str = "nodes") -> None:
    """Every entry of ``col`` lies in ``[0, num_src)``."""
    name = name or _names(what)[1]
    check_index_tensor(f"{what}: {name}", col)
    if col.numel() == 0:
        return
    facts = _facts(col)
    bound = facts.get("col_bound") if facts is not None else None
    if bound is None or (bound > num_src and not facts.get("col_exact")):
        # never checked, or registered with an upper bound only (mark_csr_valid)
        lo, hi = _min_max(col)
        if lo < 0:
            raise ValueError(f"{what}: {name} contains a negative index ({lo})")
        bound = hi + 1
        _remember(col, col_bound=bound, col_exact=True)
    if bound > num_src:
        raise ValueError(
            f"{what}: {name} contains index {bound - 1}, out of range for {num_src} {unit}"
        )


def check_csr(rowptr: Tensor, col: Tensor, num_src: int, what: str = "graph") -> None:
    """``(rowptr, col)`` is a CSR whose columns index ``num_src`` nodes."""
    rp, cl = _names(what)
    check_index_tensor(f"{what}: {cl}", col)
    check_index_tensor(f"{what}: {rp}", rowptr)
    if rowptr.dtype != col.dtype:
        raise TypeError(f"{what}: {rp} ({rowptr.dtype}) and {cl} ({col.dtype}) must share a dtype")
    if rowptr.device != col.device:
        raise ValueError(f"{what}: {rp} is on {rowptr.device} but {cl} on {col.device}")
    check_rowptr(rowptr, col.numel(), what)
    check_columns(col, num_src, what)


def mark_csr_valid(rowptr: Tensor, col: Tensor, num_src: int) -> None:
    """Register a CSR built to be valid (by Graph) without scanning it: its columns are
    known to lie below ``num_src`` (an upper bound, not the exact maximum)."""
    _remember(rowptr, rowptr_edges=col.numel())
    if col.numel():
        _remember(col, col_bound=num_src, col_exact=False)


# ----------------------------------------------------------------------------- edges
def check_perm(perm: Tensor, num_edges: int, what: str = "graph transpose") -> None:
    """``perm`` (int64) has one entry per edge, each in ``[0, num_edges)``."""
    if not isinstance(perm, Tensor) or perm.dtype != torch.int64:
        raise TypeError(f"{what}: perm_t must be an int64 tensor, got "
                        f"{perm.dtype if isinstance(perm, Tensor) else type(perm).__name__}")
    if perm.dim() != 1 or perm.numel() != num_edges:
        raise ValueError(f"{what}: perm_t must have shape [{num_edges}], got {list(perm.shape)}")
    check_columns(perm, num_edges, what, "perm_t", unit="edges")


def mark_perm_valid(perm: Tensor) -> None:
    if perm.numel():
        _remember(perm, col_bound=perm.numel(), col_exact=False)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """What every backend accumulates in, and keeps per-node state in, for features of
    ``dtype``: float64 for float64, float32 for float32, float16 and bfloat16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def arg_dtype(num_edges: int) -> torch.dtype:
    """The dtype the max reduction stores its winning edges in: int32 whenever every edge
    position fits (half the bytes of the [num_dst, F] tensor the backward reads once per
    edge and feature), int64 beyond 2**31 - 1 edges."""
    return torch.int32 if num_edges <= 2**31 - 1 else torch.int64


def check_arg(arg: Tensor, num_edges: int, shape, col_t: Tensor, perm_t: Tensor) -> None:
    """The max reduction's winners: int32 or int64 (the forward writes ``arg_dtype``) of
    ``shape`` ``[num_dst, F]``, each -1 (an empty row) or an edge of its own row. The row
    of internal edge ``perm_t[k]`` is ``col_t[k]`` (the transpose, already checked)."""
    if not isinstance(arg, Tensor) or arg.dtype not in INDEX_DTYPES:
        got = arg.dtype if isinstance(arg, Tensor) else type(arg).__name__
        raise TypeError(f"arg must be an int32 or int64 tensor (the max reduction's winning edges), got {got}")
    if list(arg.shape) != list(shape):
        raise ValueError(f"arg must have shape {list(shape)}, got {list(arg.shape)}")
    if arg.numel() == 0:
        return
    facts = _facts(arg)
    if facts is not None and facts.get("arg_edges") == num_edges:
        return
    lo, hi = _min_max(arg)
    if lo < -1 or hi >= num_edges:
        raise ValueError(f"arg holds edge {lo if lo < -1 else hi}, out of range for {num_edges} edges")
    row_of_edge = torch.empty(num_edges, dtype=torch.int64, device=arg.device)
    row_of_edge[perm_t] = col_t.long()
    rows = torch.arange(arg.size(0), device=arg.device).unsqueeze(1)
    owned = (arg == -1) | (row_of_edge[arg.clamp(min=0).long()] == rows)
    if not bool(owned.all()):
        raise ValueError("arg names an edge of another row: each entry must be -1 or an edge of its own row")
    _remember(arg, arg_edges=num_edges)


def mark_arg_valid(arg: Tensor, num_edges: int) -> None:
    if arg.numel():
        _remember(arg, arg_edges=num_edges)


# ----------------------------------------------------------------------------- shapes
def check_2d(name: str, t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, features], got shape {list(t.shape)}")
    return t


def check_rows(name: str, t: Tensor, rows: int, what: str) -> None:
    check_2d(name, t)
    if t.size(0) != rows:
        raise ValueError(f"{name} has {t.size(0)} rows but the {what} has {rows}")


def check_length(name: str, t: Optional[Tensor], n: int, what: str) -> None:
    if t is None:
        return
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must have shape [{n}] (one per {what}), got {list(t.shape)}")


# ----------------------------------------------------------------------------- op arguments
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNELS = ("l1", "rbf", "linear", "poly", "cosine")
DEFAULT_SIGMA = {"l1": 100.0, "rbf": 1.0}
# distance kernels: sigma="auto" takes their scale from the embeddings (ops/edge_similarity.py)
AUTO_SIGMA_KERNELS = ("l1", "rbf")
AUTO = "auto"


def check_placement(name: str, x, graph) -> None:
    """A floating tensor on the graph's device (any shape)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.device != graph.device:
        raise ValueError(f"{name} is on {x.device} but the graph is on {graph.device}")


def check_features(name: str, x, num_rows: int, graph, side: str, dim: int = 2,
                   layout: str = "[num_nodes, features]") -> Tensor:
    """A ``dim``-D floating tensor with ``num_rows`` rows on the graph's device, contiguous."""
    check_placement(name, x, graph)
    if x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {layout}, got shape {list(x.shape)}")
    if x.size(0) != num_rows:
        nodes = f"{side} nodes" if side else "nodes"  # no double space for an unnamed side
        raise ValueError(f"{name} has {x.size(0)} rows but the graph has {num_rows} {nodes}")
    return x.contiguous()


def check_edge_values(name: str, values, graph, dtype=None) -> Optional[Tensor]:
    """Optional per-edge values in the graph's internal order, cast to ``dtype`` when given."""
    return check_edge_tensor(name, values, graph.num_edges, graph.device, dtype)


def split_pair(
    name: str, x: Union[Tensor, Tuple[Tensor, Tensor]], graph
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
