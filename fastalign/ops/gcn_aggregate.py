"""gcn_aggregate: D^-1/2 (A + I) D^-1/2 x + b, exactly as PyG's GCNConv after its linear.

PyG semantics reproduced (edge_index path of ``gcn_norm``):
  * with ``add_self_loops``, existing self loops are removed and one loop per node is
    added; its weight is the (last) existing self-loop weight of that node, else
    ``2 if improved else 1`` -- but only when edge weights are given: without them PyG
    adds the loops before filling in weights of 1, so ``improved`` has no effect;
  * deg_i = sum of the weights of i's in-edges (loop included); deg^-1/2 is 0 where
    deg is 0.
The normalisation is kept as per-node state (``dis`` = deg^-1/2 and the loop weights)
and applied inside the aggregation, so no normalised per-edge weights are built per call;
the state is cached on the Graph for its own edge weights.

Kernels: reference ``fastalign/backends/reference.py``; CPU ``csrc/cpu/gcn_aggregate.cpp``;
Triton ``fastalign/kernels/gcn_aggregate.py`` (the aggregation kernel of ``fastalign/kernels/spmm.py`` with
the normalisation fused); CUDA ``csrc/cuda/kernels/gcn_aggregate.cu`` (the sum kernel of
``csrc/cuda/kernels/spmm.cu`` with ``dis`` and the loop weights).

Custom op ``fastalign::gcn_aggregate``; its backward is the same op on the transpose
(the normalised operator's transpose has the same per-node state).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .. import validation as V
from ..graph import Graph
from ..validation import check_edge_values, check_features, check_placement
from .twin_op import TwinOp
from ._common import as_graph, impl, resolve, transposed_weight
from .spmm import spmm_call


def _gcn_aggregate_unchecked(*args) -> Tensor:
    """What the eager twin runs: ``_gcn_aggregate``'s kernel call without its checks
    (the arguments are the custom op's; the last is the backend)."""
    return impl(args[-1]).gcn_aggregate(*args[:7])


def _check_features(x: Tensor, n: int) -> None:
    V.check_rows("x", x, n, "graph (a square one: rows = nodes)")


def _check_bias(bias: Optional[Tensor], x: Tensor) -> None:
    if bias is None:
        return
    if not isinstance(bias, Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    V.check_length("bias", bias, x.size(1), "feature column")
    if bias.dtype != x.dtype or bias.device != x.device:
        raise TypeError(f"bias must be {x.dtype} on {x.device} like x, got {bias.dtype} on {bias.device}")


def _gcn_aggregate(
    rowptr: Tensor,
    col: Tensor,
    weight: Optional[Tensor],
    dis: Tensor,
    loop_weight: Optional[Tensor],
    x: Tensor,
    bias: Optional[Tensor],
    rowptr_t: Optional[Tensor],
    col_t: Optional[Tensor],
    weight_t: Optional[Tensor],
    backend: str,
) -> Tensor:
    n = rowptr.numel() - 1
    _check_features(x, n)
    _check_bias(bias, x)
    V.check_csr(rowptr, col, n)
    V.check_length("weight", weight, col.numel(), "edge")
    V.check_length("dis", dis, n, "node")
    V.check_length("loop_weight", loop_weight, n, "node")
    return impl(backend).gcn_aggregate(rowptr, col, weight, dis, loop_weight, x, bias)


gcn_aggregate_op = torch.library.custom_op(
    "fastalign::gcn_aggregate", mutates_args=()
)(_gcn_aggregate)


@gcn_aggregate_op.register_fake
def _(rowptr, col, weight, dis, loop_weight, x, bias, rowptr_t, col_t, weight_t, backend):
    return x.new_empty((rowptr.shape[0] - 1, x.shape[1]))


def _setup_context(ctx, inputs, output):
    (rowptr, col, weight, dis, loop_weight, x, bias, rowptr_t, col_t, weight_t, backend) = inputs
    ctx.backend = backend
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(dis, loop_weight, rowptr_t, col_t, weight_t)


def _backward(ctx, grad_out):
    dis, loop_weight, rowptr_t, col_t, weight_t = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[5]:
        if rowptr_t is None:
            raise RuntimeError("gcn_aggregate backward needs the transpose; it was not passed")
        grad_x = gcn_aggregate_call(
            rowptr_t, col_t, weight_t, dis, loop_weight, grad_out.contiguous(),
            None, None, None, None, ctx.backend,
        )
    grad_bias = None
    if ctx.needs_input_grad[6]:
        grad_bias = grad_out.sum(0, dtype=V.acc_dtype(grad_out.dtype)).to(ctx.bias_dtype)
    return None, None, None, None, None, grad_x, grad_bias, None, None, None, None


gcn_aggregate_call = TwinOp(gcn_aggregate_op, _gcn_aggregate, _backward, _setup_context,
                            unchecked=_gcn_aggregate_unchecked)


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the normalisation is computed in: float64 for float64 features, else
    float32. A degree summed in bfloat16 stops growing at 256 (each +1 rounds away), in
    float16 at 2048, so low-precision layers never normalise in their own dtype."""
    return V.acc_dtype(dtype)


def gcn_norm_state(
    graph: Graph, weight: Optional[Tensor], add_self_loops: bool, improved: bool, dtype
) -> Tuple[Tensor, Optional[Tensor]]:
    """(dis = deg^-1/2 [N], loop weights [N] or None), PyG's gcn_norm as per-node state,
    in ``norm_dtype(dtype)`` whatever the dtype of the features or weights."""
    row, col = graph.row, graph.col.long()
    n = graph.num_dst
    nd = norm_dtype(dtype)
    w = weight.to(nd) if weight is not None else torch.ones(graph.num_edges, dtype=nd, device=graph.device)
    loop_weight = None
    if add_self_loops:
        is_loop = row == col
        fill = 2.0 if (improved and weight is not None) else 1.0
        # The last self loop of a node gives its loop weight, as in PyG's index
        # assignment; computed with fixed shapes (no host read) so that it compiles.
        num_edges = graph.num_edges
        edge_pos = torch.arange(num_edges, device=graph.device)
        last = torch.full((n,), -1, dtype=torch.int64, device=graph.device)
        last = last.scatter_reduce(0, row, torch.where(is_loop, edge_pos, -1), "amax", include_self=True)
        has = last >= 0
        w_or_fill = torch.cat([w, w.new_full((1,), fill)])  # index num_edges: no loop
        loop_weight = w_or_fill[torch.where(has, last, num_edges)]
        w = w.masked_fill(is_loop, 0)
    deg = torch.zeros(n, dtype=w.dtype, device=graph.device).index_add_(0, row, w)
    if loop_weight is not None:
        deg = deg + loop_weight
    dis = deg.pow(-0.5)
    dis = dis.masked_fill(torch.isinf(dis), 0.0)
    return dis, loop_weight


def _cached_state(graph: Graph, add_self_loops: bool, improved: bool, dtype, with_transpose: bool):
    """The normalisation state for the graph's own weights, cached on the graph."""
    key = ("gcn_norm", add_self_loops, improved, dtype)

    def build():
        with torch.no_grad():
            own = graph.edge_weight
            dis, loop_weight = gcn_norm_state(graph, own, add_self_loops, improved, dtype)
            weight = own.to(dtype) if own is not None else None  # the kernels' copy
        return dis, loop_weight, weight

    dis, loop_weight, weight = graph._cached(key, build, uses_weight=True)
    weight_t = None
    if with_transpose and weight is not None:
        perm_t = graph.transpose()[2]
        weight_t = graph._cached(key + ("weight_t",), lambda: weight[perm_t], uses_weight=True)
    return dis, loop_weight, weight, weight_t


def sparse_adjacency_weights(
    graph: Graph, weight: Optional[Tensor], kind: str, add_self_loops: bool, improved: bool, dtype
) -> Tensor:
    """A sparse adjacency's values in ``dtype`` with the self loops PyG's ``gcn_norm``
    gives that input kind folded in, for the edge_index semantics above to finish:
    ``"torch"`` (torch.sparse ``adj_t``: ``add_self_loops`` coalesces, so an existing
    loop's value is summed with the fill value) or ``"sparse_tensor"`` (torch_sparse's
    ``fill_diag`` replaces existing loops by the fill value)."""
    if kind not in ("torch", "sparse_tensor"):
        raise ValueError(f"kind must be 'torch' or 'sparse_tensor', got {kind!r}")
    weight = weight.to(dtype) if weight is not None else torch.ones(
        graph.num_edges, dtype=dtype, device=graph.device
    )
    if not add_self_loops:
        return weight
    fill = 2.0 if improved else 1.0
    row = graph.row
    is_loop = row == graph.col  # no test for "any loop": that is a host sync per call
    if kind == "sparse_tensor":
        return weight.masked_fill(is_loop, fill)
    total = torch.zeros(graph.num_dst, dtype=weight.dtype, device=weight.device)
    total = total.index_add(0, row[is_loop], weight[is_loop]) + fill
    return torch.where(is_loop, total[row], weight)


def _check_square(graph: Graph) -> None:
    if not graph.is_square:
        raise ValueError(
            "gcn_aggregate needs a square graph (GCN normalisation uses one degree per node); "
            f"got {graph.num_src} sources and {graph.num_dst} destinations"
        )


def gcn_propagation(
    graph: Graph,
    like: Tensor,
    add_self_loops: bool = True,
    improved: bool = False,
    edge_weight: Optional[Tensor] = None,
    backend: Optional[str] = None,
) -> Callable[..., Tensor]:
    """gcn_aggregate prepared once: ``fn(x, bias=None)`` for features shaped, typed and
    placed like ``like`` (its dtype, device and whether it needs a gradient; any width),
    ``bias`` (``[F]``, x's dtype and device) added to every row in the kernel.

    The backend, the normalisation state, the transpose and the transposed weights are
    found here, once, so each call of ``fn`` is the custom op alone. This is the pass a
    layer makes per forward (``fastalign.nn.GCNConv``); :func:`gcn_aggregate` is this
    with the input checks. ``graph`` must be a square :class:`fastalign.Graph`.
    """
    _check_square(graph)
    check_placement("x", like, graph)
    given = check_edge_values("edge_weight", edge_weight, graph)  # its own precision
    if given is not None and torch.is_grad_enabled() and given.requires_grad:
        name = resolve("spmm", backend, like.device, ("spmm_forward", "sddmm"))
        return _composed_propagation(graph, like, given, add_self_loops, improved, name)
    name = resolve("gcn_aggregate", backend, like.device, ("gcn_aggregate",))
    needs_grad = torch.is_grad_enabled() and like.requires_grad
    if given is None:
        dis, loop_weight, weight, weight_t = _cached_state(
            graph, add_self_loops, improved, like.dtype, needs_grad
        )
    else:
        dis, loop_weight = gcn_norm_state(graph, given, add_self_loops, improved, like.dtype)
        weight = given.to(like.dtype)
        weight_t = transposed_weight(graph, weight, graph.transpose()[2]) if needs_grad else None
    rowptr_t, col_t = graph.transpose()[:2] if needs_grad else (None, None)
    rowptr, col, n = graph.rowptr, graph.col, graph.num_dst

    def propagate(x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 2 or x.size(0) != n:
            _check_features(x, n)  # the graph was checked when prepared; the features, per call
        if bias is not None:
            _check_bias(bias, x)
        return gcn_aggregate_call(
            rowptr, col, weight, dis, loop_weight, x.contiguous(), bias, rowptr_t, col_t, weight_t, name
        )

    return propagate


def gcn_aggregate(
    graph,
    x: Tensor,
    add_self_loops: bool = True,
    improved: bool = False,
    edge_weight: Optional[Tensor] = None,
    backend: Optional[str] = None,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """GCN propagation ``D^-1/2 (A + I) D^-1/2 x + bias`` with PyG's exact normalisation.

    Args:
        graph: a square :class:`fastalign.Graph` (or anything ``Graph.coerce`` accepts).
        x: ``[N, F]`` node features.
        add_self_loops, improved: as in PyG's ``GCNConv``.
        edge_weight: ``[E]`` in internal order; by default the graph's own values. A
            weight that requires grad is differentiated through a composed
            (normalise, then spmm) path.
        backend: ``None``/``"auto"`` or a backend name.
        bias: ``[F]`` (x's dtype and device), added to every row in the kernel's writes:
            a GCN layer's bias with no second pass over the output.
    """
    graph = as_graph(graph, x)
    _check_square(graph)
    x = check_features("x", x, graph.num_src, graph, "")
    return gcn_propagation(graph, x, add_self_loops, improved, edge_weight, backend)(x, bias)


def _composed_propagation(graph, like, weight, add_self_loops, improved, name):
    """Differentiable in the edge weights: the per-edge normalisation (built once, with
    autograd) then a weighted spmm per call (its backward gives the weights' gradient;
    the transpose is taken only when the features need a gradient too)."""
    dtype = like.dtype
    dis, loop_weight = gcn_norm_state(graph, weight, add_self_loops, improved, dtype)
    row, col = graph.row, graph.col.long()
    w = weight
    if add_self_loops:
        w = w.masked_fill(row == col, 0)
    norm = (dis[row] * w.to(dis.dtype) * dis[col]).to(dtype)
    loop_scale = (loop_weight * dis * dis).unsqueeze(1) if loop_weight is not None else None
    rowptr_t = col_t = norm_t = None
    if like.requires_grad:  # grad mode is on: this path is only taken for a weight gradient
        rowptr_t, col_t, perm_t = graph.transpose()
        norm_t = transposed_weight(graph, norm, perm_t)

    def propagate(x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        out, _ = spmm_call(
            graph.rowptr, graph.col, norm, x.contiguous(), "sum", rowptr_t, col_t, None, norm_t, name
        )
        if loop_scale is not None:
            out = out + (loop_scale * x).to(x.dtype)
        if bias is not None:
            _check_bias(bias, x)
            out = out + bias
        return out

    return propagate
