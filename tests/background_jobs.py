"""Long, self-contained commands of the test suite (the nvcc compile of each CUDA kernel
file, the g++ compile of the CUDA glue, the install of the sdist into a fresh
environment) started in the background as soon as the tests are collected, one at a
time, so that they run on the machine's second core while the rest of the suite runs on
the first; the tests that own them wait for their result.

conftest.py starts the jobs the collected tests need (a module's ``BACKGROUND_JOBS``,
or a test's own, declared with ``needs``); a test calls ``result(key)``. A job that was
not started (its test runs alone, say) runs when first asked for.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time
from typing import Callable, Dict, Optional, Sequence

_POOL: Optional[concurrent.futures.ThreadPoolExecutor] = None
_JOBS: Dict[str, concurrent.futures.Future] = {}
_MAKERS: Dict[str, Callable[[], Sequence[str]]] = {}
_LOCK = threading.Lock()
_RUNNING: Dict[str, subprocess.Popen] = {}
_STOPPED = threading.Event()
_TIMES: Dict[str, tuple] = {}  # key -> (start, end) on time.monotonic(), for the run's summary


def needs(*keys: str):
    """Decorator: the test waits for jobs ``keys`` (started only where it is collected,
    whatever else its module holds)."""

    def mark(test):
        test.background_jobs = keys
        return test

    return mark


def jobs_of(item) -> Sequence[str]:
    """The jobs a collected test needs: its own (``needs``), else its module's."""
    own = getattr(getattr(item, "function", None), "background_jobs", None)
    return own if own is not None else getattr(item.module, "BACKGROUND_JOBS", ())


def register(key: str, make_command: Callable[[], Sequence[str]]) -> None:
    """Declare job ``key``; ``make_command()`` returns its argv, or ``(argv, env)`` for an
    environment of its own (it may prepare files: it runs on the job's worker)."""
    _MAKERS[key] = make_command


def _run(key: str) -> subprocess.CompletedProcess:
    if _STOPPED.is_set():
        raise RuntimeError("the test run ended before this job ran")
    start = time.monotonic()
    made = _MAKERS[key]()
    cmd, env = (list(made[0]), made[1]) if isinstance(made, tuple) else (list(made), None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _RUNNING[key] = proc
    try:
        out, err = proc.communicate()
    finally:
        _RUNNING.pop(key, None)
        _TIMES[key] = (start, time.monotonic())
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def timeline(since: float):
    """(key, start, end) of the jobs that ran, in seconds after ``since`` (monotonic)."""
    return sorted((key, a - since, b - since) for key, (a, b) in _TIMES.items())


def start(keys) -> None:
    """Queue the jobs ``keys`` (in order) on one background worker."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tests-bg")
        for key in keys:
            if key in _MAKERS and key not in _JOBS:
                _JOBS[key] = _POOL.submit(_run, key)


def result(key: str) -> subprocess.CompletedProcess:
    """The finished job ``key`` (run now if it was never started)."""
    with _LOCK:
        future = _JOBS.get(key)
    if future is None:
        return _run(key)
    return future.result()


def shutdown() -> None:
    """Cancel what has not started and stop what runs (the test run is over)."""
    _STOPPED.set()
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
    for proc in list(_RUNNING.values()):
        proc.kill()
