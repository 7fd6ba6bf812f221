"""The GPU check's plan and report: which rows each worker process measures, and the
tables made from the records that came back.

Standard library only: bench/gpu_check.py imports it before it knows whether torch (or
the GPU) works, and it must still write the report when every worker crashed.

A record is one JSON object per line of ``records.jsonl``: ``kind`` ("bench" or
"smoke"), the row's key (bench: graph, F, dtype, op, impl; smoke: group, check, backend,
dtype) and either its figures (bench: ``ms`` per call, ``ms_b2b`` per call of k calls
back to back between one pair of CUDA events, ``peak_bytes``, ``gbs``, ``rel_err``;
smoke: ``status`` PASS / FAIL and ``rel_err``) or a ``status`` saying why there is none:
``OOM``, ``skipped (time)``, ``skipped (memory)``, ``error: ...``, or one the check
itself writes for a whole process: ``crashed (...)``, ``timed out (...)``, ``not built``,
``not run (...)``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

WIDTH = 64  # F of every goal
DTYPES = ("float32", "bfloat16")

# name -> (nodes, edges) of the power-law graphs (docs/design.md's recipe); the dry run's
# stand-ins keep roughly the mean degrees (14, 490, 50) at a size the CPU runs in seconds
GRAPHS = {
    "arxiv": (169_343, 2_332_486),
    "reddit": (232_965, 114_615_892),
    "products": (2_449_029, 123_718_280),
}
DRY_GRAPHS = {"arxiv": (3_000, 42_000), "reddit": (300, 120_000), "products": (4_000, 200_000)}

TRITON, CUDA = "fastalign[triton]", "fastalign[cuda]"
OURS = (TRITON, CUDA)
CUSPARSE, SPARSE_MM = "torch.sparse.mm (cuSPARSE)", "torch.sparse.mm"
ONE_ROW = "fastalign[triton] one row per program"
WARPS8 = "fastalign[triton] 8 warps"
ATOMIC = "fastalign[triton] atomic bwd"


def part_rows(part: str) -> List[Tuple[str, str, str]]:
    """(op, dtype, impl) that one graph's ``part`` measures, most important first (a
    process cut short loses the end of its list).

    ``triton``: the Triton backend and cuSPARSE, the headline, then the Triton variants
    (one row per program instead of packed rows, 8 warps for the heaviest kernels, the
    atomic structure-KL backward); ``cuda``: the CUDA backend's rows; ``peers``: compiled
    and eager PyG (float32, the peers' reference points)."""
    if part in ("triton", "cuda"):
        ours = TRITON if part == "triton" else CUDA
        peer = part == "triton"
        rows = []
        for dt in DTYPES:
            rows += [("spmm_fwd", dt, ours)] + ([("spmm_fwd", dt, CUSPARSE)] if peer else [])
        rows += [("spmm_fwd_bwd", "float32", ours)] + ([("spmm_fwd_bwd", "float32", SPARSE_MM)] if peer else [])
        rows += [("skl_fwd_bwd", dt, ours) for dt in DTYPES]
        rows += [("gcn_fwd_bwd", "float32", ours), ("gat_fwd_bwd", "float32", ours)]
        rows += [("spmm_fwd_bwd", "bfloat16", ours)] + ([("spmm_fwd_bwd", "bfloat16", SPARSE_MM)] if peer else [])
        rows += [("spmm_max_fwd", dt, ours) for dt in DTYPES]
        if peer:
            rows += [("spmm_fwd", dt, ONE_ROW) for dt in DTYPES]
            rows += [("spmm_max_fwd", dt, WARPS8) for dt in DTYPES]
            rows += [("skl_fwd_bwd", dt, v) for v in (WARPS8, ATOMIC) for dt in DTYPES]
        return rows
    if part == "peers":
        return [  # the goals' peers first
            ("gcn_fwd_bwd", "float32", "PyG GCNConv compiled"),
            ("skl_fwd_bwd", "float32", "PyG-style loss compiled"),
            ("gat_fwd_bwd", "float32", "PyG GATConv compiled"),
            ("gcn_fwd_bwd", "float32", "PyG GCNConv eager"),
            ("skl_fwd_bwd", "float32", "PyG-style loss eager"),
            ("gat_fwd_bwd", "float32", "PyG GATConv eager"),
            ("spmm_fwd", "float32", "compile(gather+index_add_)"),
        ]
    raise ValueError(f"unknown part {part!r}")


# the smoke check's groups of checks (one process per group and backend)
SMOKE_GROUPS = {
    "spmm": ("spmm sum fwd+bwd", "spmm mean fwd+bwd", "gcn_aggregate fwd+bwd"),
    "max": ("spmm max fwd+bwd",),
    "edge": ("edge_similarity l1", "edge_softmax fwd+bwd"),
    "kl": ("structure_kl l1 fwd+bwd",),
    "gat": ("gat_aggregate 8 heads fwd+bwd",),
}
PEER_WARM = ("gather_index_add", "gcn", "gat", "loss")  # compiled peers, compiled ahead on a small graph


def smoke_rows(group: str, backend: str) -> List[Tuple[str, str, str]]:
    return [(check, backend, dt) for dt in DTYPES for check in SMOKE_GROUPS[group]]


def bench_key(r: dict) -> tuple:
    return (r["graph"], r["F"], r["dtype"], r["op"], r["impl"])


def smoke_key(r: dict) -> tuple:
    return (r["check"], r["backend"], r["dtype"])


# --------------------------------------------------------------------------- records
def read_records(path: str) -> List[dict]:
    """The records of ``path`` (a line cut short by a killed process is skipped)."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def append_record(path: str, rec: dict) -> None:
    """One line, written and flushed at once: a crash right after keeps it."""
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fill_missing(records: List[dict], planned: Iterable[dict], status: str) -> List[dict]:
    """Records for the planned rows that have none, with ``status`` (what became of the
    process that was to measure them)."""
    keyed = [r for r in records if r.get("kind") in ("bench", "smoke")]
    have = {(r["kind"], bench_key(r) if r["kind"] == "bench" else smoke_key(r)) for r in keyed}
    out = []
    for p in planned:
        key = (p["kind"], bench_key(p) if p["kind"] == "bench" else smoke_key(p))
        if key not in have:
            out.append(dict(p, status=status))
            have.add(key)
    return out


# --------------------------------------------------------------------------- tables
def _ms(r: Optional[dict]) -> Optional[float]:
    """A row's time: back-to-back where measured (device time, no per-call host cost),
    else per call."""
    if not r:
        return None
    return r.get("ms_b2b") or r.get("ms")


def _fmt(v: Optional[float], spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def bench_table(records: List[dict]) -> List[str]:
    idx = {bench_key(r): r for r in records}
    lines = ["| graph | dtype | op | implementation | ms per call | ms back to back | peak MiB | "
             "vs peer (b2b) | GB/s (model) | of copy BW | rel err |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    peer_of = {op: peer for op, _, peer, *_ in GOALS}  # each op's goal peer
    for r in records:
        ratio = ""
        if r["impl"].startswith("fastalign") and r["op"] in peer_of:
            peer = idx.get((r["graph"], r["F"], r["dtype"], r["op"], peer_of[r["op"]])) or \
                idx.get((r["graph"], r["F"], "float32", r["op"], peer_of[r["op"]]))
            if _ms(peer) and _ms(r):
                ratio = f"{_ms(r) / _ms(peer):.2f}x"
        ms = _fmt(r.get("ms"), ".3f") or r.get("status", "")
        lines.append(
            f"| {r['graph']} | {r['dtype']} | {r['op']} | {r['impl']} | {ms} | {_fmt(r.get('ms_b2b'), '.3f')} | "
            f"{_fmt(r['peak_bytes'] / 2**20 if r.get('peak_bytes') is not None else None, '.0f')} | {ratio} | "
            f"{_fmt(r.get('gbs'), '.0f')} | {_fmt(100 * r['frac_copy'] if r.get('frac_copy') else None, '.0f')} | "
            f"{_fmt(r.get('rel_err'), '.1e')} |")
    return lines


# (op, our dtype, peer impl, peer dtype, graphs, time ratio at most, peak-memory ratio at most)
GOALS = (
    ("spmm_fwd", "float32", CUSPARSE, "float32", ("reddit", "products"), 0.75, None),
    ("spmm_fwd", "float32", CUSPARSE, "float32", ("arxiv",), 1.0, None),
    ("spmm_fwd", "bfloat16", CUSPARSE, "float32", ("arxiv", "reddit", "products"), 0.5, None),
    ("spmm_fwd_bwd", "float32", SPARSE_MM, "float32", ("arxiv", "reddit", "products"), 0.4, None),
    ("gcn_fwd_bwd", "float32", "PyG GCNConv compiled", "float32", ("arxiv", "reddit", "products"), 0.5, None),
    ("skl_fwd_bwd", "float32", "PyG-style loss compiled", "float32", ("arxiv", "reddit", "products"), 0.25, 0.10),
    ("skl_fwd_bwd", "bfloat16", "PyG-style loss compiled", "float32", ("arxiv", "reddit", "products"), 0.25, 0.10),
    ("gat_fwd_bwd", "float32", "PyG GATConv compiled", "float32", ("arxiv", "reddit", "products"), 0.333, 0.10),
)


def _why(rows: Sequence[Optional[dict]], names: Sequence[str]) -> str:
    parts = []
    for name, r in zip(names, rows):
        if r is None:
            parts.append(f"{name} missing")
        elif not r.get("ms"):
            parts.append(f"{name} {r.get('status', 'no figure')}")
    return "; ".join(parts)


def goals(records: List[dict], width: int = WIDTH) -> List[str]:
    """One line per goal and graph at F = ``width``: the faster of our backends (by the
    back-to-back time) against the peer: met / missed, or why it was not measured (the
    status of each row that has no figure: crashed, timed out, OOM, not built...)."""
    idx = {bench_key(r): r for r in records}
    lines = [f"| op | dtype | graph | ours (b2b) | peer (b2b) | time ratio | per-call ratio | goal | "
             f"peak ratio | goal | result |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for op, dtype, peer_impl, peer_dtype, graphs, t_goal, m_goal in GOALS:
        for graph in graphs:
            ours_rows = [idx.get((graph, width, dtype, op, impl)) for impl in OURS]
            ours = [r for r in ours_rows if r and r.get("ms")]
            peer = idx.get((graph, width, peer_dtype, op, peer_impl))
            mine = min(ours, key=_ms) if ours else None
            m_txt = "" if m_goal is None else f"{m_goal:.0%}"
            if mine is None or not (peer and peer.get("ms")):
                why = _why(ours_rows, OURS) if mine is None else _why([peer], [peer_impl])
                lines.append(f"| {op} | {dtype} | {graph} | | | | | {t_goal}x | | {m_txt} | "
                             f"not measured ({why}) |")
                continue
            t = _ms(mine) / _ms(peer)
            t_call = mine["ms"] / peer["ms"]
            ok = t <= t_goal
            mem = ""
            if m_goal is not None:
                if mine.get("peak_bytes") is not None and peer.get("peak_bytes"):
                    m = mine["peak_bytes"] / peer["peak_bytes"]
                    mem, ok = f"{m:.1%}", ok and m <= m_goal
                else:
                    mem, ok = "n/a", False
            lines.append(f"| {op} | {dtype} | {graph} | {mine['impl']} {_ms(mine):.3f} ms | {_ms(peer):.3f} ms | "
                         f"{t:.2f}x | {t_call:.2f}x | {t_goal}x | {mem} | {m_txt} | {'met' if ok else 'missed'} |")
    return lines


def backend_choice(records: List[dict]) -> List[str]:
    """Triton against the CUDA kernels, op by op: cuda's time over triton's on every
    (graph, F, dtype) where both ran, their geometric mean, and the faster backend."""
    backend_of = {TRITON: "triton", CUDA: "cuda"}
    times: Dict[tuple, dict] = {}
    for r in records:
        if _ms(r) and r["impl"] in backend_of:
            times.setdefault((r["op"], r["graph"], r["F"], r["dtype"]), {})[backend_of[r["impl"]]] = _ms(r)
    ratios: Dict[str, List[float]] = {}
    for (op, *_), t in times.items():
        if "triton" in t and "cuda" in t:
            ratios.setdefault(op, []).append(t["cuda"] / t["triton"])
    if not ratios:
        return []
    lines = ["| op | rows | geometric mean | range | faster |", "| --- | ---: | ---: | --- | --- |"]
    for op, values in ratios.items():
        mean = statistics.geometric_mean(values)
        lines.append(f"| {op} | {len(values)} | {mean:.2f} | {min(values):.2f} to {max(values):.2f} | "
                     f"{'cuda' if mean < 1 else 'triton'} |")
    return lines


def variants(records: List[dict]) -> List[str]:
    """The Triton variants against the default launch (below 1: the variant is faster):
    the figures that decide the packed-rows rule, num_warps of the heavy kernels and the
    structure-KL backward."""
    idx = {bench_key(r): r for r in records}
    lines = ["| graph | dtype | op | variant | variant / default |", "| --- | --- | --- | --- | ---: |"]
    for r in records:
        if r["impl"] in (ONE_ROW, WARPS8, ATOMIC) and _ms(r):
            base = idx.get((r["graph"], r["F"], r["dtype"], r["op"], TRITON))
            if _ms(base):
                lines.append(f"| {r['graph']} | {r['dtype']} | {r['op']} | {r['impl'][len(TRITON) + 1:]} | "
                             f"{_ms(r) / _ms(base):.2f} |")
    return lines if len(lines) > 2 else []


def smoke_table(records: List[dict]) -> List[str]:
    lines = ["| check | backend | dtype | result | rel err | tol |", "| --- | --- | --- | --- | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['check']} | {r['backend']} | {r['dtype']} | {r.get('status', '')} | "
                     f"{_fmt(r.get('rel_err'), '.1e')} | {_fmt(r.get('tol'), '.0e')} |")
    return lines


def summarise(records: List[dict], meta: dict) -> str:
    """The markdown report: the environment, the goals (first: the figures that matter),
    every measured row, the smoke check, and the comparisons that set defaults."""
    bench = [r for r in records if r.get("kind") == "bench"]
    smoke = [r for r in records if r.get("kind") == "smoke"]
    copy = [r["copy_gbs"] for r in records if r.get("kind") == "copy" and r.get("copy_gbs")]
    out = ["# fastalign GPU check", ""]
    out += [f"- {k}: {v}" for k, v in meta.items()]
    if copy:
        out.append(f"- device copy bandwidth: {max(copy):.0f} GB/s (bytes read + written)")
    out += ["", f"## Goals (F = {WIDTH}; ours: the faster of the Triton and CUDA backends)", ""]
    out += goals(bench)
    out += ["", "## Every row", ""] + bench_table(bench)
    choice = backend_choice(bench)
    if choice:
        out += ["", "## Triton against CUDA (cuda ms / triton ms; below 1: cuda faster)", ""] + choice
    var = variants(bench)
    if var:
        out += ["", "## Triton variants", ""] + var
    plans = [r for r in records if r.get("kind") == "plan"]
    if plans:
        out += ["", "## Triton segment plans (configs per op in bench_gpu.json)", "",
                "| graph | side | split | max degree | mean degree | long rows | segments |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        out += [f"| {p['graph']} | {p['side']} | {p['split']} | {p['max_degree']} | {p['avg_degree']:.1f} | "
                f"{p['long_rows']} | {p['segments']} |" for p in plans]
    out += ["", "## Smoke check (every op against cuSPARSE or the float64 reference)", ""] + smoke_table(smoke)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- dry run
class Faults:
    """What a dry run of the check injects into its workers, to show that the report
    survives it: ``GPU_CHECK_FAULTS`` is a comma list of

    * ``compile_s=S``: every Triton kernel specialisation costs S seconds the first time
      any process launches it (a shared marker folder, ``GPU_CHECK_FAKE_CACHE``, stands
      in for Triton's on-disk cache);
    * ``build_s=S`` / ``build=fail``: the build takes S seconds / fails;
    * ``crash=cuda`` (or ``triton``): a process of that backend dies of SIGSEGV at its
      first row, as an illegal memory access ends a CUDA process;
    * ``oom=IMPL``: the row of implementation IMPL runs out of memory;
    * ``hang=STAGE``: the worker of that stage ("peers:reddit", "smoke:cuda:kl", ...)
      never returns.

    Every sleep is scaled by ``GPU_CHECK_TIME_SCALE`` (the check's own caps are too)."""

    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.items: Dict[str, List[str]] = {}
        for part in env.get("GPU_CHECK_FAULTS", "").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                self.items.setdefault(k.strip(), []).append(v.strip())
        self.scale = float(env.get("GPU_CHECK_TIME_SCALE", "1"))
        self.stage = env.get("GPU_CHECK_STAGE", "")
        self.cache = env.get("GPU_CHECK_FAKE_CACHE")

    def __bool__(self):
        return bool(self.items)

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds * self.scale)

    def at_start(self) -> None:
        if self.stage and self.stage in self.items.get("hang", []):
            self.sleep(1e6)

    def crash(self, backend: str) -> None:
        if backend in self.items.get("crash", []):
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)

    def oom(self, impl: str) -> bool:
        return impl in self.items.get("oom", [])

    def compile(self, key: str, kernels: int = 2) -> None:
        if "compile_s" not in self.items or not self.cache:
            return
        marker = os.path.join(self.cache, "".join(c if c.isalnum() else "_" for c in key))
        if not os.path.exists(marker):
            self.sleep(float(self.items["compile_s"][0]) * kernels)
            open(marker, "w").close()
