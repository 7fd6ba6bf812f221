"""FeatureAlignLoss: pull a student's node features towards a peer's."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class FeatureAlignLoss(torch.nn.Module):
    r"""Feature alignment between two students' node embeddings (fastalign's choice).

    The Alignahead++ paper does not publish its feature-alignment term, so this is
    fastalign's documented choice::

        z_s = normalize(adapter(h_student))      # L2 over features, per node
        z_p = normalize(h_peer)
        loss_i = || z_s[i] - z_p[i] ||_2^2       # = 2 - 2 cos(adapter(h_s[i]), h_p[i])
        loss = mean_i loss_i                     # (or sum / none), over nodes

    * ``adapter`` is a learnable ``torch.nn.Linear(in_student, in_peer, bias=bias)``
      (PyTorch's default initialisation) when the widths differ, and the identity when
      they are equal (``in_peer=None`` means equal). It maps the *student* into the
      peer's space; the peer is the target. Its parameters belong to this module: add
      ``loss_fn.parameters()`` to the optimiser of the student.
    * Normalising makes the term scale-free (each node contributes a value in [0, 4])
      so that it does not fight the classification loss over feature norms; pass
      ``normalize=False`` for a plain per-node squared error between
      ``adapter(h_student)`` and ``h_peer``.
    * The reduction is over nodes (the per-node value sums over features), not over
      every element as ``F.mse_loss`` would.

    Args:
        in_student: width of the student's features.
        in_peer: width of the peer's features (default: ``in_student``).
        bias: give the adapter a bias.
        normalize: L2-normalise both sides first (default ``True``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one value per node).
        detach_peer: detach ``h_peer`` so that no gradient reaches the peer.
        eps: the norm floor of the normalisation.

    ``forward(h_student, h_peer, mask=None)``: ``[N, in_student]`` and ``[N, in_peer]``;
    ``mask`` (``[N]`` bool) restricts the loss to some nodes.

    Example::

        >>> import torch
        >>> from fastalign.nn import FeatureAlignLoss
        >>> loss_fn = FeatureAlignLoss(in_student=16, in_peer=32)
        >>> h_s = torch.randn(5, 16, requires_grad=True)
        >>> h_p = torch.randn(5, 32)
        >>> loss = loss_fn(h_s, h_p)
        >>> loss.backward()               # reaches h_s and loss_fn.adapter.weight
    """

    def __init__(
        self,
        in_student: int,
        in_peer: Optional[int] = None,
        bias: bool = False,
        normalize: bool = True,
        reduction: str = "mean",
        detach_peer: bool = False,
        eps: float = 1e-8,
    ):
        super().__init__()
        in_peer = in_student if in_peer is None else in_peer
        for name, value in (("in_student", in_student), ("in_peer", in_peer)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.in_student = in_student
        self.in_peer = in_peer
        self.normalize = bool(normalize)
        self.reduction = reduction
        self.detach_peer = bool(detach_peer)
        self.eps = float(eps)
        if in_student != in_peer:
            self.adapter = torch.nn.Linear(in_student, in_peer, bias=bias)
        else:
            self.adapter = torch.nn.Identity()

    def forward(self, h_student: Tensor, h_peer: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        for name, h, width in (("h_student", h_student, self.in_student), ("h_peer", h_peer, self.in_peer)):
            if not isinstance(h, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(h).__name__}")
            if not h.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got {h.dtype}")
            if h.dim() != 2 or h.size(1) != width:
                raise ValueError(f"{name} must have shape [N, {width}], got {list(h.shape)}")
        if h_student.size(0) != h_peer.size(0):
            raise ValueError(
                f"h_student has {h_student.size(0)} nodes but h_peer has {h_peer.size(0)}"
            )
        if self.detach_peer:
            h_peer = h_peer.detach()
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (h_student.size(0),):
                raise ValueError(f"mask must be a bool tensor of shape [{h_student.size(0)}]")
            h_student, h_peer = h_student[mask], h_peer[mask]
        z_s = self.adapter(h_student)
        z_p = h_peer
        if self.normalize:
            z_s = F.normalize(z_s, p=2.0, dim=1, eps=self.eps)
            z_p = F.normalize(z_p, p=2.0, dim=1, eps=self.eps)
        per_node = (z_s - z_p).pow(2).sum(dim=1)
        if self.reduction == "none":
            return per_node
        if self.reduction == "sum":
            return per_node.sum()
        return per_node.mean() if per_node.numel() > 0 else per_node.sum()

    def extra_repr(self) -> str:
        return (
            f"in_student={self.in_student}, in_peer={self.in_peer}, "
            f"normalize={self.normalize}, reduction={self.reduction!r}"
        )
