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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


GAT_CASES = os.path.join(ROOT, "tests", "ops", "test_gat_aggregate.py")
KL_CASES = os.path.join(ROOT, "tests", "ops", "test_structure_kl.py")


def _interpreter_command(*where):
    # `env` runs the interpreter suite with TRITON_INTERPRET=1 in the job's process; one
    # thread: the other core compiles the CUDA kernels meanwhile (tests/background_jobs.py)
    return ["env", "TRITON_INTERPRET=1", "OMP_NUM_THREADS=1", "PYTHONWARNINGS=ignore", sys.executable, "-m",
            "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "triton_interpreter", "--rootdir", ROOT, *where]


if not INTERP:
    import background_jobs

    # About 160 s in all, in two parts that balance the two cores: the GAT and structure-KL
    # cases (about 95 s) queued on the second core after the nvcc compiles and the sdist
    # install (the background jobs), the rest (about 65 s) on this core in its turn.
    background_jobs.register("triton-interpreter-gat", lambda: _interpreter_command(GAT_CASES, KL_CASES))
    background_jobs.register("triton-interpreter-suite", lambda: _interpreter_command(
        os.path.join(ROOT, "tests", "ops"), f"--ignore={GAT_CASES}", f"--ignore={KL_CASES}",
        os.path.abspath(__file__)))
    BACKGROUND_JOBS = ("triton-interpreter-gat",)


@pytest.mark.slow  # `-m "not slow"` leaves it out (and then the job never starts)
@pytest.mark.skipif(INTERP, reason="this process is the interpreter run")
def test_interpreter_suite():
    import background_jobs

    for part in ("triton-interpreter-suite", "triton-interpreter-gat"):
        proc = background_jobs.result(part)
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
        # the run found its cases (a selection that matches nothing exits 5, but say so)
        assert " passed" in proc.stdout, proc.stdout[-2000:]


if INTERP:  # the backend as a whole
    import torch

    import fastalign
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
