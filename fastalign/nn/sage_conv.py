"""SAGEConv: a drop-in replacement for ``torch_geometric.nn.SAGEConv`` on fastalign's kernels."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .drop_in import DropInConv, channel_pair, linear


class SAGEConv(DropInConv):
    r"""GraphSAGE (Hamilton et al.), PyG-compatible, on fastalign's kernels.

    ``out_i = W_l · aggr_{j -> i} x_j + W_r · x_i`` (``aggr`` mean, sum or max over the
    in-neighbours), then optionally ``out_i / ||out_i||_2``. With ``project=True`` the
    source features first go through ``relu(W x + b)``.

    The arguments, parameter names (``lin_l``, ``lin_r``, ``lin``) and initialisation
    are PyG's, so a PyG ``SAGEConv``'s ``state_dict`` loads as is.

    Args:
        in_channels: an int, or ``(src, dst)`` widths for bipartite graphs; ``-1``
            (lazy, read off the first input) unless ``project=True``.
        out_channels: output width.
        aggr: ``"mean"`` (default), ``"sum"``/``"add"`` or ``"max"``. PyG's other
            aggregators (lstm, multi-aggregation, ...) are not offered: use PyG's layer.
        normalize: L2-normalise the output rows.
        root_weight: add ``W_r x_i``.
        project: project the source features first.
        bias: learn a bias in ``lin_l``.
        **kwargs: MessagePassing's ``flow``, ``node_dim``, ``decomposed_layers``.
        backend: fastalign extra (keyword only): force a kernel backend.

    ``forward(x, edge_index, size=None)``: ``x`` is ``[N, F]`` (or ``[..., N, F]`` for a
    batch over one graph) or a pair ``(x_src, x_dst)`` with ``x_dst`` possibly ``None``;
    ``edge_index`` a ``[2, E]`` edge_index, PyG ``EdgeIndex``, torch.sparse ``adj_t``,
    torch_sparse ``SparseTensor`` (its values are ignored, as in PyG) or
    :class:`fastalign.Graph`; ``size=(num_src, num_dst)``.

    Example::

        >>> import torch
        >>> from fastalign.nn import SAGEConv
        >>> conv = SAGEConv((16, 8), 4, aggr="max")
        >>> x_src, x_dst = torch.randn(5, 16), torch.randn(2, 8)
        >>> edge_index = torch.tensor([[0, 1, 4], [0, 1, 1]])
        >>> conv((x_src, x_dst), edge_index).shape
        torch.Size([2, 4])
        >>> conv((x_src, None), edge_index, size=(5, 2)).shape
        torch.Size([2, 4])
    """

    AGGRS = ("mean", "sum", "add", "max")

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: int,
        aggr: str = "mean",
        normalize: bool = False,
        root_weight: bool = True,
        project: bool = False,
        bias: bool = True,
        *,
        backend: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(dict(kwargs, aggr=aggr), backend)
        pair = channel_pair("SAGEConv", in_channels, out_channels, lazy_ok=True)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.normalize = bool(normalize)
        self.root_weight = bool(root_weight)
        self.project = bool(project)
        if self.project:
            if pair[0] <= 0:
                raise ValueError("'SAGEConv' does not support lazy initialization with `project=True`")
            self.lin = torch.nn.Linear(pair[0], pair[0], bias=True)
        self.lin_l = linear(pair[0], out_channels, bias, backend)
        if self.root_weight:
            self.lin_r = linear(pair[1], out_channels, False, backend)
        self.reset_parameters()

    @classmethod
    def _pyg_arguments(cls, conv):
        return (conv.in_channels, conv.out_channels), dict(
            aggr=conv.aggr, normalize=conv.normalize, root_weight=conv.root_weight,
            project=conv.project, bias=conv.lin_l.bias is not None,
        )

    def reset_parameters(self) -> None:
        for lin in (getattr(self, "lin", None), self.lin_l, getattr(self, "lin_r", None)):
            if lin is not None and not isinstance(lin, torch.nn.LazyLinear):
                lin.reset_parameters()

    def forward(self, x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]], edge_index, size=None) -> Tensor:
        prep = self._prepare(x, edge_index, None, size, sparse_tensor_values=False)
        x_src = prep.x_src
        if self.project:
            x_src = F.relu(self.lin(x_src))
        out = self._aggregate_linear(prep, x_src, self.lin_l)
        if self.root_weight and prep.x_dst is not None:
            out = out + self.lin_r(prep.x_dst)
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, aggr={self.aggr})"
