"""The test suite's one fixtures module (as torch_scatter's testing.py): the grid every
op's tests run over (tests/ops/test_<op>.py: the backends here, small graphs with the edge
cases every backend must handle and rows longer than a kernel's piece, index and feature
dtypes, widths, similarity parameters, tolerances), feature makers, relative errors, and
dense float64 computations of each op (an independent definition, not the reference
backend). The PyG-comparison helpers of the drop-in layers are in
pyg_twins.py (they need torch_geometric)."""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch

from fastalign import Graph, backends
from fastalign.bench.graphs import power_law_edge_index  # noqa: F401  (canonical generator)
from fastalign.validation import KERNELS  # noqa: F401  (the similarity kernels, in one order)


# The one grid every backend's tests run over (with case_graphs and long_row_graph below).
INDEX_DTYPES = (torch.int32, torch.int64)
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the GPU kernels take
# Element-wise (rtol, atol) against the reference, atol relative to the output's scale:
# float64 the same maths in another order; otherwise a few ulps of the output dtype.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (3e-2, 1.6e-2),
}
# The relative error (rel_err) a whole output may have against the float64 reference.
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LOW_PRECISION_TOL = {d: REL_TOL[d] for d in (torch.bfloat16, torch.float16)}


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (0 for an empty reference)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30)) if ref.numel() else 0.0


def random_edge_index(num_src, num_dst, num_edges, *, seed=0, self_loops=True, duplicates=True):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, max(num_src, 1), (num_edges,), generator=gen)
    dst = torch.randint(0, max(num_dst, 1), (num_edges,), generator=gen)
    if num_src == 0 or num_dst == 0:
        return torch.empty(2, 0, dtype=torch.long)
    ei = torch.stack([src, dst])
    if self_loops and num_src == num_dst and num_edges > 4:
        loops = torch.arange(0, min(num_src, 3))
        ei = torch.cat([ei, torch.stack([loops, loops])], 1)
    if duplicates and ei.size(1) > 2:
        ei = torch.cat([ei, ei[:, :2]], 1)
    return ei


def case_graphs(index_dtype=torch.int64):
    """(name, Graph) pairs covering the edge cases: isolated nodes, an empty graph, self
    loops, duplicate edges, a rectangular graph, a hub row."""
    cases = []
    # square with self loops, duplicates and isolated nodes (ids 20..23 have no edges)
    ei = random_edge_index(20, 20, 60, seed=1)
    cases.append(("square", Graph.from_edge_index(ei.to(index_dtype), num_nodes=24)))
    # rectangular block: 15 sources -> 9 destinations
    ei = random_edge_index(15, 9, 40, seed=2)
    cases.append(("rectangular", Graph.from_edge_index(ei.to(index_dtype), num_nodes=(15, 9))))
    # empty graph with nodes
    cases.append(("no_edges", Graph.from_edge_index(torch.empty(2, 0, dtype=index_dtype), num_nodes=5)))
    # hub: node 0 receives from everyone
    n = 30
    src = torch.arange(1, n)
    hub = torch.stack([src, torch.zeros_like(src)])
    back = torch.stack([torch.zeros(5, dtype=torch.long), torch.arange(1, 6)])
    cases.append(("hub", Graph.from_edge_index(torch.cat([hub, back], 1).to(index_dtype), num_nodes=n)))
    return cases


def well_scaled(kernel, x):
    """Rows of norm ~1 for the linear and poly kernels (others unchanged), so that their
    similarities stay moderate. Unscaled N(0, 1) rows of width 64 give poly logits near
    5e4, where the float32 reference's peer gradients of the structure loss are more than
    10x off float64 (every float32 implementation's are): no oracle to test against."""
    return x * x.size(1) ** -0.5 if kernel in ("linear", "poly") else x


def dense_adjacency(graph: Graph, weight=None, dtype=torch.float64):
    """A[i, j] = sum of the weights of edges j -> i."""
    a = torch.zeros(graph.num_dst, graph.num_src, dtype=dtype)
    w = weight if weight is not None else graph.edge_weight
    w = torch.ones(graph.num_edges, dtype=dtype) if w is None else w.to(dtype)
    a.index_put_((graph.row, graph.col.long()), w, accumulate=True)
    return a


def dense_kernel(kernel, a, b, sigma=None, degree=2, coef=1.0):
    """[Nd, F] x [Ns, F] -> [Nd, Ns] similarity, straight from the definitions."""
    if kernel == "l1":
        sigma = 100.0 if sigma is None else sigma
        return torch.exp(-torch.cdist(a, b, p=1) / sigma)
    if kernel == "rbf":
        sigma = 1.0 if sigma is None else sigma
        return torch.exp(-torch.cdist(a, b, p=2) ** 2 / (2 * sigma**2))
    if kernel == "linear":
        return a @ b.T
    if kernel == "poly":
        return (a @ b.T + coef) ** degree
    if kernel == "cosine":
        na = a.norm(dim=1, keepdim=True).clamp(min=1e-8)
        nb = b.norm(dim=1, keepdim=True).clamp(min=1e-8)
        return (a / na) @ (b / nb).T
    raise ValueError(kernel)


def dense_edge_scale(graph: Graph, x, kernel):
    """sigma="auto" by its definition: the mean L1 edge distance (l1), or the root of half
    the mean squared L2 edge distance (rbf), from the E x F differences (float64)."""
    x_dst, x_src = x if isinstance(x, tuple) else (x, x)
    diff = x_dst.detach().double()[graph.row] - x_src.detach().double()[graph.col.long()]
    if kernel == "l1":
        return diff.abs().sum(1).mean()
    return (diff.pow(2).sum(1).mean() / 2).sqrt()


def dense_edge_values(graph: Graph, matrix):
    """Read an [Nd, Ns] matrix at the graph's edges (internal order)."""
    return matrix[graph.row, graph.col.long()]


def dense_structure_kl(graph, hs, hp, kernel="l1", tau=1.0, peer_sigma=None, **kw):
    """Per-node KL(q || p) computed edge by edge in plain Python loops (float64);
    ``peer_sigma``: the peer's kernel at another sigma than the student's."""
    hs_dst, hs_src = hs if isinstance(hs, tuple) else (hs, hs)
    hp_dst, hp_src = hp if isinstance(hp, tuple) else (hp, hp)
    ks = dense_kernel(kernel, hs_dst.double(), hs_src.double(), **kw)
    if peer_sigma is not None:
        kw = dict(kw, sigma=peer_sigma)
    kp = dense_kernel(kernel, hp_dst.double(), hp_src.double(), **kw)
    out = torch.zeros(graph.num_dst, dtype=torch.float64)
    rowptr = graph.rowptr.tolist()
    col = graph.col.tolist()
    for i in range(graph.num_dst):
        js = col[rowptr[i]:rowptr[i + 1]]
        if not js:
            continue
        zs = torch.stack([ks[i, j] for j in js]) / tau
        zp = torch.stack([kp[i, j] for j in js]) / tau
        logp, logq = torch.log_softmax(zs, 0), torch.log_softmax(zp, 0)
        out[i] = (logq.exp() * (logq - logp)).sum()
    return out


def features(graph: Graph, width=6, dtype=torch.float64, seed=0, side="src"):
    gen = torch.Generator().manual_seed(seed)
    n = graph.num_src if side == "src" else graph.num_dst
    return torch.randn(n, width, generator=gen, dtype=torch.float64).to(dtype)



def loop_gat(graph: Graph, x, alpha_src, alpha_dst=None, negative_slope=0.2, add_self_loops=True, keep=None):
    """Graph attention destination by destination in plain Python loops (float64), PyG's
    self-loop rule: stored loops dropped, one loop per node below min(num_src, num_dst).
    ``keep(edge_id)`` -> [H] dropout factors (edge id: internal position, num_edges + i
    for the loop of i); None: no dropout."""
    x, a_s = x.double(), alpha_src.double()
    a_d = alpha_dst.double() if alpha_dst is not None else None
    out = torch.zeros(graph.num_dst, x.size(1), x.size(2), dtype=torch.float64)
    rowptr, col = graph.rowptr.tolist(), graph.col.tolist()
    for i in range(graph.num_dst):
        edges = [(col[e], e) for e in range(rowptr[i], rowptr[i + 1])]
        if add_self_loops:
            edges = [(j, e) for j, e in edges if j != i]
            if i < min(graph.num_src, graph.num_dst):
                edges.append((i, graph.num_edges + i))
        if not edges:
            continue
        z = torch.stack([a_s[j] + (a_d[i] if a_d is not None else 0) for j, _ in edges])
        a = torch.softmax(torch.nn.functional.leaky_relu(z, negative_slope), dim=0)
        for (j, e), a_j in zip(edges, a):
            factor = keep(e) if keep is not None else 1.0
            out[i] += (a_j * factor).unsqueeze(-1) * x[j]
    return out


def long_row_graph(index_dtype, piece: int, hub_degree: int = 9000):
    """Rows longer than a kernel's piece size (``piece`` edges), so that they are split
    and merged: a hub of ``hub_degree`` in-edges and one of ``piece + 1``; plus ordinary
    rows and isolated nodes."""
    gen = torch.Generator().manual_seed(7)
    n = 300
    hub_src = torch.randint(0, n, (hub_degree,), generator=gen)
    hub = torch.stack([hub_src, torch.zeros_like(hub_src)])
    hub2 = torch.stack([torch.arange(piece + 1) % 250, torch.full((piece + 1,), 5)])
    rest = random_edge_index(250, 250, 600, seed=3)
    ei = torch.cat([hub, hub2, rest], 1).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n)


# ----------------------------------------------------------------------------- the op grid
# The backends the public-op tests run on here: the reference and every compiled one that
# takes CPU tensors; the kernel tests hold each compiled one against the reference.
OP_BACKENDS = tuple(backends.available_backends("cpu"))
# the Triton interpreter's run of the op files (their Triton sections; tests/test_triton_backend.py)
TRITON_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_BACKENDS = tuple(b for b in OP_BACKENDS if b != "torch")

# The GPU sections of the op files (`pytest -m cuda tests/ops`, `pytest -m triton_gpu
# tests/ops`; their fixtures in tests/ops/cuda_gpu.py and tests/ops/triton_gpu.py) are
# collected only where they can run: on a CUDA device, or in their dry run on CPU tensors
# (FASTALIGN_GPU_TESTS_ON_CPU=1), which checks the tests themselves before the rare GPU
# run: the C++ CPU backend stands in for the CUDA extension, and with TRITON_INTERPRET=1
# too the Triton cases run interpreted, float32 only, on graphs a tenth the size.
ON_GPU = torch.cuda.is_available()
GPU_DRY_RUN = not ON_GPU and os.environ.get("FASTALIGN_GPU_TESTS_ON_CPU") == "1"
CUDA_CASES = (ON_GPU and backends.is_available("cuda")) or (GPU_DRY_RUN and backends.is_available("cpu"))
TRITON_GPU_CASES = importlib.util.find_spec("triton") is not None and (
    (ON_GPU and not TRITON_INTERPRETER) or (GPU_DRY_RUN and TRITON_INTERPRETER))


REF = "torch"  # the reference backend
REFERENCE = importlib.import_module("fastalign.backends.reference")  # its functions


CASES = [(name, dt) for dt in INDEX_DTYPES for name, _ in case_graphs()]


def get_case(name, index_dtype):
    return dict(case_graphs(index_dtype))[name]


def feats(n, f=5, seed=0, requires_grad=False, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, f, generator=gen, dtype=torch.float64) * scale)
    return x.requires_grad_(requires_grad)


def pair(graph, f=5, seed=0, requires_grad=False, scale=1.0):
    """Features for edge_similarity-like ops: a tensor (square) or a (dst, src) pair."""
    if graph.is_square:
        return feats(graph.num_src, f, seed, requires_grad, scale)
    return (
        feats(graph.num_dst, f, seed, requires_grad, scale),
        feats(graph.num_src, f, seed + 1, requires_grad, scale),
    )


def as_pair(x):
    return x if isinstance(x, tuple) else (x, x)


def dense_spmm(graph, x, reduce, weight=None):
    if reduce in ("sum", "mean"):
        out = dense_adjacency(graph, weight) @ x
        if reduce == "mean":
            out = out / graph.in_degree.clamp(min=1).unsqueeze(1).double()
        return out
    w = weight if weight is not None else graph.edge_weight
    out = torch.zeros(graph.num_dst, x.size(1), dtype=torch.float64)
    for i in range(graph.num_dst):
        lo, hi = int(graph.rowptr[i]), int(graph.rowptr[i + 1])
        if hi > lo:
            msgs = x[graph.col[lo:hi].long()]
            if w is not None:
                msgs = msgs * w[lo:hi].unsqueeze(1)
            out[i] = msgs.max(0).values
    return out


def dense_gcn(g, x, add_self_loops=True, improved=False, weight=None):
    """Straight from PyG's gcn_norm definition, on a dense matrix."""
    a = dense_adjacency(g, weight)
    if add_self_loops:
        diag = torch.ones(g.num_dst, dtype=torch.float64)
        if weight is not None:
            diag = diag * (2.0 if improved else 1.0)
            loops = (g.row == g.col.long()).nonzero().flatten().tolist()
            for e in loops:  # the last existing loop weight wins
                diag[g.row[e]] = weight[e]
        a = a - torch.diag(torch.diag(a)) + torch.diag(diag)
    deg = a.sum(1)
    dis = deg.pow(-0.5)
    dis[torch.isinf(dis)] = 0
    return dis.unsqueeze(1) * a * dis.unsqueeze(0) @ x


WIDTHS = (1, 3, 16, 67)


SIGMA = {"l1": 2.0, "rbf": 1.5, "linear": 1.0, "poly": 1.0, "cosine": 1.0}


PIECE = 4096  # the C++ traversal's hub-row piece (csrc/cpu/segment.h)


def all_graphs(index_dtype, piece=PIECE):
    """The edge-case graphs and rows longer than a kernel's ``piece``."""
    return case_graphs(index_dtype) + [("long_rows", long_row_graph(index_dtype, piece))]


GRAPH_NAMES = [name for name, _ in all_graphs(torch.int64)]


_GRAPHS = {(n, d): g for d in INDEX_DTYPES for n, g in all_graphs(d)}


def graph_of(name, index_dtype):
    return _GRAPHS[(name, index_dtype)]


def assert_close(actual, expected, dtype):
    """Close within the dtype's tolerance, relative to the output's scale."""
    rtol, atol = TOL[dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


def truth(fn, *args):
    """The reference in float64 on the same inputs, cast back to the input dtype: what
    float32 results are compared with where sums cancel (kl, gradients over hub rows)."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    up = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    out = fn(*up)
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return cast(out) if isinstance(out, torch.Tensor) else tuple(cast(t) for t in out)


def degenerate(kernel, width):
    """cosine in one dimension is +-1: its exact gradient is 0 and every backend returns
    rounding noise, which is checked against a bound instead of compared."""
    return kernel == "cosine" and width == 1


def assert_noise(t, dtype):
    # float32 noise scales with the terms (cosine's grow as 1 / norm) summed over 9,000-edge
    # hub rows, so only float64's is bounded here.
    if dtype == torch.float64:
        assert t.numel() == 0 or float(t.abs().max()) < 1e-9


def edge_weight(graph, dtype, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(graph.num_edges, generator=gen, dtype=torch.float64) + 0.5).to(dtype)


graph_params = pytest.mark.parametrize("name", GRAPH_NAMES)


# the GCN normalisation is defined on square graphs: the rectangular cases are not collected
square_graph_params = pytest.mark.parametrize(
    "name", [n for n in GRAPH_NAMES if _GRAPHS[(n, torch.int64)].is_square])


index_params = pytest.mark.parametrize("index_dtype", INDEX_DTYPES)


dtype_params = pytest.mark.parametrize("dtype", (torch.float64, torch.float32))


def kernel_grid(test):
    """The shared grid of the kernel tests: every edge-case graph, both index types,
    float64 and float32, every width of WIDTHS."""
    return graph_params(index_params(dtype_params(pytest.mark.parametrize("width", WIDTHS)(test))))


def tight_gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


SMALL = ("square", "hub", "rectangular")


def gradcheck_inputs(g, width, seed, side="src"):
    return features(g, width, torch.float64, seed=seed, side=side).requires_grad_()


def grad_pair(g, width, seed):
    if g.is_square:
        return (gradcheck_inputs(g, width, seed),)
    return (gradcheck_inputs(g, width, seed, "dst"), gradcheck_inputs(g, width, seed + 1))


def join_pair(g, xs):
    return xs[0] if g.is_square else (xs[0], xs[1])
