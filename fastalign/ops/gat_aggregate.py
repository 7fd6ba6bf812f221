"""gat_aggregate: graph attention, fused. For x [num_src, H, C] and per-node attention terms
alpha_src [num_src, H], alpha_dst [num_dst, H]:

    out[i, h] = sum_{j -> i} drop(a_ijh) x[j, h],
    a_ijh = softmax_j(leaky_relu(alpha_src[j, h] + alpha_dst[i, h])),

exactly PyG's GATConv propagation (edge_updater + propagate), self loops included the
way it adds them: with ``add_self_loops`` the stored self loops are ignored and a loop
i -> i is attended for each i < min(num_src, num_dst), without building a new graph.

Forward, per destination row: the row's max logit per head (a pass over the attention
terms only), then one pass over the features summing the exponentials and the weighted
features (hub rows cut into pieces merge their (max, sum, features) online), saving
only the per-(node, head) log-sum-exp (not the output). Backward by recomputation: with D_i = g_i . out_i =
sum_j a_ij k_ij g_i . x_j, the logit gradient of edge j -> i is a_ij (k_ij g_i . x_j -
D_i) leaky_relu'(z_ij) (k the dropout factor); a pass over destination rows gives D_i and
sums the logit gradients into grad_alpha_dst, a pass over the transpose (source rows) into
grad_alpha_src and grad_x = sum_i a_ij k_ij g_i. No E x H x C tensor
and no E x H tensor is built on the kernel backends (the reference builds both).

Attention dropout draws its mask from a counter-based hash of (seed, edge, head)
(``fastalign.attention_dropout``), so the backward regenerates it
instead of storing it and every backend draws the same mask for the same seed.

Custom ops: ``fastalign::gat_aggregate`` (out, lse) and ``fastalign::gat_aggregate_backward``.

Kernels: reference ``fastalign/backends/reference.py``; CPU ``csrc/cpu/gat_aggregate.cpp`` and
``gat_aggregate_backward.cpp``; Triton ``fastalign/kernels/gat_aggregate.py``; CUDA
``csrc/cuda/kernels/gat_aggregate.cu``.
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import validation as V
from ..validation import check_features, real_number
from .twin_op import TwinOp
from ._common import as_graph, impl, resolve, transpose_for

SEED_LIMIT = 2**32
_NO_SEED = torch.zeros(1, dtype=torch.int64)  # the seed passed without dropout (never read)


def _check_gat_inputs(x: Tensor, alpha_src: Tensor, alpha_dst: Optional[Tensor], num_dst: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [num_src, H, C], got shape {list(x.shape)}")
    V.check_rows("alpha_src", alpha_src, x.size(0), "features x (sources)")
    if alpha_src.size(1) != x.size(1):
        raise ValueError(f"alpha_src has {alpha_src.size(1)} heads but x {x.size(1)}")
    if alpha_dst is not None:
        V.check_rows("alpha_dst", alpha_dst, num_dst, "graph (destinations)")
        if alpha_dst.size(1) != x.size(1):
            raise ValueError(f"alpha_dst has {alpha_dst.size(1)} heads but x {x.size(1)}")


def _gat_aggregate(
    rowptr: Tensor,
    col: Tensor,
    x: Tensor,
    alpha_src: Tensor,
    alpha_dst: Optional[Tensor],
    negative_slope: float,
    dropout: float,
    seed: Tensor,
    add_self_loops: bool,
    rowptr_t: Optional[Tensor],
    col_t: Optional[Tensor],
    perm_t: Optional[Tensor],
    backend: str,
) -> Tuple[Tensor, Tensor]:
    _check_gat_inputs(x, alpha_src, alpha_dst, rowptr.numel() - 1)
    V.check_csr(rowptr, col, x.size(0))
    return impl(backend).gat_aggregate_forward(
        rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed_value(seed), add_self_loops
    )


gat_aggregate_op = torch.library.custom_op(
    "fastalign::gat_aggregate", mutates_args=()
)(_gat_aggregate)


@gat_aggregate_op.register_fake
def _(rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops,
      rowptr_t, col_t, perm_t, backend):
    num_dst = rowptr.shape[0] - 1
    out = x.new_empty((num_dst, x.shape[1], x.shape[2]))
    return out, x.new_empty((num_dst, x.shape[1]), dtype=V.acc_dtype(x.dtype))


def _gat_aggregate_backward(
    rowptr: Tensor,
    col: Tensor,
    rowptr_t: Tensor,
    col_t: Tensor,
    perm_t: Tensor,
    x: Tensor,
    alpha_src: Tensor,
    alpha_dst: Optional[Tensor],
    lse: Tensor,
    grad_out: Tensor,
    negative_slope: float,
    dropout: float,
    seed: Tensor,
    add_self_loops: bool,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    num_dst = rowptr.numel() - 1
    _check_gat_inputs(x, alpha_src, alpha_dst, num_dst)
    V.check_csr(rowptr, col, x.size(0))
    V.check_csr(rowptr_t, col_t, num_dst, "graph transpose")
    if rowptr_t.numel() - 1 != x.size(0) or col_t.numel() != col.numel():
        raise ValueError(
            f"the transpose has {rowptr_t.numel() - 1} rows and {col_t.numel()} edges; the graph "
            f"{x.size(0)} sources and {col.numel()} edges"
        )
    V.check_perm(perm_t, col.numel())
    shape = (num_dst, x.size(1), x.size(2))
    if tuple(grad_out.shape) != shape:
        raise ValueError(f"grad_out must have shape {list(shape)}, got {list(grad_out.shape)}")
    if tuple(lse.shape) != shape[:2]:
        raise ValueError(f"lse must have shape {list(shape[:2])}, got {list(lse.shape)}")
    return impl(backend).gat_aggregate_backward(
        rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
        negative_slope, dropout, seed_value(seed), add_self_loops,
    )


gat_aggregate_backward_op = torch.library.custom_op(
    "fastalign::gat_aggregate_backward", mutates_args=()
)(_gat_aggregate_backward)
gat_aggregate_backward_call = TwinOp(gat_aggregate_backward_op, _gat_aggregate_backward)


@gat_aggregate_backward_op.register_fake
def _(rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse, grad_out,
      negative_slope, dropout, seed, add_self_loops, backend):
    grad_dst = torch.empty_like(alpha_dst) if alpha_dst is not None else x.new_empty(0)
    return torch.empty_like(x), torch.empty_like(alpha_src), grad_dst


def _setup_context(ctx, inputs, output):
    (rowptr, col, x, alpha_src, alpha_dst, negative_slope, dropout, seed, add_self_loops,
     rowptr_t, col_t, perm_t, backend) = inputs
    ctx.options = (negative_slope, dropout, add_self_loops, backend)
    ctx.has_dst = alpha_dst is not None
    # not the output: the backward recomputes what it needs of it (D_i = g_i . out_i)
    ctx.save_for_backward(rowptr, col, x, alpha_src, alpha_dst, output[1], rowptr_t, col_t, perm_t, seed)


def _backward(ctx, grad_out, _grad_lse):
    rowptr, col, x, alpha_src, alpha_dst, lse, rowptr_t, col_t, perm_t, seed = ctx.saved_tensors
    if rowptr_t is None or col_t is None or perm_t is None:
        raise RuntimeError("gat_aggregate backward needs the transpose (rowptr_t, col_t, perm_t); it was not passed")
    negative_slope, dropout, add_self_loops, backend = ctx.options
    grad_x, grad_src, grad_dst = gat_aggregate_backward_call(
        rowptr, col, rowptr_t, col_t, perm_t, x, alpha_src, alpha_dst, lse,
        grad_out.contiguous(), negative_slope, dropout, seed, add_self_loops, backend,
    )
    needs = ctx.needs_input_grad
    return (
        None, None,
        grad_x if needs[2] else None,
        grad_src if needs[3] else None,
        grad_dst if (ctx.has_dst and needs[4]) else None,
    ) + (None,) * 8


gat_aggregate_call = TwinOp(gat_aggregate_op, _gat_aggregate, _backward, _setup_context)


def check_dropout(dropout) -> float:
    dropout = real_number("dropout", dropout)
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must lie in [0, 1], got {dropout}")
    return dropout


def check_seed(seed) -> Tensor:
    """The dropout seed as the ops take it: a one-element int64 tensor on the CPU (a
    tensor, so that a seed drawn inside a compiled model is no graph break; read on the
    host by the op's kernel call, never by the traced code)."""
    if isinstance(seed, Tensor):
        if seed.numel() != 1 or seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool:
            raise TypeError(f"seed must be an int or a one-element integer tensor, got {seed.dtype} {list(seed.shape)}")
        return seed.reshape(1).to(device="cpu", dtype=torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must lie in [0, 2**32), got {seed}")
    return torch.tensor([int(seed)], dtype=torch.int64)


def seed_value(seed: Tensor) -> int:
    """The seed's 32 bits (the hash uses the low 32 bits of any integer)."""
    if seed.numel() != 1 or seed.is_floating_point():
        raise TypeError(f"seed must be a one-element integer tensor, got {seed.dtype} {list(seed.shape)}")
    return int(seed.reshape(()).item()) % SEED_LIMIT


def draw_seed() -> Tensor:
    """A dropout seed from torch's default generator (reproducible under torch.manual_seed)."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64)


def gat_aggregate(
    graph,
    x: Tensor,
    alpha_src: Tensor,
    alpha_dst: Optional[Tensor] = None,
    negative_slope: float = 0.2,
    dropout: float = 0.0,
    add_self_loops: bool = True,
    seed: Optional[int] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Attention-weighted aggregation of graph attention (GAT), fused.

    ``out[i, h] = sum_{j -> i} dropout(softmax_j(leaky_relu(alpha_src[j, h] +
    alpha_dst[i, h]))) * x[j, h]``.

    Args:
        graph: a :class:`fastalign.Graph` (or anything ``Graph.coerce`` accepts); it may be
            rectangular (sources -> destinations).
        x: ``[num_src, H, C]`` source features per head.
        alpha_src: ``[num_src, H]`` the source term of each head's logit.
        alpha_dst: ``[num_dst, H]`` the destination term, or ``None`` (PyG's GATConv with
            no destination features).
        negative_slope: of the leaky ReLU.
        dropout: probability of zeroing an attention entry (the rest are scaled by
            ``1 / (1 - dropout)``); pass 0 in evaluation.
        add_self_loops: as PyG's GATConv: the stored self loops are ignored and one loop
            per node i < min(num_src, num_dst) is attended.
        seed: the dropout mask's seed (an int in ``[0, 2**32)``, or a one-element integer
            tensor); by default drawn from torch's default generator when ``dropout > 0``.
        backend: ``None``/``"auto"`` or a backend name.

    Returns:
        ``[num_dst, H, C]`` in ``x``'s dtype; differentiable in ``x``, ``alpha_src`` and
        ``alpha_dst``. A destination with no attended edge gets 0.
    """
    graph = as_graph(graph, x)
    x = check_features("x", x, graph.num_src, graph, "source", dim=3, layout="[num_src, H, C]")
    alpha_src = check_features("alpha_src", alpha_src, graph.num_src, graph, "source", layout="[num_src, H]")
    if alpha_dst is not None:
        alpha_dst = check_features("alpha_dst", alpha_dst, graph.num_dst, graph, "destination",
                                   layout="[num_dst, H]")
    for name, t in (("alpha_src", alpha_src), ("alpha_dst", alpha_dst)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} ({t.dtype}) and x ({x.dtype}) must share a dtype")
    _check_gat_inputs(x, alpha_src, alpha_dst, graph.num_dst)
    negative_slope = real_number("negative_slope", negative_slope)
    dropout = check_dropout(dropout)
    if not isinstance(add_self_loops, bool):
        raise TypeError(f"add_self_loops must be a bool, got {type(add_self_loops).__name__}")
    if dropout == 0:
        seed = _NO_SEED
    else:
        seed = draw_seed() if seed is None else check_seed(seed)
    name = resolve("gat_aggregate", backend, x.device, ("gat_aggregate_forward", "gat_aggregate_backward"))
    needs_t = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, alpha_src, alpha_dst)
    )
    rowptr_t, col_t, perm_t = transpose_for(graph, needs_t)
    out, _ = gat_aggregate_call(
        graph.rowptr, graph.col, x, alpha_src, alpha_dst, negative_slope, dropout, seed,
        add_self_loops, rowptr_t, col_t, perm_t, name,
    )
    return out
