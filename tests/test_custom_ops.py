"""The ops are real PyTorch custom ops: opcheck passes for each (schema, fake kernel,
autograd registration, AOT dispatch), and a GCN built from them compiles with
torch.compile(fullgraph=True) and matches eager."""

import pytest
import torch

import fastalign
import fastalign.ops  # noqa: F401  (registers the torch.ops.fastalign operators)
from fastalign import Graph, backends
from helpers import random_edge_index

BACKEND = "torch"


def graph_and_x(seed=0, weighted=True):
    ei = random_edge_index(12, 12, 40, seed=seed)
    w = torch.rand(ei.size(1), dtype=torch.float64) if weighted else None
    g = Graph.from_edge_index(ei, w, num_nodes=14)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(14, 4, dtype=torch.float64, generator=gen)
    return g, x


def samples():
    g, x = graph_and_x()
    rowptr_t, col_t, perm_t = g.transpose()
    w = g.edge_weight
    xg = x.clone().requires_grad_()
    wg = w.clone().requires_grad_()
    x2 = torch.randn(14, 3, dtype=torch.float64, requires_grad=True)
    dis = torch.rand(14, dtype=torch.float64)
    loop = torch.rand(14, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ops = torch.ops.fastalign
    yield "spmm_sum", ops.spmm.default, (
        g.rowptr, g.col, wg, xg, "sum", rowptr_t, col_t, None, w[perm_t], BACKEND)
    yield "spmm_mean", ops.spmm.default, (
        g.rowptr, g.col, None, xg, "mean", rowptr_t, col_t, None, None, BACKEND)
    yield "spmm_max", ops.spmm.default, (
        g.rowptr, g.col, wg, xg, "max", rowptr_t, col_t, perm_t, None, BACKEND)
    _, arg = ops.spmm.default(g.rowptr, g.col, w, x, "max", None, None, None, None, BACKEND)
    yield "spmm_max_backward", ops.spmm_max_backward.default, (
        g.col, rowptr_t, col_t, perm_t, w, x, arg, torch.randn_like(x), True, BACKEND)
    for dtype in (torch.int64, torch.int32):
        ei = random_edge_index(12, 9, 40, seed=1).to(dtype)
        for check in (True, False):
            yield f"csr_from_edges_{str(dtype)[6:]}_{check}", ops.csr_from_edges.default, (
                ei[1], ei[0], 9, 12, check)
    yield "sddmm", ops.sddmm.default, (g.rowptr, g.col, x, x, BACKEND)
    yield "gcn_aggregate", ops.gcn_aggregate.default, (
        g.rowptr, g.col, w, dis, loop, xg, bias, rowptr_t, col_t, w[perm_t], BACKEND)
    for kernel in ("l1", "rbf", "linear", "poly", "cosine"):
        yield f"edge_similarity_{kernel}", ops.edge_similarity.default, (
            g.rowptr, g.col, xg, xg.detach().clone().requires_grad_(), rowptr_t, col_t, perm_t,
            kernel, 2.0, 2, 1.0, BACKEND)
    logits = torch.randn(g.num_edges, dtype=torch.float64, requires_grad=True)
    yield "edge_softmax", ops.edge_softmax.default, (g.rowptr, logits, BACKEND)
    yield "structure_kl", ops.structure_kl.default, (
        g.rowptr, g.col, xg, xg, x2, x2, rowptr_t, col_t, perm_t, "l1", 2.0, 2, 1.0, 0.5, False,
        BACKEND)
    xh = torch.randn(14, 2, 3, dtype=torch.float64, requires_grad=True)
    a_src = torch.randn(14, 2, dtype=torch.float64, requires_grad=True)
    a_dst = torch.randn(14, 2, dtype=torch.float64, requires_grad=True)
    for be in ("torch", "cpu") if backends.is_available("cpu") else ("torch",):
        for dropout, dst in ((0.0, a_dst), (0.3, None)):
            yield f"gat_aggregate_{be}_{dropout}", ops.gat_aggregate.default, (
                g.rowptr, g.col, xh, a_src, dst, 0.2, dropout, torch.tensor([11]), True, rowptr_t, col_t, perm_t, be)
    out, lse = ops.gat_aggregate.default(
        g.rowptr, g.col, xh.detach(), a_src.detach(), a_dst.detach(), 0.2, 0.3, torch.tensor([11]), False, None, None, None,
        BACKEND)
    yield "gat_aggregate_backward", ops.gat_aggregate_backward.default, (
        g.rowptr, g.col, rowptr_t, col_t, perm_t, xh.detach(), a_src.detach(), a_dst.detach(), lse,
        torch.randn_like(out), 0.2, 0.3, torch.tensor([11]), False, BACKEND)
    if backends.implements("cpu", "structure_kl_forward_with_grad_state"):
        # the detached-peer fast path of the CPU kernels (gradient state from the forward)
        for kernel in ("l1", "cosine"):
            yield f"structure_kl_grad_state_{kernel}", ops.structure_kl.default, (
                g.rowptr, g.col, xg, xg, x2.detach(), x2.detach(), rowptr_t, col_t, perm_t,
                kernel, 2.0, 2, 1.0, 0.5, True, "cpu")


@pytest.mark.parametrize("name,op,args", list(samples()), ids=[s[0] for s in samples()])
def test_opcheck(name, op, args):
    torch.library.opcheck(op, args)


class TinyGCN(torch.nn.Module):
    def __init__(self, fin, hidden, fout):
        super().__init__()
        self.lin1 = torch.nn.Linear(fin, hidden)
        self.lin2 = torch.nn.Linear(hidden, fout)

    def forward(self, graph, x, peer):
        h = torch.relu(fastalign.gcn_aggregate(graph, self.lin1(x), backend=BACKEND))
        out = fastalign.gcn_aggregate(graph, self.lin2(h), backend=BACKEND)
        loss = fastalign.structure_kl(graph, h, peer, backend=BACKEND)
        pooled = fastalign.spmm(graph, out, "mean", backend=BACKEND)
        return out + pooled, loss


def test_gcn_of_ops_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    g, x = graph_and_x(weighted=False)
    x = x.float()
    peer = torch.randn(14, 5)
    model = TinyGCN(4, 8, 3)
    # Build the lazily cached structures once, as a training loop's first step does.
    out_eager, loss_eager = model(g, x.requires_grad_(), peer)
    (out_eager.sum() + loss_eager).backward()
    grads_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True)
    out_c, loss_c = compiled(g, x, peer)
    (out_c.sum() + loss_c).backward()
    torch.testing.assert_close(out_c, out_eager)
    torch.testing.assert_close(loss_c, loss_eager)
    for p, ge in zip(model.parameters(), grads_eager):
        torch.testing.assert_close(p.grad, ge)


def test_backend_choice_is_a_constant_to_the_compiler():
    """fastalign.backends marks resolve / has_fast_path as assume_constant_result does,
    without importing torch._dynamo at import; torch's own decorator must still set
    exactly that marker."""
    from fastalign import backends

    def probe():
        return 0

    marked = torch.compiler.assume_constant_result(probe)
    assert getattr(marked, "_dynamo_marked_constant", False) is True
    assert backends.resolve._dynamo_marked_constant and backends.has_fast_path._dynamo_marked_constant


def test_import_is_light():
    """import fastalign and the command line's parser load no torch (fast --help)."""
    import subprocess
    import sys

    code = ("import sys, fastalign, fastalign.cli; fastalign.cli.build_parser(); "
            "print('torch' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
    code = "import sys, fastalign; fastalign.spmm; print('torch._dynamo' in sys.modules, hasattr(__import__('torch').ops.fastalign, 'spmm'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_the_reference_backend_module():
    from fastalign.backends import reference

    assert backends._load("torch") is reference  # the backend string is "torch"
    assert set(reference.FUNCTIONS) == set(backends.BACKEND_FUNCTIONS)  # every function, no fast path


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("kernel", ["l1", "rbf", "linear", "poly", "cosine"])
def test_float_arguments_compile_static_and_dynamic(kernel, dynamic):
    """Every similarity kernel with its float arguments (sigma, tau, coef) as Python floats:
    fullgraph, with dynamic shapes too (the floats are then symbolic), values and the
    student's gradient equal to eager, and a second call with other values served."""
    torch._dynamo.reset()  # static floats recompile per value: a fresh budget per case
    torch.manual_seed(0)
    g, _ = graph_and_x(weighted=False)
    a = torch.randn(14, 6, requires_grad=True)
    b = torch.randn(14, 5)
    sigma = 2.0 if kernel in ("l1", "rbf") else None

    def loss(a, b, tau, coef):
        return fastalign.structure_kl(g, a, b, kernel=kernel, tau=tau, sigma=sigma, coef=coef, backend=BACKEND)

    compiled = torch.compile(loss, fullgraph=True, dynamic=dynamic)
    for tau, coef in ((0.5, 1.0), (0.7, 2.0)):
        got = compiled(a, b, tau, coef)
        (ga,) = torch.autograd.grad(got, a)
        want = loss(a, b, tau, coef)
        (wa,) = torch.autograd.grad(want, a)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(ga, wa)


@pytest.mark.parametrize("dynamic", [False, True])
def test_layers_and_losses_compile_with_their_float_options(dynamic):
    from fastalign.nn import GATConv, StructureAlignLoss

    torch.manual_seed(0)
    g, x = graph_and_x(weighted=False)
    x = x.float()
    ei = torch.stack([g.col.long(), g.row.long()])
    for module, args in ((GATConv(4, 3, heads=2, negative_slope=0.1, backend=BACKEND), (x, ei)),
                         (StructureAlignLoss(kernel="rbf", sigma=1.5, tau=0.5, backend=BACKEND),
                          (g, x, torch.randn(14, 4)))):
        got = torch.compile(module, fullgraph=True, dynamic=dynamic)(*args)
        torch.testing.assert_close(got, module(*args))
