"""Run the suites over the graphs: one record per (suite, graph, contender, mode)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from . import peers
from . import suites as S
from .graphs import GraphSpec, graph_specs
from .timing import peak_memory, prepare_cpu_memory_measurement, time_interleaved

BENCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

REAL_HIDDEN = 16  # --features real: a first layer's output width (Kipf & Welling's hidden size)

TIMING = {
    # warm-up calls, minimum / maximum timed calls, time budget per measurement (s), and
    # the turns the contenders of one comparison take (see timing.time_interleaved)
    "cpu": dict(warmup=2, min_reps=3, max_reps=30, budget_s=1.0, rounds=3),
    "cuda": dict(warmup=5, min_reps=10, max_reps=200, budget_s=0.5, rounds=3),
}


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (host or device)."""
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return "out of memory" in str(exc).lower()


def _free_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return None


def _check_fits(c: S.Contender, w: S.Workload, device: torch.device) -> None:
    """Skip a contender whose rough memory estimate cannot fit. On CPU the guard is
    strict (exhausting host memory gets the whole process killed); on CUDA an
    allocation failure is an exception, so we only skip the clearly impossible and
    otherwise try, recording an out-of-memory as ``oom``."""
    est = c.estimate(w)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if est > 2 * total:
            raise S.Skip(f"needs ~{est / 2**30:.0f} GiB, the device has {total / 2**30:.0f} GiB")
        return
    free = _free_bytes(device)
    if free is not None and est > 0.8 * free:
        raise S.Skip(f"needs ~{est / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")


def git_commit() -> Optional[str]:
    """The checkout's short commit (+dirty when tracked files differ), or None outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> Dict[str, Optional[str]]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import torch_geometric

        out["torch_geometric"] = torch_geometric.__version__
    except ImportError:
        out["torch_geometric"] = None
    import fastalign

    out["fastalign"] = fastalign.__version__
    return out


def _rel_err(a, b) -> Optional[float]:
    if a is None or b is None or a.shape != b.shape:
        return None
    a, b = a.double().cpu(), b.double().cpu()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _first_tensor(result):
    if isinstance(result, torch.Tensor):
        return result.detach()
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        return result[0].detach()
    return None


def _record_failure(rec: dict, exc: BaseException) -> None:
    if isinstance(exc, S.Skip):
        rec.update(status="skipped", reason=str(exc))
    elif is_oom(exc):
        rec.update(status="oom", reason="out of memory")
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        rec.update(status="error", reason=f"{type(exc).__name__}: {first}"[:300])


def _prepare(c: S.Contender, w: S.Workload, mode: str, rec: dict, reference):
    """Build contender ``c`` and make its first call (it compiles, fills caches, and its
    output is checked against the group's first): ``(fn or None, reference)``."""
    try:
        _check_fits(c, w, w.device)
        fn = c.build(w, mode)
        out = _first_tensor(fn())
        if reference is None:
            reference = out
            rec["reference"] = True
        else:
            rec["max_rel_err"] = _rel_err(out, reference)
        return fn, reference
    except Exception as exc:  # noqa: BLE001 - record and go on
        _record_failure(rec, exc)
        return None, reference


def _measure_group(prepared: List[tuple], device: torch.device, cfg: dict, measure_memory: bool) -> None:
    """Time the prepared ``(rec, fn)`` pairs in turns, then each one's peak memory."""
    cfg = dict(cfg)
    rounds = cfg.pop("rounds", 1)
    try:
        timings = time_interleaved([fn for _, fn in prepared], device, rounds=rounds, **cfg)
    except Exception as exc:  # noqa: BLE001 - one failure fails the turns: time each alone
        if len(prepared) == 1:
            _record_failure(prepared[0][0], exc)
            return
        for pair in prepared:
            _measure_group([pair], device, dict(cfg, rounds=1), measure_memory)
        return
    for (rec, fn), t in zip(prepared, timings):
        rec.update(median_ms=t.median_s * 1e3, min_ms=t.min_s * 1e3, reps=t.reps)
        if measure_memory:
            try:
                rec["peak_mem_bytes"] = peak_memory(fn, device)
            except Exception as exc:  # noqa: BLE001
                _record_failure(rec, exc)


def run_benchmarks(
    suites: Sequence[str],
    device="cpu",
    sizes: str = "small",
    *,
    graphs: Optional[Sequence[str]] = None,
    backends: Optional[Sequence[str]] = None,
    compile_peers: bool = True,
    features: Union[int, str] = 64,
    modes: Sequence[str] = S.MODES,
    timing: Optional[dict] = None,
    measure_memory: bool = True,
    progress: Optional[Callable[[str], None]] = None,
    command: Optional[str] = None,
    specs: Optional[List[GraphSpec]] = None,
    max_seconds: Optional[float] = None,
    on_graph_done: Optional[Callable[[dict], None]] = None,
    dtypes: Sequence[str] = ("float32",),
    root=None,
) -> dict:
    """Run ``suites`` on the graphs of ``sizes`` (optionally only those named in
    ``graphs``, in that order); returns ``{"meta": ..., "results": [...]}`` (see :mod:`.report`).

    ``max_seconds``: start no measurement after that long (the rest is recorded as
    skipped, "time limit"), for machines hired by the minute. ``on_graph_done(run)`` is
    called with the partial run after each graph (to save it as it goes). ``dtypes``:
    the feature dtypes to run each graph in (one graph build shared by all), so a
    bfloat16 run and its float32 counterpart are timed in one process. ``root``: where
    the Planetoid graphs are (default: ``$FASTALIGN_DATA``, else the user cache)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    for suite in suites:
        if suite not in S.SUITES:
            raise ValueError(f"unknown suite {suite!r}; choose from {S.SUITES}")
    for mode in modes:
        if mode not in S.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {S.MODES}")
    dtypes = list(dict.fromkeys(dtypes))
    for name in dtypes:
        if name not in BENCH_DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {sorted(BENCH_DTYPES)}")
    say = progress or (lambda msg: None)
    specs = list(specs) if specs is not None else graph_specs(sizes, root)
    if graphs:
        names = {s.name for s in specs}
        unknown = [g for g in graphs if g not in names]
        if unknown:
            raise ValueError(f"unknown graph(s) {unknown} for --sizes {sizes}; choose from {sorted(names)}")
        # in the order given: a caller with little time names the graphs that matter first
        by_name = {s.name: s for s in specs}
        specs = [by_name[g] for g in dict.fromkeys(graphs)]
    cfg = dict(TIMING[device.type])
    cfg.update(timing or {})
    cpu_mem_ok = prepare_cpu_memory_measurement() if device.type == "cpu" and measure_memory else None

    plan = {suite: S.contenders(suite, device, compile_peers=compile_peers, backends=backends) for suite in suites}
    steps_per_graph = sum(len(c) for c in plan.values()) * len(modes) * len(dtypes)
    total = steps_per_graph * len(specs)
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": command or " ".join(["fastalign", "bench"] + sys.argv[1:]),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
        "backends": S.available_backends(device),
        "sizes": sizes,
        "suites": list(suites),
        "modes": list(modes),
        "features": features,
        "dtypes": dtypes,
        "timing": cfg,
        "compile_options": dict(peers.COMPILE_OPTIONS) if compile_peers else None,
        "timing_method": "median wall time per call after warm-up (CUDA: synchronised); "
                         "the contenders of each comparison timed in turns",
        "memory_method": (
            "torch.cuda.max_memory_allocated delta over one call" if device.type == "cuda"
            else ("peak RSS delta over one call (malloc_trim, /proc/self/clear_refs, VmHWM)"
                  if cpu_mem_ok else "not measured")
        ),
        "skipped_graphs": [],
        "graphs": [],
    }
    if sizes == "scaling" and device.type == "cpu":
        from .scaling import machine

        say("measuring the memory bandwidth (STREAM copy and triad) ...")
        meta["machine"] = machine()
    results: List[dict] = []
    step = 0
    t_start = time.perf_counter()

    def note(msg):
        elapsed = time.perf_counter() - t_start
        say(f"[{step:>4}/{total} {int(elapsed) // 60:>3}:{int(elapsed) % 60:02d}] {msg}")

    for spec in specs:
        ok, why = spec.available()
        if not ok:
            meta["skipped_graphs"].append({"graph": spec.name, "reason": why})
            step += steps_per_graph
            note(f"{spec.name}: skipped ({why})")
            continue
        need = spec.num_edges * 8 * 6  # edge_index int64 + its CSR + sort buffers
        free = _free_bytes(torch.device("cpu"))
        if free is not None and need > 0.8 * free:
            why = f"needs ~{need / 2**30:.1f} GiB of host memory to build, {free / 2**30:.1f} GiB free"
            meta["skipped_graphs"].append({"graph": spec.name, "reason": why})
            step += steps_per_graph
            note(f"{spec.name}: skipped ({why})")
            continue
        t0 = time.perf_counter()
        note(f"{spec.name}: building the graph ...")
        try:
            edge_index, num_nodes = spec.load()
        except Exception as exc:  # noqa: BLE001 - a broken data file must not end the run
            meta["skipped_graphs"].append({"graph": spec.name, "reason": f"failed to load: {exc}"})
            step += steps_per_graph
            continue
        width, out = (spec.width or 64, REAL_HIDDEN) if features == "real" else (features, None)
        w = S.Workload(spec.name, edge_index, num_nodes, device, features=width, out_features=out,
                       dtype=BENCH_DTYPES[dtypes[0]])
        try:
            graph = w.graph  # the CSR and its transpose, built once for every dtype
        except Exception as exc:  # noqa: BLE001
            reason = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"
            meta["skipped_graphs"].append({"graph": spec.name, "reason": f"graph build failed: {reason}"})
            step += steps_per_graph
            w.release()
            continue
        meta["graphs"].append({"graph": spec.name, "num_nodes": num_nodes, "num_edges": w.num_edges,
                               "kind": spec.kind, "build_s": round(time.perf_counter() - t0, 2)})
        for dtype_name in dtypes:
            if dtype_name != dtypes[0]:
                w.release()  # the previous dtype's tensors go before this one's are made
                w = S.Workload(spec.name, edge_index, num_nodes, device, features=width, out_features=out,
                               dtype=BENCH_DTYPES[dtype_name], _cache={"graph": graph})
            for suite, contenders in plan.items():
                for mode in modes:
                    reference = None
                    prepared = []  # (rec, fn) of the contenders that built and ran
                    for c in contenders:
                        step += 1
                        rec = {
                            "suite": suite, "graph": spec.name, "num_nodes": num_nodes,
                            "num_edges": w.num_edges, "features": width, "dtype": dtype_name,
                            "mode": mode, "contender": c.name, "kind": c.kind, "backend": c.backend,
                            "compiled": c.compiled, "status": "ok", "median_ms": None,
                            "min_ms": None, "reps": 0, "peak_mem_bytes": None,
                            "max_rel_err": None, "reason": None,
                        }
                        if (meta.get("machine") or {}).get("huge_pages", {}).get("in_use"):
                            rec["huge_pages"] = True  # its own curve in the scaling tables
                        results.append(rec)
                        label = f"{suite} | {spec.name} | {dtype_name} | {mode} | {c.name}"
                        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                            rec.update(status="skipped", reason=f"time limit ({max_seconds:.0f} s) reached")
                            continue
                        note(f"{label}: first call ...")
                        fn, reference = _prepare(c, w, mode, rec, reference)
                        if fn is not None:
                            prepared.append((rec, fn))
                        else:
                            note(f"{label}: {rec['status']} ({rec['reason']})")
                    if prepared:
                        note(f"{suite} | {spec.name} | {dtype_name} | {mode}: timing "
                             f"{len(prepared)} contenders in turns ...")
                        _measure_group(prepared, device, cfg, measure_memory)
                    for rec, _ in prepared:
                        label = f"{suite} | {spec.name} | {dtype_name} | {mode} | {rec['contender']}"
                        if rec["status"] == "ok":
                            mem = rec["peak_mem_bytes"]
                            mem_s = f", peak {mem / 2**20:.1f} MiB" if mem is not None else ""
                            note(f"{label}: {rec['median_ms']:.3f} ms{mem_s}")
                        else:
                            note(f"{label}: {rec['status']} ({rec['reason']})")
                    prepared = reference = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        w.release()
        if compile_peers:
            try:
                import torch._dynamo as dynamo

                dynamo.reset()  # drop graphs that hold this workload's tensors
            except Exception:  # noqa: BLE001
                pass
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if on_graph_done is not None:
            meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
            on_graph_done({"meta": meta, "results": results, "partial": True})
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return {"meta": meta, "results": results}
