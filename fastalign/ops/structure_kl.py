"""structure_kl: the structural alignment loss of Alignahead++.

Per destination node i, with p = softmax(k(h_student)/tau) and q = softmax(k(h_peer)/tau)
over i's in-edges:

    kl_i = sum_{e in in-edges(i)} q_e (log q_e - log p_e)        (0 for isolated nodes)

Custom ops ``fastalign::structure_kl`` (returns kl and the per-node log-sum-exps of both
students, the only state the backward keeps) and ``fastalign::structure_kl_backward``
(recomputes the per-edge terms from that state). The reference builds per-edge tensors;
the compiled backends must not build E x F ones.

Kernels: reference ``fastalign/backends/reference.py``; CPU ``csrc/cpu/structure_kl.cpp`` and
``structure_kl_backward.cpp``; Triton ``fastalign/kernels/structure_kl.py``; CUDA
``csrc/cuda/kernels/structure_kl.cu`` and ``structure_kl_backward.cu``.

Fast path for a detached peer (Alignahead++ detaches it), where the backend has it
(``fastalign.backends.schemas.OPTIONAL_SCHEMAS``): the forward also returns the student's
gradient state for a unit upstream gradient (one F-row per destination node and two
scalars per edge, computed while each row's neighbours are in cache), and
``fastalign::structure_kl_student_backward`` scales it and makes one pass over the
transpose, recomputing no similarity.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import backends
from .. import validation as V
from ..validation import check_tau, is_auto, kernel_params, split_pair
from .twin_op import TwinOp
from ._common import as_graph, check_cosine_range, impl, resolve
from .edge_similarity import scaled
from .edge_similarity import check_both_sides, needs_grad


def _check_embeddings(rowptr, s_dst, s_src, p_dst, p_src) -> None:
    """Student and peer features: destinations = the graph's rows, one source set, each
    student's two sides of one width, one dtype for all."""
    n = rowptr.numel() - 1
    V.check_rows("s_dst", s_dst, n, "graph (destinations)")
    V.check_rows("p_dst", p_dst, n, "graph (destinations)")
    V.check_rows("p_src", p_src, V.check_2d("s_src", s_src).size(0), "student's s_src")
    if s_src.size(1) != s_dst.size(1) or p_src.size(1) != p_dst.size(1):
        raise ValueError("each student's destination and source features must share a width")
    if len({t.dtype for t in (s_dst, s_src, p_dst, p_src)}) != 1:
        raise TypeError("student and peer embeddings must share a dtype")

FUNCTIONS = ("structure_kl_forward", "structure_kl_backward")
FAST_PATH = ("structure_kl_forward_with_grad_state", "structure_kl_student_backward")
REDUCTIONS = ("mean", "sum", "none")


def _structure_kl(
    rowptr: Tensor,
    col: Tensor,
    s_dst: Tensor,
    s_src: Tensor,
    p_dst: Tensor,
    p_src: Tensor,
    rowptr_t: Optional[Tensor],
    col_t: Optional[Tensor],
    perm_t: Optional[Tensor],
    kernel: str,
    sigma: float,
    degree: int,
    coef: float,
    tau: float,
    with_grad_state: bool,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(kl, lse_student, lse_peer, dst_grad, src_coef); the last two are the student's
    gradient state when ``with_grad_state``, else empty."""
    _check_embeddings(rowptr, s_dst, s_src, p_dst, p_src)
    V.check_csr(rowptr, col, s_src.size(0))
    args = (rowptr, col, s_dst, s_src, p_dst, p_src, kernel, sigma, degree, coef, tau)
    if with_grad_state:
        return tuple(impl(backend).structure_kl_forward_with_grad_state(*args))
    kl, lse_s, lse_p = impl(backend).structure_kl_forward(*args)
    return kl, lse_s, lse_p, s_dst.new_empty((0,)), s_dst.new_empty((0,))


structure_kl_op = torch.library.custom_op("fastalign::structure_kl", mutates_args=())(_structure_kl)


@structure_kl_op.register_fake
def _(rowptr, col, s_dst, s_src, p_dst, p_src, rowptr_t, col_t, perm_t,
      kernel, sigma, degree, coef, tau, with_grad_state, backend):
    n = rowptr.shape[0] - 1
    kl, lse = backends.structure_kl_state_dtype(backend, s_dst.dtype)
    state = (s_dst.new_empty((n,), dtype=kl), s_dst.new_empty((n,), dtype=lse), s_dst.new_empty((n,), dtype=lse))
    if with_grad_state:  # only backends with the fast path: gradient state in V.acc_dtype(s_dst.dtype)
        acc = V.acc_dtype(s_dst.dtype)
        return state + (s_dst.new_empty((n, s_dst.shape[1]), dtype=acc), s_dst.new_empty((col.shape[0], 2), dtype=acc))
    return state + (s_dst.new_empty((0,)), s_dst.new_empty((0,)))


def _structure_kl_backward(
    rowptr: Tensor,
    col: Tensor,
    rowptr_t: Tensor,
    col_t: Tensor,
    perm_t: Tensor,
    s_dst: Tensor,
    s_src: Tensor,
    p_dst: Tensor,
    p_src: Tensor,
    lse_s: Tensor,
    lse_p: Tensor,
    kl: Tensor,
    grad_kl: Tensor,
    kernel: str,
    sigma: float,
    degree: int,
    coef: float,
    tau: float,
    peer_grad: bool,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_embeddings(rowptr, s_dst, s_src, p_dst, p_src)
    check_both_sides(rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src)
    n = rowptr.numel() - 1
    for name, t in (("lse_s", lse_s), ("lse_p", lse_p), ("kl", kl), ("grad_kl", grad_kl)):
        V.check_length(name, t, n, "destination node")
    return impl(backend).structure_kl_backward(
        rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src,
        lse_s, lse_p, kl, grad_kl, kernel, sigma, degree, coef, tau, peer_grad,
    )


structure_kl_backward_op = torch.library.custom_op(
    "fastalign::structure_kl_backward", mutates_args=()
)(_structure_kl_backward)
structure_kl_backward_call = TwinOp(structure_kl_backward_op, _structure_kl_backward)


@structure_kl_backward_op.register_fake
def _(rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src, lse_s, lse_p, kl,
      grad_kl, kernel, sigma, degree, coef, tau, peer_grad, backend):
    if peer_grad:
        peer = (torch.empty_like(p_dst), torch.empty_like(p_src))
    else:
        peer = (p_dst.new_empty((0,)), p_src.new_empty((0,)))
    return (torch.empty_like(s_dst), torch.empty_like(s_src)) + peer


def _structure_kl_student_backward(
    rowptr_t: Tensor,
    col_t: Tensor,
    perm_t: Tensor,
    s_dst: Tensor,
    s_src: Tensor,
    dst_grad: Tensor,
    src_coef: Tensor,
    grad_kl: Tensor,
    kernel: str,
    sigma: float,
    degree: int,
    coef: float,
    tau: float,
    combined: bool,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    """(grad s_dst, grad s_src); with ``combined`` (s_dst and s_src are one tensor)
    (their sum, empty)."""
    n, num_edges = V.check_2d("s_dst", s_dst).size(0), col_t.numel()
    V.check_csr(rowptr_t, col_t, n, "graph transpose")
    V.check_rows("s_src", s_src, rowptr_t.numel() - 1, "graph transpose (sources)")
    V.check_perm(perm_t, num_edges)
    V.check_rows("dst_grad", dst_grad, n, "graph (destinations)")
    if dst_grad.size(1) != s_dst.size(1) or s_src.size(1) != s_dst.size(1):
        raise ValueError("dst_grad, s_dst and s_src must share a width")
    if src_coef.shape != (num_edges, 2):
        raise ValueError(f"src_coef must have shape [{num_edges}, 2], got {list(src_coef.shape)}")
    V.check_length("grad_kl", grad_kl, n, "destination node")
    if combined and s_src.size(0) != n:
        raise ValueError("combined gradients need a square graph")
    return tuple(impl(backend).structure_kl_student_backward(
        rowptr_t, col_t, perm_t, s_dst, s_src, dst_grad, src_coef, grad_kl,
        kernel, sigma, degree, coef, tau, combined,
    ))


structure_kl_student_backward_op = torch.library.custom_op(
    "fastalign::structure_kl_student_backward", mutates_args=()
)(_structure_kl_student_backward)
structure_kl_student_backward_call = TwinOp(structure_kl_student_backward_op, _structure_kl_student_backward)


@structure_kl_student_backward_op.register_fake
def _(rowptr_t, col_t, perm_t, s_dst, s_src, dst_grad, src_coef, grad_kl,
      kernel, sigma, degree, coef, tau, combined, backend):
    if combined:
        return torch.empty_like(s_src), s_dst.new_empty((0,))
    return torch.empty_like(s_dst), torch.empty_like(s_src)


def _setup_context(ctx, inputs, output):
    (rowptr, col, s_dst, s_src, p_dst, p_src, rowptr_t, col_t, perm_t,
     kernel, sigma, degree, coef, tau, with_grad_state, backend) = inputs
    kl, lse_s, lse_p, dst_grad, src_coef = output
    ctx.params = (kernel, sigma, degree, coef, tau)
    ctx.backend = backend
    ctx.with_grad_state = with_grad_state
    ctx.same_student = s_dst is s_src
    if with_grad_state:  # the peer is not needed any more
        ctx.save_for_backward(rowptr_t, col_t, perm_t, s_dst, s_src, dst_grad, src_coef)
        return
    ctx.save_for_backward(
        rowptr, col, rowptr_t, col_t, perm_t, s_dst, s_src, p_dst, p_src, lse_s, lse_p, kl
    )


def _backward(ctx, grad_kl, _grad_lse_s, _grad_lse_p, _grad_dst_grad, _grad_src_coef):
    saved = ctx.saved_tensors
    if ctx.with_grad_state:
        # One student tensor on both sides (a square graph): one gradient, their sum.
        combined = ctx.same_student
        g_first, g_second = structure_kl_student_backward_call(
            *saved, grad_kl.contiguous(), *ctx.params, combined, ctx.backend
        )
        if combined:  # autograd adds the two slots' gradients into the one tensor
            return (None, None, None, g_first) + (None,) * 12
        return (None, None, g_first, g_second) + (None,) * 12
    if saved[2] is None:
        raise RuntimeError("structure_kl backward needs the transpose; it was not passed")
    peer_grad = ctx.needs_input_grad[4] or ctx.needs_input_grad[5]
    g_s_dst, g_s_src, g_p_dst, g_p_src = structure_kl_backward_call(
        *saved, grad_kl.contiguous(), *ctx.params, peer_grad, ctx.backend
    )
    if not peer_grad:
        g_p_dst = g_p_src = None
    return (None, None, g_s_dst, g_s_src, g_p_dst, g_p_src) + (None,) * 10


structure_kl_call = TwinOp(structure_kl_op, _structure_kl, _backward, _setup_context)


def _fast_path(name: str, dtype: torch.dtype, p_dst: Tensor, p_src: Tensor) -> bool:
    """The gradient-state path: the peer detached and the backend has it for ``dtype``."""
    return not needs_grad(p_dst, p_src) and backends.has_fast_path(name, FAST_PATH, dtype)


def structure_kl(
    graph,
    h_student: Union[Tensor, Tuple[Tensor, Tensor]],
    h_peer: Union[Tensor, Tuple[Tensor, Tensor]],
    kernel: str = "l1",
    tau: float = 1.0,
    reduction: str = "mean",
    sigma: Union[float, str, None] = None,
    degree: int = 2,
    coef: float = 1.0,
    backend: Optional[str] = None,
) -> Tensor:
    """KL(peer || student) between the two local structures, per destination node.

    Args:
        graph: a :class:`fastalign.Graph` (or anything ``Graph.coerce`` accepts).
        h_student, h_peer: ``[N, F_s]`` and ``[N, F_p]`` embeddings (widths may differ:
            only per-edge similarities are compared), or ``(h_dst, h_src)`` pairs for a
            rectangular graph.
        kernel, sigma, degree, coef: the similarity kernel, as in :func:`edge_similarity`.
            ``sigma="auto"`` (l1, rbf): the student's and the peer's kernels each at their
            own :func:`edge_scale` (detached), so that layers of different magnitude are
            compared by the shape of their local structure.
        tau: softmax temperature.
        reduction: ``"mean"`` over all destination nodes (isolated ones count as 0),
            ``"sum"``, or ``"none"`` (one value per destination node).

    Differentiable in ``h_student``, and in ``h_peer`` when it requires grad (detach the
    peer, as Alignahead++ does, to skip that work).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    tau = check_tau(tau)
    params = kernel_params(kernel, sigma, degree, coef)
    some_x = h_student if isinstance(h_student, Tensor) else None
    graph = as_graph(graph, some_x)
    s_dst, s_src = split_pair("h_student", h_student, graph)
    p_dst, p_src = split_pair("h_peer", h_peer, graph)
    if p_dst.dtype != s_dst.dtype:
        raise TypeError(f"h_student ({s_dst.dtype}) and h_peer ({p_dst.dtype}) must share a dtype")
    name = resolve("structure_kl", backend, s_dst.device, FUNCTIONS)
    check_cosine_range(kernel, name, s_dst, s_src, p_dst, p_src)
    if is_auto(sigma):
        # the scale's pass is an edge_similarity one: that op's backend for the request
        s_dst, s_src = scaled(graph, kernel, s_dst, s_src, backend)
        p_dst, p_src = scaled(graph, kernel, p_dst, p_src, backend)
    grad = needs_grad(s_dst, s_src, p_dst, p_src)
    rowptr_t, col_t, perm_t = graph.transpose() if grad else (None,) * 3
    kl = structure_kl_call(
        graph.rowptr, graph.col, s_dst, s_src, p_dst, p_src, rowptr_t, col_t, perm_t,
        *params, tau, grad and _fast_path(name, s_dst.dtype, p_dst, p_src), name,
    )[0].to(s_dst.dtype)  # a backend may keep its state wider (structure_kl_state_dtype)
    if reduction == "mean":
        return kl.mean() if kl.numel() > 0 else kl.sum()
    if reduction == "sum":
        return kl.sum()
    return kl
