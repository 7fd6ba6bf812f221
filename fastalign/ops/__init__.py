"""fastalign's ops: autograd-capable torch.library custom ops over a Graph.

Each op module holds the custom op(s), their fake kernels, the autograd formula and the
public function; backends implement the numeric work (fastalign.backends).
"""

from .edge_similarity import edge_scale, edge_similarity
from .gat_aggregate import gat_aggregate
from .gcn_aggregate import gcn_aggregate, gcn_norm_state, gcn_propagation
from .linear import linear
from .edge_softmax import edge_softmax, local_structure
from .spmm import spmm, spmm_propagation
from .structure_kl import structure_kl

__all__ = [
    "spmm",
    "spmm_propagation",
    "gcn_aggregate",
    "gcn_propagation",
    "gat_aggregate",
    "gcn_norm_state",
    "linear",
    "edge_similarity",
    "edge_scale",
    "edge_softmax",
    "local_structure",
    "structure_kl",
]
