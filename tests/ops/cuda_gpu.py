"""What the CUDA sections of the op tests share: the backend under test (the CUDA
extension, fastalign._C_cuda) and the reference, called directly on the same GPU; the
edge-case graphs and rows longer than a thread's or a block's share, moved there; a hub
of in-degree 50,000 and a source of out-degree 20,000; features; tolerances of a few
units in the last place of the output dtype. Low-precision inputs are compared with the
reference run on the same low-precision inputs (both accumulate in float32).

Imported only where helpers.CUDA_CASES holds. In the dry run
(FASTALIGN_GPU_TESTS_ON_CPU=1, no GPU) the C++ CPU backend stands in for the CUDA one on
CPU tensors (it sends float16 / bfloat16 to the reference), and the cases that check the
CUDA extension itself are skipped (``cuda_only``)."""

import importlib

import pytest
import torch

from fastalign import Graph, backends
import helpers
from helpers import all_graphs, CUDA_CASES, GPU_DRY_RUN, GPU_DTYPES, power_law_edge_index, TOL

if not CUDA_CASES:  # pragma: no cover
    raise ImportError("cuda_gpu needs a CUDA device and fastalign._C_cuda, or FASTALIGN_GPU_TESTS_ON_CPU=1")

__all__ = ["as_state_of", "assert_close", "CU", "cuda_case", "cuda_only", "DEV", "dtype_params", "edge_weight",
           "feats", "graph_of", "hub50k", "hub_rows_graph", "kl_state", "misaligned", "REF", "sim_params",
           "UNDER_TEST", "WIDTHS"]

REF = importlib.import_module("fastalign.backends.reference")
UNDER_TEST = "cpu" if GPU_DRY_RUN else "cuda"  # the backend these cases check
CU = backends.get(UNDER_TEST)
DEV = "cpu" if GPU_DRY_RUN else "cuda"
cuda_case = pytest.mark.cuda
cuda_only = pytest.mark.skipif(GPU_DRY_RUN, reason="dry run: checks the CUDA extension itself")

PIECE = 1024  # rows longer than this, and than the split size, are cut into pieces
WIDTHS = (1, 3, 16, 64, 67, 256)


def sim_params(kernel, width):
    """(kernel, sigma, degree, coef) keeping similarities in a well-scaled range."""
    sigma = {"l1": float(max(width, 1)), "rbf": float(max(width, 1)) ** 0.5}.get(kernel, 1.0)
    return kernel, sigma, 2, 1.0


def kl_state(out, dtype):
    """A structure-KL forward's (kl, lse_s, lse_p), checked against the dtypes the backend
    declares (backends.structure_kl_state_dtype) and cast to the reference's (the C++
    stand-in of a dry run keeps them in double)."""
    kl_dtype, lse_dtype = backends.structure_kl_state_dtype(UNDER_TEST, dtype)
    kl, ls, lp = out
    assert kl.dtype == kl_dtype and ls.dtype == lp.dtype == lse_dtype
    ref_lse = torch.float64 if dtype == torch.float64 else torch.float32
    return kl.to(dtype), ls.to(ref_lse), lp.to(ref_lse)


def as_state_of(ref, got):
    """The reference's structure-KL state (kept in double) in the dtypes of ``got``, the
    backend's state as kl_state returns it: the same comparison, and the same backward
    inputs, as a backend's own forward gives."""
    return tuple(r.to(g.dtype) for r, g in zip(ref, got))


def hub_graph(index_dtype, degree=50_000, n=60_000):
    """A hub of in-degree 50,000 (Reddit-like) on top of a power-law graph."""
    gen = torch.Generator().manual_seed(11)
    src = torch.randint(1, n, (degree,), generator=gen)
    hub = torch.stack([src, torch.zeros_like(src)])
    ei = torch.cat([hub, power_law_edge_index(n, 200_000, seed=5)], 1).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n)


def source_hub_graph(index_dtype, degree=20_000, n=5000):
    """A source of out-degree 20,000 (duplicates included): a long row of the transpose,
    which the max backward splits; plus a power-law graph."""
    gen = torch.Generator().manual_seed(13)
    dst = torch.randint(0, n, (degree,), generator=gen)
    hub = torch.stack([torch.zeros_like(dst), dst])
    ei = torch.cat([hub, power_law_edge_index(n, 40_000, seed=6)], 1).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n)


_GRAPHS = {}


def graph_of(name, index_dtype):
    """One of helpers.GRAPH_NAMES (rows cut at PIECE), "hub50k" or "source_hub", on the
    device (built once)."""
    key = (name, index_dtype)
    if key not in _GRAPHS:
        if name == "hub50k":
            g = hub_graph(index_dtype)
        elif name == "source_hub":
            g = source_hub_graph(index_dtype)
        else:
            g = dict(all_graphs(index_dtype, PIECE))[name]
        _GRAPHS[key] = g.to(DEV)
    return _GRAPHS[key]


def hub50k(index_dtype):
    """The hub graph on the device, checked: a row of at least 50,000 edges."""
    g = graph_of("hub50k", index_dtype)
    assert int(g.in_degree.max()) >= 50_000
    return g


def hub_rows_graph(source_degree=0):
    """The hub of in-degree 50,000 (a block's row) and two more destinations of exactly
    1,024 (a warp's or a thread's longest row) and 1,025 edges; with ``source_degree``,
    node 7 also sends that many edges (a long row of the transpose). On the device,
    checked."""
    hub = hub_graph(torch.int64)
    n = hub.num_dst
    ei = torch.cat([hub.edge_index.cpu(),
                    torch.stack([torch.arange(1024) % 500 + 10, torch.full((1024,), n)]),
                    torch.stack([torch.arange(1025) % 500 + 10, torch.full((1025,), n + 1)]),
                    torch.stack([torch.full((source_degree,), 7), torch.arange(source_degree) % n])], 1)
    g = Graph.from_edge_index(ei, num_nodes=n + 2).to(DEV)
    deg = (g.rowptr[1:] - g.rowptr[:-1]).cpu()
    assert int(deg[0]) >= 50_000 and int(deg[n]) == 1024 and int(deg[n + 1]) == 1025
    return g


def misaligned(n, width):
    """Float32 features [n, width] as views the kernels must not load as aligned rows: a
    contiguous one 4 bytes off a 16-byte boundary, and a strided one."""
    shifted = torch.randn(n * width + 1, device=DEV)[1:].view(n, width)
    strided = torch.randn(n, 2 * width, device=DEV)[:, ::2]
    return shifted, strided


def feats(n, width, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=gen).to(dtype).to(DEV)


def edge_weight(graph, dtype, seed=5):
    return helpers.edge_weight(graph, dtype, seed).to(DEV)


def magnitude(*tensors):
    """The largest finite |value| of the tensors, at least 1."""
    finite = [t[torch.isfinite(t)].float().abs().max() for t in tensors if torch.isfinite(t).any()]
    return max([1.0] + [float(m) for m in finite])


def assert_close(actual, expected, dtype=None, scale_of=()):
    """Within a few ulps of the output dtype, absolute errors measured against the
    output's magnitude, or against that of ``scale_of`` when the output is a small
    difference of such terms (kl = t / S_p + lse_s - lse_p: its float32 error is that of
    the log-sum-exps, ~1e-5 on a row of 9,000 edges, whatever the size of kl)."""
    dtype = dtype or expected.dtype
    rtol, atol = TOL.get(dtype, TOL[torch.float32])
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = magnitude(expected, *scale_of) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


dtype_params = pytest.mark.parametrize("dtype", GPU_DTYPES)
