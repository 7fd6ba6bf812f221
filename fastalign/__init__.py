"""fastalign: sparse kernels for GNN aggregation and structural knowledge distillation."""

from . import backends, ops
from .graph import Graph
from .ops import edge_similarity, edge_softmax, gcn_aggregate, local_structure, spmm, structure_kl

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "backends",
    "ops",
    "spmm",
    "gcn_aggregate",
    "edge_similarity",
    "edge_softmax",
    "local_structure",
    "structure_kl",
]
