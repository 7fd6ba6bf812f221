"""The Triton backend on a CUDA device against the reference on the same device:
float32, float16 and bfloat16, int32 and int64 indices, odd widths, a hub row of
degree 60,000 (and a source hub of out-degree 60,000 for the max backward, which walks
the transpose), bitwise run-to-run determinism (the max backward included), and the
public ops end to end (gradients).

Skipped without CUDA (and under TRITON_INTERPRET, where kernels are interpreted), except
as a dry run: FASTALIGN_GPU_TESTS_ON_CPU=1 with TRITON_INTERPRET=1 runs the float32
cases on CPU tensors through the interpreter, on graphs a tenth the size (about 20
minutes). It checks the tests themselves before a GPU run, which is short
and rare; CI does not run it.
Low-precision inputs are compared with the reference run on the same inputs (both
accumulate in float32) by the relative error of the whole output,
||out - ref|| / ||ref||, against a few units in the last place of the output dtype.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

pytest.importorskip("triton")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DRY_RUN = INTERPRET and os.environ.get("FASTALIGN_GPU_TESTS_ON_CPU") == "1"
HAS_GPU = torch.cuda.is_available() and not INTERPRET
if not (HAS_GPU or DRY_RUN):  # one skip line for the file, no cases collected
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytestmark = pytest.mark.gpu

import fastalign  # noqa: E402
from fastalign import Graph  # noqa: E402
from fastalign.ops.gcn_aggregate import gcn_norm_state  # noqa: E402

from helpers import GPU_DTYPES, REL_TOL, case_graphs, power_law_edge_index, well_scaled  # noqa: E402

REF = importlib.import_module("fastalign.backends.reference")
TB = importlib.import_module("fastalign.backends.triton")
DEV = "cpu" if DRY_RUN else "cuda"
SCALE = 10 if DRY_RUN else 1  # graph sizes divided by this
HUB = 60_000 // SCALE
DTYPES = GPU_DTYPES
TOL = REL_TOL  # relative error of a whole output against the reference
KERNELS = {"l1": (None, 2, 1.0), "rbf": (None, 2, 1.0), "linear": (1.0, 2, 1.0),
           "poly": (1.0, 3, 1.0), "cosine": (1.0, 2, 1.0)}


def params(kernel, width):
    sigma, degree, coef = KERNELS[kernel]
    if sigma is None:  # keep similarities well scaled
        sigma = float(width) if kernel == "l1" else float(width) ** 0.5
    return sigma, degree, coef


def rel_close(out, ref, dtype, what=""):
    if isinstance(out, (tuple, list)):
        for i, (a, b) in enumerate(zip(out, ref)):
            rel_close(a, b, dtype, f"{what}[{i}]")
        return
    assert out.shape == ref.shape and out.dtype == ref.dtype, (what, out.shape, ref.shape, out.dtype, ref.dtype)
    if out.numel() == 0 or not out.is_floating_point():
        assert torch.equal(out, ref), what
        return
    a, b = out.double(), ref.double()
    fin = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), fin), f"{what}: non-finite pattern differs"
    a, b = a[fin], b[fin]
    err = (a - b).norm() / b.norm().clamp(min=1e-30)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]}"


_CACHE = {}


def power_law(index_dtype, n=3000 // SCALE, e=40_000 // SCALE):
    key = ("pl", index_dtype, n, e)
    if key not in _CACHE:
        ei = power_law_edge_index(n, e, seed=1).to(index_dtype)
        _CACHE[key] = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
    return _CACHE[key]


def hub(index_dtype, degree=HUB, n=5000 // SCALE):
    """A hub of in-degree 60,000 (beyond Reddit's ~50k) beside a power-law graph."""
    key = ("hub", index_dtype)
    if key not in _CACHE:
        gen = torch.Generator().manual_seed(3)
        hub_e = torch.stack([torch.randint(0, n, (degree,), generator=gen), torch.zeros(degree, dtype=torch.long)])
        ei = torch.cat([hub_e, power_law_edge_index(n, 30_000 // SCALE, seed=2)], 1).to(index_dtype)
        _CACHE[key] = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
    return _CACHE[key]


@pytest.fixture(autouse=True)
def _float32_only_in_dry_run(request):
    """The interpreter's float16 / bfloat16 arithmetic is wrong: the dry run skips them."""
    spec = getattr(request.node, "callspec", None)
    if DRY_RUN and spec and spec.params.get("dtype", torch.float32) != torch.float32:
        pytest.skip("dry run: float32 only")


def feats(n, width, dtype, seed):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    return torch.randn(n, width, generator=gen, device=DEV).to(dtype)


# Tuning is opt-in (off by default; each tuned op compiles several configs: minutes of a
# GPU run); test_autotune covers it.


def test_benchmark_graph_is_the_cpu_graph_on_the_device():
    from fastalign.bench.graphs import power_law_edge_index

    on_device = power_law_edge_index(3_000, 40_000, seed=5, device=DEV)
    assert on_device.device.type == torch.device(DEV).type
    assert torch.equal(on_device.cpu(), power_law_edge_index(3_000, 40_000, seed=5))


@pytest.mark.parametrize("dtype,index_dtype", [
    (torch.float32, torch.int32), (torch.float32, torch.int64),
    (torch.bfloat16, torch.int32), (torch.float16, torch.int64),
])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_spmm(dtype, index_dtype, reduce):
    g = power_law(index_dtype)
    widths = (1, 67, 1030) if (dtype, index_dtype) == (torch.float32, torch.int32) else (64,)
    for width in widths:
        x = feats(g.num_src, width, dtype, width)
        w = torch.rand(g.num_edges, device=DEV).to(dtype)
        for weight in (None, w):
            out = TB.spmm_forward(g.rowptr, g.col, weight, x, reduce)
            expect = REF.spmm_forward(g.rowptr, g.col, weight, x, reduce)
            rel_close(out[0], expect[0], dtype, f"spmm {reduce} F={width}")
            if reduce == "max" and dtype == torch.float32:
                assert torch.equal(out[1], expect[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hub_row(dtype):
    g = hub(torch.int64)
    assert int(g.in_degree.max()) >= HUB
    x = feats(g.num_src, 64, dtype, 0)
    for reduce in ("sum", "max"):
        rel_close(TB.spmm_forward(g.rowptr, g.col, None, x, reduce)[0],
                  REF.spmm_forward(g.rowptr, g.col, None, x, reduce)[0], dtype, f"hub spmm {reduce}")
    z = torch.randn(g.num_edges, device=DEV).to(dtype)
    rel_close(TB.edge_softmax(g.rowptr, z), REF.edge_softmax(g.rowptr, z), dtype, "hub softmax")
    hs, hp = feats(g.num_src, 64, dtype, 1), feats(g.num_src, 32, dtype, 2)
    _kl(g, hs, hp, "l1", dtype, peer=True)


def _kl(g, hs, hp, kernel, dtype, peer, tau=0.5):
    sigma, degree, coef = params(kernel, hs.size(1))
    args = (g.rowptr, g.col, hs, hs, hp, hp, kernel, sigma, degree, coef, tau)
    out = TB.structure_kl_forward(*args)
    # the reference keeps its state in double: compared, and fed to the backward, in the
    # backend's dtypes
    expect = tuple(r.to(o.dtype) for r, o in zip(REF.structure_kl_forward(*args), out))
    rel_close(out[1:], expect[1:], torch.float32 if dtype != torch.float64 else dtype, f"kl lse {kernel}")
    rel_close(out[0], expect[0], dtype if dtype != torch.float32 else torch.float16, f"kl {kernel}")
    rt, ct, pt = g.transpose()
    gk = torch.rand(g.num_dst, device=DEV).to(dtype)
    kl, lse_s, lse_p = expect  # the backward takes (lse_s, lse_p, kl)
    bargs = (g.rowptr, g.col, rt, ct, pt, hs, hs, hp, hp, lse_s, lse_p, kl, gk, kernel, sigma, degree, coef, tau, peer)
    rel_close(TB.structure_kl_backward(*bargs), REF.structure_kl_backward(*bargs),
              dtype if dtype != torch.float32 else torch.float16, f"kl grads {kernel}")


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_structure_kl(kernel, dtype):
    if dtype != torch.float32 and kernel not in ("l1", "cosine"):
        pytest.skip("low precision: two kernels suffice")
    g = power_law(torch.int32)
    hs, hp = (well_scaled(kernel, feats(g.num_src, w, dtype, seed)) for w, seed in ((64, 3), (48, 4)))
    _kl(g, hs, hp, kernel, dtype, peer=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_structure_kl_atomic_backward(dtype, monkeypatch):
    monkeypatch.setenv("FASTALIGN_TRITON_SKL_BACKWARD", "atomic")
    g = hub(torch.int32)
    _kl(g, feats(g.num_src, 64, dtype, 18), feats(g.num_src, 64, dtype, 19), "l1", dtype, peer=True)


def test_structure_kl_wide():
    g = power_law(torch.int64)
    _kl(g, feats(g.num_src, 300, torch.float32, 5), feats(g.num_src, 1, torch.float32, 6), "cosine",
        torch.float32, peer=False)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_similarity(kernel, dtype):
    if dtype != torch.float32 and kernel not in ("l1", "linear"):
        pytest.skip("low precision: two kernels suffice")
    g = power_law(torch.int64)
    x = feats(g.num_src, 67, dtype, 7)
    sigma, degree, coef = params(kernel, 67)
    rt, ct, pt = g.transpose()
    rel_close(TB.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef),
              REF.edge_similarity(g.rowptr, g.col, x, x, kernel, sigma, degree, coef), dtype, "sim")
    gs = torch.randn(g.num_edges, device=DEV).to(dtype)
    args = (g.rowptr, g.col, rt, ct, pt, x, x, gs, kernel, sigma, degree, coef)
    tol = dtype if dtype != torch.float32 else torch.float16  # sums of many signed terms
    rel_close(TB.edge_similarity_backward(*args), REF.edge_similarity_backward(*args), tol, "sim grads")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gcn_softmax_sddmm(dtype):
    g = power_law(torch.int32)
    x = feats(g.num_src, 128, dtype, 8)
    w = torch.rand(g.num_edges, device=DEV).to(dtype)
    for weight in (None, w):
        for loops in (True, False):
            dis, lw = gcn_norm_state(g, weight, loops, False, dtype)
            rel_close(TB.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x),
                      REF.gcn_aggregate(g.rowptr, g.col, weight, dis, lw, x), dtype, "gcn")
    z = torch.randn(g.num_edges, device=DEV).to(dtype)
    p = REF.edge_softmax(g.rowptr, z)
    rel_close(TB.edge_softmax(g.rowptr, z), p, dtype, "softmax")
    gp = torch.randn_like(p)
    rel_close(TB.edge_softmax_backward(g.rowptr, p, gp), REF.edge_softmax_backward(g.rowptr, p, gp), dtype, "softmax bwd")
    rel_close(TB.sddmm(g.rowptr, g.col, x, x), REF.sddmm(g.rowptr, g.col, x, x), dtype, "sddmm")


def src_hub(index_dtype, degree=HUB, n=5000 // SCALE):
    """A source of out-degree 60,000 (a hub row of the transpose, with duplicate edges)
    beside a power-law graph: the max backward splits it into segments."""
    key = ("src_hub", index_dtype)
    if key not in _CACHE:
        gen = torch.Generator().manual_seed(4)
        hub_e = torch.stack([torch.zeros(degree, dtype=torch.long), torch.randint(0, n, (degree,), generator=gen)])
        ei = torch.cat([hub_e, power_law_edge_index(n, 30_000 // SCALE, seed=5)], 1).to(index_dtype)
        _CACHE[key] = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
    return _CACHE[key]


def _max_backward(g, x, w, gout, need_w):
    rt, ct, pt = g.transpose()
    _, arg = REF.spmm_forward(g.rowptr, g.col, w, x, "max")
    args = (g.col, rt, ct, pt, w, x, arg, gout, need_w)
    return TB.spmm_max_backward(*args), REF.spmm_max_backward(*args)


@pytest.mark.parametrize("dtype,index_dtype", [
    (torch.float32, torch.int64), (torch.float32, torch.int32),
    (torch.bfloat16, torch.int32), (torch.float16, torch.int64),
])
def test_max_backward(dtype, index_dtype):
    g = power_law(index_dtype)
    widths = (1, 64, 1030) if (dtype, index_dtype) == (torch.float32, torch.int64) else (64,)
    for width in widths:
        x = feats(g.num_src, width, dtype, 9)
        w = torch.rand(g.num_edges, device=DEV).to(dtype)
        gout = feats(g.num_dst, width, dtype, 10)
        for weight in (None, w):
            (gx, gw), (rx, rw) = _max_backward(g, x, weight, gout, True)
            rel_close(gx, rx, dtype, f"max bwd x F={width}")
            # per-edge sums over the features an edge won: signed terms
            rel_close(gw, rw, dtype if dtype != torch.float32 else torch.float16, f"max bwd w F={width}")
            (gx2, gw2), _ = _max_backward(g, x, weight, gout, False)
            rel_close(gx2, rx, dtype, f"max bwd x F={width} (no weight grad)")
            assert gw2.numel() == 0
    # the forward's int32 winners and the same winners as int64: the same bits
    x, gout = feats(g.num_src, 64, dtype, 9), feats(g.num_dst, 64, dtype, 10)
    _, arg = TB.spmm_forward(g.rowptr, g.col, None, x, "max")
    assert arg.dtype == torch.int32
    rt, ct, pt = g.transpose()
    a32 = TB.spmm_max_backward(g.col, rt, ct, pt, None, x, arg, gout, True)
    a64 = TB.spmm_max_backward(g.col, rt, ct, pt, None, x, arg.long(), gout, True)
    assert torch.equal(a32[0], a64[0]) and torch.equal(a32[1], a64[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_backward_hubs(dtype):
    """A destination hub (the forward splits it; one arg edge per feature wins) and a
    source hub of out-degree 60,000 (the backward splits the transpose's row)."""
    for g in (hub(torch.int64), src_hub(torch.int32)):
        x = feats(g.num_src, 64, dtype, 20)
        w = torch.rand(g.num_edges, device=DEV).to(dtype)
        gout = feats(g.num_dst, 64, dtype, 21)
        (gx, gw), (rx, rw) = _max_backward(g, x, w, gout, True)
        rel_close(gx, rx, dtype, "hub max bwd x")
        rel_close(gw, rw, dtype if dtype != torch.float32 else torch.float16, "hub max bwd w")


@pytest.mark.parametrize("name_graph", case_graphs(), ids=lambda c: c[0])
def test_edge_case_graphs(name_graph):
    _, g = name_graph
    g = g.to(DEV)
    x = feats(g.num_src, 5, torch.float32, 11)
    xd = feats(g.num_dst, 5, torch.float32, 12)
    for reduce in ("sum", "mean", "max"):
        rel_close(TB.spmm_forward(g.rowptr, g.col, None, x, reduce)[0],
                  REF.spmm_forward(g.rowptr, g.col, None, x, reduce)[0], torch.float32, reduce)
    args = (g.rowptr, g.col, xd, x, xd, x, "rbf", 1.0, 2, 1.0, 1.0)
    rel_close(TB.structure_kl_forward(*args), REF.structure_kl_forward(*args), torch.float32, "kl")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rows_match_one_row_per_program(dtype, monkeypatch):
    """Sum, mean and GCN aggregation with several short rows per program (arxiv- and
    products-like mean degrees at F = 64, a hub cut into segments beside them) against
    one row per program and the reference, and the same bits on a second run."""
    from fastalign.kernels import heuristics, segments

    for mean in (14, 50):
        n = 4000 // SCALE
        ei = torch.cat([power_law_edge_index(n, mean * n, seed=mean),
                        torch.stack([torch.arange(3000 // SCALE) % n, torch.zeros(3000 // SCALE, dtype=torch.long)])], 1)
        g = Graph.from_edge_index(ei, num_nodes=n).to(DEV)
        plan = segments.row_plan(g.rowptr)
        assert plan.num_long > 0 and heuristics.rows_packing(plan, 64, dtype).ROWS >= 2
        x = feats(n, 64, dtype, mean)
        w = torch.rand(g.num_edges, device=DEV).to(dtype)
        dis, lw = gcn_norm_state(g, w, True, False, dtype)

        def run():
            out = [TB.spmm_forward(g.rowptr, g.col, wt, x, reduce)[0] for reduce in ("sum", "mean") for wt in (None, w)]
            return out + [TB.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x)]

        packed, again = run(), run()
        expect = [REF.spmm_forward(g.rowptr, g.col, wt, x, reduce)[0] for reduce in ("sum", "mean") for wt in (None, w)]
        expect.append(REF.gcn_aggregate(g.rowptr, g.col, w, dis, lw, x))
        monkeypatch.setenv("FASTALIGN_TRITON_PACK_ROWS", "0")
        one_row = run()
        monkeypatch.delenv("FASTALIGN_TRITON_PACK_ROWS")
        for i, (a, b, c, d) in enumerate(zip(packed, again, one_row, expect)):
            assert torch.equal(a, b), f"mean degree {mean}, output {i}: not repeatable"
            rel_close(a, d, dtype, f"packed, mean degree {mean}, output {i}")
            rel_close(c, d, dtype, f"one row, mean degree {mean}, output {i}")


def test_deterministic():
    g = hub(torch.int32)
    hs, hp = feats(g.num_src, 64, torch.float32, 13), feats(g.num_src, 64, torch.float32, 14)
    rt, ct, pt = g.transpose()
    fwd = TB.structure_kl_forward(g.rowptr, g.col, hs, hs, hp, hp, "l1", 64.0, 2, 1.0, 0.5)
    gk = torch.rand(g.num_dst, device=DEV)
    sh = src_hub(torch.int64)
    srt, sct, spt = sh.transpose()
    xs = feats(sh.num_src, 64, torch.float32, 22)
    ws = torch.rand(sh.num_edges, device=DEV)
    _, sarg = TB.spmm_forward(sh.rowptr, sh.col, ws, xs, "max")
    sgo = feats(sh.num_dst, 64, torch.float32, 23)
    runs = [
        (TB.spmm_forward(g.rowptr, g.col, None, hs, "sum")[0],
         TB.spmm_max_backward(sh.col, srt, sct, spt, ws, xs, sarg, sgo, True),
         TB.structure_kl_forward(g.rowptr, g.col, hs, hs, hp, hp, "l1", 64.0, 2, 1.0, 0.5),
         TB.structure_kl_backward(g.rowptr, g.col, rt, ct, pt, hs, hs, hp, hp, *fwd, gk,
                                  "l1", 64.0, 2, 1.0, 0.5, True))
        for _ in range(2)
    ]
    for a, b in zip(runs[0], runs[1]):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(x, y)


def test_launches_on_the_inputs_device():
    """Tensors on the second GPU, current device the first: every launcher runs under
    its inputs' device (Triton launches on the current one)."""
    if DRY_RUN or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    g = power_law(torch.int32).to("cuda:1")
    x = feats(g.num_src, 32, torch.float32, 30).to("cuda:1")
    with torch.cuda.device(0):
        out = TB.spmm_forward(g.rowptr, g.col, None, x, "sum")[0]
        kl = TB.structure_kl_forward(g.rowptr, g.col, x, x, x, x, "l1", 32.0, 2, 1.0, 1.0)[0]
    assert out.device == kl.device == torch.device("cuda:1")
    ref = REF.spmm_forward(g.rowptr, g.col, None, x, "sum")[0]
    rel_close(out, ref, torch.float32, "spmm on cuda:1")


def test_default_configs_do_not_depend_on_timing():
    """Without FASTALIGN_TRITON_AUTOTUNE=1 the chosen block sizes are the heuristic's."""
    from fastalign.kernels.heuristics import heuristic
    from fastalign.kernels.segments import row_plan

    g = hub(torch.int64)
    x = feats(g.num_src, 64, torch.float32, 18)
    rowptr = g.rowptr.clone()
    TB.spmm_forward(rowptr, g.col, None, x, "sum")
    plan = row_plan(rowptr)
    assert list(plan.configs.values()) == [heuristic(plan, 64, torch.float32)]


def test_autotune(monkeypatch):
    from fastalign.kernels.segments import row_plan

    monkeypatch.setenv("FASTALIGN_TRITON_AUTOTUNE", "1")
    g = hub(torch.int64)
    x = feats(g.num_src, 64, torch.float32, 17)
    rowptr = g.rowptr.clone()  # a fresh plan: nothing tuned yet
    out = TB.spmm_forward(rowptr, g.col, None, x, "sum")[0]
    rel_close(out, REF.spmm_forward(g.rowptr, g.col, None, x, "sum")[0], torch.float32, "tuned spmm")
    assert row_plan(rowptr).configs  # a config was chosen and cached on the plan


def test_ops_end_to_end():
    g = power_law(torch.int64)
    x = feats(g.num_src, 32, torch.float32, 15).requires_grad_()
    hp = feats(g.num_src, 16, torch.float32, 16)
    out = {}
    for backend in ("torch", "triton"):
        x.grad = None
        loss = (
            fastalign.spmm(g, x, "mean", backend=backend).square().sum()
            + fastalign.gcn_aggregate(g, x, backend=backend).square().sum()
            + fastalign.spmm(g, x, "max", backend=backend).square().sum()
            + 100 * fastalign.structure_kl(g, x, hp, kernel="l1", tau=0.1, backend=backend)
        )
        loss.backward()
        out[backend] = (loss.detach(), x.grad.clone())
    rel_close(out["triton"], out["torch"], torch.float16, "ops")
    if not DRY_RUN:  # on CPU tensors the automatic choice is the C++ backend
        assert fastalign.backends.resolve("spmm", None, torch.device(DEV), ("spmm_forward",)) == "triton"


# --------------------------------------------------------------------------- graph attention
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graph", ["power_law", "hub"])
def test_gat_aggregate(dtype, graph):
    g = power_law(torch.int32) if graph == "power_law" else hub(torch.int64)
    heads, channels = 8, 8
    x = feats(g.num_src, heads * channels, dtype, 1).view(-1, heads, channels)
    a_s, a_d = feats(g.num_src, heads, dtype, 2), feats(g.num_dst, heads, dtype, 3)
    args = (x, a_s, a_d, 0.2, 0.25, 99, True)
    out, lse = TB.gat_aggregate_forward(g.rowptr, g.col, *args)
    ref_out, ref_lse = REF.gat_aggregate_forward(g.rowptr, g.col, *args)
    rel_close(out, ref_out, dtype, "out")
    rel_close(lse, ref_lse, torch.float32, "lse")
    rowptr_t, col_t, perm_t = g.transpose()
    grad_out = feats(g.num_dst, heads * channels, dtype, 4).view(-1, heads, channels)
    back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.2, 0.25, 99, True)
    rel_close(TB.gat_aggregate_backward(*back), REF.gat_aggregate_backward(*back), dtype, "grads")
