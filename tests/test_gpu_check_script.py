"""bench/gpu_check.sh, the one script a GPU session runs, dry-run here with a stand-in
python3 and nvidia-smi: both modes run to the end in the planned order (build, smoke
check at scale, goal figures, then the GPU tests with what is left), the budget
arithmetic hands each step a positive share that fits the call, and no more files are
left under $OUT than the device tool brings back (8 per call, plain names). A GPU
session is rare and short; a script that breaks in it, or a result file that does not
come back, costs the whole session."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
MAX_FILES = 8  # the device tool's limit on files brought back from $OUT per call

# Stands in for python3: records each call and writes the files the real programs write.
FAKE_PYTHON = r'''#!{python}
import os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(f"{{time.time():.2f}} " + " ".join(args) + "\n")
def after(flag):
    return args[args.index(flag) + 1]
def touch(path, text="{{}}\n"):
    with open(path, "w") as f:
        f.write(text)
if args[:2] == ["-m", "fastalign.bench"]:
    touch(after("--json")); touch(after("--plot"), "png")
    print("[  1/1   0:00] spmm | arxiv-like | fwd | fastalign[triton]: 1.0 ms")
    print("spmm: arxiv-like ...")
elif args and args[0].endswith("bench_gpu.py"):
    out = after("--out")
    touch(os.path.join(out, "bench_gpu.json")); touch(os.path.join(out, "bench_gpu.md"), "| table |\n")
elif args and args[0].endswith("distill/epoch_time.py"):
    touch(after("--json"))
elif args and args[0].endswith("bench/distributed_epoch.py"):
    print('{{"students": ' + after("--students") + '}}')
elif args and args[0].endswith("gpu_smoke.py"):
    print("  spmm sum fwd+bwd  triton  float32  PASS")
elif args[:2] == ["-m", "pytest"]:
    print("3 passed")
elif args[:2] == ["-m", "pip"]:
    time.sleep(float(os.environ.get("FAKE_BUILD_S", "0")))
    print("ok")
else:  # -c snippets (imports, versions)
    print("ok")
'''


@pytest.fixture()
def fake_env(tmp_path):
    if shutil.which("bash") is None or shutil.which("awk") is None:
        pytest.skip("needs bash and awk")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python3"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'name, memory.total'\necho 'NVIDIA H200, 143771 MiB'\n")
    for exe in (python, smi):
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=str(python),
               FAKE_CALLS=str(calls))
    return env, calls, tmp_path


def _calls(path):
    """(seconds since the first call, the call's arguments) of each stand-in call."""
    rows = [line.split(" ", 1) for line in path.read_text().splitlines()]
    t0 = float(rows[0][0])
    return [(float(t) - t0, rest) for t, rest in rows]


def _index(made, prefix):
    return next(i for i, (_, c) in enumerate(made) if c.startswith(prefix))


def _budget(call, flag="--budget-s"):
    return float(re.search(flag + r" (\S+)", call).group(1))


def _run(env, out, *args):
    out.mkdir()
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=dict(env, OUT=str(out)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES, sorted(p.name for p in files)
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
    return proc.stdout, {p.name for p in files}


def test_check_mode_runs_in_order_and_fits_the_file_limit(fake_env):
    env, calls, tmp = fake_env
    stdout, names = _run(env, tmp / "out1")
    assert names == {"check.log", "build.log", "smoke.log", "bench.log", "bench_gpu.json",
                     "bench_gpu.md", "tests.log"}
    log = (tmp / "out1" / "check.log").read_text()
    assert log == stdout and "NVIDIA H200" in log and "done" in log.splitlines()[-1]
    made = _calls(calls)
    order = [_index(made, p) for p in ("-m pip install", "bench/gpu_smoke.py", "bench/bench_gpu.py",
                                       "-m pytest -q -p no:cacheprovider -rfE tests/test_triton_gpu.py",
                                       "-m pytest -q -p no:cacheprovider -rfE tests/test_cuda_backend.py")]
    assert order == sorted(order), order  # build, smoke, goal figures, then the tests
    assert "--no-build-isolation" in made[order[0]][1]
    smoke, bench = made[order[1]][1], made[order[2]][1]
    assert _budget(smoke) == 100  # its cap: nothing before it took time here
    assert "--quick" in bench and _budget(bench) >= 540 - 60 - 25 - 5, bench  # all but the tests' share
    assert "== bench/bench_gpu.py" in (tmp / "out1" / "bench.log").read_text()
    assert "== tests/test_cuda_backend.py" in (tmp / "out1" / "tests.log").read_text()


def test_check_mode_budget_after_a_slow_build(fake_env):
    """A 4 s build in a 150 s call: the smoke check and the benchmark shrink so that the
    tests keep their share and the whole call fits its budget."""
    env, calls, tmp = fake_env
    env = dict(env, FAKE_BUILD_S="4", GPU_CHECK_BUDGET_S="150")
    _run(env, tmp / "out3")
    made = _calls(calls)
    t_smoke, smoke = made[_index(made, "bench/gpu_smoke.py")]
    t_bench, bench = made[_index(made, "bench/bench_gpu.py")]
    left = 150 - t_smoke
    assert 20 <= _budget(smoke) <= left - 60 - 60 + 1, (smoke, left)
    assert 30 <= _budget(bench) <= 150 - t_bench - 60 - 25 + 1, bench
    assert t_bench + _budget(bench) + 60 <= 150 + 1


def test_harness_mode_runs_fastalign_bench(fake_env):
    env, calls, tmp = fake_env
    _, names = _run(env, tmp / "out2", "--harness")
    assert names == {"check.log", "fastalign_bench_cuda.txt", "fastalign_bench_cuda.json",
                     "fastalign_bench_cuda.png", "distill_epoch_time.json",
                     "students_one_gpu.jsonl"}  # no build.log: installed
    made = [c for _, c in _calls(calls)]
    assert not any(c.startswith("-m pip") for c in made)
    bench = next(c for c in made if c.startswith("-m fastalign.bench"))
    distill = next(c for c in made if c.startswith("experiments/distill/epoch_time.py"))
    assert "--device cuda" in distill and made.index(distill) > made.index(bench)
    students = [c for c in made if c.startswith("bench/distributed_epoch.py")]
    assert [re.search(r"--students (\d+)", c).group(1) for c in students] == ["2", "4"]
    assert all("--device cuda" in c and made.index(c) > made.index(distill) for c in students)
    lines = (tmp / "out2" / "students_one_gpu.jsonl").read_text().splitlines()
    assert lines == ['{"students": 2}', '{"students": 4}']
    assert "--device cuda" in bench and "--sizes large" in bench
    graphs = re.search(r"--graphs (\S+)", bench).group(1).split(",")
    assert graphs[:2] == ["arxiv-like", "reddit-like"] and graphs[-1] == "products-like"
    minutes = float(re.search(r"--max-minutes (\S+)", bench).group(1))
    assert 0.5 <= minutes <= 200 / 60


def test_bad_argument_is_refused(fake_env):
    env, _, tmp = fake_env
    proc = subprocess.run(["bash", str(SCRIPT), "--nosuch"], env=dict(env, OUT=str(tmp / "o")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_smoke_check_dry_run():
    """bench/gpu_smoke.py end to end on CPU tensors, the C++ backend standing in for the
    GPU ones: the chunked reference and the comparisons run, and every check passes."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 passed, 0 failed, 0 skipped" in proc.stdout, proc.stdout
