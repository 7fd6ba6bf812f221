"""StructureAlignLoss: the structural alignment loss of Alignahead++ as a module."""

from __future__ import annotations

import weakref
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..graph import Graph
from ..ops import structure_kl
from ..validation import check_tau, kernel_params, KERNELS

FeaturesOrPair = Union[Tensor, Tuple[Tensor, Tensor]]


class StructureAlignLoss(torch.nn.Module):
    r"""KL(peer || student) between the neighbour distributions of two embeddings.

    For each destination node ``i`` with in-neighbours ``N(i)``, both embeddings give a
    local structure ``p_ij = softmax_{j in N(i)}(k(h_i, h_j) / tau)``; the loss is
    ``sum_j q_ij (log q_ij - log p_ij)`` with ``q`` from ``h_peer`` and ``p`` from
    ``h_student``, reduced over nodes (isolated nodes count as 0 in the mean). Only
    per-edge similarities are compared, so the two widths may differ. This is a thin
    module over :func:`fastalign.structure_kl` (fused kernels; no ``E x F`` tensor on
    the compiled backends).

    Args:
        kernel: similarity kernel, one of ``"l1"`` (``exp(-|h_i-h_j|_1 / sigma)``,
            sigma 100 by default, as the public Alignahead code), ``"rbf"``, ``"linear"``,
            ``"poly"``, ``"cosine"``.
        tau: softmax temperature.
        sigma, degree, coef: kernel parameters (see :func:`fastalign.edge_similarity`);
            ``sigma="auto"`` (l1, rbf): the student's and the peer's kernels each at their
            own mean edge distance (:func:`fastalign.edge_scale`), held constant in the
            gradient.
        reduction: ``"mean"`` over destination nodes, ``"sum"`` or ``"none"``.
        detach_peer: detach ``h_peer`` (Alignahead++ trains students in turn with the
            peers' embeddings detached); by default the gradient reaches whichever
            input requires it.
        backend: force a kernel backend; default automatic.

    ``forward(graph, h_student, h_peer)``: ``graph`` is a :class:`fastalign.Graph` or
    anything ``Graph.coerce`` accepts (an edge_index, torch.sparse adj_t, SparseTensor,
    scipy.sparse). A non-Graph adjacency is converted once and the Graph cached for as
    long as the same object is passed unmodified (tracked by identity and, for tensors,
    by their in-place version counter), so passing the same ``edge_index`` every epoch
    costs one conversion. ``h_*`` are ``[N, F]`` or ``(h_dst, h_src)`` pairs for a
    rectangular graph.

    Example::

        >>> import torch
        >>> from fastalign.nn import StructureAlignLoss
        >>> loss_fn = StructureAlignLoss(kernel="l1", tau=1.0)
        >>> edge_index = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
        >>> h_student = torch.randn(3, 16, requires_grad=True)
        >>> h_peer = torch.randn(3, 32)             # another width is fine
        >>> loss = loss_fn(edge_index, h_student, h_peer.detach())
        >>> loss.backward()
    """

    def __init__(
        self,
        kernel: str = "l1",
        tau: float = 1.0,
        sigma: Union[float, str, None] = None,
        degree: int = 2,
        coef: float = 1.0,
        reduction: str = "mean",
        detach_peer: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown similarity kernel {kernel!r}; choose one of {KERNELS}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        kernel_params(kernel, sigma, degree, coef)  # validates sigma, degree
        self.kernel = kernel
        self.tau = check_tau(tau)
        self.sigma = sigma
        self.degree = degree
        self.coef = coef
        self.reduction = reduction
        self.detach_peer = bool(detach_peer)
        self.backend = backend
        self._graph_key = None
        self._graph: Optional[Graph] = None

    def graph_for(self, adj, h_student: FeaturesOrPair) -> Graph:
        """The Graph for ``adj`` (built once per adjacency object and cached)."""
        if isinstance(adj, Graph):
            return adj
        if isinstance(h_student, (tuple, list)):
            if len(h_student) != 2 or not all(isinstance(h, Tensor) for h in h_student):
                raise ValueError("h_student must be a tensor or a (h_dst, h_src) pair of tensors")
            num_nodes = (h_student[1].size(0), h_student[0].size(0))  # (num_src, num_dst)
        elif isinstance(h_student, Tensor):
            num_nodes = h_student.size(0) if h_student.dim() >= 1 else None
        else:
            raise TypeError(f"h_student must be a torch.Tensor, got {type(h_student).__name__}")
        version = getattr(adj, "_version", None)
        key = self._graph_key
        if (
            key is not None
            and key[0]() is adj
            and key[1] == version
            and key[2] == num_nodes
            and self._graph is not None
        ):
            return self._graph
        graph = Graph.coerce(adj, num_nodes=num_nodes)
        try:
            ref = weakref.ref(adj)
        except TypeError:  # objects without weak references: no caching
            return graph
        self._graph_key = (ref, version, num_nodes)
        self._graph = graph
        return graph

    def reset_cache(self) -> None:
        self._graph_key = None
        self._graph = None

    def forward(self, graph, h_student: FeaturesOrPair, h_peer: FeaturesOrPair) -> Tensor:
        g = self.graph_for(graph, h_student)
        if self.detach_peer:
            h_peer = (
                tuple(h.detach() for h in h_peer)
                if isinstance(h_peer, (tuple, list))
                else h_peer.detach()
            )
        return structure_kl(
            g, h_student, h_peer, kernel=self.kernel, tau=self.tau, reduction=self.reduction,
            sigma=self.sigma, degree=self.degree, coef=self.coef, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, tau={self.tau}, reduction={self.reduction!r}"
