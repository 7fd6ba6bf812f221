"""Alignahead++ for models you already have: PyG models (``torch_geometric.nn.models.GCN``,
``GraphSAGE``, ``GAT``, ``GIN``), fastalign's drop-ins or any module whose layers take a
graph, trained together in your own loop.

:class:`Alignahead` puts a forward hook on the named layers of each model; after the
models' forwards, :meth:`Alignahead.loss` turns what the hooks saw into the
distillation terms of each student against its (detached) peers:

    loss_k = ds_weight        * mean_l CE(head_l(h_k[l]), y)             (l < L_k - 1)
           + structure_weight * mean_{peers j, pairs (l, m)} structure_kl(h_k[l], h_j[m])
           + feature_weight   * mean_{peers j, pairs (l, m)} hint(A h_k[l], h_j[m])

with the pairs of :func:`fastalign.distill.layer_pairs` (``ahead``: each layer with the
peer's next one, peers of another depth read at the same relative depth). The task loss
stays yours. The deep-supervision heads (a linear classifier per intermediate layer) and
the hint adapters are parameters of the Alignahead module: give them to the optimizer.

Two modes, as in the paper:

* simultaneous: run every model, then ``align.loss(edge_index, y, mask)`` sums every
  student's terms against the others' detached outputs; one backward, one step;
* alternating: for student k, run the peers under ``torch.no_grad()`` and student k, then
  ``align.loss(edge_index, y, mask, student=k)``; step student k; next k.

A hooked layer that returns a tuple (GATConv with ``return_attention_weights``) is read
at its first element. What the hooks hold is cleared by every ``loss`` call, so a layer
that did not run since is an error rather than a stale value.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..graph import Graph
from ..nn import FeatureAlignLoss
from .losses import task_loss
from .options import LossWeights
from .pairing import layer_pairs


def graph_layer_names(model: nn.Module) -> List[str]:
    """The names of a model's message-passing layers (PyG's ``MessagePassing`` or
    fastalign's drop-ins), in registration order; layers nested in another such layer
    are not counted."""
    from ..nn.drop_in import DropInConv

    kinds: Tuple[type, ...] = (DropInConv,)
    try:
        from torch_geometric.nn.conv import MessagePassing

        kinds = kinds + (MessagePassing,)
    except ImportError:
        pass
    names: List[str] = []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def _out_width(module: nn.Module) -> Optional[int]:
    """A layer's output width from what it says: ``out_channels`` (times ``heads`` when
    concatenated), else the last linear map of its network (GINConv's ``nn``)."""
    out = getattr(module, "out_channels", None)
    if isinstance(out, int) and out > 0:
        heads = getattr(module, "heads", 1)
        return out * heads if getattr(module, "concat", False) and isinstance(heads, int) else out
    inner = getattr(module, "nn", None)
    if isinstance(inner, nn.Module):
        for m in reversed(list(inner.modules())):  # torch's Linear, PyG's Linear or MLP
            width = getattr(m, "out_features", getattr(m, "out_channels", None))
            if isinstance(width, int) and width > 0:
                return width
    return None


class Alignahead(nn.Module):
    """Online distillation between ``models`` through forward hooks.

    Args:
        models: the students (two or more ``nn.Module``); they are not wrapped or changed,
            only hooked (:meth:`remove` takes the hooks off).
        layers: per model, the names of the layers whose outputs align (``named_modules``
            names, e.g. ``["convs.0", "convs.1"]``), the last one the logits; default: every
            message-passing layer of the model.
        num_classes: the classes, for the deep-supervision heads (``None``: no heads).
        align: ``ahead`` (the paper), ``behind``, ``one-to-one``.
        example: ``(x, edge_index)`` run once through every model to learn the layers'
            widths, where the layers do not say them (``out_channels``, ``heads``).
        multilabel: binary cross-entropy for the heads (PPI) instead of cross-entropy.
        structure_weight, feature_weight, ds_weight, kernel, sigma, tau: the loss
            weights and the similarity kernel (:class:`fastalign.distill.LossWeights`).
        backend: the kernels' backend (``None``: automatic).
    """

    def __init__(self, models: Sequence[nn.Module], layers: Optional[Sequence[Sequence[str]]] = None,
                 num_classes: Optional[int] = None, align: str = "ahead", *,
                 example: Optional[Tuple[Tensor, Tensor]] = None, multilabel: bool = False,
                 structure_weight: float = 1.0, feature_weight: float = 1.0, ds_weight: float = 0.5,
                 kernel: str = "l1", sigma: Union[float, str] = 100.0, tau: float = 1.0,
                 backend: Optional[str] = None):
        super().__init__()
        models = list(models)
        if len(models) < 2 or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("models must be two or more torch.nn.Module students")
        self.weights = LossWeights(structure=structure_weight, feature=feature_weight,
                                   deep_supervision=ds_weight, kernel=kernel, sigma=sigma, tau=tau)
        self.multilabel, self.backend = bool(multilabel), backend
        names = [graph_layer_names(m) for m in models] if layers is None else [list(n) for n in layers]
        if len(names) != len(models):
            raise ValueError(f"layers: {len(names)} name lists for {len(models)} models")
        self._modules_of: List[List[nn.Module]] = []
        for k, (model, wanted) in enumerate(zip(models, names)):
            if not wanted:
                raise ValueError(f"model {k} ({type(model).__name__}): no layers to align (pass layers=)")
            table = dict(model.named_modules())
            missing = [n for n in wanted if n not in table]
            if missing:
                known = [n for n in table if n][:12]
                raise ValueError(f"model {k} ({type(model).__name__}) has no submodule {missing[0]!r}; "
                                 f"its submodules include {known}")
            self._modules_of.append([table[n] for n in wanted])
        self.layer_names = names
        self._models = models  # not registered: the Alignahead module owns only its heads and adapters
        self._seen: List[Dict[int, Tensor]] = [{} for _ in models]
        self._hooks = [module.register_forward_hook(self._catcher(k, i))
                       for k, mods in enumerate(self._modules_of) for i, module in enumerate(mods)]
        widths = self._widths(example)
        self.widths = widths
        self.pairs = {(k, j): layer_pairs(len(widths[k]), align, len(widths[j]))
                      for k in range(len(models)) for j in range(len(models)) if j != k}
        self.heads = nn.ModuleList(
            nn.ModuleList(nn.Linear(w, num_classes) for w in ws[:-1]) if num_classes else nn.ModuleList()
            for ws in widths)
        self.adapters = nn.ModuleDict({
            f"{k}_{j}_{l}_{m}": FeatureAlignLoss(widths[k][l], widths[j][m])
            for (k, j), pairs in self.pairs.items() for l, m in pairs
        } if self.weights.feature > 0 else {})

    # ------------------------------------------------------------------ hooks
    def _catcher(self, k: int, i: int):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, Tensor):
                raise TypeError(f"layer {self.layer_names[k][i]!r} of model {k} returned "
                                f"{type(output).__name__}, not a tensor")
            self._seen[k][i] = out
        return hook

    def remove(self) -> None:
        """Takes the hooks off the models."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _widths(self, example) -> List[List[int]]:
        widths = [[_out_width(m) for m in mods] for mods in self._modules_of]
        if all(w is not None for ws in widths for w in ws):
            return widths
        if example is None:
            k, i = next((k, i) for k, ws in enumerate(widths) for i, w in enumerate(ws) if w is None)
            raise ValueError(f"layer {self.layer_names[k][i]!r} of model {k} does not say its output width: "
                             "pass example=(x, edge_index) to run the models once")
        with torch.no_grad():
            for model in self._models:
                model(*example)
        seen = self.outputs()
        return [[h.size(-1) for h in hs] for hs in seen]

    def outputs(self, student: Optional[int] = None):
        """What the hooks saw since the last :meth:`loss` (all models, or one); clears it."""
        keys = range(len(self._models)) if student is None else [student]
        out = []
        for k in keys:
            missing = [self.layer_names[k][i] for i in range(len(self._modules_of[k])) if i not in self._seen[k]]
            if missing:
                raise RuntimeError(f"layer {missing[0]!r} of model {k} has not run since the last loss() call: "
                                   "run the models' forwards first")
            out.append([self._seen[k][i] for i in range(len(self._modules_of[k]))])
        for seen in self._seen:
            seen.clear()
        return out if student is None else out[0]

    # ------------------------------------------------------------------ losses
    def loss(self, graph: Union[Graph, Tensor], y: Optional[Tensor] = None, mask: Optional[Tensor] = None,
             student: Optional[int] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The distillation terms from the last forwards. ``graph``: the ``edge_index``
        (or :class:`fastalign.Graph`) the models ran on; ``y``, ``mask``: labels and
        the labelled nodes, for the deep-supervision heads (without them, no heads);
        ``student``: None for every student (simultaneous), or k (alternating: the
        others' outputs are targets only). Returns ``(loss, parts)``, ``parts`` the
        detached mean structure, feature and deep-supervision terms."""
        hs = self.outputs()
        g = self._graph(graph, hs[0][0])
        students = range(len(hs)) if student is None else [student]
        if student is not None and not 0 <= student < len(hs):
            raise ValueError(f"student must be in [0, {len(hs)}), got {student}")
        w = self.weights
        total = hs[0][0].new_zeros(())
        parts = {"structure": [], "feature": [], "deep_supervision": []}
        for k in students:
            s_terms, f_terms = [], []
            for j in range(len(hs)):
                if j == k:
                    continue
                for l, m in self.pairs[(k, j)]:
                    target = hs[j][m].detach()
                    if w.structure > 0:  # structure_kl scales each side itself with sigma="auto"
                        s_terms.append(ops.structure_kl(g, hs[k][l], target, kernel=w.kernel, tau=w.tau,
                                                        sigma=w.sigma, backend=self.backend))
                    if w.feature > 0:
                        f_terms.append(self.adapters[f"{k}_{j}_{l}_{m}"](hs[k][l], target))
            s = torch.stack(s_terms).mean() if s_terms else total
            f = torch.stack(f_terms).mean() if f_terms else total
            ds = total
            if len(self.heads[k]) and y is not None and w.deep_supervision > 0:
                where = mask if mask is not None else torch.ones_like(y if y.dim() == 1 else y[:, 0], dtype=torch.bool)
                ds = torch.stack([task_loss(head(h), y, where, self.multilabel)
                                  for head, h in zip(self.heads[k], hs[k][:-1])]).mean()
            total = total + w.structure * s + w.feature * f + w.deep_supervision * ds
            for name, v in (("structure", s), ("feature", f), ("deep_supervision", ds)):
                parts[name].append(v.detach())
        return total, {name: torch.stack(v).mean() for name, v in parts.items()}

    def _graph(self, graph, like: Tensor) -> Graph:
        if isinstance(graph, Graph):
            return graph
        if not isinstance(graph, Tensor) or graph.dim() != 2 or graph.size(0) != 2:
            raise TypeError("graph must be the models' edge_index ([2, E] tensor) or a fastalign.Graph")
        from ..nn.drop_in import graph_from_edge_index

        n = like.size(0)
        return graph_from_edge_index(graph, graph, n, n, "source_to_target")
