"""edge_softmax: p_e = exp(z_e) / sum_{e' in in-edges(i)} exp(z_e') per destination i,
and local_structure, its composition with edge_similarity: p_e = softmax(s_e / tau).

``edge_softmax`` is its own custom op (``fastalign::edge_softmax``, backward
``p * (g - sum_row(p * g))``).

Kernels: reference ``fastalign/backends/reference.py``; CPU ``csrc/cpu/edge_softmax.cpp``;
Triton ``fastalign/kernels/edge_softmax.py``; CUDA ``csrc/cuda/kernels/edge_softmax.cu``.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import validation as V
from ..validation import check_edge_values, check_tau
from .twin_op import TwinOp
from ._common import as_graph, impl, resolve
from .edge_similarity import edge_similarity


def _edge_softmax(rowptr: Tensor, logits: Tensor, backend: str) -> Tensor:
    V.check_length("logits", logits, logits.numel(), "edge")  # 1-D
    V.check_rowptr(rowptr, logits.numel())
    return impl(backend).edge_softmax(rowptr, logits)


edge_softmax_op = torch.library.custom_op("fastalign::edge_softmax", mutates_args=())(_edge_softmax)


@edge_softmax_op.register_fake
def _(rowptr, logits, backend):
    return torch.empty_like(logits)


def _edge_softmax_backward(rowptr: Tensor, p: Tensor, grad_p: Tensor, backend: str) -> Tensor:
    V.check_length("p", p, p.numel(), "edge")  # 1-D
    V.check_length("grad_p", grad_p, p.numel(), "edge")
    V.check_rowptr(rowptr, p.numel())
    return impl(backend).edge_softmax_backward(rowptr, p, grad_p)


edge_softmax_backward_op = torch.library.custom_op(
    "fastalign::edge_softmax_backward", mutates_args=()
)(_edge_softmax_backward)
edge_softmax_backward_call = TwinOp(edge_softmax_backward_op, _edge_softmax_backward)


@edge_softmax_backward_op.register_fake
def _(rowptr, p, grad_p, backend):
    return torch.empty_like(p)


def _setup_context(ctx, inputs, output):
    rowptr, _, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(rowptr, output)


def _backward(ctx, grad_p):
    rowptr, p = ctx.saved_tensors
    return None, edge_softmax_backward_call(rowptr, p, grad_p.contiguous(), ctx.backend), None


edge_softmax_call = TwinOp(edge_softmax_op, _edge_softmax, _backward, _setup_context)


def edge_softmax(graph, logits: Tensor, backend: Optional[str] = None) -> Tensor:
    """Softmax of per-edge ``logits`` ([E], internal order) over each node's in-edges."""
    graph = as_graph(graph)
    if logits is None:  # optional for edge weights, not here
        raise TypeError("edge_softmax: logits must be a floating tensor of one value per edge, got None")
    logits = check_edge_values("logits", logits, graph)
    name = resolve("edge_softmax", backend, graph.device, ("edge_softmax", "edge_softmax_backward"))
    return edge_softmax_call(graph.rowptr, logits, name)


def local_structure(
    graph,
    x: Union[Tensor, Tuple[Tensor, Tensor]],
    kernel: str = "l1",
    tau: float = 1.0,
    sigma: Union[float, str, None] = None,
    degree: int = 2,
    coef: float = 1.0,
    backend: Optional[str] = None,
) -> Tensor:
    """The local structure ``p_e = softmax_{e in in-edges(i)}(k(x_i, x_j) / tau)``.

    Same arguments as :func:`edge_similarity`, plus the temperature ``tau``. Returns
    ``[E]`` in internal order; each destination's in-edge values sum to 1.
    """
    tau = check_tau(tau)
    graph = as_graph(graph, x if isinstance(x, Tensor) else None)
    s = edge_similarity(graph, x, kernel, sigma, degree, coef, backend)
    return edge_softmax(graph, s / tau if tau != 1.0 else s, backend)
