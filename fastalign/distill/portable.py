"""A trained student in plain PyTorch operations, for deployment without fastalign.

:class:`PortableStudent` computes what :class:`~fastalign.distill.models.Student` computes
in eval mode (no dropout, no auxiliary heads) from ``(x, edge_index)`` alone, with
``index_add``/``scatter_reduce`` over the edges: the reference semantics of the ops,
written out, so that ``torch.export`` records only ATen operations and the exported
program loads and runs where fastalign is not installed (``fastalign export``).

Per layer, with messages flowing ``edge_index[0] -> edge_index[1]``:

* GCN  ``out_i = sum_{j -> i, j = i} d_i^-1/2 d_j^-1/2 (x W)_j + b``, ``d`` the in-degree
  plus one (one self loop per node; stored self loops replaced, as PyG's
  ``add_remaining_self_loops`` with unit weights);
* SAGE ``out_i = W_l mean_{j -> i} x_j + b_l + W_r x_i`` (0 for a node without edges);
* GAT  ``out_i = sum_h-concat-or-mean softmax_j(leaky_relu(a_s . h_j + a_d . h_i)) h_j + b``
  over the incoming edges and one self loop (stored ones removed), ``h = x W``.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import GCNII_LAMBDA, Student, hidden_output


def _loops_replaced(edge_index: Tensor, num_nodes: int):
    """(source, target) with stored self loops removed and one loop per node appended."""
    keep = edge_index[0] != edge_index[1]
    loop = torch.arange(num_nodes, device=edge_index.device, dtype=edge_index.dtype)
    return torch.cat([edge_index[0][keep], loop]), torch.cat([edge_index[1][keep], loop])


def _gcn_propagate(x: Tensor, edge_index: Tensor) -> Tensor:
    n = x.size(0)
    src, dst = _loops_replaced(edge_index, n)
    deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
    dis = deg.pow(-0.5)
    norm = dis[src] * dis[dst]
    return torch.zeros_like(x).index_add_(0, dst, x[src] * norm.unsqueeze(1))


def _mean_propagate(x: Tensor, edge_index: Tensor) -> Tensor:
    src, dst = edge_index[0], edge_index[1]
    total = torch.zeros_like(x).index_add_(0, dst, x[src])
    count = torch.zeros(x.size(0), dtype=x.dtype, device=x.device).index_add_(
        0, dst, torch.ones_like(dst, dtype=x.dtype))
    return total / count.clamp(min=1).unsqueeze(1)


class _PortableGAT(nn.Module):
    def __init__(self, conv):
        super().__init__()
        if conv.lin is None or getattr(conv, "res", None) is not None:
            raise ValueError("only the students' GAT layers (one projection, no residual) are portable")
        self.heads, self.channels, self.concat = conv.heads, conv.out_channels, conv.concat
        self.negative_slope = float(conv.negative_slope)
        self.lin = nn.Linear(conv.lin.in_features, conv.lin.out_features, bias=False)
        self.lin.weight = nn.Parameter(conv.lin.weight.detach().clone())
        self.att_src = nn.Parameter(conv.att_src.detach().clone())
        self.att_dst = nn.Parameter(conv.att_dst.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.size(0)
        h = self.lin(x).view(n, self.heads, self.channels)
        a_src = (h * self.att_src).sum(-1)
        a_dst = (h * self.att_dst).sum(-1)
        src, dst = _loops_replaced(edge_index, n)
        logit = F.leaky_relu(a_src[src] + a_dst[dst], self.negative_slope)  # [E, H]
        index = dst.unsqueeze(1).expand_as(logit)
        peak = torch.full((n, self.heads), float("-inf"), dtype=x.dtype, device=x.device)
        peak = peak.scatter_reduce(0, index, logit, reduce="amax", include_self=True)
        weight = torch.exp(logit - peak[dst])
        total = torch.zeros(n, self.heads, dtype=x.dtype, device=x.device).index_add_(0, dst, weight)
        alpha = weight / total[dst]
        out = torch.zeros_like(h).index_add_(0, dst, h[src] * alpha.unsqueeze(-1))
        out = out.reshape(n, self.heads * self.channels) if self.concat else out.mean(1)
        return out + self.bias if self.bias is not None else out


class KernelStudent(nn.Module):
    """The student itself behind the same ``forward(x, edge_index) -> logits``: exported,
    it calls fastalign's custom ops (the CSR build and the fused kernels), so the program
    loads where fastalign is installed, after ``import fastalign.ops`` (which registers
    the ops)."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        from ..graph import Graph

        graph = Graph.from_edge_index(edge_index, num_nodes=x.size(0))
        return self.student(graph, edge_index, x).logits


class PortableStudent(nn.Module):
    """The eval-mode forward of a :class:`Student` in plain PyTorch: ``forward(x,
    edge_index) -> logits``. Built from a trained student with :meth:`from_student`; its
    parameters are copies (the student is not changed)."""

    def __init__(self, student: Student):
        super().__init__()
        self.model, self.num_layers = student.model, student.num_layers
        self.residual, self.residual_alpha = student.residual, float(student.residual_alpha)
        layers: List[nn.Module] = []
        for layer in student.layers:
            if self.model == "gat":
                layers.append(_PortableGAT(layer.conv))
                continue
            m = nn.Module()
            for name, p in layer.named_parameters():
                owner, _, leaf = name.rpartition(".")
                target = m
                if owner:
                    if not hasattr(m, owner):
                        setattr(m, owner, nn.Module())
                    target = getattr(m, owner)
                target.register_parameter(leaf, nn.Parameter(p.detach().clone()))
            layers.append(m)
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_student(cls, student: Student) -> "PortableStudent":
        return cls(student).eval()

    def _conv(self, i: int, x: Tensor, edge_index: Tensor) -> Tensor:
        layer = self.layers[i]
        if self.model == "gat":
            return layer(x, edge_index)
        if self.model == "gcn":
            return _gcn_propagate(x @ layer.lin.weight.t(), edge_index) + layer.bias
        out = _mean_propagate(x, edge_index) @ layer.lin_l.weight.t() + layer.lin_l.bias
        return out + x @ layer.lin_r.weight.t()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h, h0 = x, x
        for i in range(self.num_layers):
            inp = h
            if self.residual == "gcnii" and 0 < i < self.num_layers - 1:
                layer = self.layers[i]
                beta = math.log(GCNII_LAMBDA / i + 1.0)
                s = (1.0 - self.residual_alpha) * _gcn_propagate(h, edge_index) + self.residual_alpha * h0
                h = (1.0 - beta) * s + beta * (s @ layer.lin.weight.t()) + layer.bias
            else:
                h = self._conv(i, h, edge_index)
            if i < self.num_layers - 1:
                h, h0 = hidden_output(self.residual, self.residual_alpha, i, h, inp, h0)
        return h
