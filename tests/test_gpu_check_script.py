"""The GPU check (bench/gpu_check.py, run on the device as `bash bench/gpu_check.sh`),
rehearsed on the CPU: the C++ and reference backends stand in for Triton and CUDA, and
the faults a first device call is expected to meet are injected. The headline rows must
still come out within the budget, and the report must name what became of every row
that did not. A GPU run is rare and short: a check that breaks in it, or a
result file that does not come back, costs the whole window."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "bench" / "gpu_check.py"
MAX_FILES = 8  # the device tool's limit on files brought back per call
# last, once the background jobs (nvcc, the interpreter suite) are done: the rehearsals
# keep wall-clock deadlines, which a busy second core would stretch
RUN_LAST = 2
SCALE = 0.3  # every cap and injected delay at 30%: a 126 s rehearsal of the 420 s call

SPEC = importlib.util.spec_from_file_location("gpu_report", ROOT / "bench" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_report)


def _files(out):
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES, sorted(p.name for p in files)
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 2 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
    return {p.name for p in files}


@pytest.mark.slow
def test_dry_run_delivers_the_headline_through_every_expected_fault(tmp_path):
    """Each Triton specialisation costing 3 s to compile, the CUDA backend dying of
    SIGSEGV, the compiled PyG GCNConv running out of memory, and one stage hanging: the
    Triton and cuSPARSE rows of all three graphs still come back, inside the budget, and
    the report says crashed / OOM / timed out where each failure struck."""
    out = tmp_path / "out"
    budget = 420 * SCALE
    faults = "compile_s=3,crash=cuda,oom=PyG GCNConv compiled,hang=smoke:triton:kl"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(CHECK), "--dry-run", "--time-scale", str(SCALE), "--out", str(out),
                           "--faults", faults], capture_output=True, text=True, timeout=budget + 120, cwd=ROOT)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert wall <= budget + 15, wall  # the call's own deadline holds (start-up and report included)
    assert _files(out) == {"check.log", "build.log", "smoke.log", "bench.log", "tests.log", "bench_gpu.json",
                           "bench_gpu.md"}
    report = json.loads((out / "bench_gpu.json").read_text())
    assert report["meta"]["mode"] == "dry run (CPU)" and report["meta"]["commit"]
    rows = {(r["graph"], r["dtype"], r["op"], r["impl"]): r for r in report["records"] if r["kind"] == "bench"}
    smoke = {(r["check"], r["backend"]): r for r in report["records"] if r["kind"] == "smoke"}
    # the headline: ours (Triton) and cuSPARSE, every graph, with figures and a correctness check
    for graph in ("arxiv", "reddit", "products"):
        for impl in (gpu_report.TRITON, gpu_report.CUSPARSE):
            r = rows[(graph, "float32", "spmm_fwd", impl)]
            assert r.get("ms") and r.get("ms_b2b"), r
        assert rows[(graph, "float32", "spmm_fwd", gpu_report.TRITON)]["rel_err"] < 1e-5
    # every planned row is accounted for: a figure, or why not
    for graph in ("arxiv", "reddit", "products"):
        for part in ("triton", "cuda", "peers"):
            for op, dtype, impl in gpu_report.part_rows(part):
                r = rows[(graph, dtype, op, impl)]
                assert r.get("ms") is not None or r.get("status"), r
    # the CUDA backend crashed: its rows say so (or that no time was left after the crashes)
    cuda_rows = [r for k, r in rows.items() if k[3] == gpu_report.CUDA]
    assert any("crashed (SIGSEGV)" in r.get("status", "") for r in cuda_rows)
    assert all(not r.get("ms") for r in cuda_rows)
    assert any("crashed (SIGSEGV)" in r.get("status", "") for k, r in smoke.items() if k[1] == "cuda")
    # the hung stage was stopped at its cap; the rest of the Triton smoke passed or says why
    assert "timed out" in smoke[("structure_kl l1 fwd+bwd", "triton")]["status"]
    assert smoke[("spmm sum fwd+bwd", "triton")]["status"] in ("PASS", "not run (no time left)")
    # the peer that ran out of memory
    oom = [r for k, r in rows.items() if k[3] == "PyG GCNConv compiled" and r.get("status") == "OOM"]
    assert oom, [r for k, r in rows.items() if k[3] == "PyG GCNConv compiled"]
    # the goals table names each failure where it cost a goal
    md = (out / "bench_gpu.md").read_text()
    goals = md.split("## Goals", 1)[1].split("## Every row", 1)[0]
    assert re.search(r"\| spmm_fwd \| float32 \| reddit \| fastalign\[triton\] [0-9.]+ ms \|", goals)
    assert "not measured (PyG GCNConv compiled OOM)" in goals or "PyG GCNConv compiled" not in goals
    assert "crashed (SIGSEGV)" in md and "timed out" in md
    log = (out / "check.log").read_text()
    assert log.splitlines()[0].startswith("[gpu_check") and "  gpu:" in log  # the environment first
    assert "smoke:cuda:" in log and "done:" in log.splitlines()[-1]


def test_report_names_why_a_goal_was_not_measured():
    recs = [
        dict(kind="bench", graph="reddit", F=64, dtype="float32", op="spmm_fwd", impl=gpu_report.TRITON,
             ms=7.0, ms_b2b=6.0),
        dict(kind="bench", graph="reddit", F=64, dtype="float32", op="spmm_fwd", impl=gpu_report.CUDA,
             status="crashed (SIGSEGV)"),
        dict(kind="bench", graph="reddit", F=64, dtype="float32", op="spmm_fwd", impl=gpu_report.CUSPARSE,
             ms=9.0, ms_b2b=8.0),
        dict(kind="bench", graph="arxiv", F=64, dtype="float32", op="spmm_fwd", impl=gpu_report.TRITON,
             status="timed out (cap 45 s)"),
        dict(kind="bench", graph="arxiv", F=64, dtype="float32", op="spmm_fwd", impl=gpu_report.CUDA,
             status="not built (exited with status 1)"),
    ]
    lines = gpu_report.goals(recs)
    reddit = next(x for x in lines if x.startswith("| spmm_fwd | float32 | reddit |"))
    assert "| 0.75x |" in reddit and reddit.endswith("| met |")  # b2b 6 / 8
    assert "| 0.78x |" in reddit  # per call 7 / 9
    arxiv = next(x for x in lines if x.startswith("| spmm_fwd | float32 | arxiv |"))
    assert "fastalign[triton] timed out (cap 45 s); fastalign[cuda] not built" in arxiv
    products = next(x for x in lines if x.startswith("| spmm_fwd | float32 | products |"))
    assert "fastalign[triton] missing; fastalign[cuda] missing" in products


def test_missing_rows_are_filled_once_with_the_process_fate():
    have = [dict(kind="bench", graph="arxiv", F=64, dtype="float32", op="spmm_fwd", impl=gpu_report.TRITON, ms=1.0),
            dict(kind="copy", copy_gbs=3000.0)]
    planned = [dict(kind="bench", graph="arxiv", F=64, dtype=dt, op=op, impl=impl)
               for op, dt, impl in gpu_report.part_rows("triton")]
    filled = gpu_report.fill_missing(have, planned, "crashed (SIGSEGV)")
    assert len(filled) == len(planned) - 1 and all(r["status"] == "crashed (SIGSEGV)" for r in filled)
    assert gpu_report.fill_missing(have + filled, planned, "timed out") == []


def test_parts_list_every_goal_row_and_the_headline_first():
    triton = gpu_report.part_rows("triton")
    assert triton[:2] == [("spmm_fwd", "float32", gpu_report.TRITON), ("spmm_fwd", "float32", gpu_report.CUSPARSE)]
    assert len(set(triton)) == len(triton)
    planned = {(op, dt, impl) for part in ("triton", "cuda", "peers") for op, dt, impl in gpu_report.part_rows(part)}
    for op, dtype, peer, peer_dtype, _, _, _ in gpu_report.GOALS:
        assert (op, dtype, gpu_report.TRITON) in planned and (op, dtype, gpu_report.CUDA) in planned
        assert (op, peer_dtype, peer) in planned


def test_bad_arguments_are_refused():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--nosuch"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = subprocess.run([sys.executable, str(CHECK), "--faults", "crash=cuda"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "dry runs" in proc.stderr


def test_smoke_check_dry_run():
    """bench/gpu_smoke.py end to end on CPU tensors, the C++ backend standing in for the
    GPU ones: the chunked reference and the comparisons run, and every check passes."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 passed, 0 failed, 0 skipped" in proc.stdout, proc.stdout


def test_backend_choice_and_variants_tables():
    def rec(op, impl, ms, graph="reddit", dtype="float32", **kw):
        return dict(kind="bench", graph=graph, F=64, dtype=dtype, op=op, impl=impl, ms=ms, **kw)

    records = [
        rec("spmm_fwd", gpu_report.TRITON, 6.0), rec("spmm_fwd", gpu_report.CUDA, 3.0),
        rec("spmm_fwd", gpu_report.TRITON, 1.0, graph="arxiv"), rec("spmm_fwd", gpu_report.CUDA, 1.0, graph="arxiv"),
        rec("skl_fwd_bwd", gpu_report.TRITON, 10.0), rec("skl_fwd_bwd", gpu_report.CUDA, 20.0),
        rec("skl_fwd_bwd", gpu_report.WARPS8, 5.0),  # a variant, not a backend of its own
        rec("gcn_fwd_bwd", gpu_report.TRITON, 5.0),
        dict(rec("gcn_fwd_bwd", gpu_report.CUDA, None), status="OOM"),
    ]
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in gpu_report.backend_choice(records) if line.startswith("| ") and "---" not in line
             and not line.startswith("| op")}
    assert set(table) == {"spmm_fwd", "skl_fwd_bwd"}  # gcn: cuda did not run
    assert table["spmm_fwd"] == ["2", "0.71", "0.50 to 1.00", "cuda"]
    assert table["skl_fwd_bwd"] == ["1", "2.00", "2.00 to 2.00", "triton"]
    variants = gpu_report.variants(records)
    assert "| reddit | float32 | skl_fwd_bwd | 8 warps | 0.50 |" in variants


@pytest.mark.slow
def test_harness_dry_run_runs_every_step_into_its_files(tmp_path):
    """The optional second call (--harness), rehearsed on the CPU with the tiny graph:
    the build (the extension is not there), the fastalign bench sweep, the distillation
    epoch time and K = 2 and 4 students, each within its share of the budget."""
    out = tmp_path / "out"
    budget = 200 * 0.5
    proc = subprocess.run([sys.executable, str(CHECK), "--harness", "--dry-run", "--time-scale", "0.5", "--out",
                           str(out)], capture_output=True, text=True, timeout=budget + 120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    names = _files(out)
    assert {"check.log", "build.log", "fastalign_bench_cuda.txt", "fastalign_bench_cuda.json",
            "distill_epoch_time.json", "students_one_gpu.txt"} <= names, names
    log = (out / "check.log").read_text()
    for step in ("build: ok", "fastalign bench: ok", "distill epoch time: ok", "students K=2: ok",
                 "students K=4: ok"):
        assert step in log, log
    students = (out / "students_one_gpu.txt").read_text()
    assert students.count('"students"') >= 2, students[-2000:]
