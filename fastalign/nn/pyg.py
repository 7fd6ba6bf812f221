"""Bringing existing PyG code onto fastalign's layers.

* :func:`convert` swaps the PyG convs of a built model for fastalign's, carrying their
  parameters (in place, like Liger-Kernel's model patching), and says which layers it
  left alone and why.
* :func:`patch_pyg` makes ``torch_geometric.nn.GCNConv`` (and SAGEConv, GraphConv,
  GINConv, GATConv) build fastalign layers, for code that constructs its models afterwards;
  :func:`unpatch_pyg` undoes it. A construction fastalign cannot honour (``aggr="lstm"``,
  a lazy GCNConv, ...) builds PyG's own layer instead.

Both also let PyG's ``to_hetero`` see fastalign's layers as message-passing layers.
"""

from __future__ import annotations

import sys
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from .gat_conv import GATConv
from .gcn_conv import GCNConv
from .gin_conv import GINConv
from .graph_conv import GraphConv
from .sage_conv import SAGEConv

DROP_INS = {
    "GCNConv": GCNConv, "SAGEConv": SAGEConv, "GraphConv": GraphConv, "GINConv": GINConv, "GATConv": GATConv,
}

# PyG's MessagePassing hooks a subclass may override; fastalign's layers never call them
_HOOKS = ("message", "aggregate", "message_and_aggregate", "update", "propagate")


def _pyg_classes() -> Dict[str, type]:
    try:
        import torch_geometric.nn as pyg_nn
    except ImportError as e:
        raise ImportError("fastalign.nn.convert / patch_pyg need torch_geometric installed") from e
    originals = _ORIGINALS or {}
    return {name: originals.get(name, getattr(pyg_nn, name)) for name in DROP_INS}


_FX_ORIGINAL = None


def _recognise_in_fx() -> None:
    """Let PyG's FX passes (``to_hetero``, ``to_hetero_with_bases``) treat fastalign's
    layers as the message-passing layers they are: they look for ``MessagePassing``
    instances, which fastalign's layers are not. Idempotent; other modules unaffected."""
    global _FX_ORIGINAL
    try:
        import torch_geometric.nn.fx as pyg_fx
    except ImportError:  # pragma: no cover - an old PyG without the FX passes
        return
    if _FX_ORIGINAL is not None:
        return
    original = pyg_fx.is_message_passing_op
    ours = tuple(DROP_INS.values())

    def is_message_passing_op(module, op, target):
        if op == "call_module" and isinstance(pyg_fx.get_submodule(module, target), ours):
            return True
        return original(module, op, target)

    pyg_fx.is_message_passing_op = is_message_passing_op
    _FX_ORIGINAL = original
    try:  # to_hetero_with_bases wraps MessagePassing modules only; it needs message hooks,
        # which fastalign's layers refuse with a clear error (not a shape error later)
        from torch_geometric.nn import to_hetero_with_bases_transformer as with_bases
    except ImportError:  # pragma: no cover
        return
    transformer = with_bases.ToHeteroWithBasesTransformer
    wrap = transformer.init_submodule

    def init_submodule(self, module, target):
        if isinstance(module, ours):
            return with_bases.HeteroBasisConv(module, len(self.metadata[1]), self.num_bases)
        return wrap(self, module, target)

    transformer.init_submodule = init_submodule


def convert(model: torch.nn.Module, *, backend: Optional[str] = None, quiet: bool = False) -> torch.nn.Module:
    """Replace, in place, every PyG ``GCNConv``/``SAGEConv``/``GraphConv``/``GINConv``/``GATConv`` of
    ``model`` by fastalign's layer with the same options and parameters. Layers that
    cannot be converted (another aggregation, a subclass, an uninitialised lazy layer,
    a message-passing layer fastalign has no drop-in for, such as ``GATv2Conv``) stay as
    they are; a warning names each with the reason (``quiet=True``: no warning).
    Returns ``model`` (a PyG conv passed itself is returned converted).

    The list of what was left is ``model.fastalign_skipped``: ``[(name, reason), ...]``.
    """
    pyg = _pyg_classes()
    _recognise_in_fx()
    from torch_geometric.nn import MessagePassing

    by_class = {cls: DROP_INS[name] for name, cls in pyg.items()}
    skipped: List[Tuple[str, str]] = []

    def swap(module: torch.nn.Module, name: str) -> torch.nn.Module:
        ours = by_class.get(type(module))
        if ours is None:
            subclass = next((c for c in pyg.values() if isinstance(module, c)), None)
            if subclass is not None:
                skipped.append((name or type(module).__name__,
                                f"{type(module).__name__} subclasses PyG's {subclass.__name__}"))
            elif isinstance(module, MessagePassing):  # GATv2Conv, GCN2Conv, a user's own layer...
                skipped.append((name or type(module).__name__,
                                f"fastalign has no drop-in for {type(module).__name__} (converted: "
                                f"{', '.join(DROP_INS)})"))
            return module
        try:
            return ours.from_pyg(module, backend=backend)
        except (TypeError, ValueError) as e:
            skipped.append((name or type(module).__name__, str(e)))
            return module

    root = swap(model, "")
    if root is model:
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                new = swap(child, full)
                if new is not child:
                    setattr(parent, child_name, new)
    if skipped and not quiet:
        warnings.warn(
            "fastalign.nn.convert left these layers as PyG's: "
            + "; ".join(f"{n} ({why})" for n, why in skipped),
            stacklevel=2,
        )
    try:
        root.fastalign_skipped = skipped
    except AttributeError:  # pragma: no cover - a module that refuses attributes
        pass
    return root


class _EitherMeta(type(torch.nn.Module)):
    """isinstance(layer, patched GCNConv) holds for fastalign's and PyG's layers alike."""

    def __instancecheck__(cls, obj):
        return type.__instancecheck__(cls, obj) or isinstance(obj, cls._fastalign_either)

    def __subclasscheck__(cls, sub):
        return type.__subclasscheck__(cls, sub) or issubclass(sub, cls._fastalign_either)


def _patched(name: str, theirs: type) -> type:
    ours = DROP_INS[name]

    def __new__(cls, *args, **kwargs):
        if cls is patched:
            try:
                return ours(*args, **kwargs)
            except (TypeError, ValueError):
                # an option fastalign does not offer (or a bad one: PyG then says so)
                return theirs(*args, **kwargs)
        return torch.nn.Module.__new__(cls)

    def __init_subclass__(cls, **kwargs):
        overridden = [h for h in _HOOKS if h in cls.__dict__]
        if overridden:
            warnings.warn(
                f"{cls.__name__} overrides {', '.join(overridden)} of a patched {name}: "
                f"fastalign's {name} does not call MessagePassing hooks (subclass PyG's "
                "class, from fastalign.nn.pyg.original(name), to keep them)",
                stacklevel=2,
            )

    patched = _EitherMeta(
        name, (ours,),
        {
            "__new__": __new__, "__init_subclass__": classmethod(__init_subclass__),
            "__module__": ours.__module__, "__qualname__": name,
            "_fastalign_either": (ours, theirs), "__doc__": ours.__doc__,
        },
    )
    return patched


_ORIGINALS: Optional[Dict[str, type]] = None
_PATCHED_SITES: List[Tuple[object, str, type]] = []


def patch_pyg() -> None:
    """Make ``torch_geometric.nn.{GCNConv, SAGEConv, GraphConv, GINConv, GATConv}`` (and every
    loaded PyG module's reference to them, ``torch_geometric.nn.models``' included)
    build fastalign's layers. Idempotent; :func:`unpatch_pyg` restores PyG's."""
    global _ORIGINALS
    if _ORIGINALS is not None:
        return
    originals = _pyg_classes()
    _recognise_in_fx()
    replacements = {name: _patched(name, cls) for name, cls in originals.items()}
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("torch_geometric"):
            continue
        for name, cls in originals.items():
            if getattr(module, name, None) is cls:
                setattr(module, name, replacements[name])
                _PATCHED_SITES.append((module, name, cls))
    _ORIGINALS = originals


def unpatch_pyg() -> None:
    """Undo :func:`patch_pyg` (layers already built stay what they are)."""
    global _ORIGINALS
    for module, name, cls in reversed(_PATCHED_SITES):
        setattr(module, name, cls)
    _PATCHED_SITES.clear()
    _ORIGINALS = None


def original(name: str) -> type:
    """PyG's own class ``name``, patched or not."""
    return _pyg_classes()[name]
