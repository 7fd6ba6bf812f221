"""GCNConv: a drop-in replacement for ``torch_geometric.nn.GCNConv`` on fastalign's kernels."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import Parameter

from ..graph import Graph
from ..ops import gcn_aggregate, spmm
from ..ops._common import check_edge_values


def _sparse_kind(adj) -> Optional[str]:
    """"torch" for a torch.sparse tensor, "sparse_tensor" for a torch_sparse SparseTensor."""
    if isinstance(adj, Tensor) and adj.layout != torch.strided:
        return "torch"
    if type(adj).__name__ == "SparseTensor":
        return "sparse_tensor"
    return None


class GCNConv(torch.nn.Module):
    r"""The graph convolution of Kipf & Welling, PyG-compatible, on fastalign's kernels.

    ``out = D^-1/2 (A + I) D^-1/2 (x W^T) + b`` with exactly PyG's normalisation
    (:func:`torch_geometric.nn.conv.gcn_conv.gcn_norm`) for each kind of input it accepts.

    The arguments, parameter names and layout are PyG's: ``lin.weight`` (``[out, in]``,
    Glorot-initialised, as PyG's ``Linear(in, out, bias=False,
    weight_initializer='glorot')``) and ``bias`` (``[out]``, zero-initialised), so a PyG
    ``GCNConv``'s ``state_dict`` loads as is and the outputs and gradients match PyG's.

    Args:
        in_channels, out_channels: feature widths (``in_channels=-1``, PyG's lazy
            initialisation, is not supported).
        improved: use ``A + 2I``. As in PyG, on the edge_index path this only has an
            effect when edge weights are given (PyG adds the self loops before filling
            in unit weights); on the torch.sparse and SparseTensor paths it always does.
        cached: cache the graph and its normalisation on the first call and reuse it for
            every later call, ignoring the adjacency then passed (transductive use only).
            :meth:`reset_parameters` clears the cache.
        add_self_loops: defaults to ``normalize``; ``True`` with ``normalize=False`` is
            an error (as in PyG).
        normalize: ``False`` aggregates the plain weighted sum ``sum_j w_ji x_j``.
        bias: learn an additive bias.
        backend: fastalign extra (keyword only): force a kernel backend
            (``"torch"``, ``"cpu"``, ``"triton"``, ``"cuda"``); default automatic.

    ``forward(x, edge_index, edge_weight=None)``: ``x`` is ``[N, in_channels]``;
    ``edge_index`` is a ``[2, E]`` int64/int32 edge_index (row 0 source, row 1 target),
    a torch.sparse ``adj_t`` (``A[target, source]``, COO or CSR), a torch_sparse
    ``SparseTensor`` ``adj_t`` or a :class:`fastalign.Graph`; ``edge_weight`` is ``[E]``
    in the caller's edge order (that of the edge_index, or of the edges the Graph was
    built from). With a sparse adjacency the weights are its values, so ``edge_weight``
    must be ``None`` (PyG silently ignores it there). Gradients flow to ``x``, the
    parameters and ``edge_weight``. Differences with PyG semantics, kept on purpose:
    the aggregation order of ``lin`` and propagation is chosen by cost (mathematically
    identical), and PyG's torch.sparse CSC input (unsupported in PyG) is accepted.

    Pass a :class:`fastalign.Graph` (or use ``cached=True``) to build the CSR once:
    with an edge_index, every uncached call sorts the edges again, as PyG normalises
    again.

    Example::

        >>> import torch
        >>> from fastalign.nn import GCNConv
        >>> conv = GCNConv(16, 8)
        >>> x = torch.randn(4, 16)
        >>> edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
        >>> conv(x, edge_index).shape
        torch.Size([4, 8])
        >>> # from PyG: conv.load_state_dict(pyg_conv.state_dict())
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        improved: bool = False,
        cached: bool = False,
        add_self_loops: Optional[bool] = None,
        normalize: bool = True,
        bias: bool = True,
        *,
        backend: Optional[str] = None,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(
                    f"{name} must be positive, got {value}"
                    + (" (PyG's lazy in_channels=-1 is not supported)" if value == -1 else "")
                )
        if add_self_loops is None:
            add_self_loops = normalize
        if add_self_loops and not normalize:
            raise ValueError(
                "'GCNConv' does not support adding self-loops to the graph when no "
                "on-the-fly normalization is applied (add_self_loops=True, normalize=False)"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.improved = bool(improved)
        self.cached = bool(cached)
        self.add_self_loops = bool(add_self_loops)
        self.normalize = bool(normalize)
        self.backend = backend
        self._cached_graph: Optional[Graph] = None
        self.lin = torch.nn.Linear(in_channels, out_channels, bias=False)
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @classmethod
    def from_pyg(cls, conv, *, backend: Optional[str] = None) -> "GCNConv":
        """A fastalign GCNConv with the options and parameters of a PyG ``GCNConv``
        (on the same device and dtype)."""
        if type(conv).__name__ != "GCNConv" or not hasattr(conv, "lin"):
            raise TypeError(f"expected a torch_geometric.nn.GCNConv, got {type(conv).__name__}")
        if conv.in_channels is None or conv.in_channels <= 0:
            raise ValueError("the PyG GCNConv is lazy (in_channels=-1): run it once first")
        ours = cls(
            conv.in_channels, conv.out_channels, improved=conv.improved, cached=conv.cached,
            add_self_loops=conv.add_self_loops, normalize=conv.normalize,
            bias=conv.bias is not None, backend=backend,
        )
        weight = conv.lin.weight
        ours = ours.to(device=weight.device, dtype=weight.dtype)
        ours.load_state_dict(conv.state_dict())
        ours.train(conv.training)
        return ours

    def reset_parameters(self) -> None:
        """Glorot weight, zero bias (as PyG), and clear the cached graph."""
        torch.nn.init.xavier_uniform_(self.lin.weight)  # == torch_geometric.nn.inits.glorot
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)
        self._cached_graph = None

    # ------------------------------------------------------------------ graph preparation
    def _prepare(self, x: Tensor, edge_index, edge_weight: Optional[Tensor]):
        """(Graph, per-edge weights in internal order or None) with PyG's loop semantics
        for the input kind folded into the weights."""
        n = x.size(0)
        kind = _sparse_kind(edge_index)
        if kind is not None:
            if edge_weight is not None:
                raise ValueError(
                    "edge_weight must be None when edge_index is a sparse adjacency: "
                    "its values are the edge weights"
                )
            graph = Graph.coerce(edge_index)
            self._check_graph(graph, n)
            weight = graph.edge_weight
            if not self.normalize:
                return graph, weight
            weight = weight.to(x.dtype) if weight is not None else torch.ones(
                graph.num_edges, dtype=x.dtype, device=graph.device
            )
            if self.add_self_loops:
                fill = 2.0 if self.improved else 1.0
                row, col = graph.row, graph.col.long()
                is_loop = row == col
                if bool(is_loop.any()):
                    if kind == "torch":
                        # add_self_loops on a torch.sparse adj_t coalesces: an existing
                        # loop's value is summed with the fill value.
                        total = torch.zeros(n, dtype=weight.dtype, device=weight.device)
                        total = total.index_add(0, row[is_loop], weight[is_loop]) + fill
                        weight = torch.where(is_loop, total[row], weight)
                    else:
                        # torch_sparse.fill_diag replaces existing loops by the fill value.
                        weight = weight.masked_fill(is_loop, fill)
            return graph, weight
        if isinstance(edge_index, Graph):
            graph = edge_index
            self._check_graph(graph, n)
            if edge_weight is None:
                return graph, graph.edge_weight
            check_edge_values("edge_weight", edge_weight, graph)
            return graph, graph.to_internal(edge_weight)
        if isinstance(edge_index, Tensor):
            if edge_index.is_floating_point():
                raise TypeError(
                    f"edge_index must be an int64 or int32 tensor, got {edge_index.dtype}"
                )
            if edge_weight is not None:
                if not isinstance(edge_weight, Tensor):
                    raise TypeError(
                        f"edge_weight must be a tensor, got {type(edge_weight).__name__}"
                    )
                if edge_index.dim() == 2 and edge_weight.shape != (edge_index.size(1),):
                    raise ValueError(
                        f"edge_weight must have shape [{edge_index.size(1)}] (one per edge), "
                        f"got {list(edge_weight.shape)}"
                    )
            graph = Graph.from_edge_index(edge_index, num_nodes=n)
            self._check_graph(graph, n)
            if edge_weight is None:
                return graph, None
            check_edge_values("edge_weight", edge_weight, graph)
            return graph, graph.to_internal(edge_weight)
        raise TypeError(
            "edge_index must be an edge_index tensor, a torch.sparse adj_t, a torch_sparse "
            f"SparseTensor or a fastalign.Graph, got {type(edge_index).__name__}"
        )

    @staticmethod
    def _check_graph(graph: Graph, n: int) -> None:
        if graph.num_src != n or graph.num_dst != n:
            raise ValueError(
                f"the adjacency is {graph.num_dst} x {graph.num_src} but x has {n} nodes; "
                "GCNConv needs a square adjacency over the nodes of x"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, edge_index, edge_weight: Optional[Tensor] = None) -> Tensor:
        if isinstance(x, (tuple, list)):
            raise ValueError(
                "'GCNConv' received a tuple of node features as input while this layer "
                "does not support bipartite message passing"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D [num_nodes, in_channels], got shape {list(x.shape)}")
        if x.size(1) != self.in_channels:
            raise ValueError(f"x has {x.size(1)} features, expected in_channels={self.in_channels}")

        grad_w = False
        if self.normalize and self._cached_graph is not None:
            graph, weight = self._cached_graph, None  # weights folded into the cached graph
        else:
            graph, weight = self._prepare(x, edge_index, edge_weight)
            grad_w = weight is not None and weight.requires_grad and torch.is_grad_enabled()
            if self.normalize and (weight is not None or self.cached):
                folded = graph.with_edge_weight(weight.detach()) if weight is not None else graph
                if self.cached:
                    self._cached_graph = folded
                if not grad_w:
                    graph, weight = folded, None

        lin_first = self.out_channels <= self.in_channels
        h = self.lin(x) if lin_first else x
        if self.normalize:
            h = gcn_aggregate(
                graph, h, add_self_loops=self.add_self_loops, improved=self.improved,
                edge_weight=weight if grad_w else None, backend=self.backend,
            )
        else:
            h = spmm(graph, h, "sum", edge_weight=weight, backend=self.backend)
        out = h if lin_first else self.lin(h)
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"
