"""Plain eager calls take each op's autograd.Function twin (fastalign/ops/twin_op.py);
everything else takes the torch custom op. Both run the same functions: the same bits
forward and backward, on every op, and the custom op wherever torch needs it."""

from __future__ import annotations

import pytest
import torch

import fastalign
from fastalign.ops import twin_op

from helpers import random_edge_index

BACKENDS = [b for b in ("torch", "cpu") if fastalign.backends.is_available(b)]


def _graph():
    return fastalign.Graph.from_edge_index(random_edge_index(30, 30, 150, seed=1), num_nodes=30)


def _inputs(width=6, heads=2):
    gen = torch.Generator().manual_seed(2)
    return {name: torch.randn(30, w, generator=gen, dtype=torch.float64)
            for name, w in (("x", width), ("peer", width), ("a_src", heads), ("a_dst", heads))}


CASES = {
    "spmm sum": lambda g, t, b: fastalign.spmm(g, t["x"], "sum", backend=b),
    "spmm max": lambda g, t, b: fastalign.spmm(g, t["x"], "max", backend=b),
    "gcn_aggregate": lambda g, t, b: fastalign.gcn_aggregate(g, t["x"], backend=b),
    "edge_similarity": lambda g, t, b: fastalign.edge_similarity(g, t["x"], "rbf", sigma=2.0, backend=b),
    "local_structure": lambda g, t, b: fastalign.local_structure(g, t["x"], "l1", sigma=3.0, backend=b),
    "structure_kl": lambda g, t, b: fastalign.structure_kl(g, t["x"], t["peer"], "l1", sigma=3.0, backend=b),
    "structure_kl peer detached": lambda g, t, b: fastalign.structure_kl(
        g, t["x"], t["peer"].detach(), "rbf", sigma=2.0, backend=b),
    "gat_aggregate": lambda g, t, b: fastalign.ops.gat_aggregate(
        g, t["x"].view(30, 2, 3), t["a_src"], t["a_dst"], backend=b),
}


def _run(case, backend, custom_op: bool, monkeypatch):
    if custom_op:
        monkeypatch.setattr(twin_op, "plain_eager", lambda args: False)
    tensors = {k: v.clone().requires_grad_() for k, v in _inputs().items()}
    out = CASES[case](_graph(), tensors, backend)
    grads = torch.autograd.grad(out.square().sum(), [t for t in tensors.values()], allow_unused=True)
    return out.detach(), grads, _nodes(out.grad_fn)


def _nodes(fn):
    """The names of the autograd nodes behind a result."""
    seen, todo = set(), [fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            todo += [n for n, _ in node.next_functions]
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_twin_and_custom_op_give_the_same_bits(case, backend, monkeypatch):
    out_t, grads_t, node_t = _run(case, backend, False, monkeypatch)  # the twin first
    out_c, grads_c, node_c = _run(case, backend, True, monkeypatch)
    # two paths were taken: the twin's autograd node, and the custom op's
    assert any(n.endswith("_functionBackward") for n in node_t)
    assert not any(n.endswith("_functionBackward") for n in node_c)
    assert torch.equal(out_t, out_c)
    assert any(g is not None for g in grads_t)
    for a, b in zip(grads_t, grads_c):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def test_only_plain_eager_calls_bypass_the_custom_op():
    x = torch.randn(3, 2)
    assert twin_op.plain_eager((x, torch.nn.Parameter(x), None, "sum", 1.0))
    assert not twin_op.plain_eager((x.to("meta"),))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not twin_op.plain_eager((fake,))

    seen = []
    torch.func.vmap(lambda row: seen.append(twin_op.plain_eager((row,))) or row)(x)
    assert seen == [False]  # a functorch transform is active


def test_a_backward_without_a_formula_still_refuses_double_backward():
    """edge_similarity's backward op has no gradient of its own: differentiating the
    gradient again is refused by name (not with torch's internal message, and never by
    silently returning no gradient)."""
    x = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    s = fastalign.edge_similarity(_graph(), x, "l1", sigma=1.0, backend=BACKENDS[-1])
    (gx,) = torch.autograd.grad(s.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="fastalign's edge_similarity has no second derivative"):
        gx.sum().backward()


def test_the_twin_passes_gradcheck():
    g = _graph()
    x = torch.randn(30, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda t: fastalign.spmm(g, t, "mean", backend=BACKENDS[-1])  # noqa: E731
    assert type(fn(x).grad_fn).__name__ == "spmm_functionBackward"
    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_custom_op_checks_what_the_prepared_pass_checked_once(backend):
    """gcn_aggregate's twin runs the kernel without the input checks (its callers are the
    prepared passes, which checked the graph once and check each call's features); the
    custom op, which anyone can call, still refuses bad input by name."""
    g = _graph()
    dis = torch.ones(30, dtype=torch.float64)
    x = torch.randn(30, 4, dtype=torch.float64)
    op = torch.ops.fastalign.gcn_aggregate
    good = op(g.rowptr, g.col, None, dis, None, x, None, None, None, None, backend)
    # dis = 1 and no implicit loops: the plain sum over in-edges
    torch.testing.assert_close(good, fastalign.spmm(g, x, "sum", backend=backend))
    with pytest.raises(ValueError, match="rows"):
        op(g.rowptr, g.col, None, dis, None, x[:29], None, None, None, None, backend)
    with pytest.raises(ValueError, match="dis"):
        op(g.rowptr, g.col, None, dis[:29], None, x, None, None, None, None, backend)
    bad_col = g.col.clone()
    bad_col[3] = 30
    with pytest.raises(ValueError):
        op(g.rowptr, bad_col, None, dis, None, x, None, None, None, None, backend)
    # the prepared pass: the graph checked when prepared, the features at each call
    propagate = fastalign.ops.gcn_propagation(g, x, backend=backend)
    with pytest.raises(ValueError, match="rows"):
        propagate(x[:29])
    with pytest.raises(ValueError):
        propagate(x[:, 0])
