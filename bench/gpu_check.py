#!/usr/bin/env python3
"""The GPU check: one command that builds, checks every op at scale and measures the
goal figures on whatever GPU it finds (an H100 or an H200), in at most ``--budget-s``
seconds (420), and still delivers the headline figures when a stage breaks.

    python bench/gpu_check.py --stamp        # here, before the call: the commit, for the copy
    bash bench/gpu_check.sh                  # on the device (= python3 bench/gpu_check.py)
    bash bench/gpu_check.sh --harness        # optional second call: the wider sweep
    python bench/gpu_check.py --dry-run ...  # CPU rehearsal (tests/test_gpu_check_script.py)

Stages, in order (each worker a process of its own, killed at its cap; a crash, a hang
or an out-of-memory costs only that process's rows, and the report names them):

1. the environment (GPU, driver, free memory, CPU count, python, torch, triton,
   setuptools, PyG, the commit): the first lines of check.log;
2. the build of the CUDA extension, in the background (bench/gpu_build.py: no pip);
3. while it runs, in parallel (as many processes as the free memory and the cores
   allow): the Triton smoke check (bench/gpu_smoke.py, one process per group of ops,
   ``CUDA_LAUNCH_BLOCKING=1`` so that an error is blamed on the right op), the Triton
   kernels' compilation on each benchmark graph (``bench_gpu.py --warm``, which also
   caches the graphs on disk) and the compiled peers' compilation on a small graph;
4. the headline: Triton and cuSPARSE on the arxiv-, reddit- and products-like graphs,
   one process per graph;
5. once the build is in: the CUDA smoke check, then the CUDA backend per graph;
6. the compiled and eager PyG peers per graph;
7. the GPU tests, CUDA first, with pytest-xdist where present, stopped (SIGINT) at the
   deadline so that pytest prints what ran.

Results under ``$OUT`` (default ./gpu_check_out), 7 files: check.log, build.log,
smoke.log, bench.log, tests.log, bench_gpu.json (environment and every row, the rows
that did not come back marked with why) and bench_gpu.md (goals first). The report is
rewritten after every stage: a call cut short keeps what it measured. The harness
(call 2) writes check.log, fastalign_bench_cuda.{txt,json,png}, distill_epoch_time.json
and students_one_gpu.txt (and build.log where it had to build).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu_report as R  # noqa: E402

STAMP = os.path.join(ROOT, ".gpu_check_commit")
GRAPH_ORDER = ("arxiv", "reddit", "products")

# Caps in seconds for a 420 s budget (scaled by --time-scale), and the least each later
# stage is left when an earlier one is given its cap.
CAPS = {
    "build": 240, "warm": 150, "triton": {"arxiv": 45, "reddit": 60, "products": 60},
    "cuda-smoke": 45, "cuda": {"arxiv": 30, "reddit": 40, "products": 40},
    "peers": {"arxiv": 100, "reddit": 60, "products": 60}, "tests": 120,
    "h-bench": 120, "h-distill": 45, "h-students": 25,  # the harness (call 2)
}
LEAST = {"triton": 25, "cuda-smoke": 15, "cuda": 15, "peers": 20, "tests": 40, "report": 5,
         "h-bench": 40, "h-distill": 20, "h-students": 10}


class Job:
    """One worker process: its command, the rows it is to produce and what became of it."""

    def __init__(self, label, cmd, log, rows=(), env=None, min_s=5.0):
        self.label, self.cmd, self.log, self.rows = label, cmd, log, list(rows)
        self.env, self.min_s = env or {}, min_s
        self.proc: Optional[subprocess.Popen] = None
        self.started = self.ended = None
        self.outcome = "not run"
        self.out_path = None


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.scale = args.time_scale
        self.deadline = self.t0 + args.budget_s
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.scratch = tempfile.mkdtemp(prefix="gpu_check_")
        self.records_path = os.path.join(self.scratch, "records.jsonl")
        self.fake_cache = os.path.join(self.scratch, "fake_triton_cache")
        os.makedirs(self.fake_cache)
        self.log_file = open(os.path.join(self.out, "check.log"), "w")
        self.meta: Dict[str, object] = {}
        self.filled: List[dict] = []
        self.py = args.python or sys.executable
        self.build_job: Optional[Job] = None
        self.build_ok: Optional[bool] = None
        self.running: List[Job] = []
        self.parallel, self.smoke_edges = 1, 20_000_000  # until the environment is read
        # workers run in sessions of their own (so that a cap stops a whole process tree);
        # if this process is stopped, it stops them first
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)

    def on_signal(self, signum, frame):
        for job in list(self.running):
            self.stop(job, signal.SIGKILL)
        self.log(f"stopped by {signal.Signals(signum).name}")
        try:
            self.write_report(final=True)
        finally:
            os._exit(128 + signum)

    def stage(self, name, fn, *args):
        """Run one stage; a fault in the check itself is logged and the next stage runs."""
        try:
            return fn(*args)
        except Exception:
            import traceback

            self.log(f"{name}: the check itself failed here; going on with the next stage")
            self.say(traceback.format_exc())
            return None

    # ------------------------------------------------------------------ basics
    def now(self):
        return time.monotonic() - self.t0

    def left(self):
        return self.deadline - time.monotonic()

    def log(self, msg):
        line = f"[gpu_check +{self.now():5.0f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def say(self, text):
        """Lines without the time prefix (tables), to the console and check.log."""
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def cap(self, seconds, *later):
        """A stage's time: its cap, less what the later stages must keep."""
        keep = sum(LEAST[k] for k in later) * self.scale
        return max(0.0, min(seconds * self.scale, self.left() - keep))

    def worker_env(self, label, extra=None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                   GPU_CHECK_STAGE=label, GPU_CHECK_TIME_SCALE=str(self.scale),
                   GPU_CHECK_FAKE_CACHE=self.fake_cache)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.args.faults:
            env["GPU_CHECK_FAULTS"] = self.args.faults
        env.update(extra or {})
        return env

    # ------------------------------------------------------------------ processes
    def start(self, job: Job):
        job.out_path = os.path.join(self.scratch, f"{len(os.listdir(self.scratch))}.out")
        out = open(job.out_path, "w")
        job.proc = subprocess.Popen(job.cmd, cwd=ROOT, env=self.worker_env(job.label, job.env),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        out.close()
        job.started = time.monotonic()
        self.running.append(job)

    def stop(self, job: Job, sig=signal.SIGTERM):
        try:
            os.killpg(job.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self, job: Job, timed_out=False, cap=None):
        """Collect a job's output into its stage log and mark its missing rows."""
        if timed_out:
            self.stop(job, signal.SIGINT if job.label.startswith("tests") else signal.SIGTERM)
            try:
                job.proc.wait(timeout=5 * max(self.scale, 0.2))
            except subprocess.TimeoutExpired:
                self.stop(job, signal.SIGKILL)
                job.proc.wait()
        rc = job.proc.returncode
        job.ended = time.monotonic()
        self.stop(job, signal.SIGKILL)  # what the worker left running (compile or test workers)
        if job in self.running:
            self.running.remove(job)
        secs = job.ended - job.started
        if timed_out:
            job.outcome = f"timed out (cap {cap:.0f} s)"
        elif rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = str(-rc)
            job.outcome = f"crashed ({name})"
        elif rc == 5 and job.label.startswith("tests"):
            job.outcome = "ok (no test collected: pytest status 5)"
        elif rc:
            job.outcome = f"exited with status {rc}"
        else:
            job.outcome = "ok"
        with open(job.out_path) as f:
            text = f.read()
        with open(os.path.join(self.out, job.log), "a") as f:
            f.write(f"== {job.label}: {job.outcome}, {secs:.0f} s: {' '.join(job.cmd[1:])}\n{text}\n")
        self.log(f"{job.label}: {job.outcome} in {secs:.0f} s")
        if job.outcome != "ok" and not job.label.startswith("tests"):
            tail = [line for line in text.splitlines() if line.strip()][-6:]
            for line in tail:
                self.say(f"    | {line[:300]}")
        if job.rows:
            status = job.outcome if job.outcome != "ok" else "missing (the process ended without it)"
            self.mark(job.rows, status)

    def mark(self, rows, status):
        have = R.read_records(self.records_path) + self.filled
        self.filled += R.fill_missing(have, rows, status)

    def run_pool(self, jobs: List[Job], stage_s: float, parallel: int, name: str):
        """Run ``jobs``, ``parallel`` at a time, all within ``stage_s`` seconds; a job not
        started in time is marked "not run (no time left)"."""
        end = time.monotonic() + stage_s
        queue, running = list(jobs), []
        if len(jobs) > 1:
            self.log(f"{name}: {len(jobs)} processes, {parallel} at a time, at most {stage_s:.0f} s")
        else:
            self.log(f"{name}: at most {stage_s:.0f} s")
        while queue or running:
            while queue and len(running) < parallel:
                job = queue[0]
                if end - time.monotonic() < job.min_s * self.scale:
                    break
                self.start(queue.pop(0))
                running.append(job)
            if not running:
                break
            time.sleep(0.1)
            for job in list(running):
                if job.proc.poll() is not None:
                    running.remove(job)
                    self.finish(job)
                elif time.monotonic() > end:
                    running.remove(job)
                    self.finish(job, timed_out=True, cap=stage_s)
        for job in queue:
            self.log(f"{job.label}: not run (no time left)")
            if job.rows:
                self.mark(job.rows, "not run (no time left)")

    def run_one(self, job: Job, cap: float):
        if cap < job.min_s * self.scale:
            self.log(f"{job.label}: not run ({cap:.0f} s left for it)")
            if job.rows:
                self.mark(job.rows, "not run (no time left)")
            return
        self.run_pool([job], cap, 1, job.label)

    # ------------------------------------------------------------------ stages
    def environment(self):
        meta = self.meta
        meta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        meta["commit"] = commit()
        meta["budget_s"] = self.args.budget_s
        meta["mode"] = "dry run (CPU)" if self.args.dry_run else self.args.mode
        smi = shutil.which("nvidia-smi")
        free_mib = None
        if smi:
            q = "name,memory.total,memory.free,driver_version,clocks.sm,clocks.mem"
            res = subprocess.run([smi, f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=30)
            first = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
            fields = [f.strip() for f in first.split(",")]
            if len(fields) >= 4:
                meta.update(gpu=fields[0], memory_total_mib=fields[1], memory_free_mib=fields[2],
                            driver=fields[3], clocks_sm_mhz=fields[4:5], clocks_mem_mhz=fields[5:6])
                try:
                    free_mib = float(fields[2])
                except ValueError:
                    pass
            else:
                meta["gpu"] = f"nvidia-smi: {(res.stdout + res.stderr).strip()[:200]}"
        else:
            meta["gpu"] = "none (no nvidia-smi)"
        meta["cpus"] = os.cpu_count()
        meta["python"] = sys.version.split()[0]
        for pkg in ("torch", "triton", "setuptools", "torch_geometric", "numpy", "pytest", "pytest-xdist", "ninja"):
            try:
                meta[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                meta[pkg] = None
        free_gib = free_mib / 1024 if free_mib else 16.0
        cpus = os.cpu_count() or 2
        # parallel workers: each holds a graph and its inputs (<= ~8 GiB), and a core of
        # its own beside the build's compilers
        self.parallel = max(1, min(8, cpus // 2, int(free_gib // 8)))
        if self.args.dry_run:  # its workers mostly sleep (injected compile time)
            self.parallel = 4
        self.smoke_edges = 40_000_000 if free_gib >= 60 else 20_000_000
        meta["parallel_workers"] = self.parallel
        meta["smoke_graph_edges"] = self.smoke_edges
        for k, v in meta.items():
            self.say(f"  {k}: {v}")

    def start_build(self):
        if self.args.dry_run:
            cmd = [self.py, "bench/gpu_build.py", "--dry-run"]
        else:
            cmd = [self.py, "bench/gpu_build.py"]
        jobs = max(2, (os.cpu_count() or 2) - self.parallel)
        self.build_job = Job("build", cmd, "build.log",
                             env={"MAX_JOBS": str(jobs), "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")})
        self.start(self.build_job)
        self.build_cap = CAPS["build"] * self.scale
        self.log(f"build: started in the background (CUDA extension, {jobs} compile jobs, at most {self.build_cap:.0f} s)")

    def wait_build(self, *later):
        """Wait for the build, within its cap and what the ``later`` stages must keep."""
        job = self.build_job
        if job is None:
            return False
        if job.ended is not None:
            return self.build_ok
        later = later or ("cuda-smoke", "peers", "tests", "report")
        wait = self.build_cap - (time.monotonic() - job.started)
        wait = min(wait, self.left() - sum(LEAST[k] for k in later) * self.scale)
        try:
            job.proc.wait(timeout=max(wait, 0.01))
            self.finish(job)
        except subprocess.TimeoutExpired:
            self.finish(job, timed_out=True, cap=self.build_cap)
        self.build_ok = job.outcome == "ok"
        return self.build_ok

    def bench_cmd(self, *extra):
        cmd = [self.py, "bench/bench_gpu.py", "--records", self.records_path, *extra]
        return cmd + (["--dry-run"] if self.args.dry_run else [])

    def smoke_job(self, backend, group):
        rows = [dict(kind="smoke", group=group, check=c, backend=backend, dtype=dt)
                for c, _, dt in R.smoke_rows(group, backend) if not (self.args.dry_run and dt != "float32")]
        cmd = [self.py, "bench/gpu_smoke.py", "--group", group, "--backend", backend, "--records",
               self.records_path, "--budget-s", str(int(60 * self.scale)), "--edges", str(self.smoke_edges),
               "--nodes", str(self.smoke_edges // 80)] + (["--dry-run"] if self.args.dry_run else [])
        return Job(f"smoke:{backend}:{group}", cmd, "smoke.log", rows, env={"CUDA_LAUNCH_BLOCKING": "1"})

    def part_job(self, part, graph, cap):
        rows = [dict(kind="bench", graph=graph, F=R.WIDTH, dtype=dt, op=op, impl=impl)
                for op, dt, impl in R.part_rows(part)]
        building = self.build_job is not None and self.build_job.proc.poll() is None
        notes = [f"--note=build_running={int(building)}"]  # the build's compilers share the CPU
        label = f"peers:{graph}" if part == "peers" else f"bench:{part}:{graph}"
        return Job(label, self.bench_cmd("--graph", graph, "--part", part, "--budget-s",
                                         str(max(1, int(cap - 10 * self.scale))), *notes),
                   "bench.log", rows, min_s=8)

    def check(self):
        self.log(f"GPU check, budget {self.args.budget_s:.0f} s (stages: build | triton smoke + compile, "
                 "headline, cuda, peers, tests)")
        self.stage("environment", self.environment)
        self.stage("build", self.start_build)
        self.write_report()
        self.stage("triton smoke and compilation", self.warm)
        self.write_report()
        for i, g in enumerate(GRAPH_ORDER):  # the headline: Triton and cuSPARSE
            rest = ["triton"] * (2 - i) + ["cuda-smoke", "peers", "tests", "report"]
            self.stage(f"bench:triton:{g}", self.part, "triton", g, CAPS["triton"][g], rest)
            self.write_report()
        self.stage("cuda", self.cuda)
        self.write_report()
        for i, g in enumerate(GRAPH_ORDER):
            self.stage(f"peers:{g}", self.part, "peers", g, CAPS["peers"][g], ["peers"] * (2 - i) + ["tests", "report"])
            self.write_report()
        self.stage("tests", self.tests)
        self.write_report(final=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        return 0

    def warm(self):
        """The Triton smoke check, and the Triton kernels and the compiled peers compiled
        ahead (Triton's and inductor's disk caches then serve the timed processes)."""
        warm = [Job(f"warm:{g}", self.bench_cmd("--graph", g, "--part", "triton", "--warm"), "bench.log", min_s=10)
                for g in reversed(GRAPH_ORDER)]  # the largest graphs take longest to generate
        smoke = [self.smoke_job("triton", grp) for grp in ("kl", "gat", "spmm", "edge", "max")]
        peers = [Job(f"warm-peer:{p}", self.bench_cmd("--warm-peer", p), "bench.log",
                     env={"TORCHINDUCTOR_COMPILE_THREADS": "2"}) for p in R.PEER_WARM]
        later = ["triton"] * 3 + ["cuda-smoke", "peers", "tests", "report"]
        self.run_pool(warm + smoke + peers, self.cap(CAPS["warm"], *later), self.parallel,
                      "triton smoke and compilation")

    def part(self, part, graph, cap_s, later):
        cap = self.cap(cap_s, *later)
        self.run_one(self.part_job(part, graph, cap), cap)

    def cuda(self):
        """The CUDA smoke check and the CUDA rows, once the build is in; else its rows say
        why there are none."""
        if self.wait_build():
            jobs = [self.smoke_job("cuda", grp) for grp in ("kl", "gat", "spmm", "edge", "max")]
            self.run_pool(jobs, self.cap(CAPS["cuda-smoke"], "cuda", "peers", "tests", "report"), self.parallel,
                          "cuda smoke")
            for i, g in enumerate(GRAPH_ORDER):
                self.stage(f"bench:cuda:{g}", self.part, "cuda", g, CAPS["cuda"][g],
                           ["cuda"] * (2 - i) + ["peers", "tests", "report"])
            return
        why = f"not built ({self.build_job.outcome if self.build_job else 'no build started'})"
        self.mark([dict(kind="smoke", group=grp, check=c, backend="cuda", dtype=dt)
                   for grp in R.SMOKE_GROUPS for c, _, dt in R.smoke_rows(grp, "cuda")
                   if not (self.args.dry_run and dt != "float32")], why)
        for g in GRAPH_ORDER:
            self.mark([dict(kind="bench", graph=g, F=R.WIDTH, dtype=dt, op=op, impl=impl)
                       for op, dt, impl in R.part_rows("cuda")], why)

    def tests(self):
        xdist = self.meta.get("pytest-xdist") is not None
        # each op's GPU cases sit in its test file, selected by marker; the CUDA ones only
        # where the extension was built
        runs = [("cuda", ["tests/ops", "tests/test_cuda_adapters.py"]),
                ("triton_gpu", ["tests/ops", "tests/test_triton_backend.py"])]
        if not self.build_ok:
            runs = runs[1:]
        for i, (marker, paths) in enumerate(runs):
            left = self.left() - LEAST["report"] * self.scale
            cap = left * (0.6 if i == 0 and len(runs) > 1 else 1.0)
            cmd = [self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "-m", marker, *paths]
            if xdist:
                cmd += ["-n", str(min(4, self.parallel))]
            self.run_one(Job(f"tests:{marker}", cmd, "tests.log", min_s=15), cap)

    def harness(self):
        """Call 2: the wider `fastalign bench --device cuda` sweep, the distillation epoch
        time, and K = 2 and 4 students on one GPU; builds first where the extension is gone
        (a fresh machine). A dry run takes the CPU and the tiny graph."""
        self.log(f"GPU harness, budget {self.args.budget_s:.0f} s")
        self.stage("environment", self.environment)
        dev = "cpu" if self.args.dry_run else "cuda"
        probe = subprocess.run([self.py, "-c", "import fastalign._C_cuda"], cwd=ROOT, capture_output=True,
                               env=self.worker_env("probe"))
        if self.args.dry_run or probe.returncode != 0:
            self.stage("build", self.start_build)
            self.wait_build("h-bench", "h-distill", "h-students", "h-students", "report")
        out, data_root = self.out, os.path.join(ROOT, ".data")
        # the dry run rehearses the steps and their files; compiling the CPU stand-ins'
        # peers (most of its time) is rehearsed by bench_gpu.py in call 1
        compile_flag = "--compile-dynamic"
        if self.args.dry_run:
            sizes, graphs, compile_flag = "tiny", "powerlaw-tiny", "--no-compile"
        else:
            sizes, graphs = "large", "arxiv-like,reddit-like"
            for name in ("Cora", "PubMed"):
                if os.path.isdir(os.path.join(data_root, name, "raw")):
                    graphs += "," + name.lower()
            graphs += ",products-like"
        cap = self.cap(CAPS["h-bench"], "h-distill", "h-students", "h-students", "report")
        self.run_one(Job("fastalign bench", [
            self.py, "-m", "fastalign.bench", "--suite", "all", "--device", dev, "--sizes", sizes,
            "--graphs", graphs, compile_flag, "--max-minutes", f"{max(cap - 30 * self.scale, 5) / 60:.2f}",
            "--json", os.path.join(out, "fastalign_bench_cuda.json"),
            "--plot", os.path.join(out, "fastalign_bench_cuda.png")], "fastalign_bench_cuda.txt",
            env={"FASTALIGN_DATA": data_root}), cap)
        data = "cora" if os.path.isdir(os.path.join(data_root, "Cora", "raw")) else "synthetic"
        self.run_one(Job("distill epoch time", [
            self.py, "bench/distill_epoch_time.py", "--dataset", data, "--root", data_root, "--students", "3",
            "--hidden", "64", "--device", dev, "--backends", "auto", "torch", "--rounds", "3", "--epochs", "2",
            "--json", os.path.join(out, "distill_epoch_time.json"), "--records", ""], "fastalign_bench_cuda.txt"),
            self.cap(CAPS["h-distill"], "h-students", "h-students", "report"))
        nodes = "2000" if self.args.dry_run else "200000"
        for i, k in enumerate((2, 4)):
            self.run_one(Job(f"students K={k}", [
                self.py, "bench/distributed_epoch.py", "--dataset", "synthetic", "--nodes", nodes,
                "--avg-degree", "20", "--students", str(k), "--epochs", "5", "--device", dev],
                "students_one_gpu.txt"), self.cap(CAPS["h-students"], *(["h-students"] * (1 - i)), "report"))
        self.log("done")
        return 0

    # ------------------------------------------------------------------ report
    def write_report(self, final=False):
        records = R.read_records(self.records_path) + self.filled
        with open(os.path.join(self.out, "bench_gpu.json"), "w") as f:
            json.dump(dict(meta=self.meta, records=records), f, indent=1)
        text = R.summarise(records, self.meta)
        with open(os.path.join(self.out, "bench_gpu.md"), "w") as f:
            f.write(text)
        if final:
            smoke = [r for r in records if r.get("kind") == "smoke"]
            passed = sum(r.get("status") == "PASS" for r in smoke)
            self.say("")
            self.say(f"smoke: {passed} of {len(smoke)} checks passed; "
                     + "; ".join(sorted({f"{r['check']} {r['backend']} {r['dtype']}: {r.get('status')}"
                                         for r in smoke if r.get("status") != "PASS"}))[:2000])
            self.say("")
            self.say("\n".join(R.goals([r for r in records if r.get("kind") == "bench"])))
            self.log(f"done: {len(records)} rows, results in {self.out}")


def commit() -> str:
    """HEAD (+dirty) from git where the tree has it, else the stamp written before the
    call (--stamp), else FASTALIGN_COMMIT, else "unknown"."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists(STAMP):
        with open(STAMP) as f:
            return f.read().strip() + " (stamped)"
    return os.environ.get("FASTALIGN_COMMIT", "unknown")


def stamp() -> int:
    """Write the commit into the tree (.gpu_check_commit, git-ignored): the device's copy
    has no .git. Carry it with the call: carry [".gpu_check_commit"]."""
    c = commit()
    if c == "unknown" or c.endswith("(stamped)"):
        print("gpu_check: no git checkout here to stamp", file=sys.stderr)
        return 2
    with open(STAMP, "w") as f:
        f.write(c + "\n")
    print(f"gpu_check: stamped {c} into {STAMP}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harness", dest="mode", action="store_const", const="harness", default="check",
                    help="call 2: the wider sweep (fastalign bench, distillation, students)")
    ap.add_argument("--stamp", action="store_true", help="write the commit into the tree and stop")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-time budget (420; harness 200)")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu_check_out"))
    ap.add_argument("--python", default=os.environ.get("PYTHON"), help="the interpreter of the workers")
    ap.add_argument("--dry-run", action="store_true", help="rehearse on the CPU (CPU backends stand in)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="scale every cap (dry runs)")
    ap.add_argument("--faults", default="", help="dry run: faults to inject (gpu_report.Faults)")
    args = ap.parse_args(argv)
    if args.stamp:
        return stamp()
    if args.faults and not args.dry_run:
        ap.error("--faults is for dry runs")
    if args.budget_s is None:
        args.budget_s = (420.0 if args.mode == "check" else 200.0) * args.time_scale
    c = Check(args)
    try:
        return c.check() if args.mode == "check" else c.harness()
    finally:
        c.log_file.close()


if __name__ == "__main__":
    sys.exit(main())
