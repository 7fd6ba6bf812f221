"""The docs' result tables, produced from the records in bench/results/*.jsonl.

A table in a doc sits between two markers that name it:

    <!-- table: distill-paired -->
    | ... |
    <!-- /table -->

``python bench/tables.py`` rewrites every marked table from the records; ``--check``
changes nothing and exits 1 where a doc's table is not what the records give (the test
suite runs it, so a table cannot drift from its data).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deploy_size  # noqa: E402
import distill_paired  # noqa: E402
import distill_sweep  # noqa: E402
import records  # noqa: E402
from fastalign.bench import report, scaling  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", name)
                                             for name in ("benchmarks.md", "distillation.md")]
MARKED = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _bench_run(family: str, command_part: str) -> dict:
    """The latest ``fastalign bench`` run of ``family`` whose command contains
    ``command_part``."""
    runs = [r for r in records.read(records.path(family)) if command_part in (r.get("command") or "")]
    if not runs:
        raise LookupError(f"no run of {records.path(family)} has {command_part!r} in its command")
    return {"meta": runs[-1]["meta"], "results": runs[-1]["results"]}


def _with_source(run: dict, table: str) -> str:
    meta = run["meta"]
    return (f"{table}\n\nMeasured {meta['date']}, commit `{meta.get('commit') or 'unrecorded'}`, "
            f"command `{meta['command']}`.")


def _deploy_size() -> str:
    rows = [r for r in records.read(records.path("distill_cost")) if r.get("kind") == "deploy_size"]
    if not rows:
        raise LookupError("no deploy_size row in bench/results/distill_cost.jsonl")
    return deploy_size.table(rows[-1]["rows"])


def _low_precision() -> str:
    """The latest run of each suite in low precision (spmm, gcn, align), one table."""
    runs = {}
    for r in records.read(records.path("low_precision_cpu")):
        command = r.get("command") or ""
        for suite in ("spmm", "gcn", "align"):
            if f"--suite {suite} " in command:
                runs[suite] = r
    parts = [_with_source(run := {"meta": runs[s]["meta"], "results": runs[s]["results"]},
                          report.render_markdown(run)) for s in ("spmm", "gcn", "align") if s in runs]
    if not parts:
        raise LookupError("no low-precision suite run in bench/results/low_precision_cpu.jsonl")
    return "\n\n".join(parts)


def _error_vs_float64() -> str:
    rows = [r for r in records.read(records.path("low_precision_cpu")) if r.get("kind") == "error_vs_float64"]
    if not rows:
        raise LookupError("no error_vs_float64 row in bench/results/low_precision_cpu.jsonl")
    lines = ["| contender | dtype | loss rel. error | gradient rel. error |", "|---|---|---:|---:|"]
    lines += [f"| {e['contender']} | {e['dtype']} | {e['loss_rel_error']:.1e} | {e['grad_rel_error']:.1e} |"
              for e in rows[-1]["rows"]]
    return "\n".join(lines)


def _busy_machine() -> str:
    """The latest run on the small and large graphs: median ms alone (the better of the
    two runs alone) and beside one busy process."""
    rows = [r for r in records.read(records.path("busy_machine_cpu"))
            if any(c["case"].startswith("large") for c in r["rows"])]
    if not rows:
        raise LookupError("no busy-machine run on the large graph in bench/results/busy_machine_cpu.jsonl")
    lines = ["| graph | op | alone ms | beside ms | slowdown |", "|---|---|---:|---:|---:|"]
    last = None
    for c in rows[-1]["rows"]:
        graph, op = (part.strip() for part in c["case"].split("|", 1))
        alone = min(c["alone_ms"], c["again_ms"])
        lines.append(f"| {graph if graph != last else ''} | {op} | {alone:.3g} | {c['beside_ms']:.3g} | "
                     f"{c['beside_ms'] / alone:.2f}x |")
        last = graph
    return "\n".join(lines)


def _epoch_time() -> str:
    rows = [r for r in records.read(records.path("distill_cost")) if r.get("kind") == "epoch_time"]
    lines = ["| K students, data set | layers, hidden, mode | auto | torch (reference) | speed-up |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        t = r["epoch_time_s"]
        lines.append(f"| K = {r['students']}, {r['dataset']} | {r['layers']}, {r['hidden']}, {r['mode']} | "
                     f"{1e3 * t['auto']:.1f} ms | {1e3 * t['torch']:.1f} ms | {t['torch'] / t['auto']:.1f}x |")
    return "\n".join(lines)


GRAPH_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed", "synthetic": "synthetic block model"}


def _bytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _measured(rows) -> str:
    """When and at which commits ``rows`` were measured: the line under a records table."""
    dates = sorted(r["date"] for r in rows)
    commits = sorted({(r.get("commit") or "unrecorded")[:7] for r in rows})
    return f"Measured {dates[0]} to {dates[-1]}, commit {', '.join(f'`{c}`' for c in commits)}"


def _ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def _distributed_epoch() -> str:
    """K students in one process (2 threads) against two processes (gloo, 1 thread
    each), per graph and K: the latest row of each configuration."""
    rows = [r for r in records.read(records.path("distill_cost")) if r.get("kind") == "distributed_epoch"
            and r.get("device", "cpu") == "cpu"]
    found = records.latest(rows, lambda r: (r["dataset"], r["num_nodes"], r["students"], r["processes"]))
    pairs = [(key[:3], found[key[:3] + (1,)], r) for key, r in found.items()
             if key[3] == 2 and key[:3] + (1,) in found]
    if not pairs:
        raise LookupError("no pair of 1- and 2-process distributed_epoch rows in bench/results/distill_cost.jsonl")
    lines = ["| graph | K | 1 process, 2 threads | 2 processes (gloo) | speed-up | peak RSS per process: "
             "1 / 2 processes | sent per process and step |", "|---|---|---:|---:|---:|---|---:|"]
    shown = set()
    for (dataset, nodes, k), one, two in sorted(pairs, key=lambda p: (p[0][1], p[0][2])):
        name = GRAPH_NAMES.get(dataset, dataset)
        if (dataset, nodes) not in shown:
            edges = two["num_edges"]
            name += f" ({nodes:,} / {edges / 1e6:.1f}M)" if edges >= 1e6 else f" ({nodes:,} / {edges:,})"
            shown.add((dataset, nodes))
        lines.append(f"| {name} | {k} | {_ms(one['epoch_ms'])} | {_ms(two['epoch_ms'])} | "
                     f"{one['epoch_ms'] / two['epoch_ms']:.2f}x | {max(one['peak_rss_mib'])} / "
                     f"{max(two['peak_rss_mib'])} MiB | {_bytes(two['exchanged_bytes_per_step'])} |")
    used = [r for _, *both in pairs for r in both]
    lines += ["", f"{_measured(used)}; machine {used[0]['machine'].split(', load')[0]}."]
    return "\n".join(lines)


def _reorder() -> str:
    """The latest run of each graph: spmm forward on each node order, the reordering's cost."""
    found = records.latest(records.read(records.path("reorder_cpu")), lambda r: (r["graph"], r["width"]))
    if not found:
        raise LookupError("no row in bench/results/reorder_cpu.jsonl")
    lines = ["| graph (nodes / edges) | order | spmm forward | speed-up | reordering | pays back after |",
             "|---|---|---:|---:|---:|---:|"]
    for r in sorted(found.values(), key=lambda r: r["num_edges"]):
        label = f"{r['graph']} ({r['num_nodes']:,} / {r['num_edges']:,})"
        for i, o in enumerate(r["rows"]):
            back = o["pays_back_after_calls"]
            cost = "-" if o["order"] == "given" else f"{o['reorder_s']:.3g} s"
            paid = "-" if back is None else f"{back:,.0f} calls"
            lines.append(f"| {label if i == 0 else ''} | {o['order']} | {o['spmm_ms']:.3g} ms | {o['speedup']:.2f}x | "
                         f"{cost} | {paid} |")
    used = list(found.values())
    lines += ["", f"{_measured(used)}, F = {used[0]['width']}, {used[0]['threads']} threads, "
                  f"command `{used[-1]['command']}`."]
    return "\n".join(lines)


# The README's headline: (label, suite, mode, our contender, peer contender, what is compared)
HEADLINE = (
    ("spmm forward vs torch.sparse.mm (MKL)", "spmm", "fwd", "fastalign[cpu]", "torch.sparse.mm (CSR)", "time"),
    ("spmm forward+backward vs torch.sparse.mm", "spmm", "fwd+bwd", "fastalign[cpu]", "torch.sparse.mm (CSR)",
     "time"),
    ("GCN layer fwd+bwd vs PyG GCNConv(cached) on a torch.sparse adj_t", "gcn", "fwd+bwd", "fastalign GCNConv[cpu]",
     "PyG GCNConv adj_t (torch.sparse)", "time"),
    ("GCN layer fwd+bwd vs PyG GCNConv(cached) on edge_index, compiled", "gcn", "fwd+bwd", "fastalign GCNConv[cpu]",
     "PyG GCNConv edge_index compiled", "time"),
    ("structure loss fwd+bwd vs PyG-style loss, compiled", "align", "fwd+bwd", "fastalign structure_kl[cpu]",
     "PyG-style loss compiled", "time"),
    ("structure loss peak memory vs PyG-style loss, eager", "align", "fwd+bwd", "fastalign structure_kl[cpu]",
     "PyG-style loss", "memory"),
)


def _headline() -> str:
    run = _bench_run("ops_cpu", "--graphs powerlaw-100k")
    found = {(r["suite"], r["mode"], r["contender"]): r for r in run["results"]}
    meta = run["meta"]
    lines = [f"| measured {meta['date']}, commit {(meta.get('commit') or '')[:7]} | fastalign | peer | "
             "speed-up |", "|---|---:|---:|---:|"]
    for label, suite, mode, ours, peer, what in HEADLINE:
        a, b = found[(suite, mode, ours)], found[(suite, mode, peer)]
        if what == "time":
            x, y = a["median_ms"], b["median_ms"]
            lines.append(f"| {label} | {report._fmt_ms(x)} ms | {report._fmt_ms(y)} ms | {y / x:.3g}x |")
        else:
            x, y = a["peak_mem_bytes"] / 2**20, b["peak_mem_bytes"] / 2**20
            lines.append(f"| {label} | {x:.0f} MiB | {y:.0f} MiB | {y / x:.3g}x less |")
    return "\n".join(lines)


def _scaling_runs():
    """The scaling sweep's runs, and their rows merged into one run (a graph measured again
    counts once, the later run)."""
    runs = [r for r in records.read(records.path("scaling_cpu")) if "--sizes scaling" in (r.get("command") or "")]
    if not runs:
        raise LookupError("no run of bench/results/scaling_cpu.jsonl has '--sizes scaling' in its command")
    key = lambda r: (r["suite"], r["graph"], r["mode"], r["contender"], r.get("dtype"), r.get("features"),
                     bool(r.get("huge_pages")))
    # each row is held to the bandwidth measured in its own run
    merged = records.latest((dict(res, triad_GBps=scaling.triad_peak(run["meta"])) for run in runs
                             for res in run["results"]), key)
    machine = next((run["meta"]["machine"] for run in reversed(runs) if run["meta"].get("machine")), None)
    if machine:  # runs differ in it: the rows run on huge pages say so in their label
        machine = {k: v for k, v in machine.items() if k != "huge_pages"}
    return runs, {"meta": {"machine": machine, "skipped_graphs": []}, "results": list(merged.values())}


def _scaling() -> str:
    """The merged sweep, with each run's date, commit, command and notes."""
    runs, run = _scaling_runs()
    sources = "\n".join(f"- {r['meta']['date']}, commit `{r['meta'].get('commit') or 'unrecorded'}`, "
                         f"`{r['meta']['command']}`" + (f": {r['note']}" if r.get("note") else "")
                         for r in runs)
    return scaling.render_markdown(run) + "\n\nRuns:\n\n" + sources


TABLES: Dict[str, Callable[[], str]] = {
    "headline": _headline,
    "distill-paired": lambda: distill_paired.summarize(records.read(records.path("distill_paired"))),
    "distill-rounds": lambda: distill_sweep.summarize(records.read(records.path("distill_rounds"))),
    "deploy-size": _deploy_size,
    "ops-cpu": lambda: _with_source(run := _bench_run("ops_cpu", "--graphs powerlaw-100k"),
                                    report.render_markdown(run)),
    "ops-cpu-small": lambda: _with_source(run := _bench_run("ops_cpu", "--sizes small --threads 2"),
                                          report.render_markdown(run)),
    "layers-cpu": lambda: _with_source(run := _bench_run("layers_cpu", "--suite layers"),
                                       report.render_markdown(run)),
    "gat-cpu": lambda: _with_source(run := _bench_run("layers_cpu", "--suite gat"), report.render_markdown(run)),
    "first-layer-cpu": lambda: _with_source(run := _bench_run("layers_cpu", "--features real"),
                                            report.render_markdown(run)),
    "low-precision-cpu": _low_precision,
    "error-vs-float64": _error_vs_float64,
    "busy-machine-cpu": _busy_machine,
    "epoch-time": _epoch_time,
    "scaling-cpu": lambda: _scaling(),
    "distributed-epoch": _distributed_epoch,
    "reorder-cpu": _reorder,
}


def render(text: str) -> str:
    """``text`` with every marked table made anew; an unknown name is an error."""
    def table(m):
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        return m.group(1) + TABLES[name]().rstrip("\n") + "\n" + m.group(4)

    return MARKED.sub(table, text)


SCALING_FIGURE = os.path.join(ROOT, "docs", "img", "scaling-cpu.png")


def scaling_figure(path: str = SCALING_FIGURE) -> str:
    """The sweep's curves on the power-law graphs at mean degree 10, every suite and mode,
    the compiled extension and the peers (the reference backend is in the tables)."""
    _, run = _scaling_runs()
    keep = lambda curve: curve[1:3] == ("power law", 10) and "[torch]" not in curve[0]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scaling.plot(run, path, keep=keep, dpi=72)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 where a doc's table differs from its records")
    p.add_argument("--figures", action="store_true",
                   help=f"also draw the figures the docs show ({os.path.relpath(SCALING_FIGURE, ROOT)})")
    args = p.parse_args(argv)
    if args.figures and not args.check:
        print("drew " + os.path.relpath(scaling_figure(), ROOT))
    stale = []
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        new = render(text)
        if new != text:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                with open(path, "w") as f:
                    f.write(new)
    if args.check and stale:
        print(f"tables out of date in {', '.join(stale)}: run python bench/tables.py", file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + ", ".join(stale or [os.path.relpath(p, ROOT) for p in DOCS]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
