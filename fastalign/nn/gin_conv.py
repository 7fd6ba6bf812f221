"""GINConv: a drop-in replacement for ``torch_geometric.nn.GINConv`` on fastalign's kernels."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .drop_in import DropInConv


def _reset(module) -> None:
    """Reset every submodule that can reset itself (as PyG's ``inits.reset``)."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    for child in getattr(module, "children", lambda: ())():
        _reset(child)


class GINConv(DropInConv):
    r"""The graph isomorphism operator of Xu et al. ("How powerful are graph neural
    networks?"), PyG-compatible, on fastalign's kernels.

    ``out_i = nn((1 + eps) x_i + sum_{j -> i} x_j)``.

    Args:
        nn: the module applied after aggregation (an MLP, typically).
        eps: initial ``eps``.
        train_eps: learn ``eps`` (a parameter; otherwise a buffer, as in PyG).
        **kwargs: MessagePassing's ``aggr`` (``"add"``, ``"mean"`` or ``"max"``),
            ``flow``, ``node_dim``, ``decomposed_layers``.
        backend: fastalign extra (keyword only): force a kernel backend.

    ``forward(x, edge_index, size=None)``: inputs as for :class:`fastalign.nn.SAGEConv`
    (a SparseTensor's values are ignored, as in PyG; torch.sparse values weight the sum).
    """

    AGGRS = ("add", "sum", "mean", "max")

    def __init__(
        self,
        nn: Callable,
        eps: float = 0.0,
        train_eps: bool = False,
        *,
        backend: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(dict({"aggr": "add"}, **kwargs), backend)
        if not callable(nn):
            raise TypeError(f"GINConv: nn must be a callable module, got {type(nn).__name__}")
        self.nn = nn
        self.initial_eps = float(eps)
        if train_eps:
            self.eps = torch.nn.Parameter(torch.empty(1))
        else:
            self.register_buffer("eps", torch.empty(1))
        self.reset_parameters()

    @classmethod
    def _pyg_arguments(cls, conv):
        train_eps = isinstance(conv.eps, torch.nn.Parameter)
        return (conv.nn,), dict(eps=conv.initial_eps, train_eps=train_eps, aggr=conv.aggr)

    def reset_parameters(self) -> None:
        _reset(self.nn)
        self.eps.data.fill_(self.initial_eps)

    def forward(self, x, edge_index, size=None) -> Tensor:
        prep = self._prepare(x, edge_index, None, size, sparse_tensor_values=False)
        out = self._aggregate(prep, prep.x_src)
        if prep.x_dst is not None:
            out = out + (1 + self.eps) * prep.x_dst
        return self.nn(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nn={self.nn})"
