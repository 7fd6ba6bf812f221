"""Modules: a PyG-compatible GCNConv and the alignment losses, for anyone's training loop."""

from .feature_align_loss import FeatureAlignLoss
from .gcn_conv import GCNConv
from .structure_align_loss import StructureAlignLoss

__all__ = ["GCNConv", "StructureAlignLoss", "FeatureAlignLoss"]
