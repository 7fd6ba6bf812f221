"""The Triton backend against the reference, run on CPU tensors under the Triton
interpreter (CI has no GPU).

Each op's Triton cases sit in its test file (tests/ops/test_<op>.py, the section marked
``triton_interpreter``); this module holds what concerns the backend as a whole and
starts their run. TRITON_INTERPRET must be set before fastalign.kernels is imported
(triton.jit decides per decorated kernel, at import, whether it is interpreted), and it
must not leak into other test modules (the GPU tests need compiled kernels). So:

* ``pytest tests/`` (no TRITON_INTERPRET): this module runs one test,
  ``test_interpreter_suite``, which runs the marked cases in fresh Python processes with
  TRITON_INTERPRET=1 (two parts, one on each core) and fails with their output if any
  case fails; the marked cases are not collected in this process;
* ``TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops tests/test_triton_backend.py``:
  the cases themselves, in this process: what the job runs; use it to see individual cases.

Graphs stay tiny (the interpreter costs milliseconds per program); float64 features,
so kernels and reference must agree to rounding.
"""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("triton")
INTERP = os.environ.get("TRITON_INTERPRET") == "1"

import torch  # noqa: E402

import background_jobs  # noqa: E402
import fastalign  # noqa: E402
from helpers import TRITON_GPU_CASES  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


GAT_CASES = os.path.join(ROOT, "tests", "ops", "test_gat_aggregate.py")
KL_CASES = os.path.join(ROOT, "tests", "ops", "test_structure_kl.py")


def _interpreter_command(*where):
    # `env` runs the interpreter suite with TRITON_INTERPRET=1 in the job's process; one
    # thread: the other core compiles the CUDA kernels meanwhile (tests/background_jobs.py)
    return ["env", "TRITON_INTERPRET=1", "OMP_NUM_THREADS=1", "PYTHONWARNINGS=ignore", sys.executable, "-m",
            "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "triton_interpreter", "--rootdir", ROOT, *where]


if not INTERP:
    # About 160 s in all, in two parts that balance the two cores: the GAT and structure-KL
    # cases (about 95 s) queued on the second core after the nvcc compiles and the sdist
    # install (the background jobs), the rest (about 65 s) on this core in its turn.
    background_jobs.register("triton-interpreter-gat", lambda: _interpreter_command(GAT_CASES, KL_CASES))
    background_jobs.register("triton-interpreter-suite", lambda: _interpreter_command(
        os.path.join(ROOT, "tests", "ops"), f"--ignore={GAT_CASES}", f"--ignore={KL_CASES}",
        os.path.abspath(__file__)))


@pytest.mark.slow  # `-m "not slow"` leaves it out (and then the job never starts)
@pytest.mark.skipif(INTERP, reason="this process is the interpreter run")
@background_jobs.needs("triton-interpreter-gat")  # this test's, not the GPU cases' below
def test_interpreter_suite():
    for part in ("triton-interpreter-suite", "triton-interpreter-gat"):
        proc = background_jobs.result(part)
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
        # the run found its cases (a selection that matches nothing exits 5, but say so)
        assert " passed" in proc.stdout, proc.stdout[-2000:]


if INTERP:  # the backend as a whole
    from helpers import features
    from triton_interpreter import close, graph, interpreted, segments, tb

    @interpreted
    def test_triton_ops_autograd_match_reference():
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


    @interpreted
    def test_triton_backend_lists_every_function():
        from fastalign.backends import BACKEND_FUNCTIONS

        assert set(tb.FUNCTIONS) == set(BACKEND_FUNCTIONS)
        assert tb.supports(torch.device("cpu"))


    @interpreted
    def test_triton_plan_cache_follows_rowptr():
        g = graph("square")
        rowptr = g.rowptr.clone()
        p1 = segments.row_plan(rowptr)
        assert segments.row_plan(rowptr) is p1
        rowptr.add_(0)  # a version bump: the plan is rebuilt
        assert segments.row_plan(rowptr) is not p1


# ------------------------------------------------------------------ Triton, on a device
# The backend as a whole on a GPU, or in its dry run (tests/ops/triton_gpu.py); each
# op's cases sit in its file (`pytest -m triton_gpu tests/ops`).
if TRITON_GPU_CASES:
    from helpers import GPU_DRY_RUN, power_law_edge_index
    from triton_gpu import DEV, feats, hub, power_law, REF, rel_close, src_hub, TB, triton_gpu_case

    @triton_gpu_case
    def test_triton_gpu_benchmark_graph_is_the_cpu_graph_on_the_device():
        on_device = power_law_edge_index(3_000, 40_000, seed=5, device=DEV)
        assert on_device.device.type == torch.device(DEV).type
        assert torch.equal(on_device.cpu(), power_law_edge_index(3_000, 40_000, seed=5))

    @triton_gpu_case
    def test_triton_gpu_deterministic():
        """Split hub rows are combined in a fixed order: two runs agree bit for bit (the
        max backward over a split source hub included)."""
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

    if torch.cuda.device_count() >= 2:
        @triton_gpu_case
        def test_triton_gpu_launches_on_the_inputs_device():
            """Tensors on the second GPU, current device the first: every launcher runs
            under its inputs' device (Triton launches on the current one)."""
            g = power_law(torch.int32).to("cuda:1")
            x = feats(g.num_src, 32, torch.float32, 30).to("cuda:1")
            with torch.cuda.device(0):
                out = TB.spmm_forward(g.rowptr, g.col, None, x, "sum")[0]
                kl = TB.structure_kl_forward(g.rowptr, g.col, x, x, x, x, "l1", 32.0, 2, 1.0, 1.0)[0]
            assert out.device == kl.device == torch.device("cuda:1")
            ref = REF.spmm_forward(g.rowptr, g.col, None, x, "sum")[0]
            rel_close(out, ref, torch.float32, "spmm on cuda:1")

    @triton_gpu_case
    def test_triton_gpu_default_configs_do_not_depend_on_timing():
        """Without FASTALIGN_TRITON_AUTOTUNE=1 the chosen block sizes are the heuristic's."""
        from fastalign.kernels.heuristics import heuristic
        from fastalign.kernels.segments import row_plan

        g = hub(torch.int64)
        x = feats(g.num_src, 64, torch.float32, 18)
        rowptr = g.rowptr.clone()
        TB.spmm_forward(rowptr, g.col, None, x, "sum")
        plan = row_plan(rowptr)
        assert list(plan.configs.values()) == [heuristic(plan, 64, torch.float32)]

    @triton_gpu_case
    def test_triton_gpu_autotune(monkeypatch):
        """Tuning is opt-in (each tuned op compiles several configs: minutes of a GPU run)."""
        from fastalign.kernels.segments import row_plan

        monkeypatch.setenv("FASTALIGN_TRITON_AUTOTUNE", "1")
        g = hub(torch.int64)
        x = feats(g.num_src, 64, torch.float32, 17)
        rowptr = g.rowptr.clone()  # a fresh plan: nothing tuned yet
        out = TB.spmm_forward(rowptr, g.col, None, x, "sum")[0]
        rel_close(out, REF.spmm_forward(g.rowptr, g.col, None, x, "sum")[0], torch.float32, "tuned spmm")
        assert row_plan(rowptr).configs  # a config was chosen and cached on the plan

    @triton_gpu_case
    def test_triton_gpu_ops_end_to_end():
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
        if not GPU_DRY_RUN:  # on CPU tensors the automatic choice is the C++ backend
            assert fastalign.backends.resolve("spmm", None, torch.device(DEV), ("spmm_forward",)) == "triton"
