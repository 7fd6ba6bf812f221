"""GraphConv: a drop-in replacement for ``torch_geometric.nn.GraphConv`` on fastalign's kernels."""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor

from .drop_in import DropInConv, Linear, channel_pair


class GraphConv(DropInConv):
    r"""The graph convolution of Morris et al. ("Weisfeiler and Leman go neural"),
    PyG-compatible, on fastalign's kernels.

    ``out_i = W_root x_i + W_rel · aggr_{j -> i} e_ji x_j`` with ``aggr`` add (default),
    mean or max and optional edge weights ``e_ji``.

    Arguments, parameter names (``lin_rel`` with the bias, ``lin_root`` without) and
    initialisation are PyG's, so a PyG ``GraphConv``'s ``state_dict`` loads as is.

    Args:
        in_channels: an int, or ``(src, dst)`` widths for bipartite graphs.
        out_channels: output width.
        aggr: ``"add"``/``"sum"``, ``"mean"`` or ``"max"``; PyG's other aggregators are
            not offered (use PyG's layer).
        bias: learn a bias (in ``lin_rel``).
        **kwargs: MessagePassing's ``flow``, ``node_dim``, ``decomposed_layers``.
        backend: fastalign extra (keyword only): force a kernel backend.

    ``forward(x, edge_index, edge_weight=None, size=None)``: inputs as for
    :class:`fastalign.nn.SAGEConv`; the values of a sparse adjacency (torch.sparse or
    SparseTensor) are its edge weights, so ``edge_weight`` must then be ``None``.
    """

    AGGRS = ("add", "sum", "mean", "max")

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: int,
        aggr: str = "add",
        bias: bool = True,
        *,
        backend: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(dict(kwargs, aggr=aggr), backend)
        pair = channel_pair("GraphConv", in_channels, out_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lin_rel = Linear(pair[0], out_channels, bias=bias, backend=backend)
        self.lin_root = Linear(pair[1], out_channels, bias=False, backend=backend)
        self.reset_parameters()

    @classmethod
    def _pyg_arguments(cls, conv):
        return (conv.in_channels, conv.out_channels), dict(aggr=conv.aggr, bias=conv.lin_rel.bias is not None)

    def reset_parameters(self) -> None:
        self.lin_rel.reset_parameters()
        self.lin_root.reset_parameters()

    def forward(self, x, edge_index, edge_weight: Optional[Tensor] = None, size=None) -> Tensor:
        prep = self._prepare(x, edge_index, edge_weight, size)
        out = self._aggregate_linear(prep, prep.x_src, self.lin_rel)
        if prep.x_dst is not None:
            out = out + self.lin_root(prep.x_dst)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"
