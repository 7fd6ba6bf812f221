"""PyG's input conventions, turned into what fastalign's ops take, in one pass per call.

Every drop-in conv takes its inputs the way PyG's ``MessagePassing`` layers do: node
features ``x`` (a tensor, or a ``(x_src, x_dst)`` pair whose second entry may be
``None``), an adjacency (``[2, E]`` edge_index, PyG ``EdgeIndex``, torch.sparse
``adj_t``, torch_sparse ``SparseTensor`` ``adj_t`` or :class:`fastalign.Graph`), optional
per-edge weights, ``size=(num_src, num_dst)``, and the layer's ``flow`` and ``node_dim``.
:func:`prepare` resolves all of it into a :class:`Prepared` (the Graph by destination and
the weights in its internal order); :func:`aggregate` runs ``fastalign.spmm`` over the
node dimension, whatever the features' other dimensions (PyG's "static graph" batches).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import validation
from ..graph import Graph, as_count, outside_transforms
from ..ops.linear import linear as linear_op
from ..ops.spmm import spmm_propagation
from ..validation import check_edge_values

FLOWS = ("source_to_target", "target_to_source")

# MessagePassing's constructor arguments (PyG 2.5 - 2.8) and what the drop-ins do with them.
MESSAGE_PASSING_KWARGS = ("aggr", "aggr_kwargs", "flow", "node_dim", "decomposed_layers")


def sparse_kind(adj) -> Optional[str]:
    """"torch" for a torch.sparse tensor, "sparse_tensor" for a torch_sparse SparseTensor,
    "edge_index" for PyG's EdgeIndex, None otherwise."""
    if isinstance(adj, Tensor):
        if adj.layout != torch.strided:
            return "torch"
        if type(adj).__name__ == "EdgeIndex" and hasattr(adj, "sparse_size"):
            return "edge_index"
        return None
    if type(adj).__name__ == "SparseTensor":
        return "sparse_tensor"
    return None


def check_message_passing_kwargs(layer: str, kwargs: dict, aggrs: Tuple[str, ...]) -> dict:
    """The MessagePassing arguments a drop-in honours, checked; anything else raises.

    Returns ``{"aggr", "flow", "node_dim", "decomposed_layers"}``. ``decomposed_layers``
    only changes PyG's peak memory (the result is the same), so any positive value is
    kept and the aggregation runs whole.
    """
    unknown = sorted(set(kwargs) - set(MESSAGE_PASSING_KWARGS))
    if unknown:
        raise TypeError(
            f"{layer}() got an unexpected keyword argument {unknown[0]!r} (fastalign's "
            f"{layer} takes PyG's arguments and MessagePassing's "
            f"{', '.join(MESSAGE_PASSING_KWARGS)})"
        )
    aggr = kwargs.get("aggr", aggrs[0])
    if not isinstance(aggr, str) or aggr not in aggrs:
        shown = aggr if isinstance(aggr, str) else type(aggr).__name__
        raise ValueError(
            f"fastalign's {layer} supports aggr in {aggrs}, got {shown!r}: use "
            f"torch_geometric.nn.{layer} for other aggregations (lstm, multi-aggregation, "
            "learnable aggregators)"
        )
    if kwargs.get("aggr_kwargs"):
        raise ValueError(
            f"fastalign's {layer} takes no aggr_kwargs (its aggregations have no options): "
            f"use torch_geometric.nn.{layer}"
        )
    flow = kwargs.get("flow", "source_to_target")
    check_flow(flow)
    node_dim = kwargs.get("node_dim", -2)
    if isinstance(node_dim, bool) or not isinstance(node_dim, int):
        raise TypeError(f"node_dim must be an int, got {type(node_dim).__name__}")
    decomposed = kwargs.get("decomposed_layers", 1)
    if isinstance(decomposed, bool) or not isinstance(decomposed, int) or decomposed < 1:
        raise ValueError(f"decomposed_layers must be a positive int, got {decomposed!r}")
    return {"aggr": aggr, "flow": flow, "node_dim": node_dim, "decomposed_layers": decomposed}


def check_flow(flow) -> None:
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")


def check_channels(layer: str, name: str, value, lazy_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {name} must be an int, got {type(value).__name__}")
    if value == -1 and lazy_ok:
        return
    if value <= 0:
        raise ValueError(
            f"{layer}: {name} must be positive, got {value}"
            + (" (lazy in_channels=-1 is not supported here)" if value == -1 else "")
        )


# The CSRs built from the edge_index tensors callers pass, so that every layer of a model
# and every epoch over the same `data.edge_index` share one Graph (its sort, transpose and
# GCN normalisation are computed once). Keyed on the tensor object (held weakly) and its
# version counter, so an in-place edit of the edge_index builds a fresh Graph. On the CPU
# the entry also keeps a copy of the indices and a hit must equal it: edits the version
# counter does not see (through .data, a NumPy view, torch.from_numpy, shared memory)
# then build a fresh Graph too, for one read of the indices per call (0.7 ms at 1M edges,
# against 120 ms to build the Graph). On a GPU that comparison would synchronise every
# call: there the version counter alone decides (an edit behind its back needs a new
# tensor, or clear_graph_cache()).
_GRAPHS: "OrderedDict[int, tuple]" = OrderedDict()
_GRAPHS_KEPT = 8
_GRAPHS_LOCK = threading.RLock()  # reentrant: see validation.forget_when_collected


def graph_from_edge_index(owner: Tensor, edge_index: Tensor, num_src: int, num_dst: int, flow: str) -> Graph:
    """``Graph.from_edge_index(edge_index, num_nodes=(num_src, num_dst))``, shared by
    every call with the same ``owner`` tensor (the one the caller passed; ``edge_index``
    is derived from it by ``flow``) in the same version. Not cached while compiling (the
    graph is then built inside the traced code)."""
    version = None if torch.compiler.is_compiling() else validation.version(owner)
    if version is None:
        return Graph.from_edge_index(edge_index, num_nodes=(num_src, num_dst))
    key, shape = id(owner), (num_src, num_dst, flow)
    with _GRAPHS_LOCK:
        hit = _GRAPHS.get(key)
        if hit is not None and hit[0]() is owner and hit[1] == version and hit[2] == shape \
                and (hit[4] is None or torch.equal(hit[4], owner)):
            _GRAPHS.move_to_end(key)
            return hit[3]
    graph = Graph.from_edge_index(edge_index, num_nodes=(num_src, num_dst))
    # the content check's copy: made outside any torch.func transform, as the graph's
    # structure is, so that the cache outlives the transform
    copy = outside_transforms(lambda: owner.detach().clone(), owner) if owner.device.type == "cpu" else None
    with _GRAPHS_LOCK:
        ref = weakref.ref(owner, validation.forget_when_collected(_GRAPHS, _GRAPHS_LOCK, key))
        _GRAPHS[key] = (ref, version, shape, graph, copy)
        _GRAPHS.move_to_end(key)
        while len(_GRAPHS) > _GRAPHS_KEPT:
            _GRAPHS.popitem(last=False)
    return graph


def clear_graph_cache() -> None:
    with _GRAPHS_LOCK:
        _GRAPHS.clear()


def channel_pair(layer: str, in_channels, out_channels, lazy_ok: bool = False) -> Tuple[int, int]:
    """PyG's ``in_channels`` (an int, or ``(src, dst)`` widths) as a checked pair; checks
    ``out_channels`` too."""
    pair = (in_channels, in_channels) if isinstance(in_channels, int) else tuple(in_channels)
    if len(pair) != 2:
        raise ValueError(f"{layer}: in_channels must be an int or a pair, got {in_channels!r}")
    for name, value in zip(("in_channels[0]", "in_channels[1]"), pair):
        check_channels(layer, name, value, lazy_ok=lazy_ok)
    check_channels(layer, "out_channels", out_channels)
    return pair


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` (the same parameters, state dict and hooks) computed by
    :func:`fastalign.ops.linear`: fastalign's CPU kernel for float32 features and 16 to
    64 outputs, ``F.linear`` for everything else. ``backend`` is the owning layer's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 backend: Optional[str] = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return linear_op(input, self.weight, self.bias, self.backend)


def linear(in_features: int, out_features: int, bias: bool, backend: Optional[str] = None) -> torch.nn.Module:
    """:class:`Linear`, or ``torch.nn.LazyLinear`` for ``in_features=-1`` (PyG's lazy
    initialisation: the width is read off the first input)."""
    if in_features == -1:
        return torch.nn.LazyLinear(out_features, bias=bias)
    return Linear(in_features, out_features, bias=bias, backend=backend)


class Prepared(NamedTuple):
    graph: Graph  # CSR by destination: num_dst x num_src
    weight: Optional[Tensor]  # per-edge weights in the graph's internal order, or None
    x_src: Tensor
    x_dst: Optional[Tensor]
    kind: Optional[str]  # sparse_kind of the adjacency that was passed


def split_features(layer: str, x) -> Tuple[Tensor, Optional[Tensor]]:
    """``x`` or ``(x_src, x_dst)`` -> (x_src, x_dst); a plain tensor is both."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"{layer}: a feature pair must be (x_src, x_dst), got {len(x)} entries")
        x_src, x_dst = x
        if not isinstance(x_src, Tensor):
            raise TypeError(f"{layer}: x_src must be a torch.Tensor, got {type(x_src).__name__}")
        if x_dst is not None and not isinstance(x_dst, Tensor):
            raise TypeError(f"{layer}: x_dst must be a torch.Tensor or None, got {type(x_dst).__name__}")
        return x_src, x_dst
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: x must be a torch.Tensor or a pair, got {type(x).__name__}")
    return x, x


def node_count(layer: str, x: Tensor, node_dim: int) -> int:
    if x.dim() < 2:
        raise ValueError(
            f"{layer}: node features must be at least 2-D [num_nodes, channels], got shape {list(x.shape)}"
        )
    if not -x.dim() <= node_dim < x.dim():
        raise ValueError(
            f"{layer}: node_dim={node_dim} is out of range for features of shape {list(x.shape)}"
        )
    if x.layout != torch.strided:
        return x.size(0)
    return x.size(node_dim)


def _size_pair(size) -> Tuple[Optional[int], Optional[int]]:
    if size is None:
        return None, None
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise ValueError(f"size must be a (num_src, num_dst) pair, got {size!r}")
    return tuple(None if s is None else as_count("size", s) for s in size)


def prepare(
    layer: str,
    x,
    edge_index,
    edge_weight: Optional[Tensor] = None,
    size=None,
    *,
    flow: str = "source_to_target",
    node_dim: int = -2,
    sparse_tensor_values: bool = True,
) -> Prepared:
    """Resolve a conv's inputs (see the module docstring).

    ``sparse_tensor_values=False`` drops a SparseTensor's values (PyG's SAGEConv and
    GINConv ignore them; torch.sparse values are used by every PyG layer).
    """
    check_flow(flow)
    x_src, x_dst = split_features(layer, x)
    bipartite = x_dst is not x_src
    n_src = node_count(layer, x_src, node_dim)
    n_dst = None if x_dst is None else n_src if x_dst is x_src else node_count(layer, x_dst, node_dim)
    size_src, size_dst = _size_pair(size)
    kind = sparse_kind(edge_index)

    if kind in ("torch", "sparse_tensor") or isinstance(edge_index, Graph):
        # size is ignored here, as in PyG: the adjacency's shape is the size
        if flow == "target_to_source" and kind is not None:
            raise ValueError(
                f"{layer}: flow='target_to_source' cannot be used with a sparse adjacency "
                "(it is already A[target, source]); pass its transpose instead"
            )
        if edge_weight is not None and kind is not None:
            raise ValueError(
                f"{layer}: edge_weight must be None when the adjacency is sparse: its "
                "values are the edge weights"
            )
        if kind == "sparse_tensor" and not sparse_tensor_values:
            graph = Graph.from_sparse_tensor(edge_index)
            graph = graph.with_edge_weight(None) if graph.edge_weight is not None else graph
        else:
            graph = Graph.coerce(edge_index)
        weight = graph.edge_weight
        if edge_weight is not None:  # a Graph with caller-order weights
            weight = graph.to_internal(check_edge_values("edge_weight", edge_weight, graph))
    else:
        if not isinstance(edge_index, Tensor):
            raise TypeError(
                f"{layer}: edge_index must be an edge_index tensor, a torch.sparse adj_t, a "
                "torch_sparse SparseTensor, a PyG EdgeIndex or a fastalign.Graph, got "
                f"{type(edge_index).__name__}"
            )
        owner = edge_index
        if kind == "edge_index":
            sparse_size = edge_index.sparse_size()
            size_src = size_src if size_src is not None else sparse_size[0]
            size_dst = size_dst if size_dst is not None else sparse_size[1]
            edge_index = edge_index.as_tensor()
        if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
            raise TypeError(f"{layer}: edge_index must be an int64 or int32 tensor, got {edge_index.dtype}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"{layer}: edge_index must have shape [2, E], got {list(edge_index.shape)}")
        if flow == "target_to_source":
            if bipartite:
                raise ValueError(
                    f"{layer}: flow='target_to_source' with a (x_src, x_dst) pair is not "
                    "supported: flip edge_index and use the default flow"
                )
            edge_index = edge_index.flip(0)
            size_src, size_dst = size_dst, size_src
        num_src = size_src if size_src is not None else n_src
        num_dst = size_dst if size_dst is not None else (n_dst if n_dst is not None else num_src)
        graph = graph_from_edge_index(owner, edge_index, num_src, num_dst, flow)
        weight = None
        if edge_weight is not None:  # the ops' own check: type, dtype, one per edge, device
            weight = graph.to_internal(check_edge_values("edge_weight", edge_weight, graph))

    if graph.num_src != n_src:
        raise ValueError(
            f"{layer}: the adjacency has {graph.num_src} source nodes but the source "
            f"features have {n_src} (along node_dim={node_dim})"
        )
    if n_dst is not None and graph.num_dst != n_dst:
        raise ValueError(
            f"{layer}: the adjacency has {graph.num_dst} target nodes but the target "
            f"features have {n_dst} (along node_dim={node_dim})"
        )
    return Prepared(graph, weight, x_src, x_dst, kind)


def over_nodes(fn, x: Tensor, node_dim: int = -2) -> Tensor:
    """``fn`` (a ``[N, C] -> [M, C]`` aggregation) applied along the node dimension of
    dense ``x`` (``[..., N, ..., F]``): the other dimensions are folded into the columns,
    so a batch of features over one graph is one kernel call."""
    if x.dim() == 1:
        return fn(x.unsqueeze(1)).squeeze(1)
    dim = node_dim % x.dim()
    if x.dim() == 2 and dim == 0:
        return fn(x)
    moved = x.movedim(dim, 0)
    rest = moved.shape[1:]
    out = fn(moved.reshape(moved.size(0), -1))
    return out.reshape((out.size(0),) + tuple(rest)).movedim(0, dim)


def aggregate(
    graph: Graph,
    x: Tensor,
    reduce: str,
    weight: Optional[Tensor],
    node_dim: int = -2,
    backend: Optional[str] = None,
) -> Tensor:
    """``spmm`` along the node dimension of ``x`` (see :func:`over_nodes`), prepared once."""
    if x.layout != torch.strided:
        x = x.to_dense()
    return over_nodes(spmm_propagation(graph, x, reduce, weight, backend), x, node_dim)


class DropInConv(torch.nn.Module):
    """What the drop-in convs share: MessagePassing's options (``aggr``, ``flow``,
    ``node_dim``, ``decomposed_layers``, mutable attributes as in PyG), the kernel
    ``backend`` and the input preparation."""

    AGGRS: Tuple[str, ...] = ("sum",)
    # PyG's spelling of each aggregation -> fastalign.spmm's reduce
    REDUCE = {"add": "sum", "sum": "sum", "mean": "mean", "max": "max"}

    def __init__(self, layer_kwargs: dict, backend: Optional[str]):
        super().__init__()
        options = check_message_passing_kwargs(type(self).__name__, layer_kwargs, self.AGGRS)
        self.aggr = options["aggr"]
        self.flow = options["flow"]
        self.node_dim = options["node_dim"]
        self.decomposed_layers = options["decomposed_layers"]
        self.backend = backend

    def _no_message_hooks(self, *args, **kwargs):
        raise NotImplementedError(
            f"fastalign's {type(self).__name__} computes messages and their aggregation in one "
            "kernel, so there are no messages to hook (this is what PyG's to_hetero_with_bases, "
            f"explain and message hooks need): use torch_geometric.nn.{type(self).__name__} there"
        )

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module it is given (and on their
        # submodules) before compiling: refuse here, by name, rather than deep in the
        # compiler on a Graph or a custom op it cannot type.
        raise NotImplementedError(
            f"fastalign's {type(self).__name__} does not support TorchScript (torch.jit.script): "
            "it calls custom ops through Python. Compile with torch.compile, or export the model "
            f"with torch.export; for TorchScript use torch_geometric.nn.{type(self).__name__}"
        )

    # PyG's MessagePassing hook API, refused clearly rather than by an AttributeError
    register_message_forward_pre_hook = _no_message_hooks
    register_message_forward_hook = _no_message_hooks
    register_aggregate_forward_pre_hook = _no_message_hooks
    register_aggregate_forward_hook = _no_message_hooks
    register_propagate_forward_pre_hook = _no_message_hooks
    register_propagate_forward_hook = _no_message_hooks

    @classmethod
    def _pyg_arguments(cls, conv) -> Tuple[tuple, dict]:
        """The constructor arguments that rebuild a PyG layer of this name."""
        raise NotImplementedError

    # the module hooks a converted layer keeps (they see fastalign's layer as `module`)
    _KEPT_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                   "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                   "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                   "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")

    @classmethod
    def from_pyg(cls, conv, *, backend: Optional[str] = None):
        """This layer with the options of a built PyG layer of the same name and its very
        Parameter and buffer objects (an optimizer built before, tied weights, frozen
        parameters and ``named_parameters`` all carry over; a GINConv's ``nn`` is
        shared), and its module hooks (forward, forward-pre, backward, state-dict).
        Refused (``ValueError``, so that ``convert`` leaves the layer and says why): a lazy
        layer, one with a parametrization (``weight_norm``, ``spectral_norm``), one on the
        meta device, one with PyG message hooks."""
        name = cls.__name__
        if type(conv).__name__ != name or not isinstance(conv, torch.nn.Module):
            raise TypeError(f"expected a torch_geometric.nn.{name}, got {type(conv).__name__}")
        for p in conv.parameters():
            if isinstance(p, torch.nn.parameter.UninitializedParameter):
                raise ValueError(f"the PyG {name} is lazy (in_channels=-1): run it once first")
        from torch.nn.utils import parametrize

        hooked = [type(h).__name__ for m in conv.modules() for h in m._forward_pre_hooks.values()
                  if type(h).__name__ in ("WeightNorm", "SpectralNorm")]
        if hooked or any(parametrize.is_parametrized(m) for m in conv.modules()):
            raise ValueError(f"the PyG {name} has a parametrization ({', '.join(hooked) or 'torch.nn.utils.parametrize'}), "
                             "which fastalign's layer would not apply")
        if any(t.is_meta for t in list(conv.parameters()) + list(conv.buffers())):
            raise ValueError(f"the PyG {name} is on the meta device: convert it once its weights exist")
        message_hooks = [k for k, v in vars(conv).items()
                         if k.endswith("_hooks") and k not in cls._KEPT_HOOKS and isinstance(v, dict) and v]
        if message_hooks:
            raise ValueError(f"the PyG {name} has message-passing hooks ({', '.join(sorted(message_hooks))}), "
                             "which fastalign's fused kernels cannot call")
        # taken first: building a GINConv resets the nn it shares with the PyG layer
        state = {k: v.detach().clone() for k, v in conv.state_dict().items()}
        args, kwargs = cls._pyg_arguments(conv)
        kwargs.update(
            flow=getattr(conv, "flow", "source_to_target"), node_dim=getattr(conv, "node_dim", -2),
            decomposed_layers=getattr(conv, "decomposed_layers", 1),
        )
        ours = cls(*args, backend=backend, **kwargs)
        ours.load_state_dict(state)  # checks that every name and shape agrees
        first = next(iter(conv.parameters()), None)
        if first is not None:
            ours = ours.to(device=first.device, dtype=first.dtype)
        # then the PyG layer's own objects in place of the copies
        for key, tensor in list(conv.named_parameters(remove_duplicate=False)) + list(conv.named_buffers()):
            owner_name, _, leaf = key.rpartition(".")
            owner = ours.get_submodule(owner_name) if owner_name else ours
            slot = owner._parameters if leaf in owner._parameters else owner._buffers
            slot[leaf] = tensor
        for hooks in cls._KEPT_HOOKS:
            getattr(ours, hooks).update(getattr(conv, hooks))
        ours._is_full_backward_hook = conv._is_full_backward_hook
        ours.train(conv.training)
        return ours

    def _prepare(self, x, edge_index, edge_weight=None, size=None, sparse_tensor_values=True):
        return prepare(
            type(self).__name__, x, edge_index, edge_weight, size, flow=self.flow,
            node_dim=self.node_dim, sparse_tensor_values=sparse_tensor_values,
        )

    def _aggregate(self, prep: Prepared, x: Tensor) -> Tensor:
        return aggregate(prep.graph, x, self.REDUCE[self.aggr], prep.weight, self.node_dim, self.backend)

    def _aggregate_linear(self, prep: Prepared, x: Tensor, lin: torch.nn.Linear) -> Tensor:
        """``lin(aggregate(x))``. A sum or mean commutes with the linear map, so when
        ``lin`` narrows the features it runs first and the aggregation moves fewer
        columns (the bias is added after: it is not aggregated)."""
        narrows = (
            not isinstance(lin.weight, torch.nn.parameter.UninitializedParameter)
            and lin.out_features < lin.in_features
            and self.REDUCE[self.aggr] in ("sum", "mean")
            and x.layout == torch.strided
            and self.node_dim % x.dim() != x.dim() - 1
        )
        if not narrows:
            return lin(self._aggregate(prep, x))
        out = self._aggregate(prep, linear_op(x, lin.weight, None, self.backend))
        return out + lin.bias if lin.bias is not None else out
