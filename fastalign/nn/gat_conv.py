"""GATConv: a drop-in replacement for ``torch_geometric.nn.GATConv`` on fastalign's fused
attention aggregation (no E x heads x channels tensor, no E x heads tensor)."""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Parameter

from ..backends import reference
from ..ops import gat_aggregate
from ..ops.gat_aggregate import check_dropout, draw_seed, seed_value
from ..validation import real_number
from .drop_in import DropInConv, Prepared, channel_pair, linear


def _glorot(t: Tensor) -> None:
    """PyG's ``inits.glorot``: uniform in +-sqrt(6 / (fan_in + fan_out)) over the last two
    dimensions."""
    if isinstance(t, torch.nn.parameter.UninitializedParameter):
        return
    bound = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
    with torch.no_grad():
        t.uniform_(-bound, bound)


class GATConv(DropInConv):
    r"""Graph attention (Veličković et al.), PyG-compatible, on fastalign's fused kernel.

    .. math::
        x'_i = \sum_{j \in N(i) \cup \{i\}} \alpha_{ij} \Theta_s x_j, \quad
        \alpha_{ij} = \operatorname{softmax}_j\big(\operatorname{LeakyReLU}(
        a_s^\top \Theta_s x_j + a_t^\top \Theta_t x_i)\big)

    per head; heads are concatenated (``concat=True``) or averaged. The attention and the
    aggregation run in one pass per node (:func:`fastalign.gat_aggregate`) with an online
    softmax, and the backward recomputes them: the per-edge messages (E x heads x
    channels) and the attention (E x heads) that PyG's layer materialises are never
    built, unless ``return_attention_weights`` asks for the attention.

    The arguments, parameter names (``lin`` or ``lin_src``/``lin_dst``, ``att_src``,
    ``att_dst``, ``res``, ``bias``) and initialisation are PyG's, so a PyG ``GATConv``'s
    ``state_dict`` loads as is, and with ``dropout=0`` the outputs and gradients are
    PyG's. Attention dropout draws its mask from a hash of (seed, edge, head), the seed
    from torch's default generator: the same seed gives the same mask on every backend,
    but not PyG's mask.

    Args:
        in_channels: an int, or ``(src, dst)`` widths for bipartite graphs; ``-1`` (lazy).
        out_channels: width per head.
        heads: number of attention heads.
        concat: concatenate the heads (else average them).
        negative_slope: of the leaky ReLU.
        dropout: attention dropout probability (in training).
        add_self_loops: attend each node i < min(num_src, num_dst) to itself (stored self
            loops are ignored), as PyG.
        edge_dim: edge features are not supported yet: anything but ``None`` raises (use
            ``torch_geometric.nn.GATConv``).
        fill_value: accepted for PyG compatibility (it only concerns edge features).
        bias: learn an additive bias.
        residual: add a learnable skip connection ``res(x_dst)``.
        **kwargs: MessagePassing's ``flow`` and ``decomposed_layers`` (``aggr="add"``).
        backend: fastalign extra (keyword only): force a kernel backend.

    ``forward(x, edge_index, edge_attr=None, size=None, return_attention_weights=None)``:
    ``x`` is ``[N, F]`` or a pair ``(x_src, x_dst)`` (``x_dst`` may be ``None``);
    ``edge_index`` a ``[2, E]`` edge_index, PyG ``EdgeIndex``, torch.sparse ``adj_t``,
    torch_sparse ``SparseTensor`` (values ignored, as in PyG) or
    :class:`fastalign.Graph`. ``edge_attr`` is ignored, as PyG does without ``edge_dim``.
    With ``return_attention_weights`` set (to any value, as PyG), returns ``(out,
    (edge_index, alpha))`` with the self loops appended; for a torch.sparse adjacency
    ``(adj, alpha)`` with the attention as the adjacency's values, for a SparseTensor
    that SparseTensor alone, as PyG does.

    Example::

        >>> import torch
        >>> from fastalign.nn import GATConv
        >>> conv = GATConv(16, 8, heads=4)
        >>> x = torch.randn(5, 16)
        >>> edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
        >>> conv(x, edge_index).shape
        torch.Size([5, 32])
    """

    AGGRS = ("add", "sum")

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        edge_dim: Optional[int] = None,
        fill_value: Union[float, Tensor, str] = "mean",
        bias: bool = True,
        residual: bool = False,
        *,
        backend: Optional[str] = None,
        **kwargs,
    ):
        node_dim = kwargs.pop("node_dim", 0)
        if node_dim != 0:  # PyG's GATConv fixes node_dim=0 itself
            raise TypeError("GATConv() got multiple values for keyword argument 'node_dim'")
        super().__init__(dict(kwargs, aggr=kwargs.get("aggr", "add"), node_dim=0), backend)
        if edge_dim is not None:
            raise ValueError(
                "fastalign's GATConv does not support edge features (edge_dim) yet: use "
                "torch_geometric.nn.GATConv for them"
            )
        pair = channel_pair("GATConv", in_channels, out_channels, lazy_ok=True)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"GATConv: heads must be a positive int, got {heads!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = bool(concat)
        self.negative_slope = real_number("negative_slope", negative_slope)
        self.dropout = check_dropout(dropout)
        self.add_self_loops = bool(add_self_loops)
        self.edge_dim = None
        self.fill_value = fill_value
        self.residual = bool(residual)

        self.lin = self.lin_src = self.lin_dst = None
        if isinstance(in_channels, int):
            self.lin = linear(in_channels, heads * out_channels, False, backend)
        else:
            self.lin_src = linear(pair[0], heads * out_channels, False, backend)
            self.lin_dst = linear(pair[1], heads * out_channels, False, backend)
        self.att_src = Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = Parameter(torch.empty(1, heads, out_channels))
        self.lin_edge = None
        self.register_parameter("att_edge", None)
        total = out_channels * (heads if self.concat else 1)
        if self.residual:
            self.res = linear(pair[1], total, False, backend)
        else:
            self.register_parameter("res", None)
        if bias:
            self.bias = Parameter(torch.empty(total))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @classmethod
    def _pyg_arguments(cls, conv):
        return (conv.in_channels, conv.out_channels), dict(
            heads=conv.heads, concat=conv.concat, negative_slope=conv.negative_slope,
            dropout=conv.dropout, add_self_loops=conv.add_self_loops, edge_dim=conv.edge_dim,
            fill_value=conv.fill_value, bias=conv.bias is not None, residual=conv.res is not None,
        )

    def reset_parameters(self) -> None:
        for lin in (self.lin, self.lin_src, self.lin_dst, self.res):
            if lin is not None and not isinstance(lin, torch.nn.LazyLinear):
                torch.nn.init.xavier_uniform_(lin.weight)  # == torch_geometric.nn.inits.glorot
        _glorot(self.att_src)
        _glorot(self.att_dst)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def _project(self, x):
        """(raw features for the graph's node counts, x_src [N, H, C], alpha_src [N, H],
        alpha_dst [N_dst, H] or None, res)."""
        if isinstance(x, Tensor):
            if x.dim() != 2:
                raise ValueError(f"GATConv: static graphs are not supported (x must be 2-D), got {list(x.shape)}")
            raw_src = raw_dst = x
            raw = x
        else:
            if not isinstance(x, (tuple, list)) or len(x) != 2:
                raise TypeError(f"GATConv: x must be a tensor or a (x_src, x_dst) pair, got {type(x).__name__}")
            raw_src, raw_dst = x
            if not isinstance(raw_src, Tensor) or raw_src.dim() != 2:
                raise ValueError("GATConv: x_src must be a 2-D tensor (static graphs are not supported)")
            raw = (raw_src, raw_dst)
        res = self.res(raw_dst) if raw_dst is not None and self.res is not None else None
        lin_src = self.lin if self.lin is not None else self.lin_src
        lin_dst = self.lin if self.lin is not None else self.lin_dst
        if raw_dst is raw_src and lin_dst is lin_src:
            # one product for both attention terms: one [N, F] gradient for x, not two
            x_src, both = self._heads(raw_src, lin_src, (self.att_src, self.att_dst))
            return raw, x_src, both[:, : self.heads], both[:, self.heads:], res
        x_src, alpha_src = self._heads(raw_src, lin_src, (self.att_src,))
        alpha_dst = None if raw_dst is None else self._heads(raw_dst, lin_dst, (self.att_dst,), project=False)[1]
        return raw, x_src, alpha_src, alpha_dst, res

    def _heads(self, raw: Tensor, lin: torch.nn.Module, atts: Tuple[Tensor, ...], project: bool = True):
        """(lin(raw) as [N, H, C] (or None unless ``project``), the attention terms
        lin(raw) . a per head for each a of ``atts``, side by side: [N, H * len(atts)]).

        Narrow inputs (F <= H C): the attention vectors are folded into the projection,
        ``raw (W_h^T a_h)``, an [F, H] product, the same numbers as PyG's
        ``(x_h * a_h).sum(-1)`` without its [N, H, C] product and broadcast backward.
        Wide inputs (Cora's 1,433 features into 16): the fold would read ``raw`` [N, F]
        twice more (its product and the weight's gradient), so the terms are taken from
        the projection, a batched [N, C] x [C, 1] product per head."""
        H, C = self.heads, self.out_channels
        lazy = isinstance(lin.weight, torch.nn.parameter.UninitializedParameter)
        h = lin(raw).view(-1, H, C) if project or lazy else None  # a lazy lin materialises here
        if h is not None and raw.size(-1) > H * C:
            a = torch.stack([a.view(H, C) for a in atts], dim=-1)  # [H, C, len(atts)]
            terms = torch.bmm(h.transpose(0, 1), a).permute(1, 2, 0)  # [N, len(atts), H]
            return h, terms.reshape(h.size(0), H * len(atts))
        weight = lin.weight.view(H, C, -1)
        folded = torch.cat([torch.einsum("hcf,hc->fh", weight, a.view(H, C)) for a in atts], dim=1)
        return h, raw @ folded

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None, size=None,
                return_attention_weights: Optional[bool] = None):
        raw, x_src, alpha_src, alpha_dst, res = self._project(x)
        prep = self._prepare(raw, edge_index, None, size, sparse_tensor_values=False)
        dropout = self.dropout if self.training else 0.0
        seed = draw_seed() if dropout > 0 else None
        out = gat_aggregate(
            prep.graph, x_src, alpha_src, alpha_dst, self.negative_slope, dropout,
            self.add_self_loops, seed=seed, backend=self.backend,
        )
        out = out.reshape(-1, self.heads * self.out_channels) if self.concat else out.mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        if return_attention_weights is None:
            return out
        return out, self._attention(prep, edge_index, alpha_src, alpha_dst, dropout, seed, out.dtype)

    # ------------------------------------------------------------------ attention weights
    def _attention(self, prep: Prepared, adj, alpha_src, alpha_dst, dropout, seed, dtype):
        """The attention per attended edge (the reference's, the same mask as the fused
        op), in the order PyG returns it (the E x H tensor only this asks for)."""
        graph = prep.graph
        dst, src, eid, _, a, k, _ = reference.attention(
            graph.rowptr, graph.col, graph.num_src, alpha_src, alpha_dst, self.negative_slope, dropout,
            seed_value(seed) if dropout > 0 else 0, self.add_self_loops,
        )
        alpha = (a * k).to(dtype)
        num_edges = graph.num_edges
        if prep.kind is None and not isinstance(adj, type(graph)):
            # an edge_index: the caller's edge order (loops dropped), then the added loops
            ei = adj.as_tensor() if hasattr(adj, "as_tensor") else adj
            pos = eid.clone()  # caller position of each stored edge; a loop's id stays after them
            stored = eid < num_edges
            if graph.perm is not None:
                pos[stored] = graph.perm[eid[stored]]
            order = torch.argsort(pos)
            pos = pos[order]
            n = int(stored.sum())
            loops = (pos[n:] - num_edges).to(ei.dtype)
            return torch.cat([ei[:, pos[:n]], torch.stack([loops, loops])], dim=1), alpha[order]
        # a sparse adjacency or a Graph: (target, source)-sorted, the loops in place
        if self.add_self_loops:
            order = torch.argsort(dst * max(graph.num_src, 1) + src, stable=True)
            src, dst, alpha = src[order], dst[order], alpha[order]
        sizes = (graph.num_dst, graph.num_src)
        if prep.kind == "torch":
            if adj.layout == torch.sparse_coo:
                return torch.sparse_coo_tensor(torch.stack([dst, src]), alpha, sizes + alpha.shape[1:]), alpha
            crow = torch.zeros(graph.num_dst + 1, dtype=torch.int64, device=graph.device)
            crow[1:] = torch.cumsum(torch.bincount(dst, minlength=graph.num_dst), 0)
            return torch.sparse_csr_tensor(crow, src, alpha, sizes + alpha.shape[1:]), alpha
        if prep.kind == "sparse_tensor":
            from torch_sparse import SparseTensor

            return SparseTensor(row=dst, col=src, value=alpha, sparse_sizes=sizes)
        return torch.stack([src, dst]), alpha

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"
