"""Students: GCN, GraphSAGE-mean and GAT stacks that expose every layer's output.

A student of ``num_layers`` L has L graph layers; layers 1..L-1 map to ``hidden`` units
(ReLU, dropout), layer L maps to the classes. ``forward`` returns a
:class:`StudentOutput` with the logits, the L layer outputs (``hiddens``: the L-1 hidden
embeddings after ReLU, then the logits -- these are what layer pairing aligns), and one
auxiliary logit tensor per intermediate layer (deep supervision; empty when disabled).

The GCN and SAGE layers are built directly on fastalign's ops (``gcn_aggregate``,
``spmm(reduce="mean")``); GAT uses :class:`fastalign.nn.GATConv` (the fused attention op
``gat_aggregate``) on the same Graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..graph import Graph
from ..sparse_features import SparseFeatures
from .options import MODELS, RESIDUALS  # noqa: F401  (defined torch-free)

# GCNII's identity-mapping strength: layer l uses W_eff = (1 - b_l) I + b_l W with
# b_l = log(lambda / l + 1) (Chen et al. 2020, lambda = 0.5 in their citation experiments)
GCNII_LAMBDA = 0.5


def check_residual(residual: str, alpha: float) -> None:
    """Validates the residual option of :class:`Student` (also checked by TrainConfig
    before any data is loaded)."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"residual_alpha must be in (0, 1], got {alpha}")


def hidden_output(residual: str, alpha: float, i: int, h: Tensor, inp, h0):
    """Hidden layer i's output from its convolution's ``h``: the ReLU, then the residual
    (``plain``: + the layer's input; ``initial``: a share ``alpha`` of the first hidden
    layer). Returns ``(h, h0)``, ``h0`` the first hidden layer's output once i = 0 ran."""
    h = F.relu(h)
    if i == 0:
        return h, h
    if residual == "plain":
        h = h + inp
    elif residual == "initial":
        h = (1.0 - alpha) * h + alpha * h0
    return h, h0


def _linear(x, lin: nn.Linear, backend: Optional[str]) -> Tensor:
    if isinstance(x, SparseFeatures):
        out = x.linear(lin.weight, backend)
        return out + lin.bias if lin.bias is not None else out
    return ops.linear(x, lin.weight, lin.bias, backend)


@dataclass
class StudentOutput:
    logits: Tensor
    hiddens: List[Tensor]
    aux_logits: List[Tensor]


class _GCNLayer(nn.Module):
    """PyG GCNConv semantics: ``A_hat (x W) + b`` with PyG's normalisation."""

    def __init__(self, in_dim: int, out_dim: int, backend: Optional[str]):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.backend = backend
        nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, graph: Graph, edge_index: Tensor, x: Tensor) -> Tensor:
        h = _linear(x, self.lin, self.backend)
        if h.dtype == self.bias.dtype:  # the bias added in the aggregation's row writes
            return ops.gcn_aggregate(graph, h, backend=self.backend, bias=self.bias)
        return ops.gcn_aggregate(graph, h, backend=self.backend) + self.bias

    def forward_gcnii(self, graph: Graph, x: Tensor, h0: Tensor, alpha: float, beta: float) -> Tensor:
        """GCNII layer: ``s = (1 - alpha) A_hat x + alpha h0``, then ``(1 - beta) s + beta s W + b``
        (initial residual and identity mapping; aggregation before the projection, as in GCNII)."""
        s = (1.0 - alpha) * ops.gcn_aggregate(graph, x, backend=self.backend) + alpha * h0
        return (1.0 - beta) * s + beta * self.lin(s) + self.bias


class _SAGELayer(nn.Module):
    """GraphSAGE-mean (PyG SAGEConv): ``W_l mean_{j->i} x_j + W_r x_i``."""

    def __init__(self, in_dim: int, out_dim: int, backend: Optional[str]):
        super().__init__()
        self.lin_l = nn.Linear(in_dim, out_dim)
        self.lin_r = nn.Linear(in_dim, out_dim, bias=False)
        self.backend = backend

    def forward(self, graph: Graph, edge_index: Tensor, x: Tensor) -> Tensor:
        # Project first when it shrinks the width: mean aggregation is linear.
        if isinstance(x, SparseFeatures) or self.lin_l.out_features < self.lin_l.in_features:
            proj = x.linear(self.lin_l.weight, self.backend) if isinstance(x, SparseFeatures) \
                else x @ self.lin_l.weight.t()
            agg = ops.spmm(graph, proj, "mean", backend=self.backend)
            return agg + self.lin_l.bias + _linear(x, self.lin_r, self.backend)
        return self.lin_l(ops.spmm(graph, x, "mean", backend=self.backend)) + self.lin_r(x)


class _GATLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, heads: int, concat: bool, dropout: float,
                 backend: Optional[str]):
        super().__init__()
        from ..nn import GATConv

        per_head = out_dim // heads if concat else out_dim
        self.conv = GATConv(in_dim, per_head, heads=heads, concat=concat, dropout=dropout, backend=backend)

    def forward(self, graph: Graph, edge_index: Tensor, x: Tensor) -> Tensor:
        return self.conv(x, graph)


class Student(nn.Module):
    """One GNN student. ``deep_supervision`` adds a linear classifier per hidden layer.

    ``residual`` (hidden layers 2..L-1 only, where input and output widths are equal; the
    first layer and the classifier layer are unchanged, so a 2-layer student is the same
    with any setting; the layers stay GCN / SAGE / GAT convolutions):

    * ``none``    ``h_l = relu(conv_l(h_{l-1}))`` (the plain stack);
    * ``plain``   ``h_l = relu(conv_l(h_{l-1})) + h_{l-1}`` (a skip connection);
    * ``initial`` ``h_l = (1 - a) relu(conv_l(h_{l-1})) + a h_1`` with ``a =
      residual_alpha``: an initial residual to the first hidden layer (as in APPNP /
      GCNII), so every layer keeps a share of the un-smoothed embedding;
    * ``gcnii``   (GCN only) the GCNII layer, ``h_l = relu((1 - b_l) s + b_l s W_l + bias)``
      with ``s = (1 - a) A_hat h_{l-1} + a h_1`` and ``b_l = log(GCNII_LAMBDA / (l - 1) + 1)``:
      the initial residual plus an identity mapping that keeps deep layers near the
      identity.
    """

    def __init__(
        self,
        model: str,
        in_dim: int,
        hidden: int,
        num_classes: int,
        num_layers: int = 2,
        dropout: float = 0.5,
        deep_supervision: bool = False,
        heads: int = 8,
        backend: Optional[str] = None,
        residual: str = "none",
        residual_alpha: float = 0.1,
    ):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if not isinstance(num_layers, int) or not 2 <= num_layers <= 16:
            raise ValueError(f"num_layers must be an int in [2, 16], got {num_layers!r}")
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if model == "gat" and hidden % heads != 0:
            raise ValueError(f"GAT: hidden ({hidden}) must be divisible by heads ({heads})")
        check_residual(residual, residual_alpha)
        if residual == "gcnii" and model != "gcn":
            raise ValueError(f"residual='gcnii' is a GCN layer; model {model!r} takes none, plain or initial")
        self.model, self.dropout, self.num_layers = model, dropout, num_layers
        self.residual, self.residual_alpha = residual, residual_alpha
        dims = [in_dim] + [hidden] * (num_layers - 1) + [num_classes]
        layers = []
        for i in range(num_layers):
            last = i == num_layers - 1
            if model == "gcn":
                layers.append(_GCNLayer(dims[i], dims[i + 1], backend))
            elif model == "sage":
                layers.append(_SAGELayer(dims[i], dims[i + 1], backend))
            else:
                layers.append(_GATLayer(dims[i], dims[i + 1], 1 if last else heads, not last, dropout, backend))
        self.layers = nn.ModuleList(layers)
        self.widths = dims[1:]
        self.aux = nn.ModuleList(
            [nn.Linear(hidden, num_classes) for _ in range(num_layers - 1)] if deep_supervision else []
        )

    def forward(self, graph: Graph, edge_index: Tensor, x) -> StudentOutput:
        """``x``: dense ``[N, F]`` features or :class:`SparseFeatures`."""
        hiddens, aux = [], []
        h = x
        if isinstance(h, SparseFeatures) and self.model == "gat":
            h = h.to_dense()
        h0 = None
        for i, layer in enumerate(self.layers):
            inp = h
            if isinstance(h, SparseFeatures):
                h = h.dropout(self.dropout, self.training)
            else:
                h = F.dropout(h, self.dropout, self.training)
            if self.residual == "gcnii" and 0 < i < self.num_layers - 1:
                h = layer.forward_gcnii(graph, h, h0, self.residual_alpha, math.log(GCNII_LAMBDA / i + 1.0))
            else:
                h = layer(graph, edge_index, h)
            if i < self.num_layers - 1:
                h, h0 = hidden_output(self.residual, self.residual_alpha, i, h, inp, h0)
                if self.aux:
                    aux.append(self.aux[i](F.dropout(h, self.dropout, self.training)))
            hiddens.append(h)
        return StudentOutput(h, hiddens, aux)
