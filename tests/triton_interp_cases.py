"""The interpreter cases of the Triton backend (collected through test_triton_backend.py
when TRITON_INTERPRET=1; see its docstring). Tiny graphs, float64 features: kernels and
reference must agree to rounding."""

import importlib
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    raise ImportError("triton_interp_cases needs TRITON_INTERPRET=1 before triton is imported")

import torch  # noqa: E402

import fastalign
from fastalign.kernels import segments, spmm as kspmm
from fastalign.ops.gcn_aggregate import gcn_norm_state
from triton.runtime.interpreter import InterpretedFunction

from helpers import case_graphs, features

if not isinstance(kspmm.agg_kernel, InterpretedFunction):  # imported too early
    pytest.skip(
        "fastalign.kernels was imported before TRITON_INTERPRET=1 was set",
        allow_module_level=True,
    )
ref = importlib.import_module("fastalign.backends.reference")
tb = importlib.import_module("fastalign.backends.triton")

GRAPHS = dict(case_graphs())
KERNELS = {  # kernel: (sigma, degree, coef)
    "l1": (2.0, 2, 1.0), "rbf": (1.5, 2, 1.0), "linear": (1.0, 2, 1.0),
    "poly": (1.0, 3, 0.5), "cosine": (1.0, 2, 1.0),
}
NO_SPLIT = 10**9


def close(a, b, tol=1e-10):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y, tol)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if a.numel():
        torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)


def graph(name, index_dtype=None):
    g = GRAPHS[name]
    return g.to(index_dtype=index_dtype) if index_dtype is not None else g


SPLITS = (NO_SPLIT, 4)


# --------------------------------------------------------------------------- spmm
@pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("split", SPLITS)
def test_spmm_forward(name, reduce, split):
    g = graph(name)
    x = features(g, 5)
    w = torch.rand(g.num_edges, dtype=torch.float64)
    with segments.force_split(split):
        for weight in (None, w):
            close(tb.spmm_forward(g.rowptr, g.col, weight, x, reduce),
                  ref.spmm_forward(g.rowptr, g.col, weight, x, reduce))


@pytest.mark.parametrize("width", [1, 37, 300])
def test_spmm_widths_int32(width):
    g = graph("hub", torch.int32)
    x = features(g, width)
    for reduce in ("sum", "max"):
        close(tb.spmm_forward(g.rowptr, g.col, None, x, reduce),
              ref.spmm_forward(g.rowptr, g.col, None, x, reduce))


def test_spmm_float32():
    g = graph("square")
    x = features(g, 19, dtype=torch.float32)
    w = torch.rand(g.num_edges)
    for reduce in ("sum", "mean", "max"):
        out, arg = tb.spmm_forward(g.rowptr, g.col, w, x, reduce)
        r_out, r_arg = ref.spmm_forward(g.rowptr, g.col, w, x, reduce)
        close(out, r_out, 1e-5)
        assert torch.equal(arg, r_arg)


def test_spmm_max_ties_first_edge():
    # duplicate edges give equal messages: the first edge must win
    g = graph("square")
    x = features(g, 4).round()
    with segments.force_split(2):
        out, arg = tb.spmm_forward(g.rowptr, g.col, None, x, "max")
    r_out, r_arg = ref.spmm_forward(g.rowptr, g.col, None, x, "max")
    close(out, r_out)
    assert torch.equal(arg, r_arg)


@pytest.mark.parametrize("split", SPLITS)
def test_spmm_max_nan_propagates(split):
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


@pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("need_w", [False, True])
def test_spmm_max_backward(name, index_dtype, split, need_w):
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


def test_spmm_max_winners_are_int32():
    g = graph("hub")
    x = features(g, 6)
    with segments.force_split(4):
        _, arg = tb.spmm_forward(g.rowptr, g.col, None, x, "max")
    assert arg.dtype == torch.int32
    assert torch.equal(arg, ref.spmm_forward(g.rowptr, g.col, None, x, "max")[1])


def test_spmm_max_backward_ties():
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


@pytest.mark.parametrize("width", [1, 37, 300])
def test_spmm_max_backward_widths(width):
    """Odd widths, and 300 > BLOCK_F: the weight gradient is summed over feature blocks."""
    g = graph("hub", torch.int32)
    x = features(g, width)
    w = torch.rand(g.num_edges, dtype=torch.float64)
    grad = features(g, width, seed=7, side="dst")
    with segments.force_split(4):
        close(*_max_backward_case(g, x, w, grad, True))


def test_spmm_max_backward_float32_bitwise_repeatable():
    g = graph("hub")
    x = features(g, 19, dtype=torch.float32)
    w = torch.rand(g.num_edges)
    grad = features(g, 19, dtype=torch.float32, seed=8, side="dst")
    with segments.force_split(4):
        (gx, gw), (rx, rw) = _max_backward_case(g, x, w, grad, True)
        (gx2, gw2), _ = _max_backward_case(g, x, w, grad, True)
    close((gx, gw), (rx, rw), 1e-5)
    assert torch.equal(gx, gx2) and torch.equal(gw, gw2)


def test_spmm_max_through_the_op():
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


@pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
def test_sddmm(name):
    g = graph(name)
    a, b = features(g, 7, side="dst", seed=1), features(g, 7)
    with segments.force_split(4):
        close(tb.sddmm(g.rowptr, g.col, a, b), ref.sddmm(g.rowptr, g.col, a, b))


# --------------------------------------------------------------------------- gcn
@pytest.mark.parametrize("name", ["square", "hub"])
@pytest.mark.parametrize("split", SPLITS)
def test_gcn_aggregate(name, split):
    g = graph(name)
    x = features(g, 9)
    w = torch.rand(g.num_edges, dtype=torch.float64)
    with segments.force_split(split):
        for weight in (None, w):
            for loops in (True, False):
                dis, lw = gcn_norm_state(g, weight, loops, False, torch.float64)
                close(tb.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x),
                      ref.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x))


def test_aggregation_packs_short_rows(monkeypatch):
    """Sum, mean and GCN aggregation several short rows per program (a power-law graph of
    300 nodes: packs of rows of mixed degree, isolated rows, a last partial pack, hubs cut
    into segments that the one-row kernel takes), two feature blocks: equal to the
    reference, and bit for bit equal to one row per packed program."""
    from fastalign.kernels import heuristics
    from helpers import power_law_edge_index

    g = fastalign.Graph.from_edge_index(power_law_edge_index(300, 1500, seed=5), num_nodes=300)
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


def test_packing_rule(monkeypatch):
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


# --------------------------------------------------------------------------- similarity
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("name", ["square", "rectangular"])
def test_edge_similarity(kernel, name):
    g = graph(name)
    xd, xs = features(g, 5, side="dst", seed=1), features(g, 5)
    sigma, degree, coef = KERNELS[kernel]
    rt, ct, pt = g.transpose()
    gs = torch.randn(g.num_edges, dtype=torch.float64)
    close(tb.edge_similarity(g.rowptr, g.col, xd, xs, kernel, sigma, degree, coef),
          ref.edge_similarity(g.rowptr, g.col, xd, xs, kernel, sigma, degree, coef))
    close(tb.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, xd, xs, gs, kernel, sigma, degree, coef),
          ref.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, xd, xs, gs, kernel, sigma, degree, coef))


@pytest.mark.parametrize("kernel", ["l1", "rbf"])
@pytest.mark.parametrize("name", ["square", "rectangular", "hub"])
def test_auto_sigma(kernel, name):
    """sigma="auto" through the public ops: the scale and the loss as the reference's."""
    g = graph(name)
    hs = (features(g, 5, side="dst", seed=1), features(g, 5, seed=2)) if not g.is_square else features(g, 5)
    hp = (features(g, 3, side="dst", seed=3), features(g, 3, seed=4)) if not g.is_square else 3 * features(g, 3, seed=3)
    close(fastalign.edge_scale(g, hs, kernel, backend="triton"), fastalign.edge_scale(g, hs, kernel, backend="torch"))
    kw = dict(kernel=kernel, sigma="auto", reduction="none")
    close(fastalign.structure_kl(g, hs, hp, backend="triton", **kw), fastalign.structure_kl(g, hs, hp, backend="torch", **kw))


@pytest.mark.parametrize("kernel", ["l1", "cosine", "poly"])
def test_edge_similarity_hub_split_and_wide(kernel):
    g = graph("hub")
    width = 300 if kernel == "cosine" else 3  # 300 > BLOCK_F: several feature blocks
    x = features(g, width)
    x[3] = 0.0  # a zero row: the cosine eps clamp
    sigma, degree, coef = KERNELS[kernel]
    degree = 0 if kernel == "poly" else degree
    rt, ct, pt = g.transpose()
    gs = torch.randn(g.num_edges, dtype=torch.float64)
    with segments.force_split(4):
        close(tb.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef),
              ref.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef))
        close(tb.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, x, x, gs, kernel, sigma, degree, coef),
              ref.edge_similarity_backward(g.rowptr, g.col, rt, ct, pt, x, x, gs, kernel, sigma, degree, coef))


# --------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
@pytest.mark.parametrize("split", SPLITS)
def test_edge_softmax(name, split):
    g = graph(name)
    z = torch.randn(g.num_edges, dtype=torch.float64) * 3
    with segments.force_split(split):
        p = tb.edge_softmax(g.rowptr, z)
        close(p, ref.edge_softmax(g.rowptr, z))
        gp = torch.randn_like(p)
        close(tb.edge_softmax_backward(g.rowptr, p, gp), ref.edge_softmax_backward(g.rowptr, p, gp))


def test_edge_softmax_packs_short_rows_without_changing_a_bit(monkeypatch):
    """Several short rows per program (a power-law graph of 300 nodes: groups of rows of
    mixed degree, isolated rows, rows past the group's end, a hub cut into segments):
    equal to the reference, and bit for bit equal to one row per program."""
    from fastalign.kernels import edge_softmax as ksoftmax, heuristics
    from helpers import power_law_edge_index

    g = fastalign.Graph.from_edge_index(power_law_edge_index(300, 1500, seed=4), num_nodes=300)
    z = torch.randn(g.num_edges, dtype=torch.float32) * 3
    gp = torch.randn_like(z)
    rows, row_e, _ = heuristics.softmax_rows(segments.row_plan(g.rowptr))
    assert rows > 1 and g.num_dst > 2 * rows  # several groups of several rows
    with segments.force_split(32):
        assert segments.row_plan(g.rowptr).num_long > 0
        p = tb.edge_softmax(g.rowptr, z)
        gz = tb.edge_softmax_backward(g.rowptr, p, gp)
        close(p, ref.edge_softmax(g.rowptr, z), 1e-6)
        close(gz, ref.edge_softmax_backward(g.rowptr, p, gp), 1e-6)
        monkeypatch.setattr(ksoftmax, "softmax_rows", lambda plan: (1, row_e, 4))
        assert torch.equal(tb.edge_softmax(g.rowptr, z), p)
        assert torch.equal(tb.edge_softmax_backward(g.rowptr, p, gp), gz)


# --------------------------------------------------------------------------- structure KL
def _kl_case(g, ws=5, wp=3):
    return (features(g, ws, side="dst", seed=1), features(g, ws, seed=2),
            features(g, wp, side="dst", seed=3), features(g, wp, seed=4))


def _check_kl(g, feats, kernel, tau, peers=(False, True)):
    sigma, degree, coef = KERNELS[kernel]
    rt, ct, pt = g.transpose()
    out = tb.structure_kl_forward(g.rowptr, g.col, *feats, kernel, sigma, degree, coef, tau)
    expect = ref.structure_kl_forward(g.rowptr, g.col, *feats, kernel, sigma, degree, coef, tau)
    close(out, expect)
    gk = torch.randn(g.num_dst, dtype=torch.float64)
    state = (expect[1], expect[2], expect[0])  # the backward takes (lse_s, lse_p, kl)
    for peer in peers:
        close(
            tb.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, *feats, *state, gk,
                                     kernel, sigma, degree, coef, tau, peer),
            ref.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, *feats, *state, gk,
                                      kernel, sigma, degree, coef, tau, peer),
        )


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_structure_kl(kernel):
    g = graph("square")
    _check_kl(g, _kl_case(g), kernel, 0.7)


@pytest.mark.parametrize("name", ["rectangular", "no_edges", "hub"])
def test_structure_kl_graphs_split(name):
    g = graph(name, torch.int32)
    with segments.force_split(4):
        _check_kl(g, _kl_case(g), "l1", 0.5, peers=(True,))


def test_structure_kl_wide_cosine():
    g = graph("hub")
    feats = _kl_case(g, 300, 1)  # 300: several feature blocks; 1: a width-1 peer
    with segments.force_split(8):
        _check_kl(g, feats, "cosine", 0.3, peers=(True,))


@pytest.mark.parametrize("kernel", ["l1", "rbf", "linear", "poly", "cosine"])
def test_structure_kl_atomic_backward(kernel, monkeypatch):
    """The opt-in single-pass backward (source gradients by atomics)."""
    monkeypatch.setenv("FASTALIGN_TRITON_SKL_BACKWARD", "atomic")
    g = graph("hub" if kernel in ("l1", "cosine") else "square")
    feats = _kl_case(g, 5 if kernel != "cosine" else 300, 3)
    if kernel == "cosine":
        feats[1][2] = 0.0  # a zero source row: the eps clamp on the gathered side
    with segments.force_split(4):
        _check_kl(g, feats, kernel, 0.6)


# --------------------------------------------------------------------------- gat_aggregate
@pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
@pytest.mark.parametrize("loops,dropout,with_dst", [(True, 0.0, True), (False, 0.4, True), (True, 0.5, False)])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("split", SPLITS)
def test_gat_aggregate(name, loops, dropout, with_dst, index_dtype, split):
    g = graph(name, index_dtype)
    gen = torch.Generator().manual_seed(3)
    heads, channels = 3, 5  # neither a power of two: the padded tiles' masks
    x = torch.randn(g.num_src, heads, channels, generator=gen, dtype=torch.float64)
    a_s = torch.randn(g.num_src, heads, generator=gen, dtype=torch.float64)
    a_d = torch.randn(g.num_dst, heads, generator=gen, dtype=torch.float64) if with_dst else None
    args = (x, a_s, a_d, 0.15, dropout, 2**31 + 17, loops)
    with segments.force_split(split):  # 4: hub rows and rows of more than 4 edges in segments
        _check_gat(g, args, gen)


def _check_gat(g, args, gen):
    x, a_s, a_d, _, dropout, _, loops = args
    out, lse = tb.gat_aggregate_forward(g.rowptr, g.col, *args)
    ref_out, ref_lse = ref.gat_aggregate_forward(g.rowptr, g.col, *args)
    close(out, ref_out)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    close(torch.nan_to_num(lse, neginf=0.0), torch.nan_to_num(ref_lse, neginf=0.0))
    rowptr_t, col_t, perm_t = g.transpose()
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.15, dropout,
            2**31 + 17, loops)
    close(tb.gat_aggregate_backward(*back), ref.gat_aggregate_backward(*back))


# --------------------------------------------------------------------------- through the ops
def test_ops_autograd_match_reference():
    g = graph("square")
    x = features(g, 6).requires_grad_()
    w = torch.rand(g.num_edges, dtype=torch.float64, requires_grad=True)
    hp = features(g, 4, seed=9)
    grads = {}
    for backend in ("torch", "triton"):
        x.grad = w.grad = None
        hs = x * 1.0
        loss = (
            fastalign.spmm(g, x, "mean", edge_weight=w, backend=backend).square().sum()
            + fastalign.gcn_aggregate(g, x, backend=backend).sum()
            + fastalign.structure_kl(g, hs, hp, kernel="rbf", tau=0.5, backend=backend)
            + fastalign.local_structure(g, x, kernel="cosine", backend=backend).square().sum()
            + fastalign.gat_aggregate(g, x.view(-1, 2, 3), x[:, :2], x[:, 2:4], dropout=0.3, seed=4,
                                      backend=backend).square().sum()
        )
        loss.backward()
        grads[backend] = (loss.detach(), x.grad.clone(), w.grad.clone())
    close(grads["triton"], grads["torch"])


def test_backend_lists_every_function():
    from fastalign.backends import BACKEND_FUNCTIONS

    assert set(tb.FUNCTIONS) == set(BACKEND_FUNCTIONS)
    assert tb.supports(torch.device("cpu"))


def test_plan_cache_follows_rowptr():
    g = graph("square")
    rowptr = g.rowptr.clone()
    p1 = segments.row_plan(rowptr)
    assert segments.row_plan(rowptr) is p1
    rowptr.add_(0)  # a version bump: the plan is rebuilt
    assert segments.row_plan(rowptr) is not p1
