"""Timing and peak memory of one benchmarked call.

Timing: a few warm-up calls (the first one also compiles, fills caches, builds
transposes), then repeated calls until ``min_reps`` calls and ``budget_s`` seconds have
passed (at most ``max_reps``); each call is timed on its own with ``time.perf_counter``
and, on CUDA, a ``torch.cuda.synchronize()`` before and after, so that the time is the
wall time a user waits for the result. We report the median (and the minimum). The
contenders of one comparison take turns (``time_interleaved``: A B C, A B C, ...), so a
drift of the machine between them moves all their times, not their ratios. With
``cuda_events=True`` a CUDA call is timed by a pair of CUDA events around it instead
(the device time of the call's kernels, without the host's synchronisation latency:
the figure for kernels of a fraction of a millisecond, where a ~10 us sync would bias
ratios towards 1).

Peak memory: the extra memory one call needs above what was allocated before it
(inputs, weights, cached graphs and normalisations are not counted; the output is),
measured in a separate call after the timing:

* CUDA: ``torch.cuda.reset_peak_memory_stats()``, then
  ``max_memory_allocated() - memory_allocated()`` (before the call): exact, from the
  caching allocator's own accounting.
* CPU: PyTorch has no CPU allocator statistics, so we use the kernel's own peak RSS
  ("high-water mark"): ``malloc_trim(0)`` first, so that memory glibc kept from earlier
  calls (free heap pages, including those in the middle of the heap) goes back to the
  OS and the baseline is the live memory; then reset the high-water mark by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), run the call, read ``VmHWM`` from
  ``/proc/self/status`` and subtract the RSS before the call. Inside the call, freed
  memory that glibc keeps is reused by later allocations without raising RSS, so the
  figure is the peak of what the call held (an upper bound where the heap fragments),
  and it includes every allocation (MKL's or a C++ kernel's scratch too), not only
  tensors. glibc's allocator is left in its default (dynamic-threshold) mode, so timings
  see what users see. Where ``clear_refs`` cannot be written, CPU memory is reported as
  unavailable (None).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

_CPU_MEMORY_STATE = {"prepared": False, "ok": None, "libc": None}


def _libc():
    if _CPU_MEMORY_STATE["libc"] is None:
        try:
            _CPU_MEMORY_STATE["libc"] = ctypes.CDLL("libc.so.6")
        except OSError:
            _CPU_MEMORY_STATE["libc"] = False
    return _CPU_MEMORY_STATE["libc"] or None


def prepare_cpu_memory_measurement() -> bool:
    """True where CPU peak memory can be measured (Linux: /proc/self/clear_refs
    writable and /proc/self/status readable)."""
    state = _CPU_MEMORY_STATE
    if state["prepared"]:
        return bool(state["ok"])
    state["prepared"] = True
    try:
        _reset_hwm()
        _read_status("VmHWM")
        ok = True
    except OSError:
        ok = False
    state["ok"] = ok
    return ok


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _read_status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_s: float
    min_s: float
    reps: int


def _timing(times: List[float]) -> Timing:
    return Timing(statistics.median(times), min(times), len(times))


def time_call(fn: Callable[[], object], device, **options) -> Timing:
    """Median (and minimum) time of ``fn()`` in seconds; ``options`` are
    :func:`sample_calls`' (``budget_s`` counts the measured calls' time)."""
    return _timing(sample_calls(fn, device, **options))


def sample_calls(
    fn: Callable[[], object],
    device,
    *,
    warmup: int = 2,
    min_reps: int = 5,
    max_reps: int = 100,
    budget_s: float = 1.0,
    cuda_events: bool = False,
) -> List[float]:
    """The seconds of each timed call of ``fn()`` (after ``warmup`` untimed ones), until
    ``min_reps`` calls and ``budget_s`` seconds of them, at most ``max_reps``."""
    device = torch.device(device)
    events = cuda_events and device.type == "cuda"
    for _ in range(max(warmup, 0)):
        fn()
    synchronize(device)
    times: List[float] = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < budget_s):
        if events:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
            continue
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    device,
    *,
    rounds: int = 3,
    warmup: int = 2,
    min_reps: int = 5,
    max_reps: int = 100,
    budget_s: float = 1.0,
    cuda_events: bool = False,
) -> List[Timing]:
    """Each of ``fns`` timed in ``rounds`` turns (A B C, A B C, ...), each turn a
    ``1/rounds`` share of the reps and budget after one warm-up call (``warmup`` in the
    first turn). Contenders measured one after another each see a different stretch of
    the machine's state (its clock, a neighbour's load, the page cache); taking turns
    spreads that over all of them, so their ratios stay put where the absolute times
    drift."""
    rounds = max(int(rounds), 1)
    share = dict(min_reps=max(-(-min_reps // rounds), 1), max_reps=max(-(-max_reps // rounds), 1),
                 budget_s=budget_s / rounds, cuda_events=cuda_events)
    times: List[List[float]] = [[] for _ in fns]
    for turn in range(rounds):
        for k, fn in enumerate(fns):
            times[k] += sample_calls(fn, device, warmup=warmup if turn == 0 else 1, **share)
    return [_timing(t) for t in times]


def time_back_to_back(fn: Callable[[], object], device, calls: int) -> float:
    """Seconds per call of ``calls`` calls of ``fn()`` issued back to back, between one
    pair of CUDA events on CUDA (one synchronisation at the end; elsewhere the wall time
    of the loop). On a kernel of a fraction of a millisecond, a call timed on its own
    carries the host's launch and validation cost; back to back, the host runs ahead and
    the figure approaches the device time. Warm up first (``time_call`` does)."""
    device = torch.device(device)
    calls = max(int(calls), 1)
    synchronize(device)
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def peak_memory(fn: Callable[[], object], device) -> Optional[int]:
    """Extra bytes one call of ``fn()`` needs at its peak (see the module docstring);
    None where it cannot be measured."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return max(int(peak), 0)
    if device.type != "cpu" or not prepare_cpu_memory_measurement():
        return None
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    base = _read_status("VmRSS")
    _reset_hwm()
    out = fn()
    peak = _read_status("VmHWM") - base
    del out
    return max(int(peak), 0)
