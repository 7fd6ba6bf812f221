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

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_index_tensor(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {t.dtype}")


def _check_range(name: str, idx: Tensor, upper: int) -> None:
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0:
        raise ValueError(f"{name} contains a negative index ({lo})")
    if hi >= upper:
        raise ValueError(f"{name} contains index {hi}, out of range for {upper} nodes")


def _sorted_csr(row: Tensor, col: Tensor, num_rows: int, num_cols: int):
    """Sort edges by (row, col), stably. Returns (rowptr, col_sorted, perm) with
    ``col_sorted = col[perm]``; ``perm`` maps CSR position -> input position."""
    key = row.to(torch.int64) * max(num_cols, 1) + col.to(torch.int64)
    perm = torch.sort(key, stable=True).indices
    counts = torch.bincount(row.to(torch.int64), minlength=num_rows)
    rowptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=row.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr, col[perm], perm


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
        if validate:
            _validate_csr(rowptr, col, num_src, edge_weight)
        self.rowptr = rowptr
        self.col = col
        self.edge_weight = edge_weight
        self.num_src = int(num_src)
        self.num_dst = int(rowptr.numel()) - 1
        self.perm = perm
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
        _check_index_tensor("edge_index", edge_index)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        src, dst = edge_index[0], edge_index[1]
        if num_nodes is None:
            n = int(edge_index.max()) + 1 if edge_index.numel() > 0 else 0
            num_src = num_dst = n
        elif isinstance(num_nodes, (tuple, list)):
            if len(num_nodes) != 2:
                raise ValueError("num_nodes must be an int or a (num_src, num_dst) pair")
            num_src, num_dst = (int(v) for v in num_nodes)
        else:
            num_src = num_dst = int(num_nodes)
        if num_src < 0 or num_dst < 0:
            raise ValueError(f"num_nodes must be non-negative, got {num_nodes}")
        _check_range("edge_index[0] (source)", src, num_src)
        _check_range("edge_index[1] (target)", dst, num_dst)
        edge_weight = _check_edge_weight(edge_weight, src.numel(), edge_index.device)
        rowptr, col, perm = _sorted_csr(dst, src, num_dst, num_src)
        rowptr = rowptr.to(edge_index.dtype)
        weight = edge_weight[perm] if edge_weight is not None else None
        return cls(rowptr, col.contiguous(), num_src, weight, perm, validate=False)

    @classmethod
    def from_csr(
        cls,
        rowptr: Tensor,
        col: Tensor,
        num_src: Optional[int] = None,
        edge_weight: Optional[Tensor] = None,
    ) -> "Graph":
        """From a CSR by destination (validated: monotone offsets, indices in range)."""
        _check_index_tensor("rowptr", rowptr)
        _check_index_tensor("col", col)
        if num_src is None:
            num_src = max(rowptr.numel() - 1, int(col.max()) + 1 if col.numel() else 0)
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
            g._cache["transpose"] = (
                self.rowptr,
                self.col,
                torch.argsort(perm_t),
            )
            return g

        return self._cached("transposed", build)

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

    # ------------------------------------------------------------------ misc
    def to(self, device=None, index_dtype: Optional[torch.dtype] = None) -> "Graph":
        """Move to a device and/or change the index dtype (int32 / int64).
        Cached tensors move along."""
        if index_dtype is not None and index_dtype not in _INDEX_DTYPES:
            raise TypeError(f"index_dtype must be torch.int32 or torch.int64, got {index_dtype}")
        if index_dtype is not None and index_dtype == torch.int32:
            if self.num_edges >= 2**31 or max(self.num_src, self.num_dst) >= 2**31:
                raise ValueError("graph too large for int32 indices")

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
        for key, value in self._cache.items():
            if key in ("transposed",):
                continue
            g._cache[key] = tuple(move(v) for v in value) if isinstance(value, tuple) else move(value)
        return g

    def with_edge_weight(self, edge_weight: Optional[Tensor]) -> "Graph":
        """The same structure (and structural caches) with other edge values, given in
        internal order."""
        edge_weight = _check_edge_weight(edge_weight, self.num_edges, self.device)
        g = Graph(self.rowptr, self.col, self.num_src, edge_weight, self.perm, validate=False)
        for key in ("row", "transpose", "in_degree", "out_degree"):
            if key in self._cache:
                g._cache[key] = self._cache[key]
        return g

    def _cached(self, key, fn):
        value = self._cache.get(key)
        if value is None:
            value = fn()
            self._cache[key] = value
        return value

    def _compute_row(self) -> Tensor:
        counts = self.rowptr[1:].long() - self.rowptr[:-1].long()
        return torch.repeat_interleave(
            torch.arange(self.num_dst, device=self.device, dtype=torch.int64),
            counts,
            output_size=self.num_edges,
        )

    def _compute_transpose(self):
        rowptr_t, col_t, perm_t = _sorted_csr(self.col, self.row, self.num_src, self.num_dst)
        return rowptr_t.to(self.col.dtype), col_t.to(self.col.dtype).contiguous(), perm_t

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


def _float_values(values: Optional[Tensor]) -> Optional[Tensor]:
    """Sparse values as edge weights; structural (bool/int all-ones) values are dropped."""
    if values is None or values.numel() == 0:
        return None
    if values.is_floating_point():
        return values.contiguous()
    if bool((values == 1).all()):
        return None
    return values.to(torch.get_default_dtype())


def _check_edge_weight(edge_weight: Optional[Tensor], num_edges: int, device) -> Optional[Tensor]:
    if edge_weight is None:
        return None
    if not isinstance(edge_weight, Tensor):
        raise TypeError(f"edge_weight must be a tensor, got {type(edge_weight).__name__}")
    if not edge_weight.is_floating_point():
        raise TypeError(f"edge_weight must be a floating tensor, got {edge_weight.dtype}")
    if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
        raise ValueError(
            f"edge_weight must have shape [{num_edges}], got {list(edge_weight.shape)}"
        )
    if edge_weight.device != torch.device(device):
        raise ValueError(f"edge_weight is on {edge_weight.device}, the graph on {device}")
    return edge_weight


def _validate_csr(rowptr: Tensor, col: Tensor, num_src: int, edge_weight) -> None:
    _check_index_tensor("rowptr", rowptr)
    _check_index_tensor("col", col)
    if rowptr.dim() != 1 or rowptr.numel() < 1:
        raise ValueError("rowptr must be a 1-D tensor with at least one entry")
    if col.dim() != 1:
        raise ValueError(f"col must be 1-D, got shape {list(col.shape)}")
    if rowptr.dtype != col.dtype:
        raise TypeError(f"rowptr ({rowptr.dtype}) and col ({col.dtype}) must share a dtype")
    if rowptr.device != col.device:
        raise ValueError(f"rowptr is on {rowptr.device} but col on {col.device}")
    if num_src < 0:
        raise ValueError(f"num_src must be non-negative, got {num_src}")
    if int(rowptr[0]) != 0:
        raise ValueError(f"malformed CSR: rowptr[0] must be 0, got {int(rowptr[0])}")
    if int(rowptr[-1]) != col.numel():
        raise ValueError(
            f"malformed CSR: rowptr[-1] = {int(rowptr[-1])} but col has {col.numel()} entries"
        )
    if rowptr.numel() > 1 and bool((rowptr[1:] < rowptr[:-1]).any()):
        raise ValueError("malformed CSR: rowptr must be non-decreasing")
    _check_range("col", col, num_src)
    _check_edge_weight(edge_weight, col.numel(), rowptr.device)
