"""FeatureAlignLoss: pull a student's node features towards a peer's."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class FeatureAlignLoss(torch.nn.Module):
    r"""Feature alignment between two students' node embeddings (fastalign's choice).

    The Alignahead++ paper does not publish its feature-alignment term. fastalign uses a
    FitNets-style hint loss through a learnable adapter::

        z_s = adapter(h_student)                 # student width -> peer width
        z_p = h_peer                             # the target (detach it, as Alignahead++ does)
        loss_i = mean_d (z_s[i, d] - z_p[i, d])^2
        loss = mean_i loss_i                     # = mean over nodes and features

    * ``adapter`` is a learnable bias-free ``Linear(in_student, in_peer)``, initialised
      to the identity when the widths are equal, so that at the start the loss is the
      plain MSE. It lets the student match the peer layer's information without being
      forced into that layer's basis or scale (aligned layers sit at different depths:
      ReLU hidden units against logits). Its parameters belong to this module: add
      ``loss_fn.parameters()`` to the student's optimiser. ``adapter=False`` compares
      the raw features (widths must then be equal).
    * ``normalize=True`` L2-normalises both sides first (a scale-free variant: each node
      then contributes ``(2 - 2 cos) / in_peer``). The trainer does not use it: on Cora
      its 1/||h|| gradient swamped the task loss while activations were small (see
      docs/distillation.md).

    Args:
        in_student: width of the student's features.
        in_peer: width of the peer's features (default: ``in_student``).
        adapter: learn a linear map from the student to the peer (default ``True``).
        bias: give the adapter a bias.
        normalize: L2-normalise both sides first (default ``False``).
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
        adapter: bool = True,
        bias: bool = False,
        normalize: bool = False,
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
        if not adapter and in_student != in_peer:
            raise ValueError(
                f"adapter=False needs equal widths, got in_student={in_student}, in_peer={in_peer}"
            )
        self.in_student = in_student
        self.in_peer = in_peer
        self.normalize = bool(normalize)
        self.reduction = reduction
        self.detach_peer = bool(detach_peer)
        self.eps = float(eps)
        if adapter:
            self.adapter = torch.nn.Linear(in_student, in_peer, bias=bias)
            if in_student == in_peer:
                torch.nn.init.eye_(self.adapter.weight)
                if bias:
                    torch.nn.init.zeros_(self.adapter.bias)
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
        per_node = (z_s - z_p).pow(2).mean(dim=1)
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
