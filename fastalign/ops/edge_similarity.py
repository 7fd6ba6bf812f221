"""edge_similarity: s_e = k(x_i, x_j) for every edge e = (j -> i).

Kernels (see fastalign.backends.reference for the exact formulas): "l1", "rbf", "linear",
"poly", "cosine". Custom ops ``fastalign::edge_similarity`` and its backward
``fastalign::edge_similarity_backward`` (destination gradients by CSR rows, source
gradients by the rows of the cached transpose: no atomics).

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
from ._eager import TwinOp
from ._common import as_graph, check_cosine_range, impl, is_auto, kernel_params, resolve, split_pair

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
        from .edge_scale import scaled  # it runs this module's op: imported on use, one way

        x_dst, x_src = scaled(graph, kernel, x_dst, x_src, backend)
    rowptr_t, col_t, perm_t = graph.transpose() if needs_grad(x_dst, x_src) else (None,) * 3
    return edge_similarity_call(
        graph.rowptr, graph.col, x_dst, x_src, rowptr_t, col_t, perm_t, *params, name
    )
