"""The Triton backend against the reference, run on CPU tensors under the Triton
interpreter (CI has no GPU).

TRITON_INTERPRET must be set before fastalign.kernels is imported (triton.jit decides
per decorated kernel, at import, whether it is interpreted), and it must not leak into
other test modules (the GPU tests need compiled kernels). So:

* ``pytest tests/`` (no TRITON_INTERPRET): this module runs one test,
  ``test_interpreter_suite``, which re-runs this file in a fresh Python process with
  TRITON_INTERPRET=1 and fails with its output if any case fails;
* ``TRITON_INTERPRET=1 pytest tests/test_triton_backend.py``: the cases themselves
  (tests/triton_interp_cases.py, imported here only in that mode) run in this process;
  this is what the subprocess does: use it to see individual cases.

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


def _interpreter_command():
    # `env` runs the interpreter suite with TRITON_INTERPRET=1 in the background job's process
    return ["env", "TRITON_INTERPRET=1", "PYTHONWARNINGS=ignore", sys.executable, "-m", "pytest", "-q", "-x",
            "-p", "no:cacheprovider", "--rootdir", ROOT, os.path.abspath(__file__)]


if not INTERP:
    import background_jobs

    # about 2 minutes: it runs on the second core from the start of the test run
    # (tests/background_jobs.py), and this module's one test waits for it at the end
    background_jobs.register("triton-interpreter-suite", _interpreter_command)
    BACKGROUND_JOBS = ("triton-interpreter-suite",)
    RUN_LAST = True


@pytest.mark.slow  # `-m "not slow"` leaves it out (and then the job never starts)
@pytest.mark.skipif(INTERP, reason="this process is the interpreter run")
def test_interpreter_suite():
    import background_jobs

    proc = background_jobs.result("triton-interpreter-suite")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]


if INTERP:  # the cases themselves (tests/triton_interp_cases.py), collected here
    from triton_interp_cases import *  # noqa: F401,F403
