"""edge_scale: the distance scale of a layer's embeddings over the graph's edges, the
kernel scale of ``sigma="auto"``.

    l1:   scale = mean_e ||x_i - x_j||_1
    rbf:  scale = sqrt(mean_e ||x_i - x_j||_2^2 / 2)

so that, at ``sigma = scale``, an edge at the typical distance has similarity exp(-1)
whatever the layer's width and magnitude. A fixed sigma does not transfer between layers:
at sigma = 100 the l1 kernel of small hidden embeddings is ~1 on every edge and every
local structure is ~uniform.

No E x F tensor: the features are centred (distances do not change under a common
shift) and divided by a bound B on every edge distance (the triangle inequality:
``d(x_i, x_j) <= |x_i - c| + |x_j - c|``), then one no-grad pass of the
``edge_similarity`` kernel at sigma = 1 gives ``s_e`` in [e^-1, 1] (l1) or [e^-1/2, 1]
(rbf), from which ``-log s_e`` is ``d_e / B`` (l1) or ``d_e^2 / (2 B^2)`` (rbf) to float
precision, never underflowing. Cost: that pass plus a few N x F elementwise ops.

``sigma="auto"`` in :func:`edge_similarity`, :func:`local_structure` and
:func:`structure_kl` divides each embedding set (the student's and the peer's apart) by
its own scale and runs the kernel at sigma = 1, which is the kernel at sigma = scale.
The scale is detached: the gradient is that of the fixed-sigma loss at the current
scale. A differentiable scale would make the loss invariant to the embeddings' magnitude
and let the student change every distance at once through it; detached, it acts like a
normalisation statistic (as batch norm's running statistics), and the backward needs no
extra pass.

Kernels: none of its own; the no-grad pass is ``fastalign::edge_similarity`` (CPU
``csrc/cpu/edge_similarity.cpp``, Triton ``fastalign/kernels/edge_similarity.py``, CUDA
``csrc/cuda/kernels/edge_similarity.cu``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ._common import AUTO_SIGMA_KERNELS, as_graph, resolve, split_pair
from .edge_similarity import FUNCTIONS, edge_similarity_call


@torch.no_grad()
def scale_of(graph, kernel: str, x_dst: Tensor, x_src: Tensor, backend: Optional[str] = None) -> Tensor:
    """The scale of checked features (``x_src is x_dst`` for a square graph), a 0-dim
    tensor in float32 (float64 for float64 input) on their device; 1 where no edge
    separates two different points (no edges, or all distances 0: every sigma gives the
    same local structure then). ``backend``: as requested by the caller (None: automatic)."""
    work = x_dst.dtype if x_dst.dtype in (torch.float32, torch.float64) else torch.float32
    one = torch.ones((), dtype=work, device=x_dst.device)
    if graph.num_edges == 0:
        return one
    square = x_src is x_dst
    # one N x F temporary per side: centred, then divided by the bound in place
    center = x_src.mean(0, dtype=work)
    xd = x_dst.to(work) - center
    xs = xd if square else x_src.to(work) - center
    order = 1 if kernel == "l1" else 2
    radius = torch.linalg.vector_norm(xd, ord=order, dim=1).amax()
    bound = 2 * radius if square else radius + torch.linalg.vector_norm(xs, ord=order, dim=1).amax()
    bound = torch.where(bound > 0, bound, one)
    xd.div_(bound)
    if not square:
        xs.div_(bound)
    name = resolve("edge_similarity", backend, x_dst.device, FUNCTIONS)
    s = edge_similarity_call(graph.rowptr, graph.col, xd, xs, None, None, None, kernel, 1.0, 2, 1.0, name)
    mean = -torch.log(s).mean()
    scale = bound * (mean if kernel == "l1" else mean.sqrt())
    return torch.where(scale > 0, scale, one)


def scaled(graph, kernel: str, x_dst: Tensor, x_src: Tensor,
           backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """``(x_dst, x_src)`` divided by their scale (kept one tensor for a square graph), to
    run the kernel at sigma = 1; differentiable, the scale a constant."""
    scale = scale_of(graph, kernel, x_dst, x_src, backend)
    xd = x_dst / scale
    return xd, (xd if x_src is x_dst else x_src / scale)


def edge_scale(
    graph,
    x: Union[Tensor, Tuple[Tensor, Tensor]],
    kernel: str = "l1",
    backend: Optional[str] = None,
) -> Tensor:
    """The kernel scale that ``sigma="auto"`` uses for embeddings ``x``.

    Args:
        graph: a :class:`fastalign.Graph` (or anything ``Graph.coerce`` accepts).
        x: ``[N, F]`` features, or a pair ``(x_dst, x_src)`` for a rectangular graph.
        kernel: ``"l1"`` (mean L1 edge distance) or ``"rbf"`` (root of half the mean
            squared L2 edge distance).

    Returns:
        a detached 0-dim tensor (float32, or float64 for float64 input).
    """
    if kernel not in AUTO_SIGMA_KERNELS:
        raise ValueError(f"edge_scale: kernel must be one of {AUTO_SIGMA_KERNELS}, got {kernel!r}")
    graph = as_graph(graph, x if isinstance(x, Tensor) else None)
    x_dst, x_src = split_pair("x", x, graph)
    return scale_of(graph, kernel, x_dst, x_src, backend)
