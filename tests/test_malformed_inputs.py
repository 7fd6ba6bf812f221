"""No malformed index tensor may crash, hang or silently pass an op: every registered op
(torch.ops.fastalign.* on each backend, and the C++ kernels' own torch.ops.fastalign_cpu.*)
called with one corrupted index tensor at a time (tests/malformed_cases.py: columns of
2**40, -1, 1000 or the node count; row pointers past or short of the edges, decreasing,
huge, not starting at 0, of a float dtype or 2-D; mixed index dtypes; out-of-range or
int32 edge permutations; out-of-range or foreign max winners) must raise ValueError or
TypeError naming the problem, and nothing else. The cases run in a child process, so a
crash fails the test with the case in flight instead of ending the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastalign import backends

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "malformed_cases.py"
WORDS = ("rowptr", "col", "perm_t", "arg", "dtype", "int32 or int64", "int64", "1-D", "edges", "shape")


def _run(*args, env=None):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)
    lines = proc.stdout.splitlines()
    started = [line.split("\t")[1] for line in lines if line.startswith("START\t")]
    ended = {}
    for line in lines:
        if line.startswith("END\t"):
            _, case, outcome = line.split("\t", 2)
            ended[case] = outcome
    missing = [c for c in started if c not in ended]
    assert not missing, f"crashed or hung in {missing[0]}:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 and lines and lines[-1] == "DONE", proc.stdout[-2000:] + proc.stderr[-3000:]
    return ended


def _assert_refused(ended):
    assert len(ended) > 50
    wrong = {c: o for c, o in ended.items() if not o.startswith(("ValueError:", "TypeError:"))}
    assert not wrong, "\n".join(f"{c}: {o}" for c, o in list(wrong.items())[:20])
    vague = {c: o for c, o in ended.items() if not any(w in o for w in WORDS)}
    assert not vague, "\n".join(f"{c}: {o}" for c, o in list(vague.items())[:20])


def test_public_ops_refuse_malformed_csr_on_every_cpu_backend():
    names = [b for b in ("torch", "cpu") if backends.is_available(b, "cpu")]
    _assert_refused(_run("--backends", ",".join(names)))


@pytest.mark.skipif(not backends.is_available("cpu"), reason="the C++ extension is not built")
def test_cpu_kernels_called_directly_refuse_malformed_csr():
    _assert_refused(_run("--namespace", "fastalign_cpu"))


def test_triton_launch_path_refuses_malformed_csr():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    _assert_refused(_run("--backends", "triton", env=env))


@pytest.mark.parametrize("op", ["gcn_aggregate", "local_structure"])
def test_row_count_message_reads_plainly(op):
    """The rows-mismatch sentence of the ops whose features have no named side."""
    import torch

    import fastalign

    g = fastalign.Graph.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 3]]), num_nodes=100)
    with pytest.raises(ValueError) as info:
        getattr(fastalign, op)(g, torch.randn(7, 4))
    msg = str(info.value)
    assert "has 7 rows but the graph has 100 nodes" in msg and "  " not in msg, msg


def test_edge_softmax_without_logits_is_a_type_error():
    """``edge_softmax(graph, None)`` raised an AttributeError from deep inside the op."""
    import torch

    import fastalign

    g = fastalign.Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
    with pytest.raises(TypeError, match="logits must be a floating tensor of one value per edge, got None"):
        fastalign.edge_softmax(g, None)
