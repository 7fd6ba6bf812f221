"""The reference ("torch") backend and the public ops against dense float64 computations,
gradients by gradcheck, edge cases and bad input."""

import pytest
import torch

import fastalign
from fastalign import Graph
from helpers import (
    INDEX_DTYPES,
    KERNELS,
    case_graphs,
    dense_adjacency,
    dense_edge_values,
    dense_kernel,
    dense_structure_kl,
    random_edge_index,
)

REF = "torch"
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


# ----------------------------------------------------------------------------- spmm
@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("weighted", [False, True])
def test_spmm_matches_dense(name, index_dtype, reduce, weighted):
    g = get_case(name, index_dtype)
    x = feats(g.num_src, 4)
    w = torch.rand(g.num_edges, dtype=torch.float64) + 0.5 if weighted else None
    out = fastalign.spmm(g, x, reduce, edge_weight=w, backend=REF)
    torch.testing.assert_close(out, dense_spmm(g, x, reduce, w))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
def test_spmm_gradcheck(name, reduce):
    g = get_case(name, torch.int64)
    x = feats(g.num_src, 3, requires_grad=True)
    w = (torch.rand(g.num_edges, dtype=torch.float64) + 0.5).requires_grad_()
    torch.autograd.gradcheck(
        lambda x, w: fastalign.spmm(g, x, reduce, edge_weight=w, backend=REF), (x, w)
    )


def test_max_winners_are_int32_until_the_edge_count_needs_int64():
    from fastalign.validation import arg_dtype

    assert arg_dtype(0) == torch.int32
    assert arg_dtype(2**31 - 1) == torch.int32  # positions 0 .. 2**31 - 2 and -1
    assert arg_dtype(2**31) == torch.int64


def test_spmm_max_ties_pick_first_edge():
    ei = torch.tensor([[0, 1], [2, 2]])
    g = Graph.from_edge_index(ei, num_nodes=3)
    x = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    fastalign.spmm(g, x, "max", backend=REF).sum().backward()
    assert x.grad[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_spmm_max_passes_the_transpose_to_its_backward(monkeypatch):
    """The max backward gets the graph's cached transpose (rowptr_t, col_t, perm_t), also
    when only the edge weights need a gradient; forward-only calls never build it."""
    from fastalign.backends import get

    g = get_case("hub", torch.int64)
    seen = []
    ref = get(REF)
    original = ref.spmm_max_backward

    def spy(col, rowptr_t, col_t, perm_t, *rest):
        seen.append((rowptr_t, col_t, perm_t))
        return original(col, rowptr_t, col_t, perm_t, *rest)

    monkeypatch.setattr(ref, "spmm_max_backward", spy)
    w = (torch.rand(g.num_edges, dtype=torch.float64) + 0.5).requires_grad_()
    fastalign.spmm(g, feats(g.num_src, 3), "max", edge_weight=w, backend=REF).sum().backward()
    assert len(seen) == 1 and all(a is b for a, b in zip(seen[0], g.transpose()))
    assert w.grad is not None
    g2 = get_case("square", torch.int64)
    with torch.no_grad():
        fastalign.spmm(g2, feats(g2.num_src, 3), "max", backend=REF)
    assert "transpose" not in g2._cache


def test_spmm_uses_graph_weights_and_noncontiguous_input():
    ei = random_edge_index(10, 10, 30, seed=7)
    w = torch.rand(ei.size(1), dtype=torch.float64)
    g = Graph.from_edge_index(ei, w, num_nodes=10)
    x = feats(10, 8)[:, ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(fastalign.spmm(g, x, backend=REF), dense_spmm(g, x.contiguous(), "sum"))


@pytest.mark.parametrize("adj_kind", ["edge_index", "torch_sparse", "scipy"])
def test_ops_accept_other_adjacency_inputs(adj_kind):
    import scipy.sparse as sp

    ei = random_edge_index(8, 8, 20, seed=8, duplicates=False)
    x = feats(8, 3)
    g = Graph.from_edge_index(ei, num_nodes=8)
    expected = dense_spmm(g, x, "sum")
    if adj_kind == "edge_index":
        adj = ei
    elif adj_kind == "torch_sparse":
        adj = torch.sparse_coo_tensor(ei.flip(0), torch.ones(ei.size(1)), (8, 8))
    else:
        adj = sp.coo_matrix((torch.ones(ei.size(1)).numpy(), (ei[1].numpy(), ei[0].numpy())), shape=(8, 8))
    torch.testing.assert_close(fastalign.spmm(adj, x, backend=REF), expected)


# ----------------------------------------------------------------------------- gcn
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


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("name", ["square", "no_edges", "hub"])
@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("improved", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_gcn_aggregate_matches_dense(name, index_dtype, add_self_loops, improved, weighted):
    g = get_case(name, index_dtype)
    x = feats(g.num_src, 4)
    w = torch.rand(g.num_edges, dtype=torch.float64) + 0.5 if weighted else None
    out = fastalign.gcn_aggregate(g, x, add_self_loops, improved, edge_weight=w, backend=REF)
    torch.testing.assert_close(out, dense_gcn(g, x, add_self_loops, improved, w))


def test_gcn_aggregate_caches_normalisation_on_graph():
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 4)
    a = fastalign.gcn_aggregate(g, x, backend=REF)
    keys = [k for k in g._cache if isinstance(k, tuple) and k[0] == "gcn_norm"]
    assert len(keys) == 1
    torch.testing.assert_close(fastalign.gcn_aggregate(g, x, backend=REF), a)


@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_aggregate_gradcheck(add_self_loops):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 3, requires_grad=True)
    torch.autograd.gradcheck(
        lambda x: fastalign.gcn_aggregate(g, x, add_self_loops, backend=REF), (x,)
    )
    w = (torch.rand(g.num_edges, dtype=torch.float64) + 0.5).requires_grad_()
    torch.autograd.gradcheck(
        lambda x, w: fastalign.gcn_aggregate(g, x, add_self_loops, True, edge_weight=w, backend=REF),
        (x, w),
    )


@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_aggregate_matches_pyg(improved, weighted, add_self_loops):
    pyg = pytest.importorskip("torch_geometric", reason="torch_geometric is not installed")
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    ei = random_edge_index(40, 40, 200, seed=11)  # self loops and duplicates included
    n = 45
    w = torch.rand(ei.size(1), dtype=torch.float64) + 0.1 if weighted else None
    x = feats(n, 6, requires_grad=True)
    ei_n, w_n = gcn_norm(ei, w, n, improved, add_self_loops, dtype=torch.float64)
    expected = torch.zeros(n, 6, dtype=torch.float64).index_add(0, ei_n[1], x[ei_n[0]] * w_n.unsqueeze(1))
    g = Graph.from_edge_index(ei, w, num_nodes=n)
    x2 = x.detach().clone().requires_grad_()
    out = fastalign.gcn_aggregate(g, x2, add_self_loops, improved, backend=REF)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad)
    assert pyg is not None


def test_gcn_conv_layer_matches_pyg_gcnconv():
    pytest.importorskip("torch_geometric", reason="torch_geometric is not installed")
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    ei = random_edge_index(30, 30, 120, seed=12)
    x = torch.randn(30, 8, requires_grad=True)
    conv = GCNConv(8, 5)
    expected = conv(x, ei)
    g = Graph.from_edge_index(ei, num_nodes=30)
    x2 = x.detach().clone().requires_grad_()
    out = fastalign.gcn_aggregate(g, conv.lin(x2), backend=REF) + conv.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    expected.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- similarity
@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_matches_dense(name, index_dtype, kernel):
    g = get_case(name, index_dtype)
    x = pair(g, 5, scale=3.0)
    a, b = as_pair(x)
    s = fastalign.edge_similarity(g, x, kernel, backend=REF)
    assert s.shape == (g.num_edges,)
    torch.testing.assert_close(s, dense_edge_values(g, dense_kernel(kernel, a, b)))


@pytest.mark.parametrize("kernel,sigma,degree,coef", [("l1", 2.0, 2, 1.0), ("rbf", 0.7, 2, 1.0), ("poly", None, 3, 0.5)])
def test_edge_similarity_parameters(kernel, sigma, degree, coef):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 4)
    s = fastalign.edge_similarity(g, x, kernel, sigma=sigma, degree=degree, coef=coef, backend=REF)
    kw = {"sigma": sigma} if kernel in ("l1", "rbf") else {"degree": degree, "coef": coef}
    torch.testing.assert_close(s, dense_edge_values(g, dense_kernel(kernel, x, x, **kw)))


@pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_edge_similarity_gradcheck(name, kernel):
    g = get_case(name, torch.int64)
    x = pair(g, 3, requires_grad=True)
    xs = x if isinstance(x, tuple) else (x,)
    if g.is_square:
        fn = lambda a: fastalign.edge_similarity(g, a, kernel, sigma=2.0, backend=REF)  # noqa: E731
    else:
        fn = lambda a, b: fastalign.edge_similarity(g, (a, b), kernel, sigma=2.0, backend=REF)  # noqa: E731
    torch.autograd.gradcheck(fn, xs)


def test_cosine_gradient_at_zero_vector_is_finite():
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    fastalign.edge_similarity(g, x, "cosine", backend=REF).sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- local structure
@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_local_structure_is_neighbour_softmax(name, index_dtype, tau):
    g = get_case(name, index_dtype)
    x = pair(g, 4, scale=20.0)
    a, b = as_pair(x)
    p = fastalign.local_structure(g, x, "l1", tau=tau, sigma=5.0, backend=REF)
    k = dense_kernel("l1", a, b, sigma=5.0) / tau
    # duplicate edges: each copy is its own entry of the softmax
    counts = dense_adjacency(g)
    mask = counts > 0
    denom = (torch.exp(k) * counts).sum(1, keepdim=True)
    dense_p = torch.where(mask, torch.exp(k) / denom, torch.zeros_like(k))
    torch.testing.assert_close(p, dense_edge_values(g, dense_p))
    row_sums = torch.zeros(g.num_dst, dtype=torch.float64).index_add_(0, g.row, p)
    has_edges = g.in_degree > 0
    torch.testing.assert_close(row_sums[has_edges], torch.ones(int(has_edges.sum()), dtype=torch.float64))


def test_local_structure_gradcheck():
    g = get_case("hub", torch.int64)
    x = feats(g.num_src, 3, requires_grad=True)
    torch.autograd.gradcheck(
        lambda x: fastalign.local_structure(g, x, "rbf", tau=0.5, backend=REF), (x,)
    )


# ----------------------------------------------------------------------------- structure KL
@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl_matches_dense(name, index_dtype, kernel):
    g = get_case(name, index_dtype)
    hs = pair(g, 5, seed=1, scale=2.0)
    hp = pair(g, 3, seed=5, scale=2.0)  # different width: only similarities are compared
    kl = fastalign.structure_kl(g, hs, hp, kernel, tau=0.5, reduction="none", sigma=3.0, backend=REF)
    kw = {"sigma": 3.0} if kernel in ("l1", "rbf") else {}
    expected = dense_structure_kl(g, hs, hp, kernel, tau=0.5, **kw)
    torch.testing.assert_close(kl, expected)
    assert (kl >= -1e-12).all()
    mean = fastalign.structure_kl(g, hs, hp, kernel, tau=0.5, sigma=3.0, backend=REF)
    total = fastalign.structure_kl(g, hs, hp, kernel, tau=0.5, reduction="sum", sigma=3.0, backend=REF)
    torch.testing.assert_close(total, expected.sum())
    torch.testing.assert_close(mean, expected.mean() if g.num_dst else expected.sum())


def test_structure_kl_zero_for_identical_embeddings():
    g = get_case("square", torch.int64)
    h = feats(g.num_src, 4)
    assert float(fastalign.structure_kl(g, h, h.clone(), backend=REF)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_structure_kl_gradcheck_student_and_peer(name, kernel):
    g = get_case(name, torch.int64)
    hs = pair(g, 3, seed=2, requires_grad=True)
    hp = pair(g, 2, seed=4, requires_grad=True)
    flat = (hs if isinstance(hs, tuple) else (hs,)) + (hp if isinstance(hp, tuple) else (hp,))

    def fn(*t):
        if g.is_square:
            a, b = t
        else:
            a, b = (t[0], t[1]), (t[2], t[3])
        return fastalign.structure_kl(g, a, b, kernel, tau=0.7, reduction="none", sigma=2.0, backend=REF)

    torch.autograd.gradcheck(fn, flat)


def test_structure_kl_detached_peer_gets_no_grad_and_same_student_grad():
    g = get_case("square", torch.int64)
    hs = feats(g.num_src, 4, seed=1, requires_grad=True)
    hp = feats(g.num_src, 4, seed=2, requires_grad=True)
    fastalign.structure_kl(g, hs, hp, backend=REF).backward()
    grad_with_peer = hs.grad.clone()
    hs.grad = None
    fastalign.structure_kl(g, hs, hp.detach(), backend=REF).backward()
    torch.testing.assert_close(hs.grad, grad_with_peer)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused_with_clear_errors():
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 3)
    with pytest.raises(ValueError, match="rows"):
        fastalign.spmm(g, x[:-1], backend=REF)
    with pytest.raises(TypeError, match="floating"):
        fastalign.spmm(g, x.long(), backend=REF)
    with pytest.raises(ValueError, match="2-D"):
        fastalign.spmm(g, x[:, 0], backend=REF)
    with pytest.raises(ValueError, match="reduce"):
        fastalign.spmm(g, x, "min", backend=REF)
    with pytest.raises(ValueError, match="edge_weight"):
        fastalign.spmm(g, x, edge_weight=torch.ones(3, dtype=torch.float64), backend=REF)
    with pytest.raises(TypeError, match="Tensor"):
        fastalign.spmm(g, x.numpy(), backend=REF)
    with pytest.raises(ValueError, match="unknown backend"):
        fastalign.spmm(g, x, backend="opencl")
    with pytest.raises(ValueError, match="kernel"):
        fastalign.edge_similarity(g, x, "gaussian", backend=REF)
    with pytest.raises(ValueError, match="sigma"):
        fastalign.edge_similarity(g, x, "l1", sigma=0.0, backend=REF)
    with pytest.raises(ValueError, match="tau"):
        fastalign.local_structure(g, x, tau=-1.0, backend=REF)
    with pytest.raises(ValueError, match="reduction"):
        fastalign.structure_kl(g, x, x, reduction="avg", backend=REF)
    with pytest.raises(TypeError, match="dtype"):
        fastalign.structure_kl(g, x, x.float(), backend=REF)
    rect = get_case("rectangular", torch.int64)
    with pytest.raises(ValueError, match="pair"):
        fastalign.edge_similarity(rect, feats(rect.num_src, 3), backend=REF)
    with pytest.raises(ValueError, match="square"):
        fastalign.gcn_aggregate(rect, feats(rect.num_src, 3), backend=REF)


def test_backend_env_var_and_unavailable_backend(monkeypatch):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 3)
    monkeypatch.setenv(fastalign.backends.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="unknown backend"):
        fastalign.spmm(g, x)
    monkeypatch.setenv(fastalign.backends.ENV_VAR, "torch")
    torch.testing.assert_close(fastalign.spmm(g, x), dense_spmm(g, x, "sum"))
    monkeypatch.delenv(fastalign.backends.ENV_VAR)
    with pytest.raises(ValueError, match="cannot run|not available"):
        fastalign.spmm(g, x, backend="cuda")


def test_available_backends_lists_the_reference():
    from fastalign import backends

    names = backends.available_backends("cpu")
    assert names[0] == "torch" and set(names) <= set(backends.BACKENDS)
    assert backends.is_available("torch", "cpu") and not backends.is_available("cuda", "cpu")


def test_spmm_max_backward_on_graph_without_edges():
    g = get_case("no_edges", torch.int64)
    x = feats(g.num_src, 3, requires_grad=True)
    w = torch.ones(0, dtype=torch.float64, requires_grad=True)
    out = fastalign.spmm(g, x, "max", edge_weight=w, backend=REF)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and w.grad.shape == (0,)


def test_a_stored_self_loop_with_an_inf_feature_is_skipped_not_zeroed():
    """gcn_aggregate with self loops added skips the stored loop (its weight is in the
    added one): an inf feature there gives inf, as in the C++ kernel and PyG, not NaN."""
    from fastalign import backends

    g = Graph.from_edge_index(torch.tensor([[0, 1, 1, 2], [1, 0, 1, 1]]), num_nodes=3)  # 1 -> 1 stored
    x = torch.tensor([[1.0], [float("inf")], [2.0]])
    outs = [fastalign.gcn_aggregate(g, x, backend=b) for b in backends.available_backends("cpu")]
    for out in outs:
        assert torch.isinf(out[1, 0]) and not torch.isnan(out).any(), out
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])
