"""The peers fastalign is measured against, written the way a careful PyG user would.

* :func:`csr_adjacency`: the ``torch.sparse`` CSR adjacency ``A[dst, src]`` (PyG's adj_t),
  for ``torch.sparse.mm`` (MKL on CPU, cuSPARSE on CUDA) and PyG's adj_t path.
* :func:`pyg_scatter_spmm`: PyG's message passing for a sum aggregation (gather the
  source rows, scatter-add them into the targets).
* :func:`pyg_edge_similarity`, :func:`pyg_edge_softmax`: the structure loss's first two
  steps on their own (gather both endpoints and apply the kernel; PyG's ``softmax``).
* :func:`pyg_gat_aggregate`: GATConv's attention-weighted aggregation on its own.
* :func:`pyg_gcn_conv`: ``torch_geometric.nn.GCNConv(cached=True)``.
* :func:`pyg_structure_loss`: the PyG-style structure loss: gather both endpoints,
  per-edge kernel, ``torch_geometric.utils.softmax`` over each target's in-edges, KL,
  scatter to nodes, mean. Same semantics as :func:`fastalign.structure_kl`
  (``KL(peer || student)`` per target node, isolated nodes 0, mean over all nodes).
* :func:`compiled`: ``torch.compile`` of any of them (the bar a careful user tries first).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def have_pyg() -> bool:
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        return False
    return True


def csr_adjacency(edge_index: Tensor, num_nodes: int, dtype=torch.float32) -> Tensor:
    """``A[dst, src]`` as a torch.sparse CSR tensor with unit values (duplicates summed)."""
    values = torch.ones(edge_index.size(1), dtype=dtype, device=edge_index.device)
    adj = torch.sparse_coo_tensor(
        torch.stack([edge_index[1], edge_index[0]]), values, (num_nodes, num_nodes)
    ).coalesce()
    return adj.to_sparse_csr()


def torch_sparse_mm(adj_csr: Tensor, x: Tensor, reduce: str = "sum") -> Tensor:
    return torch.sparse.mm(adj_csr, x) if reduce == "sum" else torch.sparse.mm(adj_csr, x, reduce)


def pyg_scatter_spmm(edge_index: Tensor, x: Tensor, num_nodes: int, reduce: str = "sum") -> Tensor:
    from torch_geometric.utils import scatter

    return scatter(x.index_select(0, edge_index[0]), edge_index[1], 0, dim_size=num_nodes, reduce=reduce)


def pyg_edge_similarity(x: Tensor, edge_index: Tensor, kernel: str = "l1", sigma: float = 100.0, degree: int = 2,
                        coef: float = 1.0) -> Tensor:
    """Per-edge similarity as PyG code writes it: both endpoints gathered (two E x F
    tensors), then the kernel over their rows."""
    return _pairwise_kernel(x[edge_index[1]], x[edge_index[0]], kernel, sigma, degree, coef)


def pyg_edge_softmax(logits: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """``torch_geometric.utils.softmax`` of per-edge logits over each target's in-edges."""
    from torch_geometric.utils import softmax

    return softmax(logits, edge_index[1], num_nodes=num_nodes)


def pyg_gat_aggregate(x: Tensor, alpha_src: Tensor, alpha_dst: Tensor, edge_index: Tensor, num_nodes: int,
                      negative_slope: float = 0.2) -> Tensor:
    """GATConv's propagation as PyG writes it (no self loops added): per-edge logits
    ``leaky_relu(alpha_src[j] + alpha_dst[i])`` (E x H), ``softmax`` over each target's
    in-edges, messages ``alpha * x[j]`` (E x H x C), scatter-sum into the targets."""
    from torch_geometric.utils import scatter, softmax

    src, dst = edge_index[0], edge_index[1]
    alpha = torch.nn.functional.leaky_relu(alpha_src[src] + alpha_dst[dst], negative_slope)
    alpha = softmax(alpha, dst, num_nodes=num_nodes)
    return scatter(x[src] * alpha.unsqueeze(-1), dst, 0, dim_size=num_nodes, reduce="sum")


def pyg_gcn_conv(in_channels: int, out_channels: int, **kwargs):
    from torch_geometric.nn import GCNConv

    return GCNConv(in_channels, out_channels, cached=True, **kwargs)


def _pairwise_kernel(a: Tensor, b: Tensor, kernel: str, sigma: float, degree: int, coef: float) -> Tensor:
    if kernel == "l1":
        return torch.exp(-(a - b).abs().sum(-1) / sigma)
    if kernel == "rbf":
        return torch.exp(-(a - b).pow(2).sum(-1) / (2 * sigma * sigma))
    if kernel == "linear":
        return (a * b).sum(-1)
    if kernel == "poly":
        return ((a * b).sum(-1) + coef).pow(degree)
    if kernel == "cosine":
        na = a.norm(dim=-1).clamp(min=1e-8)
        nb = b.norm(dim=-1).clamp(min=1e-8)
        return (a * b).sum(-1) / (na * nb)
    raise ValueError(f"unknown kernel {kernel!r}")


def pyg_structure_loss(
    h_student: Tensor,
    h_peer: Tensor,
    edge_index: Tensor,
    num_nodes: int,
    kernel: str = "l1",
    tau: float = 1.0,
    sigma: Optional[float] = None,
    degree: int = 2,
    coef: float = 1.0,
) -> Tensor:
    """The structure loss as PyG code writes it (E x F gathers, per-edge tensors)."""
    from torch_geometric.utils import scatter, softmax

    if sigma is None:
        sigma = 100.0 if kernel == "l1" else 1.0
    src, dst = edge_index[0], edge_index[1]

    def log_local(h):
        s = _pairwise_kernel(h[dst], h[src], kernel, sigma, degree, coef) / tau
        return softmax(s, dst, num_nodes=num_nodes).clamp_min(1e-30).log()

    log_p = log_local(h_student)
    log_q = log_local(h_peer)
    kl = log_q.exp() * (log_q - log_p)
    return scatter(kl, dst, 0, dim_size=num_nodes, reduce="sum").mean()


COMPILE_OPTIONS: dict = {}  # e.g. {"dynamic": True}: set by ``fastalign bench --compile-dynamic``


def compiled(fn, **kwargs):
    """``torch.compile(fn)`` with a cache large enough for one compile per benchmark
    graph (dynamo would otherwise fall back to eager after 8 recompiles). By default
    each graph gets its own static-shape compile (the best case for the peer);
    ``COMPILE_OPTIONS = {"dynamic": True}`` compiles once for all graphs instead."""
    kwargs = {**COMPILE_OPTIONS, **kwargs}
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096
        )
    return torch.compile(fn, **kwargs)
