"""Graph: a CSR adjacency by destination, the one structure every op takes.

Row ``i`` of the CSR holds the in-neighbours ``j`` of node ``i`` (PyG convention:
``edge_index[0]`` is the source, ``edge_index[1]`` the target, messages flow
source -> target). The transpose (CSR by source), degrees and the GCN normalisation
are computed lazily and cached, so that a graph built once serves every layer and epoch.

Per-edge tensors that ops take or return are in the graph's internal (CSR) order,
``graph.edge_index``; ``graph.to_internal`` / ``graph.to_caller`` convert from and to
the order of the edges the graph was built from.
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import validation

_INDEX_DTYPES = validation.INDEX_DTYPES
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def as_count(name: str, value) -> int:
    """A node count (or similar): an int (not a bool, float or string), 0 <= value < 2**63.
    A symbolic size (torch.compile with dynamic shapes) passes through unchanged."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, Tensor)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an int, got a {value.dtype} tensor of shape {list(value.shape)}")
        value = int(value)
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    if value > _INT64_MAX:
        raise ValueError(f"{name} must be below 2**63, got {value}")
    return value


def _check_range(name: str, idx: Tensor, upper: int) -> None:
    if idx.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0:
        raise ValueError(f"{name} contains a negative index ({lo})")
    if hi >= upper:
        raise ValueError(f"{name} contains index {hi}, out of range for {upper} nodes")


def _sorted_csr(row: Tensor, col: Tensor, num_rows: int, num_cols: int):
    """Sort edges by (row, col), stably. Returns (rowptr, col_sorted, perm) with
    ``col_sorted = col[perm]``; ``perm`` maps CSR position -> input position."""
    row64, col64 = row.to(torch.int64), col.to(torch.int64)
    if num_rows * max(num_cols, 1) <= _INT64_MAX:
        perm = torch.sort(row64 * max(num_cols, 1) + col64, stable=True).indices
    else:
        # the one-key sort would overflow int64: sort by column, then stably by row
        by_col = torch.sort(col64, stable=True).indices
        perm = by_col[torch.sort(row64[by_col], stable=True).indices]
    counts = torch.bincount(row64, minlength=num_rows)
    rowptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=row.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr, col[perm], perm



@torch.library.custom_op("fastalign::csr_from_edges", mutates_args=())
def csr_from_edges(
    row: Tensor, col: Tensor, num_rows: int, num_cols: int, check_range: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """(rowptr int64 [num_rows + 1], col sorted by (row, col), perm int64 [E]) for the
    edges ``col[e] -> row[e]``; ``check_range`` checks both index ranges first.

    An op so that torch.compile traces a graph's construction without breaking: the sort,
    the bincount and the range checks read the host and have data-dependent shapes
    inside, but the outputs' shapes follow from the inputs'."""
    if check_range:
        _check_range("edge_index[0] (source)", col, num_cols)
        _check_range("edge_index[1] (target)", row, num_rows)
    rowptr, col_sorted, perm = _sorted_csr(row, col, num_rows, num_cols)
    return rowptr, col_sorted.contiguous(), perm


@csr_from_edges.register_fake
def _(row, col, num_rows, num_cols, check_range):
    num_edges = col.shape[0]
    return (
        row.new_empty((num_rows + 1,), dtype=torch.int64),
        col.new_empty((num_edges,)),
        row.new_empty((num_edges,), dtype=torch.int64),
    )


class Graph:
    """A (possibly rectangular) graph in CSR-by-destination form.

    Attributes:
        rowptr: ``[num_dst + 1]`` offsets into ``col``.
        col: ``[E]`` source node of each edge, grouped by destination.
        edge_weight: optional ``[E]`` floating edge values, in internal order.
        num_src, num_dst: node counts of the source and destination sets (equal for an
            ordinary graph; different for a sampled bipartite block).
        perm: optional ``[E]`` int64; internal edge ``k`` is caller edge ``perm[k]``
            (``None`` when the input was already in CSR order).
    """

    def __init__(
        self,
        rowptr: Tensor,
        col: Tensor,
        num_src: int,
        edge_weight: Optional[Tensor] = None,
        perm: Optional[Tensor] = None,
        *,
        validate: bool = True,
    ):
        num_src = as_count("num_src", num_src)
        if validate:
            _validate_csr(rowptr, col, num_src, edge_weight)
        else:
            # built valid by a constructor of this module: registered without a scan
            validation.mark_csr_valid(rowptr, col, num_src)
        self.rowptr = rowptr
        self.col = col
        self.edge_weight = edge_weight
        self.num_src = num_src
        self.num_dst = rowptr.numel() - 1
        self.perm = perm
        # key -> (stamp, value); the stamp is the version counters of what the value was
        # computed from (see _stamp), so an in-place edit of rowptr, col or the edge
        # weights invalidates what depends on them
        self._cache: dict = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edge_index(
        cls,
        edge_index: Tensor,
        edge_weight: Optional[Tensor] = None,
        num_nodes: Union[None, int, Tuple[int, int]] = None,
    ) -> "Graph":
        """From a PyG ``[2, E]`` edge_index (row 0 source, row 1 target).

        ``num_nodes`` is an int (square graph) or ``(num_src, num_dst)``; by default
        ``max index + 1``. Indices keep their dtype (int32 or int64).
        """
        validation.check_index_tensor("edge_index", edge_index, dim=None)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        src, dst = edge_index[0], edge_index[1]
        if num_nodes is None:
            n = int(edge_index.max()) + 1 if edge_index.numel() > 0 else 0
            num_src = num_dst = n
        elif isinstance(num_nodes, (tuple, list)):
            if len(num_nodes) != 2:
                raise ValueError("num_nodes must be an int or a (num_src, num_dst) pair")
            num_src = as_count("num_nodes[0] (sources)", num_nodes[0])
            num_dst = as_count("num_nodes[1] (destinations)", num_nodes[1])
        else:
            num_src = num_dst = as_count("num_nodes", num_nodes)
        if edge_index.dtype == torch.int32 and src.numel() > _INT32_MAX:
            raise ValueError(
                f"{src.numel()} edges do not fit int32 row offsets: pass an int64 edge_index"
            )
        edge_weight = validation.check_edge_tensor("edge_weight", edge_weight, src.numel(), edge_index.device)

        def structure():
            rowptr, col, perm = csr_from_edges(dst, src, num_dst, num_src, True)
            return rowptr.to(edge_index.dtype), col.contiguous(), perm

        rowptr, col, perm = outside_transforms(structure, edge_index)
        weight = edge_weight[perm] if edge_weight is not None else None
        return cls(rowptr, col, num_src, weight, perm, validate=False)

    @classmethod
    def from_csr(
        cls,
        rowptr: Tensor,
        col: Tensor,
        num_src: Optional[int] = None,
        edge_weight: Optional[Tensor] = None,
    ) -> "Graph":
        """From a CSR by destination (validated: monotone offsets, indices in range)."""
        validation.check_index_tensor("rowptr", rowptr, dim=None)
        validation.check_index_tensor("col", col, dim=None)
        if num_src is None:
            num_src = max(rowptr.numel() - 1, int(col.max()) + 1 if col.numel() else 0)
        num_src = as_count("num_src", num_src)
        return cls(rowptr.contiguous(), col.contiguous(), num_src, edge_weight)

    @classmethod
    def from_torch_sparse(cls, adj: Tensor) -> "Graph":
        """From a torch.sparse adjacency ``A[dst, src]`` (PyG's ``adj_t``): COO, CSR or CSC.

        Values become edge weights unless they are all ones of a boolean/integer type.
        """
        if not isinstance(adj, Tensor) or not adj.is_sparse and adj.layout not in (
            torch.sparse_csr, torch.sparse_csc
        ):
            raise TypeError("from_torch_sparse expects a torch.sparse tensor (COO, CSR or CSC)")
        if adj.dim() != 2:
            raise ValueError(f"sparse adjacency must be 2-D, got {adj.dim()}-D")
        num_dst, num_src = adj.shape
        if adj.layout == torch.sparse_csr:
            values = adj.values()
            return cls.from_csr(
                adj.crow_indices(), adj.col_indices(), num_src, _float_values(values)
            )
        if adj.layout == torch.sparse_csc:
            adj = adj.to_sparse_coo()
        adj = adj.coalesce()
        dst, src = adj.indices()
        return cls.from_edge_index(
            torch.stack([src, dst]), _float_values(adj.values()), (num_src, num_dst)
        )

    @classmethod
    def from_scipy(cls, adj) -> "Graph":
        """From a scipy.sparse matrix or array ``A[dst, src]`` (any format)."""
        import numpy as np
        import scipy.sparse as sp

        if not sp.issparse(adj):
            raise TypeError(f"from_scipy expects a scipy.sparse matrix, got {type(adj).__name__}")
        csr = adj.tocsr()
        csr.sort_indices()
        values = csr.data
        weight = None
        if values.dtype.kind == "f":
            weight = torch.from_numpy(np.ascontiguousarray(values))
        elif not np.all(values == 1):
            weight = torch.from_numpy(values.astype(np.float32))
        index_dtype = torch.int32 if csr.indptr.dtype == np.int32 else torch.int64
        rowptr = torch.from_numpy(csr.indptr.astype(np.int64)).to(index_dtype)
        col = torch.from_numpy(csr.indices.astype(np.int64)).to(index_dtype)
        return cls.from_csr(rowptr, col, csr.shape[1], weight)

    @classmethod
    def from_sparse_tensor(cls, adj_t) -> "Graph":
        """From a torch_sparse ``SparseTensor`` adj_t (rows are targets, as PyG uses it)."""
        rowptr, col, value = adj_t.csr()
        num_dst, num_src = adj_t.sparse_sizes()
        return cls.from_csr(rowptr, col, num_src, _float_values(value))

    @classmethod
    def coerce(cls, adj, num_nodes=None, edge_weight: Optional[Tensor] = None) -> "Graph":
        """Accept any supported adjacency: Graph, edge_index, torch.sparse, scipy.sparse,
        or a torch_sparse SparseTensor."""
        if isinstance(adj, Graph):
            return adj
        if isinstance(adj, Tensor):
            if adj.layout != torch.strided:
                return cls.from_torch_sparse(adj)
            return cls.from_edge_index(adj, edge_weight, num_nodes)
        if type(adj).__name__ == "SparseTensor":
            return cls.from_sparse_tensor(adj)
        try:
            import scipy.sparse as sp

            if sp.issparse(adj):
                return cls.from_scipy(adj)
        except ImportError:  # pragma: no cover - scipy is a dependency
            pass
        raise TypeError(
            "expected a fastalign.Graph, an edge_index tensor, a torch.sparse tensor, "
            f"a scipy.sparse matrix or a torch_sparse SparseTensor, got {type(adj).__name__}"
        )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.rowptr.device

    @property
    def index_dtype(self) -> torch.dtype:
        return self.col.dtype

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def is_square(self) -> bool:
        return self.num_src == self.num_dst

    @property
    def row(self) -> Tensor:
        """Destination of each edge, in internal order (cached)."""
        return self._cached("row", self._compute_row)

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` (source, target) in internal order."""
        return torch.stack([self.col, self.row.to(self.col.dtype)])

    @property
    def in_degree(self) -> Tensor:
        """Number of in-edges of each destination node (int64, cached)."""
        return self._cached("in_degree", lambda: self.rowptr[1:].long() - self.rowptr[:-1].long())

    @property
    def out_degree(self) -> Tensor:
        """Number of out-edges of each source node (int64, cached)."""
        rowptr_t = self.transpose()[0]
        return self._cached("out_degree", lambda: rowptr_t[1:].long() - rowptr_t[:-1].long())

    def transpose(self) -> Tuple[Tensor, Tensor, Tensor]:
        """The CSR by source, cached: ``(rowptr_t [num_src+1], col_t [E], perm_t [E])``;
        transposed edge ``k`` is internal edge ``perm_t[k]`` and goes ``k``'s row
        (a source) -> ``col_t[k]`` (a destination)."""
        return self._cached("transpose", self._compute_transpose)

    def transposed(self) -> "Graph":
        """The reversed graph (edges target -> source) as a Graph, sharing the cache."""
        def build():
            rowptr_t, col_t, perm_t = self.transpose()
            w = self.edge_weight[perm_t] if self.edge_weight is not None else None
            g = Graph(rowptr_t, col_t, self.num_dst, w, None, validate=False)
            back = torch.argsort(perm_t)
            validation.mark_perm_valid(back)
            g._store("transpose", (self.rowptr, self.col, back), uses_weight=False)
            return g

        return self._cached("transposed", build, uses_weight=True)

    # ------------------------------------------------------------------ edge order
    def to_internal(self, edge_values: Tensor) -> Tensor:
        """Reorder a per-edge tensor from the caller's edge order to internal order."""
        if edge_values.size(0) != self.num_edges:
            raise ValueError(
                f"expected {self.num_edges} per-edge values, got {edge_values.size(0)}"
            )
        return edge_values if self.perm is None else edge_values[self.perm]

    def to_caller(self, edge_values: Tensor) -> Tensor:
        """Reorder a per-edge tensor from internal order to the caller's edge order."""
        if edge_values.size(0) != self.num_edges:
            raise ValueError(
                f"expected {self.num_edges} per-edge values, got {edge_values.size(0)}"
            )
        if self.perm is None:
            return edge_values
        out = torch.empty_like(edge_values)
        out[self.perm] = edge_values
        return out

    # ------------------------------------------------------------------ blocks
    def row_block(self, start: int, stop: int) -> Tuple["Graph", Tensor]:
        """Destination rows ``start .. stop-1`` with the sources they read, renumbered:
        ``(block, sources)``, ``block`` a ``(stop - start) x len(sources)`` Graph whose
        source ``k`` is node ``sources[k]`` of this graph (int64), edges and weights in
        this graph's internal order. For a square graph the block's own rows come first
        (``sources[:stop - start] == arange(start, stop)``), so a loop ``i -> i`` stays a
        loop and ops that add self loops (``gat_aggregate``) see the right node.

        This is what layer-wise inference runs on: one block and the rows of the
        features it gathers fit on a device when the whole graph does not."""
        start, stop = as_count("start", start), as_count("stop", stop)
        if not start <= stop <= self.num_dst:
            raise ValueError(f"rows {start}..{stop} are not a range of the graph's {self.num_dst} rows")
        lo, hi = int(self.rowptr[start]), int(self.rowptr[stop])
        col = self.col[lo:hi].long()
        if self.is_square:
            outside = col[(col < start) | (col >= stop)].unique()
            own = torch.arange(start, stop, device=self.device)
            sources = torch.cat([own, outside])
            local = torch.where(
                (col >= start) & (col < stop), col - start,
                torch.searchsorted(outside, col) + (stop - start),
            )
        else:
            sources = col.unique()
            local = torch.searchsorted(sources, col)
        rowptr = self.rowptr[start : stop + 1] - self.rowptr[start]
        weight = self.edge_weight[lo:hi] if self.edge_weight is not None else None
        block = Graph(rowptr, local.to(self.col.dtype).contiguous(), sources.numel(), weight, validate=False)
        return block, sources

    # ------------------------------------------------------------------ node order
    REORDERINGS = ("rcm", "degree")

    def node_order(self, method: str = "rcm") -> Tensor:
        """A new order of the nodes of this square graph (``order[i]`` is the node that
        becomes node ``i``; int64 on the graph's device) that puts nodes read together
        near each other in memory, so that an aggregation's gathers reuse the cache:

        * ``"rcm"``: reverse Cuthill-McKee of the symmetrised adjacency (scipy): a
          node's neighbours get nearby numbers; the gain is largest on graphs whose
          numbering is random with respect to their communities.
        * ``"degree"``: by in-degree, highest first: the most-read rows sit together.
        """
        if method not in self.REORDERINGS:
            raise ValueError(f"method must be one of {self.REORDERINGS}, got {method!r}")
        if not self.is_square:
            raise ValueError(
                f"node_order needs a square graph (one node set), got {self.num_src} sources "
                f"and {self.num_dst} destinations"
            )
        if method == "degree":
            return torch.sort(self.in_degree, descending=True, stable=True).indices
        try:
            import numpy as np
            import scipy.sparse
            from scipy.sparse.csgraph import reverse_cuthill_mckee
        except ImportError as exc:
            raise ImportError("Graph.node_order('rcm') needs scipy: pip install scipy") from exc
        n = self.num_dst
        rowptr, col = self.rowptr.cpu().numpy(), self.col.cpu().numpy()
        adj = scipy.sparse.csr_matrix((np.ones(col.shape[0], dtype=np.int8), col, rowptr), shape=(n, n))
        order = reverse_cuthill_mckee((adj + adj.T).tocsr(), symmetric_mode=True)
        return torch.from_numpy(order.astype(np.int64)).to(self.device)

    def reordered(self, method_or_order: Union[str, Tensor] = "rcm") -> Tuple["Graph", Tensor]:
        """This square graph with its nodes renumbered: ``(graph, order)``, node
        ``order[i]`` of this graph being node ``i`` of the new one (``order`` from
        :meth:`node_order`'s ``method``, or given). Features follow with ``x[order]``,
        and a result over the new nodes goes back with ``out[inverse]``, ``inverse =
        torch.argsort(order)``. The new graph's caller edge order is this graph's
        internal order (its edge weights follow). Opt-in: renumbering costs a sort of
        the edges, paid back over many aggregations of one graph (docs/benchmarks.md)."""
        if not self.is_square:
            raise ValueError(f"reordered needs a square graph, got {self.num_src} x {self.num_dst}")
        order = self.node_order(method_or_order) if isinstance(method_or_order, str) else method_or_order
        n = self.num_dst
        validation.check_index_tensor("order", order)
        order = order.to(self.device, torch.int64)
        arange = torch.arange(n, device=self.device)
        # a permutation sorts to 0..n-1 (one sort, one read of the host)
        if order.numel() != n or not torch.equal(torch.sort(order).values, arange):
            raise ValueError(f"order must be a permutation of the graph's {n} nodes")
        inverse = torch.empty_like(order)
        inverse[order] = arange
        edge_index = torch.stack([inverse[self.col.long()], inverse[self.row.long()]]).to(self.col.dtype)
        return Graph.from_edge_index(edge_index, self.edge_weight, num_nodes=n), order

    # ------------------------------------------------------------------ misc
    def to(self, device=None, index_dtype: Optional[torch.dtype] = None) -> "Graph":
        """Move to a device and/or change the index dtype (int32 / int64).
        Cached tensors move along."""
        if index_dtype is not None and index_dtype not in _INDEX_DTYPES:
            raise TypeError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
        if index_dtype is not None and index_dtype == torch.int32:
            if self.num_edges >= 2**31 or max(self.num_src, self.num_dst) >= 2**31:
                raise ValueError("graph too large for int32 indices")
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and not torch.cuda.is_available():
                why = ("this torch is a CPU build (torch.version.cuda is None): install a CUDA build of torch"
                       if torch.version.cuda is None else "no CUDA device is visible to this process")
                raise RuntimeError(f"Graph.to({str(device)!r}): {why}")

        def move(t):
            if not isinstance(t, Tensor):
                return t
            if index_dtype is not None and t.dtype in _INDEX_DTYPES and t is not self.perm:
                t = t.to(index_dtype)
            return t.to(device) if device is not None else t

        g = Graph(
            move(self.rowptr),
            move(self.col),
            self.num_src,
            move(self.edge_weight),
            self.perm.to(device) if (self.perm is not None and device is not None) else self.perm,
            validate=False,
        )
        for key, value, uses_weight in self._fresh_entries():
            if key == "transposed":
                continue
            moved = tuple(move(v) for v in value) if isinstance(value, tuple) else move(value)
            if key == "transpose":
                g._register_transpose(moved)
            g._store(key, moved, uses_weight)
        return g

    def with_edge_weight(self, edge_weight: Optional[Tensor]) -> "Graph":
        """The same structure (and structural caches) with other edge values, given in
        internal order."""
        edge_weight = validation.check_edge_tensor("edge_weight", edge_weight, self.num_edges, self.device)
        g = Graph(self.rowptr, self.col, self.num_src, edge_weight, self.perm, validate=False)
        for key, value, uses_weight in self._fresh_entries():
            if not uses_weight:
                g._store(key, value, uses_weight)
        return g

    # ------------------------------------------------------------------ caches
    def _stamp(self, uses_weight: bool) -> tuple:
        """The identity and version counter of every tensor a cached value derives from:
        rowptr and col, and the edge weights for ``uses_weight`` values."""
        stamp = (id(self.rowptr), validation.version(self.rowptr), id(self.col),
                 validation.version(self.col))
        if uses_weight:
            w = self.edge_weight
            stamp += (id(w), validation.version(w) if w is not None else None)
        return stamp

    def _cached(self, key, fn, uses_weight: bool = False):
        """The value of ``key``, recomputed when what it derives from was replaced or
        edited in place since (version counters), e.g. ``graph.edge_weight.mul_(3)``."""
        if torch.compiler.is_compiling():
            # Traced code reads version counters as unbacked symbols: no staleness check
            # there (a compiled step reuses what eager mode cached; in-place edits of a
            # graph's tensors inside a compiled region are not tracked)
            hit = self._cache.get(key)
            if hit is not None:
                return hit[2]
            value = fn()
            self._cache[key] = (None, uses_weight, value)
            return value
        stamp = self._stamp(uses_weight)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[2]
        value = outside_transforms(fn)
        self._cache[key] = (stamp, uses_weight, value)
        return value

    def _store(self, key, value, uses_weight: bool) -> None:
        stamp = None if torch.compiler.is_compiling() else self._stamp(uses_weight)
        self._cache[key] = (stamp, uses_weight, value)

    def _fresh_entries(self):
        """(key, value, uses_weight) of the cached values that are still current."""
        compiling = torch.compiler.is_compiling()
        for key, (stamp, uses_weight, value) in list(self._cache.items()):
            if compiling or stamp == self._stamp(uses_weight):
                yield key, value, uses_weight

    def _register_transpose(self, value) -> None:
        rowptr_t, col_t, perm_t = value
        validation.mark_csr_valid(rowptr_t, col_t, self.num_dst)
        validation.mark_perm_valid(perm_t)

    def _compute_row(self) -> Tensor:
        counts = self.rowptr[1:].long() - self.rowptr[:-1].long()
        return torch.repeat_interleave(
            torch.arange(self.num_dst, device=self.device, dtype=torch.int64),
            counts,
            output_size=self.num_edges,
        )

    def _compute_transpose(self):
        rowptr_t, col_t, perm_t = csr_from_edges(self.col, self.row, self.num_src, self.num_dst, False)
        value = (rowptr_t.to(self.col.dtype), col_t.to(self.col.dtype).contiguous(), perm_t)
        self._register_transpose(value)
        return value

    def __repr__(self) -> str:
        shape = (
            f"num_nodes={self.num_dst}"
            if self.is_square
            else f"num_src={self.num_src}, num_dst={self.num_dst}"
        )
        w = ", weighted" if self.edge_weight is not None else ""
        return (
            f"Graph({shape}, num_edges={self.num_edges}{w}, "
            f"index_dtype={self.index_dtype}, device={self.device})"
        )


def outside_transforms(fn, *inputs: Tensor):
    """``fn()`` run outside any torch.func transform (unless one of ``inputs`` belongs to
    it): a graph's structure describes the graph alone, and a tensor made inside a
    transform is tied to that transform's level (torch.func.grad wraps a custom op's
    outputs), unusable once the transform has returned."""
    if not torch._C._are_functorch_transforms_active() or any(
            torch._C._functorch.is_functorch_wrapped_tensor(t) for t in inputs):
        return fn()
    from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack

    with temporarily_clear_interpreter_stack():
        return fn()


def _float_values(values: Optional[Tensor]) -> Optional[Tensor]:
    """Sparse values as edge weights; structural (bool/int all-ones) values are dropped."""
    if values is None or values.numel() == 0:
        return None
    if values.is_complex():
        raise TypeError(f"the sparse adjacency's values are complex ({values.dtype}): edge weights must be "
                        "real (pass .real, or .abs(), as the weights mean)")
    if values.is_floating_point():
        return values.contiguous()
    if bool((values == 1).all()):
        return None
    return values.to(torch.get_default_dtype())


def _validate_csr(rowptr: Tensor, col: Tensor, num_src: int, edge_weight) -> None:
    """A CSR given by the caller: checked once (fastalign.validation caches the result on
    the tensors' version counters, so the ops do not scan it again)."""
    validation.check_index_tensor("rowptr", rowptr)
    validation.check_index_tensor("col", col)
    validation.check_csr(rowptr, col, num_src, what="Graph")
    validation.check_edge_tensor("edge_weight", edge_weight, col.numel(), rowptr.device)
