"""How cost grows with the graph, and how far each op is from the machine's limit.

``fastalign bench --sizes scaling`` runs the chosen suites on power-law graphs of 10^4 to
10^8 edges and on block models numbered at random, at a fixed mean degree (10 and 50),
each contender until it runs out of memory or of the time limit (a peer that cannot run
a size is a result: its row says ``oom`` or ``skipped``). This module holds what turns
those rows into the answers:

* the graphs (:func:`fastalign.bench.graphs.scaling_specs`), generated in chunks into
  one preallocated ``[2, E]`` tensor, so the largest need no E-sized temporaries beyond
  the edge list itself;
* the machine's memory bandwidth, measured in the same process (a STREAM-style copy and
  triad over arrays far larger than the last-level cache, at 1 thread and at torch's
  thread count) and its cache sizes (from sysfs);
* the bytes an aggregation must move: *compulsory* (the CSR, each input row read once,
  each output row written once) and *no reuse* (every edge gathers its source row from
  memory), and from them the achieved bandwidth and its fraction of the measured peak;
* the slope of time and of peak memory against the number of edges (log-log), per
  contender: 1.0 is linear.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import settings
from .suites import SUITES  # their order is the tables' and the figure's

# ---------------------------------------------------------------------- the machine
def stream_bandwidth(threads: Optional[int] = None, mib: int = 512, repeats: int = 5) -> Dict[str, float]:
    """Memory bandwidth in GB/s (10^9 bytes per second), best of ``repeats``: ``copy``
    (``b = a``: 2 arrays' bytes) and ``triad`` (``a = b + s c``: 3 arrays' bytes), float32
    arrays of ``mib`` MiB each, far above any last-level cache; on ``threads`` threads
    (default: torch's current count), restored afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        n = mib * 2**20 // 4
        a = torch.ones(n)
        b = torch.ones(n)
        c = torch.ones(n)

        def best(fn, arrays):
            fn()  # first touch
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return arrays * n * 4 / min(times) / 1e9

        copy = best(lambda: b.copy_(a), 2)
        triad = best(lambda: torch.add(b, c, alpha=3.0, out=a), 3)
        return {"threads": torch.get_num_threads(), "copy_GBps": round(copy, 2), "triad_GBps": round(triad, 2)}
    finally:
        torch.set_num_threads(before)


def cache_sizes() -> Dict[str, int]:
    """The CPU's data and unified cache sizes in bytes by level (``L1d``, ``L2``, ``L3``),
    from sysfs (empty where it is not readable)."""
    out: Dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
        value = int(size[:-1] if size[-1] in "KMG" else size) * mult
        out[f"L{level}{'d' if kind == 'Data' else ''}"] = value
    return out


def machine(threads: Sequence[int] = (1,)) -> dict:
    """The measured bandwidth (at each of ``threads`` and at torch's count), the caches and
    whether large tensors sit on huge pages."""
    counts = list(dict.fromkeys(list(threads) + [torch.get_num_threads()]))
    return {"stream": [stream_bandwidth(t) for t in counts], "caches": cache_sizes(),
            "cpu_count": os.cpu_count(), "huge_pages": huge_pages()}


def huge_pages() -> Dict[str, object]:
    """Whether torch's large CPU tensors are backed by 2 MiB pages: the kernel's
    transparent huge page ``mode`` (``always``, ``madvise`` or ``never``, from sysfs; None
    where unreadable), torch's own switch ``THP_MEM_ALLOC_ENABLE=1`` (``torch_allocator``:
    its CPU allocator then asks for huge pages for large tensors, which ``madvise`` mode
    needs), and the outcome, ``in_use``. A gather from a feature matrix far beyond the
    TLB's reach misses the TLB on nearly every row on 4 KiB pages."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        mode = text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        mode = None
    switch = settings.torch_huge_pages()
    return {"mode": mode, "torch_allocator": switch,
            "in_use": mode == "always" or (mode == "madvise" and switch)}


# ---------------------------------------------------------------------- the bytes
# The suites whose rows are one aggregation (a gather of source rows over the CSR), for
# which the bytes moved are modelled; the others (layers with a dense product, the
# structure loss) get time and memory per edge only.
GATHER_SUITES = ("spmm", "max")


def aggregation_bytes(num_dst: int, num_src: int, num_edges: int, width: int, *, value_bytes: int = 4,
                      index_bytes: int = 8, weighted: bool = False) -> Dict[str, int]:
    """Bytes of one forward aggregation ``out[i] = sum_j w_ij x[j]`` over a CSR:

    * ``compulsory``: the row pointers and column indices (and weights) once, each source
      row once, each output row written once: what any order of the work must move;
    * ``no_reuse``: the same with one source row gathered per edge (no cache hit): what
      a random order of a graph far larger than the cache moves.
    """
    csr = (num_dst + 1) * index_bytes + num_edges * index_bytes + (num_edges * value_bytes if weighted else 0)
    out = num_dst * width * value_bytes
    return {"compulsory": csr + num_src * width * value_bytes + out,
            "no_reuse": csr + num_edges * width * value_bytes + out}


HUGE_PAGES_LABEL = " (2 MiB pages)"  # after the contender's name, for rows run on huge pages


def triad_peak(meta: dict) -> Optional[float]:
    """The best triad bandwidth (GB/s) a run's machine figures hold, or None."""
    stream = (meta.get("machine") or {}).get("stream") or []
    return max((s["triad_GBps"] for s in stream), default=None)


def summarize(run: dict) -> List[dict]:
    """One row per timed measurement of the sweep: time per edge (ns), peak memory per
    edge (bytes), and for the gather suites' forward rows the bytes moved, the achieved
    bandwidth (compulsory bytes / time) and the time over the no-reuse bound at the
    measured triad bandwidth (a row's own ``triad_GBps`` where it carries one: rows merged
    from several runs are each held to the bandwidth measured in their run)."""
    run_peak = triad_peak(run.get("meta", {}))
    rows = []
    for r in run.get("results", []):
        if r.get("status") != "ok" or not r.get("median_ms") or not r.get("num_edges"):
            continue
        e = r["num_edges"]
        row = {k: r[k] for k in ("suite", "graph", "mode", "contender", "num_nodes", "features")}
        if r.get("huge_pages"):
            row["contender"] += HUGE_PAGES_LABEL
        row.update(num_edges=e, ns_per_edge=r["median_ms"] * 1e6 / e,
                   bytes_per_edge=(r["peak_mem_bytes"] / e) if r.get("peak_mem_bytes") is not None else None)
        if r["suite"] in GATHER_SUITES and r["mode"] == "fwd":
            peak = r.get("triad_GBps") or run_peak
            moved = aggregation_bytes(r["num_nodes"], r["num_nodes"], e, r["features"])
            seconds = r["median_ms"] / 1e3
            row.update(compulsory_bytes=moved["compulsory"], no_reuse_bytes=moved["no_reuse"],
                       achieved_GBps=moved["compulsory"] / seconds / 1e9)
            if peak:
                row.update(fraction_of_triad=row["achieved_GBps"] / peak,
                           over_no_reuse_bound=seconds / (moved["no_reuse"] / (peak * 1e9)))
        rows.append(row)
    return rows


FAMILIES = {"scale": "power law", "blocks": "block model"}  # the sweep's graph name prefixes


def curve_of(r: dict) -> tuple:
    """(graph family, mean degree, feature width) of a row: the sweep's curves are one per
    family, degree and width (``scale-d10-e7`` at F = 64: power law, 10, 64)."""
    found = re.match(r"(.+?)-d(\d+)-", r["graph"])
    if found:
        return FAMILIES.get(found.group(1), found.group(1)), int(found.group(2)), r.get("features")
    return "other graphs", round(r["num_edges"] / max(r["num_nodes"], 1)), r.get("features")


def slopes(rows: List[dict], key: str = "ns_per_edge") -> Dict[tuple, dict]:
    """Per (suite, mode, contender, graph family, mean degree, width): the growth of ``key`` from the smallest
    to the largest graph it ran on (``ratio``) and the log-log slope of the total
    (``key`` times E) against E: 1.0 is linear."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        if r.get(key) is None:
            continue
        groups.setdefault((r["suite"], r["mode"], r["contender"], *curve_of(r)), []).append(r)
    out = {}
    for k, g in groups.items():
        g = sorted(g, key=lambda r: r["num_edges"])
        if len(g) < 2:
            continue
        xs = [math.log(r["num_edges"]) for r in g]
        ys = [math.log(r[key] * r["num_edges"]) for r in g]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")
        out[k] = {"slope": slope, "ratio": g[-1][key] / g[0][key], "from_edges": g[0]["num_edges"],
                  "to_edges": g[-1]["num_edges"]}
    return out


def _machine_lines(meta: dict) -> List[str]:
    mach = meta.get("machine") or {}
    lines = [f"memory bandwidth, {s['threads']} thread(s): copy {s['copy_GBps']:.1f} GB/s, "
             f"triad {s['triad_GBps']:.1f} GB/s" for s in mach.get("stream", [])]
    pages = mach.get("huge_pages")
    if pages:
        state = ("large tensors on 2 MiB pages" if pages["in_use"] else "large tensors on 4 KiB pages")
        lines.append(f"huge pages: {state} (kernel mode {pages['mode']}, torch's THP_MEM_ALLOC_ENABLE "
                     f"{'on' if pages['torch_allocator'] else 'off'})")
    if mach.get("caches"):
        lines.append("caches: " + ", ".join(f"{k} {v / 2**20:g} MiB" if v >= 2**20 else f"{k} {v // 2**10} KiB"
                                           for k, v in mach["caches"].items()))
    return lines


def _by_curve(rows: List[dict]) -> List[dict]:
    """Rows in the order of the curves: suite, mode, contender, graph family, mean degree, size."""
    return sorted(rows, key=lambda r: (r["suite"], r["mode"], r["contender"], *curve_of(r), r["num_edges"]))


def _figures(r: dict) -> tuple:
    """(peak bytes per edge, GB/s, % of triad, time over the no-reuse bound) as text, "-"
    where the row has none."""
    return (f"{r['bytes_per_edge']:.1f}" if r.get("bytes_per_edge") is not None else "-",
            f"{r['achieved_GBps']:.1f}" if "achieved_GBps" in r else "-",
            f"{100 * r['fraction_of_triad']:.0f}" if "fraction_of_triad" in r else "-",
            f"{r['over_no_reuse_bound']:.2f}" if "over_no_reuse_bound" in r else "-")


def render(run: dict) -> str:
    """The sweep as text: the machine, then per suite and mode each contender's ns per
    edge and bytes per edge at every size, the bandwidth figures of the gather suites,
    and the slopes; and what stopped each contender."""
    meta = run.get("meta", {})
    rows = summarize(run)
    lines = _machine_lines(meta) + [""]
    lines.append(f"{'suite':<6} {'mode':<8} {'contender':<34} {'graph':<16} {'F':>4} {'E':>11} {'ns/edge':>8} "
                 f"{'B/edge':>7} {'GB/s':>6} {'%triad':>6} {'x no-reuse':>10}")
    for r in _by_curve(rows):
        bpe, gbs, frac, over = _figures(r)
        lines.append(f"{r['suite']:<6} {r['mode']:<8} {r['contender'][:34]:<34} {r['graph'][:16]:<16} "
                     f"{r['features']:>4} {r['num_edges']:>11,} {r['ns_per_edge']:>8.2f} {bpe:>7} {gbs:>6} "
                     f"{frac:>6} {over:>10}")
    lines.append("")
    lines.append("growth from the smallest to the largest graph run (time per edge; slope of the "
                 "total time against E, log-log, 1.0 = linear):")
    for (suite, mode, contender, family, degree, width), s in sorted(slopes(rows).items()):
        lines.append(f"  {suite} {mode} {contender} ({family}, mean degree {degree}, F = {width}): "
                     f"x{s['ratio']:.2f} per edge "
                     f"from {s['from_edges']:,} to {s['to_edges']:,} edges, slope {s['slope']:.2f}")
    mem = slopes(rows, "bytes_per_edge")
    if mem:
        lines.append("peak memory (bytes per edge; slope of the total against E):")
        for (suite, mode, contender, family, degree, width), s in sorted(mem.items()):
            lines.append(f"  {suite} {mode} {contender} ({family}, mean degree {degree}, F = {width}): "
                         f"x{s['ratio']:.2f} per edge, "
                         f"slope {s['slope']:.2f}")
    stopped = [r for r in run.get("results", []) if r.get("status") not in ("ok", None)]
    if stopped:
        lines.append("where contenders stopped:")
        for r in stopped:
            lines.append(f"  {r['suite']} {r['mode']} {r['contender']} on {r['graph']} "
                         f"({r.get('num_edges') or '?'} edges): {r['status']} ({r.get('reason')})")
    for g in meta.get("skipped_graphs", []):
        lines.append(f"  graph {g['graph']}: not run ({g['reason']})")
    return "\n".join(lines)


MODE_NAMES = {"fwd": "forward", "fwd+bwd": "forward+backward"}


def _decade(r: dict) -> int:
    """The size class of a row or a stop: the ``-eK`` of the sweep's graph names (10^K
    edges), else the nearest power of ten of its edges."""
    found = re.search(r"-e(\d+)$", r["graph"])
    if found:
        return int(found.group(1))
    return round(math.log10(max(r.get("num_edges") or 1, 1)))


def _stops(run: dict) -> Dict[tuple, dict]:
    """What stopped each contender, once per (suite, mode, contender, graph), the later
    record winning: a size measured again counts once."""
    out: Dict[tuple, dict] = {}
    for r in run.get("results", []):
        if r.get("status") not in ("ok", None):
            label = r["contender"] + (HUGE_PAGES_LABEL if r.get("huge_pages") else "")
            out[(r["suite"], r["mode"], label, r["graph"])] = r
    return out


def _number(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def render_markdown(run: dict) -> str:
    """The sweep as markdown (docs/benchmarks.md): the machine, then per suite and mode
    one row per curve (contender, graph family, mean degree, width) with its time per
    edge at each size, its growth and its peak memory per edge; for the gather suites'
    forward the same curves against the memory (time over the no-reuse bound, fraction
    of the triad bandwidth); last, where each contender stopped and why."""
    meta = run.get("meta", {})
    rows = summarize(run)
    growth = slopes(rows)
    stops = _stops(run)
    out = [f"- {line[0].upper()}{line[1:]}." for line in _machine_lines(meta)]
    rank = lambda s: (SUITES.index(s[0]) if s[0] in SUITES else len(SUITES), s)
    sections = sorted({(r["suite"], r["mode"]) for r in rows} | {k[:2] for k in stops}, key=rank)
    for suite, mode in sections:
        mine = [r for r in rows if (r["suite"], r["mode"]) == (suite, mode)]
        stopped = [(k[2], r) for k, r in stops.items() if k[:2] == (suite, mode)]
        decades = sorted({_decade(r) for r in mine + [r for _, r in stopped]})
        curves: Dict[tuple, Dict[int, dict]] = {}
        for r in mine:
            curves.setdefault((r["contender"], *curve_of(r)), {})[_decade(r)] = r
        for label, r in stopped:
            match = [k for k in curves if k[0] == label and k[1:3] == curve_of(r)[:2]
                     and k[3] == r.get("features", k[3])]
            for k in match or [(label, *curve_of(r))]:
                curves.setdefault(k, {}).setdefault(_decade(r), r)
        order = sorted(curves, key=lambda k: (k[1], k[2], k[3] or 0, k[0]))
        sizes = " | ".join(f"10^{d}" for d in decades)
        out += ["", f"**{suite} {MODE_NAMES.get(mode, mode)}**, ns per edge at 10^k edges:", "",
                f"| contender | graphs | F | {sizes} | growth per edge (slope) | peak bytes / edge |",
                "|---|---|---|" + "---:|" * len(decades) + "---|---:|"]
        for k in order:
            contender, family, degree, width = k
            cells = []
            for d in decades:
                r = curves[k].get(d)
                cells.append("" if r is None else _number(r["ns_per_edge"]) if r.get("status") in ("ok", None)
                             and "ns_per_edge" in r else str(r.get("status")))
            s = growth.get((suite, mode, *k))
            grown = f"x{s['ratio']:.2f} ({s['slope']:.2f})" if s else "-"
            mem = [r["bytes_per_edge"] for r in curves[k].values() if r.get("bytes_per_edge") is not None]
            mem_text = "-" if not mem else (f"{min(mem):.1f}" if max(mem) - min(mem) < 0.05 * max(mem)
                                            else f"{min(mem):.1f} to {max(mem):.1f}")
            out.append(f"| {contender} | {family}, d = {degree} | {width} | " + " | ".join(cells)
                       + f" | {grown} | {mem_text} |")
        bound = [k for k in order if any("over_no_reuse_bound" in r for r in curves[k].values())]
        if bound:
            out += ["", f"**{suite} {MODE_NAMES.get(mode, mode)} against the memory**: time over the no-reuse "
                    "bound at triad bandwidth (below 1: the caches serve part of the gathers), and the "
                    "compulsory bytes' bandwidth as a fraction of the triad's (each at the triad bandwidth "
                    "measured in its own run):", "",
                    f"| contender | graphs | F | {sizes} |", "|---|---|---|" + "---:|" * len(decades)]
            for k in bound:
                contender, family, degree, width = k
                cells = [f"{r['over_no_reuse_bound']:.2f}x, {100 * r['fraction_of_triad']:.0f}%"
                         if (r := curves[k].get(d)) is not None and "over_no_reuse_bound" in r else ""
                         for d in decades]
                out.append(f"| {contender} | {family}, d = {degree} | {width} | " + " | ".join(cells) + " |")
    if stops or meta.get("skipped_graphs"):
        out += ["", "Where contenders stopped:", ""]
        for (suite, mode, label, graph), r in stops.items():
            out.append(f"- {suite} {mode}, {label}, {graph}: {r['status']} ({r.get('reason')})")
        for g in meta.get("skipped_graphs", []):
            out.append(f"- graph {g['graph']}: not run ({g['reason']})")
    return "\n".join(out)


def plot(run: dict, path: str, keep: Optional[Callable[[tuple], bool]] = None, dpi: int = 110) -> None:
    """Time per edge against E, log-log: one panel per suite and mode, one colour per
    contender (the same in every panel), one line style per graph family, mean degree
    and width. ``keep(curve)``, with ``curve = (contender, family, degree, width)``,
    chooses the curves drawn (default: all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: Dict[tuple, Dict[tuple, List[dict]]] = {}
    for r in summarize(run):
        curve = (r["contender"], *curve_of(r))
        if keep is None or keep(curve):
            panels.setdefault((r["suite"], r["mode"]), {}).setdefault(curve, []).append(r)
    order = sorted(panels, key=lambda k: (SUITES.index(k[0]) if k[0] in SUITES else len(SUITES), k))
    contenders = sorted({c[0] for p in panels.values() for c in p})
    shapes = sorted({c[1:] for p in panels.values() for c in p}, key=lambda k: (k[0], k[1], k[2] or 0))
    colours = {c: plt.get_cmap("tab20")(i % 20) for i, c in enumerate(contenders)}
    styles = {k: ("-", "--", ":", "-.")[i % 4] for i, k in enumerate(shapes)}
    cols = min(3, max(len(order), 1))
    rows_n = max(1, math.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.6 * cols, 4.2 * rows_n), squeeze=False)
    for ax in axes.flat[len(order):]:
        ax.set_visible(False)
    for ax, (suite, mode) in zip(axes.flat, order):
        for curve, g in sorted(panels[(suite, mode)].items(), key=lambda kv: (kv[0][1:], kv[0][0])):
            g = sorted(g, key=lambda r: r["num_edges"])
            contender, family, degree, width = curve
            label = contender if len(shapes) == 1 else f"{contender}, {family} d={degree} F={width}"
            ax.loglog([r["num_edges"] for r in g], [r["ns_per_edge"] for r in g], marker="o", markersize=3,
                      color=colours[contender], linestyle=styles[curve[1:]], label=label)
        ax.set_title(f"{suite} {MODE_NAMES.get(mode, mode)}")
        ax.set_xlabel("edges")
        ax.set_ylabel("ns per edge")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
