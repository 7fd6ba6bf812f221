"""The prepared propagations (``spmm_propagation``, ``gcn_propagation``): what a layer
finds once per forward (backend, normalisation state, transpose) gives the same bits as
the one-shot ops, and a drop-in conv's forward makes that pass once."""

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign.nn import GCNConv, SAGEConv
from fastalign.ops import gcn_propagation, spmm_propagation

from helpers import case_graphs, random_edge_index


def _square(seed=0, n=24):
    return Graph.from_edge_index(random_edge_index(n, n, 80, seed=seed), num_nodes=n)


def _value_and_grads(fn, x, *extra):
    x = x.clone().requires_grad_()
    extra = [e.clone().requires_grad_() for e in extra]
    out = fn(x, *extra)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
    return [out.detach(), x.grad] + [e.grad for e in extra]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_spmm_propagation_is_spmm_bit_for_bit(backend, reduce):
    for name, graph in case_graphs():
        x = torch.randn(graph.num_src, 5, dtype=torch.float64)
        w = torch.rand(graph.num_edges, dtype=torch.float64)
        want = _value_and_grads(
            lambda t, u: fastalign.spmm(graph, t, reduce, edge_weight=u, backend=backend), x, w
        )

        def prepared(t, u):
            return spmm_propagation(graph, t, reduce, u, backend)(t)

        got = _value_and_grads(prepared, x, w)
        for a, b in zip(got, want):
            assert torch.equal(a, b), (name, reduce)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("weighted", ["none", "fixed", "learned"])
def test_gcn_propagation_is_gcn_aggregate_bit_for_bit(backend, weighted):
    graph = _square(1)
    x = torch.randn(graph.num_src, 6, dtype=torch.float64)
    w = torch.rand(graph.num_edges, dtype=torch.float64)
    extra = (w,) if weighted == "learned" else ()

    def weight_of(u):
        return u[0] if u else (w if weighted == "fixed" else None)

    def one_shot(t, *u):
        return fastalign.gcn_aggregate(graph, t, improved=True, edge_weight=weight_of(u), backend=backend)

    def prepared(t, *u):
        return gcn_propagation(graph, t, True, True, weight_of(u), backend)(t)

    for a, b in zip(_value_and_grads(prepared, x, *extra), _value_and_grads(one_shot, x, *extra)):
        assert torch.equal(a, b), weighted


def test_prepared_propagation_takes_any_width_of_its_dtype():
    """Prepared from one tensor, called on another of the same dtype and device (the
    layer folds batch dimensions into the columns after preparing)."""
    graph = _square(2)
    like = torch.randn(graph.num_src, 3)
    gcn, sum_ = gcn_propagation(graph, like), spmm_propagation(graph, like)
    wide = torch.randn(graph.num_src, 11)
    torch.testing.assert_close(gcn(wide), fastalign.gcn_aggregate(graph, wide), rtol=0, atol=0)
    torch.testing.assert_close(sum_(wide), fastalign.spmm(graph, wide), rtol=0, atol=0)


def test_prepared_propagation_refuses_what_the_ops_refuse():
    graph = _square(3)
    with pytest.raises(TypeError, match="floating"):
        gcn_propagation(graph, torch.ones(graph.num_src, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        spmm_propagation(graph, [[1.0]])
    with pytest.raises(ValueError, match="is on meta but the graph is on cpu"):
        spmm_propagation(graph, torch.empty(graph.num_src, 2, device="meta"))
    with pytest.raises(ValueError, match="reduce must be one of"):
        spmm_propagation(graph, torch.ones(graph.num_src, 2), "min")
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[%d\]" % graph.num_edges):
        gcn_propagation(graph, torch.ones(graph.num_src, 2), edge_weight=torch.ones(3))
    rect = Graph.from_edge_index(random_edge_index(7, 4, 12), num_nodes=(7, 4))
    with pytest.raises(ValueError, match="square graph"):
        gcn_propagation(rect, torch.ones(7, 2))
    # the rows are the op's own check, at call time
    with pytest.raises(ValueError, match="rows"):
        gcn_propagation(graph, torch.ones(graph.num_src, 2))(torch.ones(graph.num_src + 1, 2))


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("conv, dims", [
    (lambda: GCNConv(4, 3), 2), (lambda: GCNConv(4, 3), 3),
    (lambda: GCNConv(4, 3, normalize=False, add_self_loops=False), 2),
    (lambda: GCNConv(4, 3, cached=True), 2), (lambda: SAGEConv(4, 3), 3),
])
def test_a_conv_forward_is_one_prepared_pass(monkeypatch, conv, dims):
    """One backend resolution and one graph per forward, whatever the batch dimensions
    of the features (they fold into the columns of one kernel call), forward and
    backward; none at all for a cached GCN layer, which keeps its prepared pass."""
    layer = conv()
    n = 10
    edge_index = random_edge_index(n, n, 30, seed=4)
    x = torch.randn((2, n, 4) if dims == 3 else (n, 4), requires_grad=True)
    layer(x, edge_index)  # a cached layer fills its cache on the first call
    resolve = _Counter(backends.resolve)
    coerce = _Counter(Graph.from_edge_index)
    monkeypatch.setattr(backends, "resolve", resolve)
    monkeypatch.setattr(Graph, "from_edge_index", coerce)
    from fastalign.nn import drop_in

    drop_in.clear_graph_cache()
    out = layer(x, edge_index)
    out.sum().backward()
    cached = getattr(layer, "cached", False)
    assert resolve.calls == (0 if cached else 1)
    assert coerce.calls == (0 if cached else 1)
    assert out.shape == ((2, n, 3) if dims == 3 else (n, 3))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gcn_weight_gradient_without_a_feature_gradient(backend):
    """Only the edge weights need a gradient: the transpose is not taken, and the weight
    gradient is the one found beside a feature gradient."""
    graph = _square(5)
    x = torch.randn(graph.num_src, 4, dtype=torch.float64)
    w = torch.rand(graph.num_edges, dtype=torch.float64, requires_grad=True)
    g = torch.randn(graph.num_dst, 4, dtype=torch.float64)
    (gw_alone,) = torch.autograd.grad((fastalign.gcn_aggregate(graph, x, edge_weight=w, backend=backend) * g).sum(), w)
    xg = x.clone().requires_grad_()
    _, gw_both = torch.autograd.grad(
        (fastalign.gcn_aggregate(graph, xg, edge_weight=w, backend=backend) * g).sum(), (xg, w))
    torch.testing.assert_close(gw_alone, gw_both, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda u: fastalign.gcn_aggregate(graph, x, edge_weight=u, backend=backend), (w,))


def test_a_cached_gcn_layer_keeps_its_pass_per_dtype_gradient_and_backend(monkeypatch):
    """The pass a cached GCNConv keeps is rebuilt when the features' dtype, the need of a
    gradient or the backend choice changes, and never pickled; the outputs stay those of
    an uncached layer."""
    import copy
    import io

    n = 12
    edge_index = random_edge_index(n, n, 40, seed=5)
    cached, plain = GCNConv(4, 3, cached=True), GCNConv(4, 3)
    plain.load_state_dict(cached.state_dict())
    resolve = _Counter(backends.resolve)
    monkeypatch.setattr(backends, "resolve", resolve)
    x = torch.randn(n, 4)
    with torch.no_grad():
        for step in range(2):  # built on the first call, kept on the second
            torch.testing.assert_close(cached(x, edge_index), plain(x, edge_index))
        assert resolve.calls == 1 + 2  # the cached layer once, the plain one per call
        resolve.calls = 0
        cached.double(), plain.double()
        torch.testing.assert_close(cached(x.double(), edge_index), plain(x.double(), edge_index))
    xg = x.double().requires_grad_()
    cached(xg, edge_index).sum().backward()
    assert resolve.calls == 1 + 1 + 1  # float64: a new pass (and the plain layer's); with a gradient: another
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert cached.lin.weight.grad is not None
    resolve.calls = 0
    monkeypatch.setenv("FASTALIGN_BACKEND", "torch")
    cached(x.double(), edge_index)
    assert resolve.calls == 1 and cached._cached_propagation[1][-1] == "torch"
    buffer = io.BytesIO()
    torch.save(cached, buffer)  # the kept closure is left out of the pickle
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded._cached_propagation is None
    torch.testing.assert_close(loaded(x.double(), edge_index), cached(x.double(), edge_index))
    assert copy.deepcopy(cached)(x.double(), edge_index).shape == (n, 3)
    cached.reset_parameters()
    assert cached._cached_propagation is None and cached._cached_graph is None
