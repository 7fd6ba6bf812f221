"""Readable output of a benchmark run: a table (text or Markdown), JSON and a PNG chart.

Speed-up of a contender = (median time of the fastest peer that ran, for the same suite,
graph and mode) / (its median time): above 1 it beats every peer, PyG under
torch.compile included.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# A larger relative error against the group's first output is flagged in the table. Both
# outputs carry their dtype's rounding, hence twice the tests' per-dtype tolerance.
ERR_TOL = {"float32": 1e-3, "bfloat16": 4e-2, "float16": 6e-3}


def _dtype(r: dict) -> str:
    return r.get("dtype", "float32")  # runs recorded before the dtype option were float32


def _where(r: dict) -> str:
    """The graph, with the dtype when it is not float32: "cora", "cora bfloat16"."""
    return r["graph"] if _dtype(r) == "float32" else f"{r['graph']} {_dtype(r)}"


def speedups(results: List[dict]) -> Dict[Tuple[str, str, str, str], float]:
    """(suite, graph [dtype], mode, contender) -> speed-up over the fastest peer that ran
    in the same dtype."""
    best: Dict[Tuple[str, str, str], float] = {}
    for r in results:
        if r["kind"] == "peer" and r["status"] == "ok":
            key = (r["suite"], _where(r), r["mode"])
            best[key] = min(best.get(key, float("inf")), r["median_ms"])
    out = {}
    for r in results:
        key = (r["suite"], _where(r), r["mode"])
        if r["status"] == "ok" and key in best and r["median_ms"] > 0:
            out[key + (r["contender"],)] = best[key] / r["median_ms"]
    return out


def dtype_speedups(results: List[dict]) -> List[Tuple[str, str, str, str, str, float]]:
    """[(suite, graph, mode, contender, dtype, float32 time / its time)] for every
    contender that ran in float32 and in a lower precision in the same run."""
    f32 = {(r["suite"], r["graph"], r["mode"], r["contender"]): r["median_ms"]
           for r in results if r["status"] == "ok" and _dtype(r) == "float32"}
    out = []
    for r in results:
        key = (r["suite"], r["graph"], r["mode"], r["contender"])
        if r["status"] == "ok" and _dtype(r) != "float32" and key in f32 and r["median_ms"] > 0:
            out.append(key + (_dtype(r), f32[key] / r["median_ms"]))
    return out


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return ""
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _fmt_mem(b: Optional[int]) -> str:
    if b is None:
        return "n/a"
    mib = b / 2**20
    return f"{mib:.1f}" if mib < 100 else f"{mib:.0f}"


def _cell(rec: Optional[dict], speed: Optional[float]) -> Tuple[str, str, str]:
    if rec is None:
        return ("", "", "")
    if rec["status"] != "ok":
        label = {"skipped": "skip", "oom": "OOM", "error": "error"}.get(rec["status"], rec["status"])
        return (label, "", "")
    t = _fmt_ms(rec["median_ms"])
    err = rec.get("max_rel_err")
    if err is not None and err > ERR_TOL.get(_dtype(rec), ERR_TOL["float32"]):
        t += f" (!err {err:.1e})"
    return (t, _fmt_mem(rec["peak_mem_bytes"]), f"{speed:.2f}x" if speed is not None else "")


def rows(run: dict):
    """Grouped rows: [(header, [(contender, fwd cells, fwd+bwd cells)])]."""
    results = run["results"]
    sp = speedups(results)
    groups: "OrderedDict[Tuple[str, str], OrderedDict[str, Dict[str, dict]]]" = OrderedDict()
    for r in results:
        g = groups.setdefault((r["suite"], _where(r)), OrderedDict())
        g.setdefault(r["contender"], {})[r["mode"]] = r
    out = []
    for (suite, graph), by_contender in groups.items():
        any_rec = next(iter(next(iter(by_contender.values())).values()))
        header = (f"{suite}: {graph} (N={any_rec['num_nodes']:,}, E={any_rec['num_edges']:,}, "
                  f"F={any_rec['features']})")
        body = []
        for name, modes in by_contender.items():
            cells = []
            for mode in ("fwd", "fwd+bwd"):
                rec = modes.get(mode)
                cells.append(_cell(rec, sp.get((suite, graph, mode, name))))
            body.append((name, cells[0], cells[1]))
        out.append((header, body))
    return out


COLUMNS = ("contender", "fwd ms", "fwd MiB", "fwd speed-up", "fwd+bwd ms", "fwd+bwd MiB", "fwd+bwd speed-up")


def render_text(run: dict) -> str:
    lines = []
    meta = run["meta"]
    lines.append(f"fastalign bench: device {meta['device']} ({meta.get('device_name')}), "
                 f"{meta['date']}, commit {meta.get('commit')}")
    lines.append("times: median ms per call; MiB: peak extra memory of one call; speed-up: "
                 "fastest peer's time / this time")
    for header, body in rows(run):
        table = [COLUMNS] + [(name,) + f + b for name, f, b in body]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(COLUMNS))]
        lines.append("")
        lines.append(header)
        for k, row in enumerate(table):
            lines.append("  " + "  ".join(
                str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(row)
            ))
            if k == 0:
                lines.append("  " + "  ".join("-" * wd for wd in widths))
    ratios = dtype_speedups(run["results"])
    if ratios:
        lines.append("")
        lines.append("lower precision: float32 time / this dtype's time, same contender")
        for suite, graph, mode, name, dtype, ratio in ratios:
            lines.append(f"  {suite} | {graph} | {mode} | {name} | {dtype}: {ratio:.2f}x")
    skipped = meta.get("skipped_graphs") or []
    for s in skipped:
        lines.append(f"skipped graph {s['graph']}: {s['reason']}")
    reasons = sorted({(r["contender"], r["status"], r["reason"]) for r in run["results"] if r["status"] != "ok"})
    if reasons:
        lines.append("")
        lines.append("not run:")
        for name, status, reason in reasons:
            lines.append(f"  {name}: {status} ({reason})")
    return "\n".join(lines)


def render_markdown(run: dict) -> str:
    lines = []
    head = "| suite / graph | contender | fwd ms | fwd MiB | fwd speed-up | fwd+bwd ms | fwd+bwd MiB | fwd+bwd speed-up |"
    lines.append(head)
    lines.append("|" + "---|" * 8)
    for header, body in rows(run):
        first = True
        for name, f, b in body:
            label = header if first else ""
            first = False
            lines.append("| " + " | ".join((label, name) + f + b) + " |")
    ratios = dtype_speedups(run["results"])
    if ratios:
        lines.append("")
        lines.append("| suite | graph | mode | contender | dtype | float32 time / its time |")
        lines.append("|" + "---|" * 6)
        for suite, graph, mode, name, dtype, ratio in ratios:
            lines.append(f"| {suite} | {graph} | {mode} | {name} | {dtype} | {ratio:.2f}x |")
    reasons = sorted({(r["contender"], r["status"], r["reason"]) for r in run["results"] if r["status"] != "ok"})
    if reasons:
        lines.append("")
        for name, status, reason in reasons:
            lines.append(f"- {name}: {status} ({reason})")
    for s in run["meta"].get("skipped_graphs") or []:
        lines.append(f"- graph {s['graph']} skipped: {s['reason']}")
    return "\n".join(lines)


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_output(path, flag: str, suffixes=None) -> None:
    """ValueError unless ``path`` can be written as a file (with one of ``suffixes``):
    checked before a run, so that a long run never ends in a traceback over its output."""
    import tempfile

    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: the file name must end in {', '.join(suffixes)}")
    folder = p.absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc})") from exc


def strict(value):
    """``value`` with every NaN or infinite float as None: strict JSON (RFC 8259 has no
    NaN), which every reader accepts (Python's json writes NaN unless told not to)."""
    if isinstance(value, float):
        return value if value == value and value - value == 0 else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(run: dict, path) -> None:
    """``run`` as strict JSON (NaN and infinities as null); to a ``.jsonl`` file (a
    benchmark family's records) it is appended as one line, so runs accumulate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        meta = run.get("meta", {})
        load = meta.get("load_average")
        where = f"{meta.get('device_name')}, {meta.get('cpu_count')} CPUs" + (
            f", load average {load:.2f} at the start" if load is not None else "")
        # a records row: when, where and how first (bench/records.py)
        row = {"date": meta.get("date"), "commit": meta.get("commit"), "machine": where,
               "command": meta.get("command"), **run}
        with open(path, "a") as f:
            f.write(json.dumps(strict(row), default=str, allow_nan=False, separators=(",", ":")) + "\n")
        return
    with open(path, "w") as f:
        json.dump(strict(run), f, indent=1, default=str, allow_nan=False)
        f.write("\n")


def plot(run: dict, path) -> None:
    """Bar chart of each fastalign contender's speed-up over the fastest peer, one panel
    per (suite, mode), graphs on the x axis, log scale, a line at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = run["results"]
    sp = speedups(results)
    panels = []
    for suite in run["meta"]["suites"]:
        for mode in run["meta"]["modes"]:
            panels.append((suite, mode))
    graphs = list(OrderedDict.fromkeys(_where(r) for r in results))
    ncols = len(run["meta"]["modes"])
    nrows = max(1, len(run["meta"]["suites"]))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.2 * nrows), squeeze=False)
    for k, (suite, mode) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        names = list(OrderedDict.fromkeys(
            r["contender"] for r in results if r["suite"] == suite and r["kind"] == "fastalign"))
        width = 0.8 / max(len(names), 1)
        plotted = False
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, g in enumerate(graphs):
                v = sp.get((suite, g, mode, name))
                if v is not None:
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(v)
            if xs:
                ax.bar(xs, ys, width=width, label=name)
                plotted = True
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(graphs)))
        ax.set_xticklabels(graphs, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{suite} ({mode})", fontsize=10)
        ax.set_ylabel("speed-up vs fastest peer")
        if plotted:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no fastalign result", ha="center", va="center", transform=ax.transAxes)
    meta = run["meta"]
    fig.suptitle(f"fastalign bench, {meta['device']} ({meta.get('device_name')}), {meta['date']}, "
                 f"commit {meta.get('commit')}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
