"""fastalign: sparse kernels for GNN aggregation and structural knowledge distillation.

The public names load on first use (PEP 562), so that ``import fastalign`` and the
``fastalign`` command's ``--help`` do not pay for importing torch; any use of an op,
``fastalign.ops`` or ``fastalign.nn`` registers the ``torch.ops.fastalign`` operators.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

__version__ = "0.1.0"


class _TorchBeforeExtensions(importlib.abc.MetaPathFinder):
    """The compiled extensions link against torch's shared libraries, which only
    ``import torch`` loads: importing ``fastalign._C`` or ``fastalign._C_cuda`` first
    imports torch (then lets the usual finders find the extension)."""

    def find_spec(self, name, path=None, target=None):
        if name in ("fastalign._C", "fastalign._C_cuda"):
            import torch  # noqa: F401
        return None


if not any(isinstance(f, _TorchBeforeExtensions) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchBeforeExtensions())

# public name -> the module that defines it
_EXPORTS = {
    "Graph": "fastalign.graph",
    "spmm": "fastalign.ops",
    "gcn_aggregate": "fastalign.ops",
    "gat_aggregate": "fastalign.ops",
    "edge_similarity": "fastalign.ops",
    "edge_scale": "fastalign.ops",
    "edge_softmax": "fastalign.ops",
    "local_structure": "fastalign.ops",
    "structure_kl": "fastalign.ops",
    "patch_pyg": "fastalign.nn.pyg",
    "unpatch_pyg": "fastalign.nn.pyg",
}
_SUBPACKAGES = ("backends", "ops", "nn", "distill", "bench", "datasets", "validation", "graph", "cli", "info")

__all__ = ["Graph", "backends", "ops", "nn", "spmm", "gcn_aggregate", "gat_aggregate", "edge_similarity", "edge_scale", "edge_softmax",
           "local_structure", "structure_kl", "patch_pyg", "unpatch_pyg", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"fastalign.{name}")
    raise AttributeError(f"module 'fastalign' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
