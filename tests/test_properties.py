"""Property-based: on random small graphs (rectangular or square, isolated nodes,
duplicate edges, self loops, int32 or int64 indices, weighted or not) every backend of
this machine agrees with the reference in float64, forward and backward; on the same
graphs with one index corrupted, every backend refuses with the same kind of error."""

from __future__ import annotations

import importlib

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastalign  # noqa: E402
from fastalign import Graph, backends  # noqa: E402
from helpers import KERNELS  # noqa: E402

BACKENDS = [b for b in backends.available_backends("cpu") if b != "torch"]
REF = importlib.import_module("fastalign.backends.reference")
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def graphs(draw, square=None):
    sq = draw(st.booleans()) if square is None else square
    num_src = draw(st.integers(0, 9))
    num_dst = num_src if sq else draw(st.integers(0, 9))
    num_edges = draw(st.integers(0, 30)) if num_src and num_dst else 0
    src = draw(st.lists(st.integers(0, max(num_src - 1, 0)), min_size=num_edges, max_size=num_edges))
    dst = draw(st.lists(st.integers(0, max(num_dst - 1, 0)), min_size=num_edges, max_size=num_edges))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    ei = torch.tensor([src, dst], dtype=index_dtype).reshape(2, num_edges)
    weighted = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(num_edges, generator=gen, dtype=torch.float64) + 0.25 if weighted else None
    g = Graph.from_edge_index(ei, w, num_nodes=num_src if sq else (num_src, num_dst))
    width = draw(st.integers(1, 5))
    return g, width, gen


def feats(n, width, gen, grad=True):
    return torch.randn(n, width, generator=gen, dtype=torch.float64).requires_grad_(grad)


def assert_same(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=what)


def grads_of(fn, *inputs):
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * weight).sum().backward()
    return [out.detach()] + [t.grad.clone() for t in inputs]


def compare(fn, make_inputs):
    want = grads_of(lambda *t: fn("torch", *t), *make_inputs())
    for backend in BACKENDS:
        got = grads_of(lambda *t: fn(backend, *t), *make_inputs())
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{backend} output {i}")


@SETTINGS
@given(graphs(), st.sampled_from(["sum", "mean", "max"]))
def test_spmm_agrees_with_the_reference(case, reduce):
    g, width, gen = case
    x0 = feats(g.num_src, width, gen).detach()
    compare(lambda b, x: fastalign.spmm(g, x, reduce, backend=b), lambda: (x0.clone().requires_grad_(),))


@SETTINGS
@given(graphs(square=True), st.booleans(), st.booleans())
def test_gcn_aggregate_agrees_with_the_reference(case, loops, improved):
    g, width, gen = case
    x0 = feats(g.num_src, width, gen).detach()
    compare(lambda b, x: fastalign.gcn_aggregate(g, x, loops, improved, backend=b),
            lambda: (x0.clone().requires_grad_(),))


@SETTINGS
@given(graphs(), st.sampled_from(KERNELS), st.floats(0.2, 3.0))
def test_local_structure_agrees_with_the_reference(case, kernel, tau):
    g, width, gen = case
    xd, xs = feats(g.num_dst, width, gen).detach(), feats(g.num_src, width, gen).detach()
    compare(lambda b, a, c: fastalign.local_structure(g, (a, c), kernel, tau=tau, sigma=2.0, backend=b),
            lambda: (xd.clone().requires_grad_(), xs.clone().requires_grad_()))


@SETTINGS
@given(graphs(), st.sampled_from(KERNELS), st.floats(0.2, 3.0), st.booleans())
def test_structure_kl_agrees_with_the_reference(case, kernel, tau, peer_grad):
    g, width, gen = case
    emb = [feats(n, f, gen).detach() * (f ** -0.5 if kernel in ("linear", "poly") else 1.0)
           for n, f in ((g.num_dst, width), (g.num_src, width), (g.num_dst, width + 1), (g.num_src, width + 1))]

    def inputs():
        return tuple(t.clone().requires_grad_(peer_grad or i < 2) for i, t in enumerate(emb))

    def run(b, sd, ss, pd, ps):
        return fastalign.structure_kl(g, (sd, ss), (pd, ps), kernel, tau=tau, sigma=2.0, reduction="none", backend=b)

    want = run("torch", *inputs())
    for backend in BACKENDS:
        a, b = inputs(), inputs()
        ga = torch.autograd.grad(run(backend, *a).sum(), [t for t in a if t.requires_grad], allow_unused=True)
        gb = torch.autograd.grad(run("torch", *b).sum(), [t for t in b if t.requires_grad], allow_unused=True)
        assert_same(run(backend, *inputs()).detach(), want.detach(), f"{backend} kl")
        for i, (u, v) in enumerate(zip(ga, gb)):
            if u is None or v is None:
                assert u is None and v is None
                continue
            torch.testing.assert_close(u, v, rtol=1e-8, atol=1e-9, msg=f"{backend} grad {i}")


# ----------------------------------------------------------------------------- malformed
@st.composite
def corrupted(draw):
    g, width, gen = draw(graphs())
    rowptr, col = g.rowptr.clone(), g.col.clone()
    which = draw(st.sampled_from(["col", "rowptr"]) if col.numel() else st.just("rowptr"))
    if which == "col":
        i = draw(st.integers(0, col.numel() - 1))
        col[i] = draw(st.sampled_from([-1, g.num_src, g.num_src + 5, 2**31 - 1]))
    else:  # each choice breaks the CSR: rowptr[0] != 0, rowptr[-1] != E, or a decrease
        i = draw(st.integers(0, rowptr.numel() - 1))
        choices = [-1, g.num_edges + 1, 2**31 - 1]
        if i in (0, rowptr.numel() - 1):
            choices.append(int(rowptr[i]) + 1)
        rowptr[i] = draw(st.sampled_from(choices))
    return g, rowptr, col, width, gen


def _outcome(fn):
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return type(exc)
    return None


@SETTINGS
@given(corrupted())
def test_every_backend_refuses_a_corrupted_csr(case):
    g, rowptr, col, width, gen = case
    x = feats(g.num_src, width, gen, grad=False)
    xd = feats(g.num_dst, width, gen, grad=False)
    ops = torch.ops.fastalign
    for backend in ["torch"] + BACKENDS:
        calls = {
            "spmm": lambda: ops.spmm(rowptr, col, None, x, "sum", None, None, None, None, backend),
            "edge_similarity": lambda: ops.edge_similarity(rowptr, col, xd, x, None, None, None,
                                                           "l1", 1.0, 2, 1.0, backend),
            "structure_kl": lambda: ops.structure_kl(rowptr, col, xd, x, xd, x, None, None, None,
                                                     "l1", 1.0, 2, 1.0, 1.0, False, backend),
        }
        for name, call in calls.items():
            assert _outcome(call) is ValueError, f"{backend} {name} accepted a corrupted CSR"
