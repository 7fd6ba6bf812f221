"""Modules: PyG-compatible convolutions (GCNConv, SAGEConv, GraphConv, GINConv, GATConv) on
fastalign's kernels, their projection (Linear), and the alignment losses, for anyone's
training loop."""

from .drop_in import Linear
from .feature_align_loss import FeatureAlignLoss
from .gat_conv import GATConv
from .gcn_conv import GCNConv
from .gin_conv import GINConv
from .graph_conv import GraphConv
from .pyg import convert, patch_pyg, unpatch_pyg
from .sage_conv import SAGEConv
from .structure_align_loss import StructureAlignLoss

__all__ = [
    "GCNConv", "SAGEConv", "GraphConv", "GINConv", "GATConv", "convert", "patch_pyg", "unpatch_pyg",
    "StructureAlignLoss", "FeatureAlignLoss", "Linear",
]
