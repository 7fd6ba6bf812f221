"""``fastalign bench``: the command line of the benchmark harness.

``fastalign bench --suite spmm|gcn|align|sage|graphconv|gin|gat|layers|all[,...] --device cpu|cuda --sizes small|large
[--json PATH] [--plot PATH]``: every available fastalign backend against the peers
(torch.sparse.mm, PyG's GCNConv on edge_index eager and compiled and on adj_t, the
PyG-style structure loss eager and compiled, PyG's SAGEConv, GraphConv and GINConv eager
and compiled), time and peak memory, forward and
forward+backward, on Cora, CiteSeer, PubMed's graph and generated power-law graphs.

The trainer's CLI registers it with ``add_bench_parser(subparsers)``; ``python -m
fastalign.bench`` runs it on its own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

SUITE_CHOICES = ("spmm", "max", "gcn", "align", "similarity", "softmax", "attention", "linear", "sage", "graphconv", "gin", "gat", "gat1", "layers", "all")
DESCRIPTION = (
    "Benchmark every available fastalign backend against the peers (torch.sparse.mm, "
    "PyG's gather+scatter, both with sum and max, PyG's GCNConv(cached=True) on edge_index eager and compiled and "
    "on a torch.sparse adj_t, the PyG-style structure loss eager and compiled, PyG's "
    "SAGEConv, GraphConv and GINConv eager and compiled): median "
    "time and peak extra memory of one call, forward and forward+backward, on Cora, "
    "CiteSeer, PubMed's graph and generated power-law graphs. Prints a table; --json "
    "writes every measurement, --plot a PNG of the speed-ups over the fastest peer."
)


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--suite", default="all", type=_suite_list, metavar="{" + ",".join(SUITE_CHOICES) + "}",
                        help="which suite(s) to run, comma-separated (e.g. spmm,gcn,align); "
                             "layers: sage, graphconv, gin and gat (default: all)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="device to run on (default: cpu)")
    # "tiny" (one 400-node graph) exists for tests and smoke runs; not advertised.
    parser.add_argument("--sizes", default="small", choices=("small", "large", "scaling", "tiny"),
                        metavar="{small,large,scaling}",
                        help="small: Cora, CiteSeer, PubMed's graph, power-law 10k and 100k "
                             "nodes; large: also the arxiv-, reddit- and products-like "
                             "power-law graphs (GPU sizes; run where memory allows); scaling: "
                             "power-law graphs and block models of 10^4 to 10^8 edges at mean degree 10 and 50, "
                             "reported as time and memory per edge, bandwidth and slopes "
                             "(each contender until it runs out of memory or --max-minutes)")
    parser.add_argument("--graphs", default=None,
                        help="comma-separated subset of the graphs of --sizes, run in that order "
                             "(e.g. reddit-like,cora)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated fastalign backends to run (default: all available)")
    parser.add_argument("--mode", default="both", choices=("fwd", "fwd+bwd", "both"),
                        help="forward only, forward+backward, or both (default)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile peers (they take a while to compile)")
    parser.add_argument("--compile-dynamic", action="store_true",
                        help="compile the peers once with dynamic shapes for all graphs instead of "
                             "once per graph (less compile time, possibly slower peers)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--features", type=_features, default=64,
                        help="feature width (default 64), or 'real': each data set's own input width "
                             "(Cora 1433, CiteSeer 3703, PubMed 500; 64 for generated graphs) with "
                             "layers mapping it to 16 (GAT: 8 heads x 8, gat1: 1 head x 16), the shape of a "
                             "model's first layer")
    parser.add_argument("--dtype", default="float32",
                        help="comma-separated feature dtypes, each graph run in each: float32, "
                             "bfloat16, float16 (default float32); with several, the table "
                             "also gives each contender's float32 time over its time in the others")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed calls per measurement (default: 1.0 CPU, 0.5 CUDA)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new measurement after this many minutes (the rest is "
                             "recorded as skipped); with --json the file is rewritten after each graph")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (CPU; default: torch's choice)")
    parser.add_argument("--root", default=None,
                        help="dataset root holding Cora/, CiteSeer/, PubMed/ "
                             "(default: $FASTALIGN_DATA, else ~/.cache/fastalign/datasets)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="write every measurement and the run's metadata as JSON (a .jsonl file: "
                             "append the run as one line)")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                        help="draw a PNG chart of the speed-ups over the fastest peer")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_command, handler=run_command)
    return parser


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on an ``argparse`` sub-parser set; the parsed namespace's
    ``func`` (also ``handler``) runs it and returns the exit status."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark fastalign's backends against PyG and torch.sparse",
        description=DESCRIPTION,
    )
    return _configure(parser)


def _features(value: str):
    """``--features``: a positive width or ``real``."""
    if value == "real":
        return value
    try:
        width = int(value)
    except ValueError:
        width = 0
    if width <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive width or 'real', got {value!r}")
    return width


def _suite_list(value: str) -> str:
    """``--suite``: one of SUITE_CHOICES or several, comma-separated."""
    items = _split(value) or []
    unknown = [v for v in items if v not in SUITE_CHOICES]
    if not items or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {', '.join(SUITE_CHOICES)}, comma-separated)")
    return ",".join(items)


def _suites(value: str):
    """The suites a ``--suite`` value names, in order, each once."""
    from .suites import LAYER_SUITES, SUITES

    out = []
    for item in value.split(","):
        for suite in {"all": SUITES, "layers": LAYER_SUITES}.get(item, (item,)):
            if suite not in out:
                out.append(suite)
    return tuple(out)


def _split(value: Optional[str]):
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def run_command(args: argparse.Namespace) -> int:
    import os

    from . import report
    from .runner import run_benchmarks

    if args.root is not None:
        if not os.path.isdir(args.root):
            print(f"fastalign bench: error: --root {args.root} is not a folder (it should hold Cora/, CiteSeer/, "
                  "PubMed/ with their raw/ files)", file=sys.stderr)
            return 2
    import warnings

    try:  # the output files first: a run never ends in a traceback over them
        if args.json_path:
            report.check_output(args.json_path, "--json")
        if args.plot_path:
            report.check_output(args.plot_path, "--plot", report.PLOT_SUFFIXES)
    except ValueError as exc:
        print(f"fastalign bench: error: {exc}", file=sys.stderr)
        return 2
    if args.max_minutes is not None and args.max_minutes <= 0:
        print("fastalign bench: error: --max-minutes must be positive", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads <= 0:
        print("fastalign bench: error: --threads must be positive", file=sys.stderr)
        return 2
    # torch.sparse's beta / invariant-check notices would drown the progress lines
    warnings.filterwarnings("ignore", message=r".*[Ss]parse (CSR tensor support|invariant checks).*")
    warnings.filterwarnings("ignore", message=r".*Converting sparse tensor to CSR.*")
    suites = _suites(args.suite)
    modes = ("fwd", "fwd+bwd") if args.mode == "both" else (args.mode,)
    timing = {"budget_s": args.budget} if args.budget is not None else None
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.device == "cpu" and args.sizes == "large" and not args.quiet:
        print("note: --sizes large is meant for GPUs; on CPU the big graphs run only where "
              "memory allows and take long", file=sys.stderr)
    command = " ".join(["fastalign", "bench"] + _argv_for_record(args))
    if args.sizes == "scaling":
        from .scaling import huge_pages

        if huge_pages()["torch_allocator"]:  # torch's switch: part of what to run again
            command = "THP_MEM_ALLOC_ENABLE=1 " + command
    from . import peers

    peers.COMPILE_OPTIONS.clear()
    if args.compile_dynamic:
        peers.COMPILE_OPTIONS["dynamic"] = True
    import torch

    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        run = run_benchmarks(
            suites, args.device, args.sizes, graphs=_split(args.graphs),
            backends=_split(args.backends), compile_peers=not args.no_compile,
            features=args.features, modes=modes, dtypes=_split(args.dtype) or ["float32"], timing=timing,
            measure_memory=not args.no_memory, progress=progress, command=command,
            max_seconds=args.max_minutes * 60 if args.max_minutes is not None else None,
            # a .jsonl file takes one row per run: only the finished report is appended
            on_graph_done=(lambda partial: report.write_json(partial, args.json_path))
            if args.json_path and not args.json_path.endswith(".jsonl") else None,
            root=args.root,
        )
    except ValueError as exc:
        print(f"fastalign bench: error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)
    print(report.render_markdown(run) if args.markdown else report.render_text(run))
    if args.sizes == "scaling":
        from . import scaling

        print()
        print(scaling.render(run))
    if args.json_path:
        report.write_json(run, args.json_path)
        print(f"wrote {args.json_path}", file=sys.stderr)
    if args.plot_path:
        if args.sizes == "scaling":
            from . import scaling

            scaling.plot(run, args.plot_path)  # time per edge against E, log-log
        else:
            report.plot(run, args.plot_path)
        print(f"wrote {args.plot_path}", file=sys.stderr)
    return 0


def _argv_for_record(args) -> list:
    out = ["--suite", args.suite, "--device", args.device, "--sizes", args.sizes]
    for flag, value in (("--graphs", args.graphs), ("--backends", args.backends),
                        ("--features", args.features if args.features != 64 else None),
                        ("--dtype", args.dtype if args.dtype != "float32" else None),
                        ("--budget", args.budget), ("--threads", args.threads),
                        ("--max-minutes", args.max_minutes)):
        if value is not None:
            out += [flag, str(value)]
    if args.mode != "both":
        out += ["--mode", args.mode]
    if args.no_compile:
        out.append("--no-compile")
    if args.compile_dynamic:
        out.append("--compile-dynamic")
    if args.no_memory:
        out.append("--no-memory")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="fastalign bench", description=DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
