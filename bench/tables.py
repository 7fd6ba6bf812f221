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
from fastalign.bench import report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "docs", name) for name in ("benchmarks.md", "distillation.md")]
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


TABLES: Dict[str, Callable[[], str]] = {
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
}


def render(text: str) -> str:
    """``text`` with every marked table made anew; an unknown name is an error."""
    def table(m):
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        return m.group(1) + TABLES[name]().rstrip("\n") + "\n" + m.group(4)

    return MARKED.sub(table, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 where a doc's table differs from its records")
    args = p.parse_args(argv)
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
