#!/usr/bin/env python
"""What the input checks cost: each op's forward on the 100k-node power-law graph
(1M edges, F = 64, float32) with the Python-level index checks of fastalign.validation
as they run (cached on the Graph's tensors after the first call) against the same call
with those checks switched off, interleaved round by round in one process; plus what the
first, uncached check of a CSR costs (one scan of rowptr and col).

The C++ kernels' own checks (a row-pointer scan and a vectorised pass over each run of indices) are
part of both timings here; to see their cost, run ``--ops-only`` against a build from
before they existed and compare the medians (whole processes, alternated).

    OMP_NUM_THREADS=2 python bench/validation_cost.py [--rounds 15] [--json out.json]
    python bench/validation_cost.py --ops-only      # just the op timings, one line each
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def power_law(n, e, seed=0):
    try:
        from fastalign.bench.graphs import power_law_edge_index
    except ImportError:  # pragma: no cover
        raise SystemExit("needs fastalign.bench.graphs")
    return power_law_edge_index(n, e, seed=seed)


def ops_of(g, x, peer, logits):
    import fastalign

    return {
        "spmm sum": lambda: fastalign.spmm(g, x, "sum"),
        "spmm mean": lambda: fastalign.spmm(g, x, "mean"),
        "spmm max": lambda: fastalign.spmm(g, x, "max"),
        "gcn_aggregate": lambda: fastalign.gcn_aggregate(g, x),
        "edge_similarity l1": lambda: fastalign.edge_similarity(g, x, "l1"),
        "edge_softmax": lambda: fastalign.edge_softmax(g, logits),
        "structure_kl l1": lambda: fastalign.structure_kl(g, x, peer, "l1"),
    }


def time_ms(fn, reps):
    best = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best.append((time.perf_counter() - t) * 1e3)
    return min(best)


@contextlib.contextmanager
def checks_off():
    """The Python-level checks of fastalign.validation as no-ops (what they cost is the
    difference)."""
    from fastalign import validation as V

    def skip(*args, **kwargs):
        return None

    def pass_through(name, t):  # check_2d returns its tensor
        return t

    names = ("check_csr", "check_rowptr", "check_columns", "check_perm", "check_arg", "check_rows",
             "check_length", "check_2d")
    saved = {n: getattr(V, n) for n in names}
    for n in names:
        setattr(V, n, pass_through if n == "check_2d" else skip)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(V, n, f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3, help="calls per measurement (the minimum is kept)")
    ap.add_argument("--ops-only", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from fastalign import Graph

    torch.manual_seed(0)
    g = Graph.from_edge_index(power_law(args.nodes, args.edges), num_nodes=args.nodes)
    x = torch.randn(args.nodes, args.width)
    peer = torch.randn(args.nodes, args.width)
    logits = torch.randn(g.num_edges)
    ops = ops_of(g, x, peer, logits)
    for fn in ops.values():  # warm: caches, normalisation
        fn()
    if args.ops_only:
        for name, fn in ops.items():
            ms = statistics.median(time_ms(fn, args.reps) for _ in range(args.rounds))
            print(f"{name:20s} {ms:9.3f} ms", flush=True)
        return 0

    from fastalign import validation as V

    rows = {}
    for name, fn in ops.items():
        on, off = [], []
        for _ in range(args.rounds):
            on.append(time_ms(fn, args.reps))
            with checks_off():
                off.append(time_ms(fn, args.reps))
        ratios = [a / b for a, b in zip(on, off)]
        rows[name] = dict(ms_checked=statistics.median(on), ms_unchecked=statistics.median(off),
                          ratio_median=statistics.median(ratios))
        r = rows[name]
        print(f"{name:20s} checked {r['ms_checked']:9.3f} ms  unchecked {r['ms_unchecked']:9.3f} ms  "
              f"cost {100 * (r['ratio_median'] - 1):+6.2f}%", flush=True)
    # the first check of a CSR nobody registered: one scan of rowptr and col
    scans = []
    for _ in range(args.rounds):
        rp, col = g.rowptr.clone(), g.col.clone()
        t = time.perf_counter()
        V.check_csr(rp, col, args.nodes)
        scans.append((time.perf_counter() - t) * 1e3)
    first = statistics.median(scans)
    print(f"first check of an unregistered CSR (rowptr + col scan): {first:.3f} ms", flush=True)
    if args.json:
        meta = dict(nodes=args.nodes, edges=g.num_edges, width=args.width, threads=torch.get_num_threads(),
                    date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rounds=args.rounds)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, ops=rows, first_scan_ms=first), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
