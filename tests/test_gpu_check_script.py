"""bench/gpu_check.sh, the one script a GPU session runs, dry-run here with a stand-in
python3 and nvidia-smi: both modes run to the end, hand the benchmark a positive time
budget, and leave no more files under $OUT than the device tool brings back (8 per
call, plain names). A GPU session is rare and short; a script that breaks in it, or a
result file that does not come back, costs the whole session."""

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
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(" ".join(args) + "\n")
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
elif args and args[0].endswith("distill_epoch_time.py"):
    touch(after("--json"))
elif args[:2] == ["-m", "pytest"]:
    print("3 passed")
else:  # -c snippets (imports, versions) and pip
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


def test_check_mode_runs_through_and_fits_the_file_limit(fake_env):
    env, calls, tmp = fake_env
    stdout, names = _run(env, tmp / "out1")
    assert names == {"check.log", "build.log", "tests.log", "bench.log", "bench_gpu.json",
                     "bench_gpu.md", "distill_epoch_time.json"}
    log = (tmp / "out1" / "check.log").read_text()
    assert log == stdout and "NVIDIA H200" in log and "done" in log.splitlines()[-1]
    made = calls.read_text().splitlines()
    assert any(c.startswith("-m pip install") and "--no-build-isolation" in c for c in made)
    assert any("tests/test_triton_gpu.py" in c for c in made)
    assert any("tests/test_cuda_backend.py" in c for c in made)  # the stand-in "built" it
    bench = next(c for c in made if c.startswith("bench/bench_gpu.py"))
    budget = float(re.search(r"--budget-s (\S+)", bench).group(1))
    assert budget >= 250, bench  # build and tests took no time here: most of 540 s is left
    assert any(c.startswith("bench/distill_epoch_time.py") and "--device cuda" in c for c in made)
    bench_log = (tmp / "out1" / "bench.log").read_text()
    assert "== bench/bench_gpu.py" in bench_log and "== bench/distill_epoch_time.py" in bench_log


def test_harness_mode_runs_fastalign_bench(fake_env):
    env, calls, tmp = fake_env
    _, names = _run(env, tmp / "out2", "--harness")
    assert names == {"check.log", "fastalign_bench_cuda.txt", "fastalign_bench_cuda.json",
                     "fastalign_bench_cuda.png"}  # the install was there: no build.log
    made = calls.read_text().splitlines()
    assert not any(c.startswith("-m pip") for c in made)
    bench = next(c for c in made if c.startswith("-m fastalign.bench"))
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
