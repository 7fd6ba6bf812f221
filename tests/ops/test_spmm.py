"""spmm (sum / mean / max, edge weights) and sddmm, its weight gradient: each backend
here against dense float64 definitions and by gradcheck, each compiled backend's kernels
against the reference over the shared grid, spmm's own behaviours; the Triton kernels
under the interpreter (last section)."""

import pytest
import torch

import fastalign
from fastalign import backends, Graph
from fastalign.ops.gcn_aggregate import gcn_norm_state
from helpers import (
    assert_close, CASES, CUDA_CASES, dense_spmm, edge_weight, feats, features, get_case, gradcheck_inputs, graph_of,
    graph_params, GRAPH_NAMES, index_params, kernel_grid, random_edge_index, REF, REFERENCE, SMALL, square_graph_params,
    power_law_edge_index, tight_gradcheck, TRITON_GPU_CASES, TRITON_INTERPRETER, truth,
)


@pytest.mark.parametrize("name,index_dtype", CASES)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("weighted", [False, True])
def test_spmm_matches_dense(backend, name, index_dtype, reduce, weighted):
    g = get_case(name, index_dtype)
    x = feats(g.num_src, 4)
    w = torch.rand(g.num_edges, dtype=torch.float64) + 0.5 if weighted else None
    out = fastalign.spmm(g, x, reduce, edge_weight=w, backend=backend)
    torch.testing.assert_close(out, dense_spmm(g, x, reduce, w))


@pytest.mark.parametrize("name", SMALL)
@index_params
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
def test_spmm_gradcheck(backend, name, index_dtype, reduce):
    g = graph_of(name, index_dtype)
    x = gradcheck_inputs(g, 3, 0)
    w = edge_weight(g, torch.float64).requires_grad_()
    tight_gradcheck(lambda x, w: fastalign.spmm(g, x, reduce, edge_weight=w, backend=backend), x, w)


@kernel_grid
@pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
@pytest.mark.parametrize("weighted", (False, True))
def test_spmm_forward(kernels, name, index_dtype, dtype, width, reduce, weighted):
    g = graph_of(name, index_dtype)
    x = features(g, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    out, arg = kernels.spmm_forward(g.rowptr, g.col, w, x, reduce)
    ref_out, ref_arg = REFERENCE.spmm_forward(g.rowptr, g.col, w, x, reduce)
    assert_close(out, ref_out, dtype)
    assert torch.equal(arg, ref_arg)


# float32 at the widths compiled in (csrc/cpu/common.h with_fixed_width: a whole row's
# sum in registers), beside the run-time width of WIDTHS; hub rows still go through pieces.
@square_graph_params
@index_params
@pytest.mark.parametrize("width", (32, 64))
@pytest.mark.parametrize("weighted", (False, True))
def test_sum_folds_at_fixed_widths(kernels, name, index_dtype, width, weighted):
    g = graph_of(name, index_dtype)
    x = features(g, width, torch.float32)
    w = edge_weight(g, torch.float32) if weighted else None
    for reduce in ("sum", "mean"):
        out, _ = kernels.spmm_forward(g.rowptr, g.col, w, x, reduce)
        assert_close(out, truth(lambda *a: REFERENCE.spmm_forward(*a)[0], g.rowptr, g.col, w, x, reduce),
                     torch.float32)
    for loops in (True, False):
        dis, loop_weight = gcn_norm_state(g, w, loops, False, torch.float32)
        args = (g.rowptr, g.col, w, dis, loop_weight, x)
        assert_close(kernels.gcn_aggregate(*args), truth(REFERENCE.gcn_aggregate, *args), torch.float32)


# Features far larger than the caches (over 64 MiB: csrc/cpu/common.h kFarPrefetchBytes)
# take the whole-row path that prefetches the rows of the edges ahead; a hub row and the
# last rows' prefetches (past the last edge) included.
@pytest.mark.parametrize("weighted", (False, True))
def test_sum_folds_over_features_larger_than_the_caches(kernels, weighted):
    n, width = 270_000, 64  # 69 MB of float32 features
    gen = torch.Generator().manual_seed(7)
    ei = torch.cat([torch.randint(0, n, (2, 40_000), generator=gen),
                    torch.stack([torch.randint(0, n, (5_000,), generator=gen), torch.full((5_000,), 3)])], 1)
    g = Graph.from_edge_index(ei, num_nodes=n)
    x = torch.randn(n, width, generator=gen)
    w = torch.rand(g.num_edges, generator=gen) if weighted else None
    for reduce in ("sum", "mean"):
        out, _ = kernels.spmm_forward(g.rowptr, g.col, w, x, reduce)
        assert_close(out, truth(lambda *a: REFERENCE.spmm_forward(*a)[0], g.rowptr, g.col, w, x, reduce),
                     torch.float32)
    dis, loop_weight = gcn_norm_state(g, w, True, False, torch.float32)
    args = (g.rowptr, g.col, w, dis, loop_weight, x)
    assert_close(kernels.gcn_aggregate(*args), truth(REFERENCE.gcn_aggregate, *args), torch.float32)


@graph_params
@index_params
def test_spmm_max_winners_are_int32_and_both_index_widths_are_read(kernels, name, index_dtype):
    """The forward stores its winners as int32 (the graph has far fewer than 2**31 edges),
    like the reference; the backward reads int32 and int64 winners alike."""
    g = graph_of(name, index_dtype)
    x = features(g, 5, torch.float64)
    w = edge_weight(g, torch.float64)
    _, arg = kernels.spmm_forward(g.rowptr, g.col, w, x, "max")
    _, ref_arg = REFERENCE.spmm_forward(g.rowptr, g.col, w, x, "max")
    assert arg.dtype == ref_arg.dtype == torch.int32
    assert torch.equal(arg, ref_arg)
    grad_out = features(g, 5, torch.float64, seed=3, side="dst")
    t = g.transpose()
    gx32, gw32 = kernels.spmm_max_backward(g.col, *t, w, x, arg, grad_out, True)
    gx64, gw64 = kernels.spmm_max_backward(g.col, *t, w, x, arg.long(), grad_out, True)
    ref_gx, ref_gw = REFERENCE.spmm_max_backward(g.col, *t, w, x, arg.long(), grad_out, True)
    assert torch.equal(gx32, gx64) and torch.equal(gw32, gw64)
    assert_close(gx32, ref_gx, torch.float64)
    assert_close(gw32, ref_gw, torch.float64)


@graph_params
@index_params
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
@pytest.mark.parametrize("width", (5, 16, 64))  # 16 and 64: float32's whole-row path in registers
def test_spmm_amax_is_the_max_without_its_winners(kernel_backend, name, index_dtype, dtype, width):
    """"amax" (what the op runs when no gradient is wanted): the values of "max", NaN and
    -inf included, bit for bit, and no winners; the reference's too."""
    g = graph_of(name, index_dtype)
    x = features(g, width, dtype)
    x[::7, 0] = float("nan")
    x[:, 1] = float("-inf")
    w = edge_weight(g, dtype)
    for module in (backends.get(kernel_backend), REFERENCE):
        want, _ = module.spmm_forward(g.rowptr, g.col, w, x, "max")
        got, arg = module.spmm_forward(g.rowptr, g.col, w, x, "amax")
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
        assert arg.numel() == 0


def test_spmm_max_skips_its_winners_only_where_no_gradient_is_wanted(backend, monkeypatch):
    """The public max runs "amax" when neither the features nor the weights need a
    gradient, "max" otherwise; a propagation prepared without gradient refuses a backward
    by name instead of returning a wrong one."""
    g = get_case("hub", torch.int64)
    module, seen = backends.get(backend), []
    original = module.spmm_forward

    def spy(rowptr, col, weight, x, reduce):
        seen.append(reduce)
        return original(rowptr, col, weight, x, reduce)

    monkeypatch.setattr(module, "spmm_forward", spy)
    x = feats(g.num_src, 3)
    w = (torch.rand(g.num_edges, dtype=torch.float64) + 0.5).requires_grad_()
    plain = fastalign.spmm(g, x, "max", backend=backend)
    with torch.no_grad():
        fastalign.spmm(g, x.requires_grad_(), "max", edge_weight=w, backend=backend)
    fastalign.spmm(g, x.detach(), "max", edge_weight=w, backend=backend).sum().backward()
    out = fastalign.spmm(g, x, "max", backend=backend)
    assert seen == ["amax", "amax", "max", "max"]
    torch.testing.assert_close(out.detach(), plain)
    prepared = fastalign.ops.spmm_propagation(g, x.detach(), "max", backend=backend)
    with pytest.raises(RuntimeError, match="without its winning edges"):
        prepared(x).sum().backward()


@kernel_grid
@pytest.mark.parametrize("weighted", (False, True))
def test_spmm_max_backward(kernels, name, index_dtype, dtype, width, weighted):
    g = graph_of(name, index_dtype)
    x = features(g, width, dtype)
    w = edge_weight(g, dtype) if weighted else None
    _, arg = REFERENCE.spmm_forward(g.rowptr, g.col, w, x, "max")
    grad_out = features(g, width, dtype, seed=3, side="dst")
    t = g.transpose()  # accepted (the C++ kernel does not need it)
    gx, gw = kernels.spmm_max_backward(g.col, *t, w, x, arg, grad_out, True)
    ref_gx, ref_gw = REFERENCE.spmm_max_backward(g.col, *t, w, x, arg, grad_out, True)
    assert_close(gx, ref_gx, dtype)
    assert_close(gw, ref_gw, dtype)
    gx, gw = kernels.spmm_max_backward(g.col, *t, w, x, arg, grad_out, False)
    assert_close(gx, ref_gx, dtype)
    assert gw.numel() == 0


@kernel_grid
def test_sddmm(kernels, name, index_dtype, dtype, width):
    g = graph_of(name, index_dtype)
    a = features(g, width, dtype, seed=1, side="dst")
    b = features(g, width, dtype, seed=2)
    assert_close(kernels.sddmm(g.rowptr, g.col, a, b), REFERENCE.sddmm(g.rowptr, g.col, a, b), dtype)


def test_max_winners_are_int32_until_the_edge_count_needs_int64():
    from fastalign.validation import arg_dtype

    assert arg_dtype(0) == torch.int32
    assert arg_dtype(2**31 - 1) == torch.int32  # positions 0 .. 2**31 - 2 and -1
    assert arg_dtype(2**31) == torch.int64


def test_spmm_max_ties_pick_first_edge(backend):
    ei = torch.tensor([[0, 1], [2, 2]])
    g = Graph.from_edge_index(ei, num_nodes=3)
    x = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    fastalign.spmm(g, x, "max", backend=backend).sum().backward()
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


def test_spmm_uses_graph_weights_and_noncontiguous_input(backend):
    ei = random_edge_index(10, 10, 30, seed=7)
    w = torch.rand(ei.size(1), dtype=torch.float64)
    g = Graph.from_edge_index(ei, w, num_nodes=10)
    x = feats(10, 8)[:, ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(fastalign.spmm(g, x, backend=backend), dense_spmm(g, x.contiguous(), "sum"))


@pytest.mark.parametrize("adj_kind", ["edge_index", "torch_sparse", "scipy"])
def test_ops_accept_other_adjacency_inputs(backend, adj_kind):
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
    torch.testing.assert_close(fastalign.spmm(adj, x, backend=backend), expected)


def test_spmm_max_backward_on_graph_without_edges(backend):
    g = get_case("no_edges", torch.int64)
    x = feats(g.num_src, 3, requires_grad=True)
    w = torch.ones(0, dtype=torch.float64, requires_grad=True)
    out = fastalign.spmm(g, x, "max", edge_weight=w, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and w.grad.shape == (0,)


# ------------------------------------------------------------------ Triton, interpreted
# The Triton kernels against the reference on CPU tensors under the Triton interpreter:
# tests/test_triton_backend.py runs these in a process of its own with TRITON_INTERPRET=1
# (`TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops`); other runs do not collect them.
if TRITON_INTERPRETER:
    from fastalign.kernels import spmm as kspmm
    from triton_interpreter import close, graph, interpreted, ref, segments, SPLITS, tb

    @interpreted
    @pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
    @pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
    @pytest.mark.parametrize("split", SPLITS)
    def test_triton_spmm_forward(name, reduce, split):
        g = graph(name)
        x = features(g, 5)
        w = torch.rand(g.num_edges, dtype=torch.float64)
        with segments.force_split(split):
            for weight in (None, w):
                close(tb.spmm_forward(g.rowptr, g.col, weight, x, reduce),
                      ref.spmm_forward(g.rowptr, g.col, weight, x, reduce))


    @interpreted
    def test_triton_spmm_amax():
        """The max without winners: the max kernel's values, an empty winner tensor."""
        g = graph("hub")
        x = features(g, 5)
        x[3, 0] = float("nan")
        with segments.force_split(4):
            out, arg = tb.spmm_forward(g.rowptr, g.col, None, x, "amax")
        torch.testing.assert_close(out, ref.spmm_forward(g.rowptr, g.col, None, x, "amax")[0], equal_nan=True)
        assert out[:, 0].isnan().any() and arg.numel() == 0

    @interpreted
    @pytest.mark.parametrize("width", [1, 37, 300])
    def test_triton_spmm_widths_int32(width):
        g = graph("hub", torch.int32)
        x = features(g, width)
        for reduce in ("sum", "max"):
            close(tb.spmm_forward(g.rowptr, g.col, None, x, reduce),
                  ref.spmm_forward(g.rowptr, g.col, None, x, reduce))


    @interpreted
    def test_triton_spmm_float32():
        g = graph("square")
        x = features(g, 19, dtype=torch.float32)
        w = torch.rand(g.num_edges)
        for reduce in ("sum", "mean", "max"):
            out, arg = tb.spmm_forward(g.rowptr, g.col, w, x, reduce)
            r_out, r_arg = ref.spmm_forward(g.rowptr, g.col, w, x, reduce)
            close(out, r_out, 1e-5)
            assert torch.equal(arg, r_arg)


    @interpreted
    def test_triton_spmm_max_ties_first_edge():
        # duplicate edges give equal messages: the first edge must win
        g = graph("square")
        x = features(g, 4).round()
        with segments.force_split(2):
            out, arg = tb.spmm_forward(g.rowptr, g.col, None, x, "max")
        r_out, r_arg = ref.spmm_forward(g.rowptr, g.col, None, x, "max")
        close(out, r_out)
        assert torch.equal(arg, r_arg)


    @interpreted
    @pytest.mark.parametrize("split", SPLITS)
    def test_triton_spmm_max_nan_propagates(split):
        """torch.amax semantics: a NaN message makes the row's maximum NaN and its first NaN
        edge the winner, in a block, across blocks and across the segments of a hub row."""
        g = graph("hub")
        x = features(g, 5)
        x[3, 0] = x[7, 0] = x[20, 2] = float("nan")
        x[0, 4] = float("nan")  # node 0 sends to nodes 1..5
        with segments.force_split(split):
            out, arg = tb.spmm_forward(g.rowptr, g.col, None, x, "max")
        r_out, r_arg = ref.spmm_forward(g.rowptr, g.col, None, x, "max")
        torch.testing.assert_close(out, r_out, equal_nan=True)
        assert torch.equal(arg, r_arg)


    def _max_backward_case(g, x, w, grad, need_w, arg_dtype=torch.int32):
        rt, ct, pt = g.transpose()
        _, arg = ref.spmm_forward(g.rowptr, g.col, w, x, "max")
        arg = arg.to(arg_dtype)
        out = tb.spmm_max_backward(g.col, rt, ct, pt, w, x, arg, grad, need_w)
        expect = ref.spmm_max_backward(g.col, rt, ct, pt, w, x, arg, grad, need_w)
        return out, expect


    @interpreted
    @pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
    @pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
    @pytest.mark.parametrize("split", SPLITS)
    @pytest.mark.parametrize("need_w", [False, True])
    def test_triton_spmm_max_backward(name, index_dtype, split, need_w):
        """Gathered over the transpose: hub sources (node 0 of "hub" sends to 5 nodes, and
        split=4 cuts the transpose's long rows), duplicate edges, isolated nodes; winners
        read as int32 (what the forward writes) and as int64."""
        g = graph(name, index_dtype)
        x = features(g, 6)
        grad = features(g, 6, seed=5, side="dst")
        with segments.force_split(split):
            for w in (None, torch.rand(g.num_edges, dtype=torch.float64)):
                for arg_dtype in (torch.int32, torch.int64):
                    close(*_max_backward_case(g, x, w, grad, need_w, arg_dtype))


    @interpreted
    def test_triton_spmm_max_winners_are_int32():
        g = graph("hub")
        x = features(g, 6)
        with segments.force_split(4):
            _, arg = tb.spmm_forward(g.rowptr, g.col, None, x, "max")
        assert arg.dtype == torch.int32
        assert torch.equal(arg, ref.spmm_forward(g.rowptr, g.col, None, x, "max")[1])


    @interpreted
    def test_triton_spmm_max_backward_ties():
        """Rounded features: duplicate edges and equal neighbours tie, and only the first
        edge reaching the maximum (arg) gets the gradient."""
        g = graph("square")
        x = features(g, 5).round()
        grad = features(g, 5, seed=6, side="dst")
        _, arg = ref.spmm_forward(g.rowptr, g.col, None, x, "max")
        ties = 0
        row = g.row
        for i in range(g.num_dst):  # the case has ties (else the test proves nothing)
            msgs = x[g.col[row == i].long()]
            ties += int(((msgs == msgs.max(0).values).sum(0) > 1).sum()) if msgs.numel() else 0
        assert ties > 0
        with segments.force_split(2):
            close(*_max_backward_case(g, x, None, grad, True))


    @interpreted
    @pytest.mark.parametrize("width", [1, 37, 300])
    def test_triton_spmm_max_backward_widths(width):
        """Odd widths, and 300 > BLOCK_F: the weight gradient is summed over feature blocks."""
        g = graph("hub", torch.int32)
        x = features(g, width)
        w = torch.rand(g.num_edges, dtype=torch.float64)
        grad = features(g, width, seed=7, side="dst")
        with segments.force_split(4):
            close(*_max_backward_case(g, x, w, grad, True))


    @interpreted
    def test_triton_spmm_max_backward_float32_bitwise_repeatable():
        g = graph("hub")
        x = features(g, 19, dtype=torch.float32)
        w = torch.rand(g.num_edges)
        grad = features(g, 19, dtype=torch.float32, seed=8, side="dst")
        with segments.force_split(4):
            (gx, gw), (rx, rw) = _max_backward_case(g, x, w, grad, True)
            (gx2, gw2), _ = _max_backward_case(g, x, w, grad, True)
        close((gx, gw), (rx, rw), 1e-5)
        assert torch.equal(gx, gx2) and torch.equal(gw, gw2)


    @interpreted
    def test_triton_spmm_max_through_the_op():
        """fastalign.spmm(reduce="max") passes the transpose to the backward."""
        g = graph("hub")
        x = features(g, 4).requires_grad_()
        w = torch.rand(g.num_edges, dtype=torch.float64, requires_grad=True)
        grads = {}
        for backend in ("torch", "triton"):
            x.grad = w.grad = None
            with segments.force_split(4):
                fastalign.spmm(g, x, "max", edge_weight=w, backend=backend).square().sum().backward()
            grads[backend] = (x.grad.clone(), w.grad.clone())
        close(grads["triton"], grads["torch"])


    @interpreted
    @pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
    def test_triton_sddmm(name):
        g = graph(name)
        a, b = features(g, 7, side="dst", seed=1), features(g, 7)
        with segments.force_split(4):
            close(tb.sddmm(g.rowptr, g.col, a, b), ref.sddmm(g.rowptr, g.col, a, b))




    @interpreted
    def test_triton_aggregation_packs_short_rows(monkeypatch):
        """Sum, mean and GCN aggregation several short rows per program (a power-law graph of
        150 nodes: packs of rows of mixed degree, isolated rows, a last partial pack, hubs cut
        into segments that the one-row kernel takes), two feature blocks: equal to the
        reference, and bit for bit equal to one row per packed program."""
        from fastalign.kernels import heuristics
        from helpers import power_law_edge_index

        g = fastalign.Graph.from_edge_index(power_law_edge_index(150, 750, seed=5), num_nodes=150)
        x = features(g, 130)
        w = torch.rand(g.num_edges, dtype=torch.float64)
        dis, lw = gcn_norm_state(g, w, True, False, torch.float64)
        packed = heuristics.rows_packing(segments.row_plan(g.rowptr), 130, torch.float64)
        assert packed is not None and packed.ROWS > 1 and g.num_dst % packed.ROWS
        with segments.force_split(32):
            assert segments.row_plan(g.rowptr).num_long > 0
            outs = []
            for reduce in ("sum", "mean"):
                for weight in (None, w):
                    out = tb.spmm_forward(g.rowptr, g.col, weight, x, reduce)
                    close(out, ref.spmm_forward(g.rowptr, g.col, weight, x, reduce))
                    outs.append(out[0])
            gcn = tb.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x)
            close(gcn, ref.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x))
            monkeypatch.setattr(kspmm, "rows_packing", lambda plan, width, dtype: packed._replace(ROWS=1))
            again = [tb.spmm_forward(g.rowptr, g.col, weight, x, reduce)[0]
                     for reduce in ("sum", "mean") for weight in (None, w)]
            assert all(torch.equal(a, b) for a, b in zip(again, outs))
            assert torch.equal(tb.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x), gcn)


    @interpreted
    def test_triton_packing_rule(monkeypatch):
        """Rows get the largest power of two of lanes not above the mean degree; a program
        as many rows as fill the tile's edge lanes; none below two rows."""
        from types import SimpleNamespace

        from fastalign.kernels.heuristics import rows_packing

        def plan(mean):
            return SimpleNamespace(avg_degree=mean)

        assert rows_packing(plan(13.8), 64, torch.float32)[:3] == (8, 8, 64)   # arxiv-like
        assert rows_packing(plan(50.5), 64, torch.float32)[:3] == (2, 32, 64)  # products-like
        assert rows_packing(plan(50.5), 16, torch.float32)[:3] == (8, 32, 16)
        assert rows_packing(plan(492.0), 64, torch.float32) is None            # reddit-like
        assert rows_packing(plan(70.0), 128, torch.float32) is None
        assert rows_packing(plan(0.3), 64, torch.bfloat16)[:2] == (64, 1)
        monkeypatch.setenv("FASTALIGN_TRITON_PACK_ROWS", "0")
        assert rows_packing(plan(13.8), 64, torch.float32) is None


# ------------------------------------------------------------------ CUDA, on a device
# The CUDA extension's kernels against the reference on the same GPU (`pytest -m cuda
# tests/ops`); collected only where they can run (tests/ops/cuda_gpu.py: the dry run).
if CUDA_CASES:
    from cuda_gpu import (assert_close as cuda_close, CU, cuda_case, cuda_only, DEV, dtype_params as cuda_dtypes,
                          edge_weight as cuda_weight, feats as cuda_feats, graph_of as cuda_graph,
                          hub50k, misaligned,
                          REF as CREF, UNDER_TEST, WIDTHS as CUDA_WIDTHS)

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("width", CUDA_WIDTHS + (520,))
    @pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
    @pytest.mark.parametrize("weighted", (False, True))
    def test_cuda_spmm_forward(name, index_dtype, dtype, width, reduce, weighted):
        g = cuda_graph(name, index_dtype)
        x = cuda_feats(g.num_src, width, dtype)
        w = cuda_weight(g, dtype) if weighted else None
        out, arg = CU.spmm_forward(g.rowptr, g.col, w, x, reduce)
        ref_out, ref_arg = CREF.spmm_forward(g.rowptr, g.col, w, x, reduce)
        cuda_close(out, ref_out)
        if reduce == "max":
            # The same float32 products on both sides: the first maximal edge is exact.
            assert torch.equal(arg, ref_arg)
        else:
            assert arg.numel() == 0

    def cuda_max_backward(g, x, w, grad_out, need_w):
        """(cuda, reference) max backward; arg from the reference forward."""
        _, arg = CREF.spmm_forward(g.rowptr, g.col, w, x, "max")
        rowptr_t, col_t, perm_t = g.transpose()
        args = (g.col, rowptr_t, col_t, perm_t, w, x, arg, grad_out, need_w)
        return CU.spmm_max_backward(*args), CREF.spmm_max_backward(*args)

    @cuda_case
    @pytest.mark.parametrize("name", GRAPH_NAMES + ["source_hub"])
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("width", (1, 16, 67, 520))
    @pytest.mark.parametrize("weighted", (False, True))
    def test_cuda_spmm_max_backward(name, index_dtype, dtype, width, weighted):
        """grad_x gathered over the transpose (split source rows for "source_hub"; 520
        float32 features: two feature chunks)."""
        g = cuda_graph(name, index_dtype)
        x = cuda_feats(g.num_src, width, dtype)
        w = cuda_weight(g, dtype) if weighted else None
        grad_out = cuda_feats(g.num_dst, width, dtype, seed=1)
        (gx, gw), (rx, rw) = cuda_max_backward(g, x, w, grad_out, True)
        cuda_close(gx, rx)
        cuda_close(gw, rw)
        (gx2, gw2), _ = cuda_max_backward(g, x, w, grad_out, False)
        assert torch.equal(gx2, gx)
        assert gw2.numel() == 0

    @cuda_case
    @pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
    def test_cuda_spmm_max_winners_int32_and_int64(dtype):
        """The forward writes int32 winners; the backward reads int32 (16-byte int4 loads)
        and int64 winners to the same bits."""
        g = cuda_graph("source_hub", torch.int64)
        x = cuda_feats(g.num_src, 64, dtype)
        w = cuda_weight(g, dtype)
        out, arg = CU.spmm_forward(g.rowptr, g.col, w, x, "max")
        assert arg.dtype == torch.int32
        assert torch.equal(arg, CREF.spmm_forward(g.rowptr, g.col, w, x, "max")[1])
        grad_out = cuda_feats(g.num_dst, 64, dtype, seed=1)
        rowptr_t, col_t, perm_t = g.transpose()
        a32 = CU.spmm_max_backward(g.col, rowptr_t, col_t, perm_t, w, x, arg, grad_out, True)
        a64 = CU.spmm_max_backward(g.col, rowptr_t, col_t, perm_t, w, x, arg.long(), grad_out, True)
        assert torch.equal(a32[0], a64[0]) and torch.equal(a32[1], a64[1])

    @cuda_case
    def test_cuda_spmm_max_backward_ties():
        """Integer-valued features: equal messages tie, and only the arg edge (the first
        maximal one) gets the gradient."""
        g = cuda_graph("long_rows", torch.int32)
        x = torch.randint(-2, 3, (g.num_src, 16), generator=torch.Generator().manual_seed(2))
        x = x.float().to(DEV)
        grad_out = cuda_feats(g.num_dst, 16, torch.float32, seed=3)
        (gx, gw), (rx, rw) = cuda_max_backward(g, x, None, grad_out, True)
        cuda_close(gx, rx)
        cuda_close(gw, rw)

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("width", CUDA_WIDTHS)
    def test_cuda_sddmm(name, index_dtype, dtype, width):
        g = cuda_graph(name, index_dtype)
        a = cuda_feats(g.num_dst, width, dtype, seed=2)
        b = cuda_feats(g.num_src, width, dtype, seed=3)
        cuda_close(CU.sddmm(g.rowptr, g.col, a, b), CREF.sddmm(g.rowptr, g.col, a, b))

    @cuda_case
    @index_params
    @pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
    def test_cuda_spmm_hub_of_degree_50k(index_dtype, dtype):
        g = hub50k(index_dtype)
        x = cuda_feats(g.num_src, 64, dtype)
        for reduce in ("sum", "mean", "max"):
            out, arg = CU.spmm_forward(g.rowptr, g.col, None, x, reduce)
            ref_out, ref_arg = CREF.spmm_forward(g.rowptr, g.col, None, x, reduce)
            cuda_close(out, ref_out)
            if reduce == "max":
                assert torch.equal(arg, ref_arg)

    @cuda_case
    def test_cuda_spmm_deterministic_without_atomics():
        """Split hub rows are combined in a fixed order: two runs agree bit for bit, the
        max backward's split source hub included."""
        g = cuda_graph("hub50k", torch.int64)
        x = cuda_feats(g.num_src, 64, torch.float32)
        a, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
        b, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
        assert torch.equal(a, b)
        for name in ("hub50k", "source_hub"):
            gm = cuda_graph(name, torch.int32)
            for dtype in (torch.float32, torch.bfloat16):
                xm = cuda_feats(gm.num_src, 64, dtype, seed=4)
                wm = cuda_weight(gm, dtype)
                gout = cuda_feats(gm.num_dst, 64, dtype, seed=6)
                _, arg = CU.spmm_forward(gm.rowptr, gm.col, wm, xm, "max")
                rt, ct, pt = gm.transpose()
                args = (gm.col, rt, ct, pt, wm, xm, arg, gout, True)
                r1, r2 = CU.spmm_max_backward(*args), CU.spmm_max_backward(*args)
                assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1]), (name, dtype)

    @cuda_case
    @pytest.mark.parametrize("reduce", ("sum", "mean", "max"))
    def test_cuda_spmm_op_gradients(reduce):
        g = cuda_graph("long_rows", torch.int64)
        w = cuda_weight(g, torch.float32)
        x = cuda_feats(g.num_src, 32, torch.float32).requires_grad_()
        wc = w.clone().requires_grad_()
        out = fastalign.spmm(g, x, reduce, edge_weight=wc, backend=UNDER_TEST)
        out.square().sum().backward()
        x2 = x.detach().clone().requires_grad_()
        w2 = w.clone().requires_grad_()
        ref = fastalign.spmm(g, x2, reduce, edge_weight=w2, backend="torch")
        ref.square().sum().backward()
        cuda_close(out.detach(), ref.detach())
        cuda_close(x.grad, x2.grad)
        cuda_close(wc.grad, w2.grad)

    @cuda_case
    def test_cuda_float64_falls_back_to_the_reference():
        g = cuda_graph("square", torch.int64)
        x = cuda_feats(g.num_src, 8, torch.float64)
        out, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
        ref, _ = CREF.spmm_forward(g.rowptr, g.col, None, x, "sum")
        torch.testing.assert_close(out, ref)

    @cuda_case
    def test_cuda_power_law_graph_matches_torch_sparse():
        ei = power_law_edge_index(20_000, 400_000, seed=1).to(DEV)
        g = Graph.from_edge_index(ei, num_nodes=20_000)
        x = cuda_feats(20_000, 128, torch.float32)
        out, _ = CU.spmm_forward(g.rowptr, g.col, None, x, "sum")
        adj = torch.sparse_csr_tensor(g.rowptr.long(), g.col.long(), torch.ones(g.num_edges, device=DEV),
                                      size=(20_000, 20_000))
        cuda_close(out, adj @ x)

    @cuda_case
    def test_cuda_spmm_misaligned_and_strided_inputs():
        """Views with odd storage offsets or strides are copied to aligned dense rows."""
        g = cuda_graph("long_rows", torch.int64)
        for inp in misaligned(g.num_src, 64):
            out, _ = CU.spmm_forward(g.rowptr, g.col, None, inp, "sum")
            ref, _ = CREF.spmm_forward(g.rowptr, g.col, None, inp, "sum")
            cuda_close(out, ref)

    @cuda_case
    @cuda_only
    def test_cuda_spmm_bad_input_fails_with_a_message():
        g = cuda_graph("square", torch.int64)
        x = cuda_feats(g.num_src, 8, torch.float32)
        with pytest.raises(RuntimeError, match="CUDA tensor|device"):
            torch.ops.fastalign_cuda.spmm_forward(g.rowptr, g.col, None, x.cpu(), "sum")
        with pytest.raises(RuntimeError, match="unknown reduce"):
            torch.ops.fastalign_cuda.spmm_forward(g.rowptr, g.col, None, x, "prod")
        with pytest.raises(RuntimeError, match="2-D"):
            torch.ops.fastalign_cuda.spmm_forward(g.rowptr, g.col, None, x.flatten(), "sum")


# ------------------------------------------------------------------ Triton, on a device
# The Triton kernels compiled for the GPU against the reference on the same device
# (`pytest -m triton_gpu tests/ops`); collected only where they can run
# (tests/ops/triton_gpu.py: the dry run).
if TRITON_GPU_CASES:
    from triton_gpu import (DEV as TDEV, dtypes as triton_dtypes, feats as triton_feats, HUB, hub, power_law,
                            REF as TREF, rel_close, SCALE, src_hub, TB, triton_gpu_case)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype,index_dtype", triton_dtypes([
        (torch.float32, torch.int32), (torch.float32, torch.int64),
        (torch.bfloat16, torch.int32), (torch.float16, torch.int64),
    ]))
    @pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
    def test_triton_gpu_spmm(dtype, index_dtype, reduce):
        g = power_law(index_dtype)
        widths = (1, 67, 1030) if (dtype, index_dtype) == (torch.float32, torch.int32) else (64,)
        for width in widths:
            x = triton_feats(g.num_src, width, dtype, width)
            w = torch.rand(g.num_edges, device=TDEV).to(dtype)
            for weight in (None, w):
                out = TB.spmm_forward(g.rowptr, g.col, weight, x, reduce)
                expect = TREF.spmm_forward(g.rowptr, g.col, weight, x, reduce)
                rel_close(out[0], expect[0], dtype, f"spmm {reduce} F={width}")
                if reduce == "max" and dtype == torch.float32:
                    assert torch.equal(out[1], expect[1])

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes())
    def test_triton_gpu_spmm_hub_row(dtype):
        g = hub(torch.int64)
        assert int(g.in_degree.max()) >= HUB
        x = triton_feats(g.num_src, 64, dtype, 0)
        for reduce in ("sum", "max"):
            rel_close(TB.spmm_forward(g.rowptr, g.col, None, x, reduce)[0],
                      TREF.spmm_forward(g.rowptr, g.col, None, x, reduce)[0], dtype, f"hub spmm {reduce}")

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes())
    def test_triton_gpu_sddmm(dtype):
        g = power_law(torch.int32)
        x = triton_feats(g.num_src, 128, dtype, 8)
        rel_close(TB.sddmm(g.rowptr, g.col, x, x), TREF.sddmm(g.rowptr, g.col, x, x), dtype, "sddmm")

    def triton_max_backward(g, x, w, gout, need_w):
        rt, ct, pt = g.transpose()
        _, arg = TREF.spmm_forward(g.rowptr, g.col, w, x, "max")
        args = (g.col, rt, ct, pt, w, x, arg, gout, need_w)
        return TB.spmm_max_backward(*args), TREF.spmm_max_backward(*args)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype,index_dtype", triton_dtypes([
        (torch.float32, torch.int64), (torch.float32, torch.int32),
        (torch.bfloat16, torch.int32), (torch.float16, torch.int64),
    ]))
    def test_triton_gpu_spmm_max_backward(dtype, index_dtype):
        g = power_law(index_dtype)
        widths = (1, 64, 1030) if (dtype, index_dtype) == (torch.float32, torch.int64) else (64,)
        for width in widths:
            x = triton_feats(g.num_src, width, dtype, 9)
            w = torch.rand(g.num_edges, device=TDEV).to(dtype)
            gout = triton_feats(g.num_dst, width, dtype, 10)
            for weight in (None, w):
                (gx, gw), (rx, rw) = triton_max_backward(g, x, weight, gout, True)
                rel_close(gx, rx, dtype, f"max bwd x F={width}")
                # per-edge sums over the features an edge won: signed terms
                rel_close(gw, rw, dtype if dtype != torch.float32 else torch.float16, f"max bwd w F={width}")
                (gx2, gw2), _ = triton_max_backward(g, x, weight, gout, False)
                rel_close(gx2, rx, dtype, f"max bwd x F={width} (no weight grad)")
                assert gw2.numel() == 0
        # the forward's int32 winners and the same winners as int64: the same bits
        x, gout = triton_feats(g.num_src, 64, dtype, 9), triton_feats(g.num_dst, 64, dtype, 10)
        _, arg = TB.spmm_forward(g.rowptr, g.col, None, x, "max")
        assert arg.dtype == torch.int32
        rt, ct, pt = g.transpose()
        a32 = TB.spmm_max_backward(g.col, rt, ct, pt, None, x, arg, gout, True)
        a64 = TB.spmm_max_backward(g.col, rt, ct, pt, None, x, arg.long(), gout, True)
        assert torch.equal(a32[0], a64[0]) and torch.equal(a32[1], a64[1])

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes([torch.float32, torch.bfloat16]))
    def test_triton_gpu_spmm_max_backward_hubs(dtype):
        """A destination hub (the forward splits it; one arg edge per feature wins) and a
        source hub of out-degree 60,000 (the backward splits the transpose's row)."""
        for g in (hub(torch.int64), src_hub(torch.int32)):
            x = triton_feats(g.num_src, 64, dtype, 20)
            w = torch.rand(g.num_edges, device=TDEV).to(dtype)
            gout = triton_feats(g.num_dst, 64, dtype, 21)
            (gx, gw), (rx, rw) = triton_max_backward(g, x, w, gout, True)
            rel_close(gx, rx, dtype, "hub max bwd x")
            rel_close(gw, rw, dtype if dtype != torch.float32 else torch.float16, "hub max bwd w")

    @triton_gpu_case
    @pytest.mark.parametrize("name", [name for name, dt in CASES if dt == torch.int64])
    def test_triton_gpu_spmm_edge_case_graphs(name):
        g = get_case(name, torch.int64).to(TDEV)
        x = triton_feats(g.num_src, 5, torch.float32, 11)
        for reduce in ("sum", "mean", "max"):
            rel_close(TB.spmm_forward(g.rowptr, g.col, None, x, reduce)[0],
                      TREF.spmm_forward(g.rowptr, g.col, None, x, reduce)[0], torch.float32, reduce)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes([torch.float32, torch.bfloat16]))
    def test_triton_gpu_packed_rows_match_one_row_per_program(dtype, monkeypatch):
        """Sum, mean and GCN aggregation with several short rows per program (arxiv- and
        products-like mean degrees at F = 64, a hub cut into segments beside them) against
        one row per program and the reference, and the same bits on a second run."""
        from fastalign.kernels import heuristics, segments

        for mean in (14, 50):
            n = 4000 // SCALE
            ei = torch.cat([power_law_edge_index(n, mean * n, seed=mean),
                            torch.stack([torch.arange(3000 // SCALE) % n,
                                         torch.zeros(3000 // SCALE, dtype=torch.long)])], 1)
            g = Graph.from_edge_index(ei, num_nodes=n).to(TDEV)
            plan = segments.row_plan(g.rowptr)
            assert plan.num_long > 0 and heuristics.rows_packing(plan, 64, dtype).ROWS >= 2
            x = triton_feats(n, 64, dtype, mean)
            w = torch.rand(g.num_edges, device=TDEV).to(dtype)
            dis, lw = gcn_norm_state(g, w, True, False, dtype)

            def run():
                out = [TB.spmm_forward(g.rowptr, g.col, wt, x, reduce)[0]
                       for reduce in ("sum", "mean") for wt in (None, w)]
                return out + [TB.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x)]

            packed, again = run(), run()
            expect = [TREF.spmm_forward(g.rowptr, g.col, wt, x, reduce)[0]
                      for reduce in ("sum", "mean") for wt in (None, w)]
            expect.append(TREF.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x))
            monkeypatch.setenv("FASTALIGN_TRITON_PACK_ROWS", "0")
            one_row = run()
            monkeypatch.delenv("FASTALIGN_TRITON_PACK_ROWS")
            for i, (a, b, c, d) in enumerate(zip(packed, again, one_row, expect)):
                assert torch.equal(a, b), f"mean degree {mean}, output {i}: not repeatable"
                rel_close(a, d, dtype, f"packed, mean degree {mean}, output {i}")
                rel_close(c, d, dtype, f"one row, mean degree {mean}, output {i}")
