"""edge_similarity: s_e = k(x_i, x_j) for every edge e = (j -> i).

Kernels (see fastalign.backends.reference for the exact formulas): "l1", "rbf", "linear",
"poly", "cosine". Custom ops ``fastalign::edge_similarity`` and its backward
``fastalign::edge_similarity_backward`` (destination gradients by CSR rows, source
gradients by the rows of the cached transpose: no atomics).

edge_scale: the distance scale of a layer's embeddings over the graph's edges, the
kernel scale of ``sigma="auto"`` (no kernels of its own: one no-grad pass of this op):

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

Kernels: reference ``fastalign/backends/reference.py``; CPU ``csrc/cpu/edge_similarity.cpp``
(kernels in ``csrc/cpu/similarity.h``); Triton ``fastalign/kernels/edge_similarity.py``
(``fastalign/kernels/similarity.py``); CUDA ``csrc/cuda/kernels/edge_similarity.cu`` and
``edge_similarity_backward.cu`` (``similarity.cuh``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import validation as V
from ..validation import AUTO_SIGMA_KERNELS, is_auto, kernel_params, split_pair
from .twin_op import TwinOp
from ._common import as_graph, check_cosine_range, impl, resolve

FUNCTIONS = ("edge_similarity", "edge_similarity_backward")


def _edge_similarity(
    rowptr: Tensor,
    col: Tensor,
    x_dst: Tensor,
    x_src: Tensor,
    rowptr_t: Optional[Tensor],
    col_t: Optional[Tensor],
    perm_t: Optional[Tensor],
    kernel: str,
    sigma: float,
    degree: int,
    coef: float,
    backend: str,
) -> Tensor:
    V.check_csr(rowptr, col, V.check_2d("x_src", x_src).size(0))
    V.check_rows("x_dst", x_dst, rowptr.numel() - 1, "graph (destinations)")
    _check_widths(x_dst, x_src)
    return impl(backend).edge_similarity(rowptr, col, x_dst, x_src, kernel, sigma, degree, coef)


edge_similarity_op = torch.library.custom_op(
    "fastalign::edge_similarity", mutates_args=()
)(_edge_similarity)


def _check_widths(x_dst: Tensor, x_src: Tensor) -> None:
    if x_dst.size(1) != x_src.size(1) or x_dst.dtype != x_src.dtype:
        raise ValueError(
            f"x_dst and x_src must share width and dtype, got {x_dst.dtype} x {x_dst.size(1)} "
            f"and {x_src.dtype} x {x_src.size(1)}"
        )


def check_both_sides(rowptr, col, rowptr_t, col_t, perm_t, dst_rows: Tensor, src_rows: Tensor) -> None:
    """A CSR and its transpose over ``dst_rows`` destinations and ``src_rows`` sources."""
    V.check_rows("destination features", dst_rows, rowptr.numel() - 1, "graph (destinations)")
    V.check_csr(rowptr, col, src_rows.size(0))
    V.check_rows("source features", src_rows, rowptr_t.numel() - 1, "graph transpose (sources)")
    V.check_csr(rowptr_t, col_t, dst_rows.size(0), "graph transpose")
    if col_t.numel() != col.numel():
        raise ValueError(f"the transpose has {col_t.numel()} edges, the graph {col.numel()}")
    V.check_perm(perm_t, col.numel())


@edge_similarity_op.register_fake
def _(rowptr, col, x_dst, x_src, rowptr_t, col_t, perm_t, kernel, sigma, degree, coef, backend):
    return x_dst.new_empty((col.shape[0],))


def _edge_similarity_backward(
    rowptr: Tensor,
    col: Tensor,
    rowptr_t: Tensor,
    col_t: Tensor,
    perm_t: Tensor,
    x_dst: Tensor,
    x_src: Tensor,
    grad_s: Tensor,
    kernel: str,
    sigma: float,
    degree: int,
    coef: float,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    V.check_2d("x_dst", x_dst)
    check_both_sides(rowptr, col, rowptr_t, col_t, perm_t, x_dst, V.check_2d("x_src", x_src))
    _check_widths(x_dst, x_src)
    V.check_length("grad_s", grad_s, col.numel(), "edge")
    return impl(backend).edge_similarity_backward(
        rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef
    )


edge_similarity_backward_op = torch.library.custom_op(
    "fastalign::edge_similarity_backward", mutates_args=()
)(_edge_similarity_backward)
edge_similarity_backward_call = TwinOp(edge_similarity_backward_op, _edge_similarity_backward)


@edge_similarity_backward_op.register_fake
def _(rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s, kernel, sigma, degree, coef, backend):
    return torch.empty_like(x_dst), torch.empty_like(x_src)


def _setup_context(ctx, inputs, output):
    (rowptr, col, x_dst, x_src, rowptr_t, col_t, perm_t, kernel, sigma, degree, coef, backend) = inputs
    ctx.params = (kernel, sigma, degree, coef, backend)
    ctx.save_for_backward(rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src)


def _backward(ctx, grad_s):
    rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src = ctx.saved_tensors
    if rowptr_t is None:
        raise RuntimeError("edge_similarity backward needs the transpose; it was not passed")
    grad_dst, grad_src = edge_similarity_backward_call(
        rowptr, col, rowptr_t, col_t, perm_t, x_dst, x_src, grad_s.contiguous(), *ctx.params
    )
    return (None, None, grad_dst, grad_src) + (None,) * 8


edge_similarity_call = TwinOp(edge_similarity_op, _edge_similarity, _backward, _setup_context)


def needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def edge_similarity(
    graph,
    x: Union[Tensor, Tuple[Tensor, Tensor]],
    kernel: str = "l1",
    sigma: Union[float, str, None] = None,
    degree: int = 2,
    coef: float = 1.0,
    backend: Optional[str] = None,
) -> Tensor:
    """Per-edge similarity ``s_e = k(x_i, x_j)`` for each edge ``e = (j -> i)``.

    Args:
        graph: a :class:`fastalign.Graph` (or anything ``Graph.coerce`` accepts).
        x: ``[N, F]`` features, or a pair ``(x_dst, x_src)`` for a rectangular graph.
        kernel: ``"l1"`` exp(-||x_i - x_j||_1 / sigma) (sigma 100 by default),
            ``"rbf"`` exp(-||x_i - x_j||^2 / (2 sigma^2)) (sigma 1 by default),
            ``"linear"`` x_i . x_j, ``"poly"`` (x_i . x_j + coef)^degree, ``"cosine"``.
        sigma: the l1 / rbf scale, or ``"auto"``: :func:`edge_scale` of ``x`` (detached),
            so that an edge at the typical distance has similarity exp(-1).

    Returns:
        ``[E]`` in the graph's internal edge order.
    """
    graph = as_graph(graph, x if isinstance(x, Tensor) else None)
    x_dst, x_src = split_pair("x", x, graph)
    params = kernel_params(kernel, sigma, degree, coef)
    name = resolve("edge_similarity", backend, x_dst.device, FUNCTIONS)
    check_cosine_range(kernel, name, x_dst, x_src)
    if is_auto(sigma):
        x_dst, x_src = scaled(graph, kernel, x_dst, x_src, backend)
    rowptr_t, col_t, perm_t = graph.transpose() if needs_grad(x_dst, x_src) else (None,) * 3
    return edge_similarity_call(
        graph.rowptr, graph.col, x_dst, x_src, rowptr_t, col_t, perm_t, *params, name
    )


# --------------------------------------------------------------- sigma="auto": the scale
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
