"""The Alignahead++ loss of one student against its (detached) peers.

    loss = task + ds_weight * mean(aux task losses)
                + structure_weight * mean_{peers, pairs} structure_kl(h_s[l], h_p[m])
                + feature_weight   * mean_{peers, pairs} hint(A h_s[l], h_p[m])

* task: cross-entropy on the training nodes (BCE-with-logits for multi-label, PPI).
* structure: ``fastalign.ops.structure_kl`` = KL(peer || student) of the neighbour
  softmaxes of a per-edge kernel, averaged over destination nodes (default l1, sigma 100;
  ``sigma="auto"``: each layer's kernel at its own mean edge distance, ``ops.edge_scale``).
* feature alignment (our choice, ``fastalign.nn.FeatureAlignLoss``; the paper does not
  publish its form): a FitNets-style
  hint loss, ``mean_{i,d} (A h_s - h_p)_{i,d}^2`` over all nodes, with ``A`` a learnable
  bias-free linear adapter owned by the student on every aligned pair (student width ->
  peer width; identity-initialised where the widths are equal). Why this form:
  (1) the aligned layers sit at different depths and widths (ReLU hidden units vs
  logits), and a learnable map lets the student match the peer's *information* without
  forcing its own layer into the peer layer's basis or scale; (2) its gradient is linear
  in the error, so it is gentle at initialisation, when all activations are small. We
  first tried scale-free forms and dropped them after Cora runs: MSE of L2-normalised
  vectors (= 2 - 2 cos) has a 1/||h|| gradient that swamped the task loss early
  (validation accuracy near 25% after 40 epochs), and MSE divided by the peer's energy
  exploded when a peer layer was near zero (dead ReLUs), killing both students;
  (3) it acts on all nodes, labelled or not, which is where distillation helps in
  semi-supervised node classification; (4) the peer side is a detached target, so the
  adapter cannot shrink the loss by collapsing it. Mean over pairs and peers keeps each
  term's scale independent of depth and of K.
* Peers are always detached here: gradients reach only the student being updated.
* ``feature_pairs="hidden"`` keeps the hints off the pairs that touch the logits layer
  (deep students: a hint from the logits to the peer's first hidden layer, the ``ahead``
  wrap, pulled the first layer towards class scores); the structure term still covers
  every pair.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..graph import Graph
from ..nn import FeatureAlignLoss
from .options import FEATURE_PAIRS, LossWeights  # noqa: F401  (defined torch-free)


def hint_pairs(pairs: Sequence[Tuple[int, int]], num_layers: int, which: str) -> List[Tuple[int, int]]:
    """The aligned pairs that get a feature hint: all, or those between hidden layers only
    (indexes < num_layers - 1; a 2-layer student then has none)."""
    if which == "all":
        return list(pairs)
    return [(l, m) for l, m in pairs if l < num_layers - 1 and m < num_layers - 1]


def task_loss(logits: Tensor, y: Tensor, mask: Tensor, multilabel: bool) -> Tensor:
    """Mean cross-entropy (multilabel: binary cross-entropy, averaged over the classes)
    over the labelled nodes ``mask``; 0, with a gradient, when none is labelled.

    The mask weights per-node losses instead of selecting rows: selecting by a boolean
    mask (or testing ``mask.any()``) reads a count back to the host, a synchronisation
    per step on a GPU. The labels of unlabelled nodes are never read (they may be
    anything, NaN included)."""
    if multilabel:
        target = torch.where(mask.unsqueeze(1), y.to(logits.dtype), torch.zeros((), dtype=logits.dtype,
                                                                            device=logits.device))
        per_node = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    else:
        per_node = F.cross_entropy(logits, torch.where(mask, y, torch.zeros_like(y)), reduction="none")
    labelled = mask.to(per_node.dtype)
    return (per_node * labelled).sum() / labelled.sum().clamp(min=1.0)


class FeatureAdapters(nn.Module):
    """The feature-alignment terms of one student: a :class:`fastalign.nn.FeatureAlignLoss`
    (the hint loss and its learnable adapter, student width -> peer width,
    identity-initialised where the widths are equal) per aligned layer pair."""

    def __init__(self, widths: Sequence[int], pairs: Sequence[Tuple[int, int]]):
        super().__init__()
        self.maps = nn.ModuleDict(
            {self._key(l, m): FeatureAlignLoss(widths[l], widths[m]) for l, m in pairs}
        )

    @staticmethod
    def _key(l: int, m: int) -> str:
        return f"{l}_{m}"

    def covers(self, l: int, m: int) -> bool:
        """Whether the pair (l, m) has a hint (see ``hint_pairs``)."""
        return self._key(l, m) in self.maps

    def forward(self, h_student: Tensor, h_peer: Tensor, l: int, m: int) -> Tensor:
        return self.maps[self._key(l, m)](h_student, h_peer)


def alignment_losses(
    graph: Graph,
    hiddens: List[Tensor],
    peers: List[List[Tensor]],
    pairs: Sequence[Tuple[int, int]],
    adapters: Optional[FeatureAdapters],
    w: LossWeights,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(structure, feature) terms averaged over peers and pairs, and the structure term
    of each pair averaged over peers (``[len(pairs)]``, empty without one); peers are
    detached."""
    zero = hiddens[0].new_zeros(())
    if not peers or not pairs:
        return zero, zero, hiddens[0].new_zeros(0)
    s_terms, f_terms = [], []
    # sigma="auto": each layer's scale is found once per step (not once per pair and
    # peer) and divided out here; structure_kl then runs at sigma 1, as it does with "auto"
    auto = w.structure > 0 and w.sigma == "auto"
    sigma = 1.0 if auto else w.sigma

    def for_structure(h: List[Tensor], used):
        if not auto:
            return h
        return {i: h[i] / ops.edge_scale(graph, h[i], w.kernel, backend=backend) for i in sorted(used)}

    student = for_structure(hiddens, {l for l, _ in pairs})
    for peer in peers:
        targets = [h.detach() for h in peer]
        peer_side = for_structure(targets, {m for _, m in pairs})
        for l, m in pairs:
            if w.structure > 0:
                s_terms.append(
                    ops.structure_kl(graph, student[l], peer_side[m], kernel=w.kernel, tau=w.tau,
                                     sigma=sigma, backend=backend)
                )
            if w.feature > 0 and adapters is not None and adapters.covers(l, m):
                f_terms.append(adapters(hiddens[l], targets[m], l, m))
    s = torch.stack(s_terms).mean() if s_terms else zero
    f = torch.stack(f_terms).mean() if f_terms else zero
    # s_terms is peer-major: one row of pairs per peer
    by_pair = (torch.stack(s_terms).detach().view(len(peers), len(pairs)).mean(0) if s_terms
               else hiddens[0].new_zeros(0))
    return s, f, by_pair


def student_loss(batch, out, peers, pairs, adapters, w: LossWeights, multilabel: bool, backend=None,
                 align_scale: float = 1.0):
    """Total loss of one student and its parts (detached scalars, for logging).
    ``align_scale`` multiplies the structure and feature terms (the warm-up ramp)."""
    mask = batch.masks["train"]
    task = task_loss(out.logits, batch.y, mask, multilabel)
    ds = out.logits.new_zeros(())
    if out.aux_logits and w.deep_supervision > 0:
        ds = torch.stack([task_loss(a, batch.y, mask, multilabel) for a in out.aux_logits]).mean()
    s, f, s_by_pair = alignment_losses(batch.graph, out.hiddens, peers, pairs, adapters, w, backend)
    total = task + w.deep_supervision * ds + align_scale * (w.structure * s + w.feature * f)
    parts = {"task": task.detach(), "ds": ds.detach(), "structure": s.detach(), "feature": f.detach(),
             "structure_by_pair": s_by_pair}
    return total, parts
