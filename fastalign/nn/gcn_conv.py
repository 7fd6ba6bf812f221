"""GCNConv: a drop-in replacement for ``torch_geometric.nn.GCNConv`` on fastalign's kernels."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import Parameter

from .. import settings
from ..graph import Graph
from ..ops.spmm import spmm_propagation
from ..ops.gcn_aggregate import gcn_propagation, sparse_adjacency_weights
from .drop_in import DropInConv, Linear, check_channels, node_count, over_nodes, prepare, sparse_kind


class GCNConv(DropInConv):
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
            The cache follows the layer to another device (it moves on the first call
            there). :meth:`reset_parameters` clears the cache.
        add_self_loops: defaults to ``normalize``; ``True`` with ``normalize=False`` is
            an error (as in PyG).
        normalize: ``False`` aggregates the plain weighted sum ``sum_j w_ji x_j``.
        bias: learn an additive bias.
        **kwargs: MessagePassing's ``flow`` (``"target_to_source"`` reads edge_index
            row 0 as the target), ``node_dim`` (the node dimension of batched features),
            ``decomposed_layers`` (accepted; the aggregation always runs whole) and
            ``aggr="add"``; other aggregations are refused (use PyG's layer).
        backend: fastalign extra (keyword only): force a kernel backend
            (``"torch"``, ``"cpu"``, ``"triton"``, ``"cuda"``); default automatic.

    ``forward(x, edge_index, edge_weight=None)``: ``x`` is ``[N, in_channels]`` (dense or
    torch.sparse), or ``[..., N, in_channels]`` for a batch of features over one graph;
    ``edge_index`` is a ``[2, E]`` int64/int32 edge_index (row 0 source, row 1 target),
    a torch.sparse ``adj_t`` (``A[target, source]``, COO or CSR), a torch_sparse
    ``SparseTensor`` ``adj_t`` or a :class:`fastalign.Graph`; ``edge_weight`` is ``[E]``
    in the caller's edge order (that of the edge_index, or of the edges the Graph was
    built from). With a sparse adjacency the weights are its values, so ``edge_weight``
    must be ``None`` (PyG silently ignores it there). Gradients flow to ``x``, the
    parameters and ``edge_weight``. Differences with PyG semantics, kept on purpose:
    the aggregation order of ``lin`` and propagation is chosen by cost (mathematically
    identical), and PyG's torch.sparse CSC input (unsupported in PyG) is accepted.

    The CSR built from an edge_index is shared by every layer and call that passes the
    same tensor (an in-place edit of it is seen); a :class:`fastalign.Graph` or
    ``cached=True`` skip even that lookup.

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
        **kwargs,
    ):
        super().__init__(kwargs, backend)
        check_channels("GCNConv", "in_channels", in_channels)
        check_channels("GCNConv", "out_channels", out_channels)
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
        self._cached_graph: Optional[Graph] = None
        self._cached_kind: Optional[str] = None
        self._cached_propagation = None  # (graph, key, propagate): see _propagation
        self.lin = Linear(in_channels, out_channels, bias=False, backend=backend)
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    AGGRS = ("add", "sum")

    @classmethod
    def _pyg_arguments(cls, conv):
        return (conv.in_channels, conv.out_channels), dict(
            improved=conv.improved, cached=conv.cached, add_self_loops=conv.add_self_loops,
            normalize=conv.normalize, bias=conv.bias is not None,
        )

    def reset_parameters(self) -> None:
        """Glorot weight, zero bias (as PyG), and clear the cached graph."""
        torch.nn.init.xavier_uniform_(self.lin.weight)  # == torch_geometric.nn.inits.glorot
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)
        self._cached_graph = self._cached_propagation = None

    # PyG's cache attributes (code that resets the cache sets them to None)
    @property
    def _cached_edge_index(self) -> Optional[Graph]:
        return self._cached_graph if self._cached_kind != "sparse_tensor" else None

    @_cached_edge_index.setter
    def _cached_edge_index(self, value) -> None:
        if value is not None:
            raise ValueError("the cache can only be cleared (set to None)")
        if self._cached_kind != "sparse_tensor":
            self._cached_graph = self._cached_propagation = None

    @property
    def _cached_adj_t(self) -> Optional[Graph]:
        return self._cached_graph if self._cached_kind == "sparse_tensor" else None

    @_cached_adj_t.setter
    def _cached_adj_t(self, value) -> None:
        if value is not None:
            raise ValueError("the cache can only be cleared (set to None)")
        if self._cached_kind == "sparse_tensor":
            self._cached_graph = self._cached_propagation = None

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, edge_index, edge_weight: Optional[Tensor] = None) -> Tensor:
        if isinstance(x, (tuple, list)):
            raise ValueError(
                "'GCNConv' received a tuple of node features as input while this layer "
                "does not support bipartite message passing"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided and x.dim() != 2:
            raise ValueError(f"sparse features must be 2-D [num_nodes, in_channels], got {x.dim()}-D")
        graph, weight = self._graph(x, edge_index, edge_weight)
        if x.size(-1) != self.in_channels:
            raise ValueError(f"x has {x.size(-1)} features, expected in_channels={self.in_channels}")

        # sparse features: the product with W first (torch.sparse.mm), as PyG does
        lin_first = self.out_channels <= self.in_channels or x.layout != torch.strided
        h = self.lin(x) if lin_first else x  # dense: torch's linear of sparse x is dense
        if self.normalize:  # backend, normalisation state and transpose found once
            propagate = self._propagation(graph, h, weight)
            bias = self.bias
            if (lin_first and bias is not None and h.dim() == 2 and self.node_dim in (0, -2)
                    and bias.dtype == h.dtype and bias.device == h.device):
                return propagate(h, bias)  # the bias added in the kernel's row writes
        else:
            propagate = spmm_propagation(graph, h, "sum", weight, self.backend)
        h = over_nodes(propagate, h, self.node_dim)
        out = h if lin_first else self.lin(h)
        if self.bias is not None:
            out = out + self.bias
        return out

    def _propagation(self, graph: Graph, h: Tensor, weight: Optional[Tensor]):
        """gcn_propagation of ``graph`` for features like ``h``. For the cached graph it is
        kept from the last call with the same dtype, device, need of a gradient and
        backend choice: a cached layer's forward then finds its normalisation state,
        transpose and backend without a lookup."""
        if (weight is not None or graph is not self._cached_graph or torch.compiler.is_compiling()
                or torch._C._are_functorch_transforms_active()):
            return gcn_propagation(graph, h, self.add_self_loops, self.improved, weight, self.backend)
        key = (h.dtype, h.device, torch.is_grad_enabled() and h.requires_grad, self.backend,
               settings.backend())
        kept = self.__dict__.get("_cached_propagation")  # absent in a layer pickled before it existed
        if kept is None or kept[0] is not graph or kept[1] != key:
            propagate = gcn_propagation(graph, h, self.add_self_loops, self.improved, None, self.backend)
            kept = self._cached_propagation = (graph, key, propagate)
        return kept[2]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cached_propagation"] = None  # a closure: rebuilt on the first call
        return state

    def _graph(self, x: Tensor, edge_index, edge_weight: Optional[Tensor]):
        """(Graph, edge weights to pass to the propagation or None): the cached graph, or
        the inputs resolved once, with PyG's self-loop semantics for the input kind and
        (when not differentiated) the weights folded into the graph."""
        if self.normalize and self.cached and self._cached_graph is not None:
            node_count("GCNConv", x, self.node_dim)
            if self._cached_graph.device != x.device:
                # the layer moved (module.to): the cache follows it, once
                self._cached_graph = self._cached_graph.to(x.device)
            return self._cached_graph, None  # weights folded into the cached graph
        if isinstance(edge_index, Graph) and not edge_index.is_square:
            raise ValueError(
                f"the adjacency is {edge_index.num_dst} x {edge_index.num_src}: GCNConv needs "
                "a square adjacency over the nodes of x"
            )
        prep = prepare("GCNConv", x, edge_index, edge_weight, flow=self.flow, node_dim=self.node_dim)
        graph, weight = prep.graph, prep.weight
        if self.normalize and prep.kind in ("torch", "sparse_tensor"):
            weight = sparse_adjacency_weights(
                graph, weight, prep.kind, self.add_self_loops, self.improved, x.dtype
            )
        grad_w = weight is not None and weight.requires_grad and torch.is_grad_enabled()
        if self.normalize and (weight is not None or self.cached):
            folded = graph.with_edge_weight(weight.detach()) if weight is not None else graph
            if self.cached:
                self._cached_graph, self._cached_kind = folded, sparse_kind(edge_index)
            if not grad_w:
                return folded, None
        return graph, weight

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"
