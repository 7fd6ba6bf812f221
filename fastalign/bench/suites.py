"""The benchmark suites: every available fastalign backend and the peers on one graph.

A *workload* is one graph on one device with its features; a *contender* turns it into a
zero-argument callable per mode:

* ``fwd``: the forward pass under ``torch.no_grad()`` (inference);
* ``fwd+bwd``: the forward pass with autograd, then ``torch.autograd.grad`` of the output
  (with a fixed random output gradient) w.r.t. the features and, for layers, the weights.

Suites:

* ``spmm``: ``out[i] = sum_{j -> i} x[j]``. fastalign ``spmm`` per backend, against
  ``torch.sparse.mm`` on the CSR adjacency and PyG's gather + scatter message passing.
* ``gcn``: one GCN layer 64 -> 64. :class:`fastalign.nn.GCNConv` (cached) per backend,
  against PyG's ``GCNConv(cached=True)`` on edge_index (eager and under torch.compile)
  and on a torch.sparse CSR adj_t.
* ``align``: the structure loss (l1 kernel, sigma 100, tau 1; student requires grad,
  peer detached). fastalign ``structure_kl`` per backend, against the PyG-style loss
  eager and under torch.compile.

* ``similarity``: the per-edge similarity alone (l1 kernel, sigma 100): fastalign
  ``edge_similarity`` per backend against the PyG-style gather of both endpoints, eager
  and under torch.compile; edges in the graph's CSR order for every contender.
* ``softmax``: the edge softmax alone over random logits: fastalign ``edge_softmax`` per
  backend against ``torch_geometric.utils.softmax``, eager and under torch.compile.
* ``attention``: GATConv's aggregation alone, 8 heads of F / 8 channels, no self loops
  added: fastalign ``gat_aggregate`` per backend against PyG's propagation (logits,
  ``softmax``, E x H x C messages, scatter), eager and under torch.compile.

* ``linear``: a layer's projection ``x W^T + b`` into the layer width (16 with
  ``--features real``). ``fastalign.ops.linear`` (the CPU kernel) against torch's
  ``F.linear``, eager and under torch.compile.

* ``sage``, ``graphconv``, ``gin``, ``gat`` (together: ``layers``): one drop-in layer
  64 -> 64 (SAGEConv mean, GraphConv add, GINConv with a two-layer SiLU MLP, GATConv with
  8 heads of 8 channels) fed the edge_index as PyG code feeds it, against the same PyG
  layer eager and under torch.compile.

Every contender's forward output is checked against the first successful one of its
suite (the fastalign ``torch`` reference when available): the largest error relative to
the output's largest magnitude is recorded as ``max_rel_err``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

import fastalign
from fastalign.graph import Graph

from . import peers

LAYER_SUITES = ("sage", "graphconv", "gin", "gat", "gat1")
SUITES = ("spmm", "max", "gcn", "align", "similarity", "softmax", "attention", "linear") + LAYER_SUITES
MODES = ("fwd", "fwd+bwd")


class Skip(Exception):
    """A contender that cannot run here (missing dependency, backend lacking the op,
    not enough memory); the message says why."""


def available_backends(device) -> List[str]:
    from fastalign import backends

    return list(backends.available_backends(device))


def backend_implements(name: str, functions) -> Optional[str]:
    """None when backend ``name`` implements all ``functions``, else a reason."""
    from fastalign import backends

    module = backends._load(name)
    if module is None:
        return f"backend {name!r} is not available"
    missing = [f for f in functions if f not in module.FUNCTIONS]
    if missing:
        return f"backend {name!r} does not implement {', '.join(missing)} (yet)"
    return None


@dataclass
class Workload:
    """One graph on one device, its features and the adjacency forms the contenders use
    (built lazily, once, outside the timed calls)."""

    name: str
    edge_index_cpu: Tensor
    num_nodes: int
    device: torch.device
    features: int = 64
    # layers' output width; None: as wide as the input (square layers). Set for the data
    # sets' real input widths (--features real), where a first layer maps F -> hidden.
    out_features: Optional[int] = None
    dtype: torch.dtype = torch.float32
    seed: int = 0
    _cache: Dict[str, object] = field(default_factory=dict, repr=False)

    def _get(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def num_edges(self) -> int:
        return self.edge_index_cpu.size(1)

    @property
    def edge_index(self) -> Tensor:
        return self._get("edge_index", lambda: self.edge_index_cpu.to(self.device))

    @property
    def graph(self) -> Graph:
        def build():
            g = Graph.from_edge_index(self.edge_index, num_nodes=self.num_nodes)
            g.transpose()  # built once, as a training loop would
            return g

        return self._get("graph", build)

    @property
    def csr_edge_index(self) -> Tensor:
        """``[2, E]`` (source, target) in the graph's internal (CSR) edge order: the order
        of fastalign's per-edge outputs, so that a peer's per-edge output lines up."""

        return self._get("csr_edge_index", lambda: self.graph.edge_index.long())

    def edge_randn(self, key: str, seed_offset: int = 0) -> Tensor:
        """``[E]`` standard normal values (seeded), one per edge."""

        def build():
            gen = torch.Generator().manual_seed(self.seed + seed_offset)
            return torch.randn(self.num_edges, generator=gen, dtype=self.dtype).to(self.device)

        return self._get(key, build)

    @property
    def adj_csr(self) -> Tensor:
        return self._get("adj_csr", lambda: peers.csr_adjacency(self.edge_index, self.num_nodes, self.dtype))

    @property
    def adj_csr_unit(self) -> Tensor:
        """adj_csr with every stored value 1: the max of a duplicated edge's message, not
        of the duplicates' sum."""
        def build():
            adj = self.adj_csr
            return torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), torch.ones_like(adj.values()),
                                           adj.shape)

        return self._get("adj_csr_unit", build)

    def randn(self, key: str, width: Optional[int] = None, seed_offset: int = 0) -> Tensor:
        def build():
            gen = torch.Generator().manual_seed(self.seed + seed_offset)
            t = torch.randn(self.num_nodes, width or self.features, generator=gen, dtype=self.dtype)
            return t.to(self.device)

        return self._get(key, build)

    @property
    def x(self) -> Tensor:
        return self.randn("x")

    @property
    def x_grad(self) -> Tensor:
        return self._get("x_grad", lambda: self.x.detach().clone().requires_grad_(True))

    @property
    def grad_out(self) -> Tensor:
        return self.randn("grad_out", seed_offset=1)

    @property
    def out(self) -> int:
        """A layer's output width: ``out_features``, else as wide as its input."""
        return self.out_features or self.features

    def grad_out_of(self, width: int) -> Tensor:
        """An output gradient ``width`` wide (a layer's output, when not square)."""
        return self.grad_out if width == self.features else self.randn(f"grad_out{width}", width, seed_offset=1)

    @property
    def h_peer(self) -> Tensor:
        return self.randn("h_peer", seed_offset=2)

    def release(self) -> None:
        self._cache.clear()


@dataclass
class Contender:
    """``build(workload, mode)`` returns the callable to time (or raises Skip)."""

    name: str
    kind: str  # "fastalign" or "peer"
    build: Callable[[Workload, str], Callable[[], object]]
    backend: Optional[str] = None
    compiled: bool = False
    # rough extra bytes per call, to skip a contender that cannot fit
    estimate: Callable[[Workload], int] = lambda w: 0


def _bytes_ExF(w: Workload, factor: float) -> int:
    return int(factor * w.num_edges * w.features * torch.tensor([], dtype=w.dtype).element_size())


def _csr_build_bytes(w) -> int:
    """What building the torch.sparse CSR adjacency takes (COO indices and values, the
    sort of coalesce, the conversion), where the workload has not built it yet: about 160
    bytes per edge (building it for 10^8 edges on a 24 GiB machine got the process killed
    by the kernel at 24 GiB resident; an allocation that fails raises, but this one did
    not fail before memory ran out)."""
    return 0 if "adj_csr" in w._cache else 160 * w.num_edges


def _bytes_NxF(w: Workload, factor: float) -> int:
    return int(factor * w.num_nodes * w.features * torch.tensor([], dtype=w.dtype).element_size())


def _need_pyg():
    if not peers.have_pyg():
        raise Skip("torch_geometric is not installed")


# ---------------------------------------------------------------------- spmm
# the "spmm" suite is the sum; "max" the max with each peer's own max (torch.sparse's
# "amax", PyG's scatter "max")
def _spmm_fastalign(backend, reduce="sum"):
    def build(w: Workload, mode: str):
        reason = backend_implements(backend, ("spmm_forward", "sddmm"))
        if reason:
            raise Skip(reason)
        graph = w.graph
        if mode == "fwd":
            x = w.x

            def run():
                with torch.no_grad():
                    return fastalign.spmm(graph, x, reduce, backend=backend)
        else:
            x, g = w.x_grad, w.grad_out

            def run():
                out = fastalign.spmm(graph, x, reduce, backend=backend)
                return torch.autograd.grad(out, x, g)

        return run

    return build


def _spmm_torch_sparse(reduce="sum"):
    def build(w: Workload, mode: str):
        adj = w.adj_csr if reduce == "sum" else w.adj_csr_unit
        if mode == "fwd":
            x = w.x

            def run():
                with torch.no_grad():
                    return peers.torch_sparse_mm(adj, x, reduce)
        else:
            x, g = w.x_grad, w.grad_out

            def run():
                return torch.autograd.grad(peers.torch_sparse_mm(adj, x, reduce), x, g)

        return run

    return build


def _spmm_pyg_scatter(reduce="sum", compile_=False):
    def build(w: Workload, mode: str):
        _need_pyg()
        ei, n = w.edge_index, w.num_nodes
        fn = peers.compiled(peers.pyg_scatter_spmm) if compile_ else peers.pyg_scatter_spmm
        if mode == "fwd":
            x = w.x

            def run():
                with torch.no_grad():
                    return fn(ei, x, n, reduce)
        else:
            x, g = w.x_grad, w.grad_out

            def run():
                return torch.autograd.grad(fn(ei, x, n, reduce), x, g)

        return run

    return build


# ---------------------------------------------------------------------- gcn
def _gcn_weights(w: Workload):
    """One PyG GCNConv's state (seeded), shared by every gcn contender."""

    def build():
        torch.manual_seed(w.seed)
        from fastalign.nn import GCNConv

        conv = GCNConv(w.features, w.out)
        with torch.no_grad():
            conv.bias.normal_()
        return {k: v.detach().clone() for k, v in conv.state_dict().items()}

    return w._get("gcn_state", build)


def _run_layer(conv, adj, w: Workload, mode: str, out_width: int):
    params = [p for p in conv.parameters()]
    if mode == "fwd":
        x = w.x

        def run():
            with torch.no_grad():
                return conv(x, adj)
    else:
        x, g = w.x_grad, w.grad_out_of(out_width)

        def run():
            return torch.autograd.grad(conv(x, adj), [x] + params, g)

    return run


def _gcn_fastalign(backend):
    def build(w: Workload, mode: str):
        reason = backend_implements(backend, ("gcn_aggregate",))
        if reason:
            raise Skip(reason)
        from fastalign.nn import GCNConv

        conv = GCNConv(w.features, w.out, cached=True, backend=backend).to(w.device, w.dtype)
        conv.load_state_dict(_gcn_weights(w))
        return _run_layer(conv, w.graph, w, mode, w.out)

    return build


def _gcn_pyg(adj_kind: str, compile_: bool):
    def build(w: Workload, mode: str):
        _need_pyg()
        conv = peers.pyg_gcn_conv(w.features, w.out).to(w.device, w.dtype)
        conv.load_state_dict(_gcn_weights(w))
        adj = w.edge_index if adj_kind == "edge_index" else w.adj_csr
        if compile_:
            conv = peers.compiled(conv)
        return _run_layer(conv, adj, w, mode, w.out)

    return build


# ---------------------------------------------------------------------- linear
def _linear_state(w: Workload):
    """One projection's weight and bias (seeded), shared by every linear contender."""

    def build():
        gen = torch.Generator().manual_seed(w.seed)
        weight = torch.randn(w.out, w.features, generator=gen) / w.features ** 0.5
        bias = torch.randn(w.out, generator=gen)
        return weight.to(w.device, w.dtype), bias.to(w.device, w.dtype)

    return w._get("linear_state", build)


def _run_linear(fn, w: Workload, mode: str):
    weight, bias = _linear_state(w)
    if mode == "fwd":
        x = w.x

        def run():
            with torch.no_grad():
                return fn(x, weight, bias)
    else:
        x, g = w.x_grad, w.grad_out_of(w.out)
        params = (weight.detach().requires_grad_(), bias.detach().requires_grad_())

        def run():
            return torch.autograd.grad(fn(x, *params), (x, *params), g)

    return run


def _linear_fastalign(backend):
    def build(w: Workload, mode: str):
        reason = backend_implements(backend, ("linear",))
        if reason:
            raise Skip(reason)
        return _run_linear(lambda x, weight, bias: fastalign.ops.linear(x, weight, bias, backend), w, mode)

    return build


def _linear_torch(compile_: bool):
    def build(w: Workload, mode: str):
        fn = peers.compiled(torch.nn.functional.linear) if compile_ else torch.nn.functional.linear
        return _run_linear(fn, w, mode)

    return build


# ---------------------------------------------------------------------- align
ALIGN_PARAMS = dict(kernel="l1", tau=1.0, sigma=100.0)
SIMILARITY_PARAMS = dict(kernel="l1", sigma=100.0)


def _align_fastalign(backend):
    def build(w: Workload, mode: str):
        reason = backend_implements(backend, ("structure_kl_forward", "structure_kl_backward"))
        if reason:
            raise Skip(reason)
        graph, hp = w.graph, w.h_peer
        if mode == "fwd":
            hs = w.x

            def run():
                with torch.no_grad():
                    return fastalign.structure_kl(graph, hs, hp, backend=backend, **ALIGN_PARAMS)
        else:
            hs = w.x_grad

            def run():
                loss = fastalign.structure_kl(graph, hs, hp, backend=backend, **ALIGN_PARAMS)
                return torch.autograd.grad(loss, hs)

        return run

    return build


def _align_pyg(compile_: bool):
    def build(w: Workload, mode: str):
        _need_pyg()
        ei, n, hp = w.edge_index, w.num_nodes, w.h_peer

        def loss_fn(hs, hp):
            return peers.pyg_structure_loss(hs, hp, ei, n, **ALIGN_PARAMS)

        fn = peers.compiled(loss_fn) if compile_ else loss_fn
        if mode == "fwd":
            hs = w.x

            def run():
                with torch.no_grad():
                    return fn(hs, hp)
        else:
            hs = w.x_grad

            def run():
                return torch.autograd.grad(fn(hs, hp), hs)

        return run

    return build


# ---------------------------------------------------------------------- ops alone
ATTENTION_HEADS = 8


def _run_op(fn, inputs, grad_out, mode: str):
    """Time ``fn(*inputs)``: under no_grad (fwd), or with the gradient w.r.t. every input
    (fwd+bwd; the inputs become leaves of their own)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(*inputs)
    else:
        leaves = tuple(t.detach().clone().requires_grad_(True) for t in inputs)

        def run():
            return torch.autograd.grad(fn(*leaves), leaves, grad_out)

    return run


def _attention_inputs(w: Workload):
    h = ATTENTION_HEADS
    if w.features % h:
        raise Skip(f"the attention suite needs a width divisible by {h} heads, got {w.features}")
    x = w.x.view(w.num_nodes, h, w.features // h)
    return (x, w.randn("alpha_src", h, seed_offset=4), w.randn("alpha_dst", h, seed_offset=5)), w.grad_out.view_as(x)


@dataclass(frozen=True)
class OpSuite:
    """One op timed on its own: the backend functions it needs, its inputs and output
    gradient from a workload, fastalign's call and the peer's (each ``f(w, ...) ->
    callable of the inputs``)."""

    peer_name: str
    functions: tuple
    inputs: Callable
    ours: Callable
    peer: Callable
    peer_needs_pyg: bool = True
    peer_bytes_ExF: float = 0.0  # the peer's (and the reference's) E x F temporaries


OP_SUITES: Dict[str, OpSuite] = {
    "similarity": OpSuite(
        "PyG-style similarity", ("edge_similarity", "edge_similarity_backward"),
        lambda w: ((w.x,), w.edge_randn("edge_grad_out", seed_offset=3)),
        lambda w, b: lambda x: fastalign.edge_similarity(w.graph, x, backend=b, **SIMILARITY_PARAMS),
        lambda w: lambda x: peers.pyg_edge_similarity(x, w.csr_edge_index, **SIMILARITY_PARAMS),
        peer_needs_pyg=False, peer_bytes_ExF=2),
    "softmax": OpSuite(
        "PyG softmax", ("edge_softmax", "edge_softmax_backward"),
        lambda w: ((w.edge_randn("logits"),), w.edge_randn("edge_grad_out", seed_offset=3)),
        lambda w, b: lambda z: fastalign.edge_softmax(w.graph, z, backend=b),
        lambda w: lambda z: peers.pyg_edge_softmax(z, w.csr_edge_index, w.num_nodes)),
    "attention": OpSuite(
        "PyG GAT propagation", ("gat_aggregate_forward", "gat_aggregate_backward"), _attention_inputs,
        lambda w, b: lambda x, s, d: fastalign.gat_aggregate(w.graph, x, s, d, add_self_loops=False, backend=b),
        lambda w: lambda x, s, d: peers.pyg_gat_aggregate(x, s, d, w.edge_index, w.num_nodes),
        peer_bytes_ExF=3),
}


def _op_fastalign(suite: str, backend: str):
    spec = OP_SUITES[suite]

    def build(w: Workload, mode: str):
        reason = backend_implements(backend, spec.functions)
        if reason:
            raise Skip(reason)
        return _run_op(spec.ours(w, backend), *spec.inputs(w), mode)

    return build


def _op_peer(suite: str, compile_: bool):
    spec = OP_SUITES[suite]

    def build(w: Workload, mode: str):
        if spec.peer_needs_pyg:
            _need_pyg()
        fn = spec.peer(w)
        return _run_op(peers.compiled(fn) if compile_ else fn, *spec.inputs(w), mode)

    return build


# ---------------------------------------------------------------------- layers
LAYER_CLASSES = {"sage": "SAGEConv", "graphconv": "GraphConv", "gin": "GINConv", "gat": "GATConv",
                 "gat1": "GATConv"}
GAT_HEADS = {"gat": 8, "gat1": 1}
# the backend functions a suite's fastalign layer needs
LAYER_FUNCTIONS = {g: ("gat_aggregate_forward", "gat_aggregate_backward") for g in GAT_HEADS}


def _gin_mlp(width: int, out: int) -> torch.nn.Module:
    # SiLU, not ReLU: a smooth MLP, so that the gradient check between contenders is not
    # thrown by a ReLU gate that float32 rounding puts on the other side of 0 (one such
    # pre-activation in 6.4M flips a row's gradient on the 100k-node graph)
    return torch.nn.Sequential(torch.nn.Linear(width, out), torch.nn.SiLU(), torch.nn.Linear(out, out))


def _layer_out(suite: str, w: Workload) -> int:
    """The width of a suite's layer output on ``w``: ``w.out``; GAT concatenates its heads
    of ``out // heads`` channels, and a real-width first GAT layer is 8 x 8 as in PyG's
    Cora example."""
    if suite not in GAT_HEADS:
        return w.out
    out = 64 if suite == "gat" and w.out_features else w.out
    return GAT_HEADS[suite] * (out // GAT_HEADS[suite])


def _make_layer(module, suite: str, w: Workload):
    """The suite's layer from ``w.features`` to ``_layer_out(suite, w)`` features."""
    cls = getattr(module, LAYER_CLASSES[suite])
    out = _layer_out(suite, w)
    if suite == "gin":
        return cls(_gin_mlp(w.features, out))
    if suite in GAT_HEADS:
        return cls(w.features, out // GAT_HEADS[suite], heads=GAT_HEADS[suite])
    return cls(w.features, out)


def _layer_state(w: Workload, suite: str):
    """One PyG-compatible layer's parameters (seeded), shared by the suite's contenders."""

    def build():
        import fastalign.nn as fnn

        torch.manual_seed(w.seed)
        layer = _make_layer(fnn, suite, w)
        return {k: v.detach().clone() for k, v in layer.state_dict().items()}

    return w._get(f"{suite}_state", build)


def _layer(suite: str, module_name: str, w: Workload, backend=None):
    import importlib

    module = importlib.import_module(module_name)
    layer = _make_layer(module, suite, w)
    if backend is not None:
        layer.backend = backend
    layer = layer.to(w.device, w.dtype)
    layer.load_state_dict(_layer_state(w, suite))
    return layer


def _layer_fastalign(suite: str, backend: str):
    def build(w: Workload, mode: str):
        reason = backend_implements(backend, LAYER_FUNCTIONS.get(suite, ("spmm_forward",)))
        if reason:
            raise Skip(reason)
        return _run_layer(_layer(suite, "fastalign.nn", w, backend), w.edge_index, w, mode, _layer_out(suite, w))

    return build


def _layer_pyg(suite: str, compile_: bool):
    def build(w: Workload, mode: str):
        _need_pyg()
        layer = _layer(suite, "torch_geometric.nn", w)
        if compile_:
            layer = peers.compiled(layer)
        return _run_layer(layer, w.edge_index, w, mode, _layer_out(suite, w))

    return build


# ---------------------------------------------------------------------- registry
def contenders(suite: str, device, *, compile_peers: bool = True, backends=None) -> List[Contender]:
    """The contenders of ``suite`` on ``device``: every available fastalign backend
    (or those in ``backends``), then the peers."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {SUITES} or 'all'")
    names = available_backends(device)
    if backends is not None:
        unknown = [b for b in backends if b not in fastalign.backends.BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; choose from {fastalign.backends.BACKENDS}")
        names = [b for b in names if b in backends]
    out: List[Contender] = []
    if suite == "spmm":
        for b in names:
            out.append(Contender(f"fastalign[{b}]", "fastalign", _spmm_fastalign(b), backend=b,
                                 estimate=(lambda w: _bytes_ExF(w, 2)) if b == "torch" else (lambda w: _bytes_NxF(w, 2))))
        out.append(Contender("torch.sparse.mm (CSR)", "peer", _spmm_torch_sparse(),
                             estimate=lambda w: _csr_build_bytes(w) + _bytes_NxF(w, 3)))
        out.append(Contender("PyG gather+scatter", "peer", _spmm_pyg_scatter(), estimate=lambda w: _bytes_ExF(w, 2)))
    elif suite == "max":
        for b in names:
            out.append(Contender(f"fastalign max[{b}]", "fastalign", _spmm_fastalign(b, "max"), backend=b,
                                 estimate=(lambda w: _bytes_ExF(w, 3)) if b == "torch" else (lambda w: _bytes_NxF(w, 3))))
        out.append(Contender("torch.sparse.mm amax (CSR)", "peer", _spmm_torch_sparse("amax"),
                             estimate=lambda w: _csr_build_bytes(w) + _bytes_NxF(w, 4)))
        out.append(Contender("PyG gather+scatter max", "peer", _spmm_pyg_scatter("max"),
                             estimate=lambda w: _bytes_ExF(w, 2)))
        if compile_peers:
            out.append(Contender("PyG gather+scatter max compiled", "peer", _spmm_pyg_scatter("max", True),
                                 compiled=True, estimate=lambda w: _bytes_ExF(w, 2)))
    elif suite == "gcn":
        for b in names:
            out.append(Contender(f"fastalign GCNConv[{b}]", "fastalign", _gcn_fastalign(b), backend=b,
                                 estimate=(lambda w: _bytes_ExF(w, 2)) if b == "torch" else (lambda w: _bytes_NxF(w, 4))))
        out.append(Contender("PyG GCNConv edge_index", "peer", _gcn_pyg("edge_index", False), estimate=lambda w: _bytes_ExF(w, 3)))
        out.append(Contender("PyG GCNConv adj_t (torch.sparse)", "peer", _gcn_pyg("adj_t", False),
                             estimate=lambda w: _csr_build_bytes(w) + _bytes_NxF(w, 4)))
        if compile_peers:
            out.append(Contender("PyG GCNConv edge_index compiled", "peer", _gcn_pyg("edge_index", True),
                                 compiled=True, estimate=lambda w: _bytes_ExF(w, 2)))
    elif suite in OP_SUITES:
        spec = OP_SUITES[suite]
        op = spec.functions[0].replace("_forward", "")
        peer_bytes = lambda w: _bytes_ExF(w, spec.peer_bytes_ExF)
        for b in names:
            out.append(Contender(f"fastalign {op}[{b}]", "fastalign", _op_fastalign(suite, b), backend=b,
                                 estimate=peer_bytes if b == "torch" else (lambda w: _bytes_NxF(w, 2))))
        out.append(Contender(spec.peer_name, "peer", _op_peer(suite, False), estimate=peer_bytes))
        if compile_peers:
            out.append(Contender(f"{spec.peer_name} compiled", "peer", _op_peer(suite, True), compiled=True,
                                 estimate=peer_bytes))
    elif suite == "linear":
        for b in (b for b in names if backend_implements(b, ("linear",)) is None):  # the others are F.linear
            out.append(Contender(f"fastalign linear[{b}]", "fastalign", _linear_fastalign(b), backend=b,
                                 estimate=lambda w: _bytes_NxF(w, 2)))
        out.append(Contender("torch F.linear", "peer", _linear_torch(False), estimate=lambda w: _bytes_NxF(w, 2)))
        if compile_peers:
            out.append(Contender("torch F.linear compiled", "peer", _linear_torch(True), compiled=True,
                                 estimate=lambda w: _bytes_NxF(w, 2)))
    elif suite in LAYER_SUITES:
        layer = LAYER_CLASSES[suite]
        for b in names:
            out.append(Contender(f"fastalign {layer}[{b}]", "fastalign", _layer_fastalign(suite, b), backend=b,
                                 estimate=(lambda w: _bytes_ExF(w, 2)) if b == "torch" else (lambda w: _bytes_NxF(w, 4))))
        out.append(Contender(f"PyG {layer}", "peer", _layer_pyg(suite, False), estimate=lambda w: _bytes_ExF(w, 3)))
        if compile_peers:
            out.append(Contender(f"PyG {layer} compiled", "peer", _layer_pyg(suite, True), compiled=True,
                                 estimate=lambda w: _bytes_ExF(w, 3 if suite in GAT_HEADS else 2)))
    else:
        for b in names:
            out.append(Contender(f"fastalign structure_kl[{b}]", "fastalign", _align_fastalign(b), backend=b,
                                 estimate=(lambda w: _bytes_ExF(w, 6)) if b == "torch" else (lambda w: _bytes_NxF(w, 3))))
        out.append(Contender("PyG-style loss", "peer", _align_pyg(False), estimate=lambda w: _bytes_ExF(w, 6)))
        if compile_peers:
            out.append(Contender("PyG-style loss compiled", "peer", _align_pyg(True), compiled=True,
                                 estimate=lambda w: _bytes_ExF(w, 2)))
    return out

