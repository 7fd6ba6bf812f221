import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fastalign import Graph
from helpers import dense_adjacency, random_edge_index


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_from_edge_index_builds_sorted_csr(index_dtype):
    ei = torch.tensor([[2, 0, 1, 2, 0], [1, 1, 0, 3, 3]], dtype=index_dtype)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    g = Graph.from_edge_index(ei, w, num_nodes=4)
    assert g.rowptr.tolist() == [0, 1, 3, 3, 5]
    assert g.col.tolist() == [1, 0, 2, 0, 2]
    assert g.col.dtype == index_dtype and g.rowptr.dtype == index_dtype
    assert g.edge_weight.tolist() == [3.0, 2.0, 1.0, 5.0, 4.0]
    # the permutation maps internal edges back to the caller's
    assert torch.equal(g.edge_index.long(), ei.long()[:, g.perm])
    assert torch.equal(g.to_caller(g.edge_weight), w)
    assert torch.equal(g.to_internal(w), g.edge_weight)
    assert g.in_degree.tolist() == [1, 2, 0, 2]
    assert g.out_degree.tolist() == [2, 1, 2, 0]


def test_rectangular_and_transpose():
    ei = random_edge_index(7, 4, 25, seed=3)
    g = Graph.from_edge_index(ei, num_nodes=(7, 4))
    assert (g.num_src, g.num_dst, g.is_square) == (7, 4, False)
    rowptr_t, col_t, perm_t = g.transpose()
    assert rowptr_t.numel() == 8
    # transposed edge k is internal edge perm_t[k]: same endpoints
    assert torch.equal(col_t.long(), g.row[perm_t])
    src_of_t = torch.repeat_interleave(torch.arange(7), rowptr_t[1:] - rowptr_t[:-1])
    assert torch.equal(src_of_t, g.col[perm_t].long())
    assert torch.equal(dense_adjacency(g.transposed()), dense_adjacency(g).T)
    assert g.transpose() is g.transpose()  # cached


def test_num_nodes_default_and_isolated():
    ei = torch.tensor([[0, 1], [1, 0]])
    assert Graph.from_edge_index(ei).num_dst == 2
    g = Graph.from_edge_index(ei, num_nodes=5)
    assert g.in_degree.tolist() == [1, 1, 0, 0, 0]
    empty = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long))
    assert (empty.num_src, empty.num_dst, empty.num_edges) == (0, 0, 0)


def test_from_torch_sparse_all_layouts():
    ei = random_edge_index(6, 5, 20, seed=4, duplicates=False)
    vals = torch.rand(ei.size(1), dtype=torch.float64)
    coo = torch.sparse_coo_tensor(torch.stack([ei[1], ei[0]]), vals, (5, 6)).coalesce()
    dense = coo.to_dense()
    for adj in (coo, coo.to_sparse_csr(), coo.to_sparse_csc()):
        g = Graph.from_torch_sparse(adj)
        assert (g.num_dst, g.num_src) == (5, 6)
        torch.testing.assert_close(dense_adjacency(g), dense)


def test_from_torch_sparse_structural_values_are_unweighted():
    ei = torch.tensor([[0, 1], [1, 0]])
    adj = torch.sparse_coo_tensor(ei.flip(0), torch.ones(2, dtype=torch.bool), (2, 2))
    assert Graph.from_torch_sparse(adj).edge_weight is None


def test_from_scipy_formats_and_int32():
    rng = np.random.default_rng(0)
    a = sp.random(8, 9, density=0.3, random_state=rng, format="coo")
    for m in (a, a.tocsr(), a.tocsc()):
        g = Graph.from_scipy(m)
        assert (g.num_dst, g.num_src) == (8, 9)
        torch.testing.assert_close(dense_adjacency(g), torch.from_numpy(a.toarray()))
    assert Graph.from_scipy(a.tocsr()).index_dtype == torch.int32


def test_from_sparse_tensor():
    torch_sparse = pytest.importorskip("torch_sparse", reason="torch_sparse is not installed")
    ei = random_edge_index(6, 6, 20, seed=5)
    adj_t = torch_sparse.SparseTensor(row=ei[1], col=ei[0], sparse_sizes=(6, 6))
    g = Graph.coerce(adj_t)
    torch.testing.assert_close(dense_adjacency(g), adj_t.to_dense().double())


def test_coerce_and_to():
    ei = random_edge_index(5, 5, 12, seed=6)
    g = Graph.coerce(ei, num_nodes=5)
    assert Graph.coerce(g) is g
    g.transpose()
    g32 = g.to("cpu", index_dtype=torch.int32)
    assert g32.col.dtype == torch.int32 and g32.transpose()[0].dtype == torch.int32
    assert torch.equal(g32.col.long(), g.col)
    with pytest.raises(TypeError, match="Graph"):
        Graph.coerce([1, 2, 3])


@pytest.mark.parametrize(
    "edge_index, num_nodes, exc, match",
    [
        (torch.tensor([[0, 1], [1, 2]]).float(), None, TypeError, "int32 or int64"),
        (torch.tensor([0, 1, 2]), None, ValueError, r"shape \[2, E\]"),
        (torch.tensor([[0, -1], [1, 0]]), None, ValueError, "negative"),
        (torch.tensor([[0, 5], [1, 0]]), 3, ValueError, "out of range"),
        (torch.tensor([[0, 1], [1, 4]]), (2, 4), ValueError, "target"),
    ],
)
def test_from_edge_index_rejects_bad_input(edge_index, num_nodes, exc, match):
    with pytest.raises(exc, match=match):
        Graph.from_edge_index(edge_index, num_nodes=num_nodes)


def test_bad_edge_weight():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="shape"):
        Graph.from_edge_index(ei, torch.ones(3))
    with pytest.raises(TypeError, match="floating"):
        Graph.from_edge_index(ei, torch.ones(2, dtype=torch.long))


@pytest.mark.parametrize(
    "rowptr, col, match",
    [
        ([1, 2, 3], [0, 1], r"rowptr\[0\]"),
        ([0, 3, 2], [0, 1], "non-decreasing"),
        ([0, 1, 3], [0, 1], r"rowptr\[-1\]"),
        ([0, 1, 2], [0, 9], "out of range"),
        ([0, 1, 2], [0, -1], "negative"),
    ],
)
def test_from_csr_rejects_malformed(rowptr, col, match):
    with pytest.raises(ValueError, match=match):
        Graph.from_csr(torch.tensor(rowptr), torch.tensor(col), num_src=3)


def test_from_csr_rejects_mixed_index_dtypes():
    with pytest.raises(TypeError, match="share a dtype"):
        Graph.from_csr(torch.tensor([0, 1]), torch.tensor([0], dtype=torch.int32), num_src=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no CUDA device is visible")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_to_cuda_without_cuda_says_why(device):
    """A CPU build (or a machine without a visible GPU) gets one sentence naming the cause,
    not torch's internal AssertionError from deep inside the copy."""
    g = Graph.from_edge_index(random_edge_index(20, 20, 60, seed=0), num_nodes=20)
    with pytest.raises(RuntimeError, match="CPU build|no CUDA device") as info:
        g.to(device)
    assert not isinstance(info.value, AssertionError)
    assert g.to("cpu").num_edges == g.num_edges  # the CPU is always fine


def test_complex_sparse_adjacency_is_refused():
    from fastalign.nn import GCNConv

    idx = torch.tensor([[0, 1, 2], [1, 2, 0]])
    for values in (torch.tensor([1 + 2j, 3 + 0j, 1j]), torch.ones(3, dtype=torch.complex64)):
        adj = torch.sparse_coo_tensor(idx, values, (3, 3))
        for form in (adj, adj.to_sparse_csr()):
            with pytest.raises(TypeError, match="values are complex .* edge weights must be real"):
                Graph.from_torch_sparse(form)
            with pytest.raises(TypeError, match="values are complex"):
                GCNConv(4, 2)(torch.randn(3, 4), form)


# ---------------------------------------------------------------------- node order
def _bandwidth(g: Graph) -> int:
    """The largest |target - source| over the edges: small when neighbours are numbered close."""
    return int((g.row.long() - g.col.long()).abs().max())


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("method", Graph.REORDERINGS)
def test_a_reordered_graph_aggregates_the_same_numbers(method, index_dtype):
    """Renumbered nodes and features (x[order]) give the same aggregation, mapped back
    by the inverse order; edge weights follow their edges; isolated nodes, self loops and
    duplicates included."""
    import fastalign

    ei = torch.cat([random_edge_index(40, 40, 200, seed=3), torch.tensor([[5, 5, 7], [5, 5, 8]])], 1)
    w = torch.rand(ei.size(1), dtype=torch.float64)
    g = Graph.from_edge_index(ei.to(index_dtype), w, num_nodes=45)  # 40..44 isolated
    x = torch.randn(45, 6, dtype=torch.float64)
    new, order = g.reordered(method)
    assert new.index_dtype == index_dtype and new.num_edges == g.num_edges and new.num_dst == 45
    assert torch.equal(torch.sort(order).values, torch.arange(45))
    inverse = torch.argsort(order)
    for backend in fastalign.backends.available_backends("cpu"):
        torch.testing.assert_close(fastalign.spmm(new, x[order], "sum", backend=backend)[inverse],
                                   fastalign.spmm(g, x, "sum", backend=backend))
        torch.testing.assert_close(fastalign.gcn_aggregate(new, x[order], backend=backend)[inverse],
                                   fastalign.gcn_aggregate(g, x, backend=backend))
    # a given order is used as is
    again, same = g.reordered(order)
    assert torch.equal(same, order)
    assert torch.equal(again.rowptr, new.rowptr) and torch.equal(again.col, new.col)


def test_rcm_numbers_neighbours_close_and_degree_puts_hubs_first():
    n = 300
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    path = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    ei = shuffle[torch.cat([path, path.flip(0)], 1)]  # a path, its nodes numbered at random
    g = Graph.from_edge_index(ei, num_nodes=n)
    new, _ = g.reordered("rcm")
    assert _bandwidth(g) > 100 and _bandwidth(new) == 1
    star = torch.stack([torch.arange(1, 30), torch.zeros(29, dtype=torch.long)])
    g = Graph.from_edge_index(torch.cat([star, torch.tensor([[3, 4], [7, 7]])], 1), num_nodes=30)
    order = g.node_order("degree")
    assert order[:2].tolist() == [0, 7]


def test_reordering_refuses_what_it_cannot_do():
    g = Graph.from_edge_index(random_edge_index(10, 10, 30, seed=1), num_nodes=10)
    with pytest.raises(ValueError, match="method must be one of"):
        g.node_order("metis")
    with pytest.raises(ValueError, match="permutation of the graph's 10 nodes"):
        g.reordered(torch.arange(9))
    with pytest.raises(ValueError, match="permutation"):
        g.reordered(torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8]))
    with pytest.raises(ValueError, match="permutation"):
        g.reordered(torch.arange(10) + 1)
    with pytest.raises(TypeError):
        g.reordered(torch.arange(10.0))
    rect = Graph.from_edge_index(random_edge_index(10, 6, 20, seed=2), num_nodes=(10, 6))
    with pytest.raises(ValueError, match="square graph"):
        rect.node_order("degree")
    with pytest.raises(ValueError, match="square graph"):
        rect.reordered(torch.arange(6))
