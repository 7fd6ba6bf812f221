"""SparseFeatures: a sparse node-feature matrix held as a bipartite Graph.

Row = node, source = feature index, edge weight = value, so that input dropout touches
only the non-zeros and the first projection is an spmm. Bag-of-words inputs (Cora: 1.3%
non-zero) make the dense path spend most of an epoch drawing dropout masks for zeros.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .graph import Graph


class SparseFeatures:
    """A ``[nodes, features]`` matrix as the bipartite Graph of its non-zeros."""

    def __init__(self, graph: Graph, values: Tensor):
        self.graph, self.values = graph, values

    @classmethod
    def from_dense(cls, x: Tensor) -> "SparseFeatures":
        node, feat = x.nonzero(as_tuple=True)
        g = Graph.from_edge_index(torch.stack([feat, node]), num_nodes=(x.size(1), x.size(0)))
        return cls(g, x[node, feat][g.perm] if g.perm is not None else x[node, feat])

    def row_block(self, start: int, stop: int) -> Tuple["SparseFeatures", Tensor]:
        """Nodes ``start .. stop-1`` as SparseFeatures over the features they use, and the
        ids of those features (see :meth:`Graph.row_block`)."""
        block, feats = self.graph.row_block(start, stop)
        lo, hi = int(self.graph.rowptr[start]), int(self.graph.rowptr[stop])
        return SparseFeatures(block, self.values[lo:hi]), feats

    def to(self, device) -> "SparseFeatures":
        return SparseFeatures(self.graph.to(device), self.values.to(device))

    def to_dense(self) -> Tensor:
        """The ``[nodes, features]`` matrix."""
        g = self.graph
        out = torch.zeros(g.num_dst, g.num_src, device=g.device, dtype=self.values.dtype)
        return out.index_put_((g.row, g.col.long()), self.values)

    def dropout(self, p: float, training: bool) -> "SparseFeatures":
        return SparseFeatures(self.graph, F.dropout(self.values, p, training))

    def linear(self, weight: Tensor, backend: Optional[str]) -> Tensor:
        """``x @ weight.t()``."""
        return ops.spmm(self.graph, weight.t().contiguous(), "sum", edge_weight=self.values, backend=backend)
