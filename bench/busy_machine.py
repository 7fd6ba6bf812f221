#!/usr/bin/env python
"""How much a second busy process slows fastalign's CPU kernels down.

Each op's forward (and the spmm forward+backward) on a tiny graph (a mini-batch: 256
nodes, 768 edges), a small one (Cora-sized: 2,708 nodes, 10,556 edges) and a large one
(the 100k-node power-law graph), F = 64, float32, with torch's default thread count:
the median and the mean call time alone, then beside one CPU-bound competitor process
(a busy loop, bounded in time so that it cannot outlive the run), then alone again. The
slowdown is the beside / alone ratio of the medians; the mean shows the stalls a median
hides (a call that waits a scheduler time slice for its second thread).

    python bench/busy_machine.py [--budget 2.0] [--records FILE.jsonl]

The run is appended as one row to bench/results/busy_machine_cpu.jsonl (``--records``;
``--records ''`` for none).

Run it on an otherwise quiet machine: the point is one competitor, not an unknown load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

import records

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

COMPETITOR = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def graphs():
    from fastalign.bench.graphs import power_law_edge_index

    gen = torch.Generator().manual_seed(0)
    tiny = torch.randint(0, 256, (2, 768), generator=gen)
    small = torch.randint(0, 2708, (2, 10556), generator=gen)
    return {"tiny (256 / 768)": (tiny, 256),
            "small (2,708 / 10,556)": (small, 2708),
            "large (100,000 / 1,000,000)": (power_law_edge_index(100_000, 1_000_000, seed=0), 100_000)}


def ops(graph, n, width=64):
    import fastalign

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, width, generator=gen)
    peer = torch.randn(n, width, generator=gen)
    logits = torch.randn(graph.num_edges, generator=gen)
    xg = x.clone().requires_grad_()
    grad = torch.randn(n, width, generator=gen)

    def fwd_bwd():
        return torch.autograd.grad(fastalign.spmm(graph, xg, backend="cpu"), xg, grad)

    with_grad = {"spmm fwd+bwd": fwd_bwd}
    no_grad = {
        "spmm": lambda: fastalign.spmm(graph, x, backend="cpu"),
        "gcn_aggregate": lambda: fastalign.gcn_aggregate(graph, x, backend="cpu"),
        "edge_similarity": lambda: fastalign.edge_similarity(graph, x, backend="cpu"),
        "edge_softmax": lambda: fastalign.edge_softmax(graph, logits, backend="cpu"),
        "structure_kl": lambda: fastalign.structure_kl(graph, x, peer, backend="cpu"),
    }
    return no_grad, with_grad


def call_ms(fn, budget_s, no_grad):
    """(median, mean) ms per call over budget_s seconds of calls (at least 5)."""
    ctx = torch.no_grad() if no_grad else torch.enable_grad()
    with ctx:
        for _ in range(3):
            fn()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < budget_s or len(times) < 5:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, statistics.fmean(times) * 1e3


def measure(cases, budget_s):
    return {name: call_ms(fn, budget_s, no_grad) for name, (fn, no_grad) in cases.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    records.add_options(ap, "busy_machine_cpu", data=False)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per op and phase")
    args = ap.parse_args(argv)

    import fastalign

    cases = {}
    for gname, (ei, n) in graphs().items():
        graph = fastalign.Graph.from_edge_index(ei, num_nodes=n)
        graph.transpose()
        no_grad, with_grad = ops(graph, n)
        for name, fn in no_grad.items():
            cases[f"{gname} | {name}"] = (fn, True)
        for name, fn in with_grad.items():
            cases[f"{gname} | {name}"] = (fn, False)

    alone = measure(cases, args.budget)
    seconds = int(len(cases) * args.budget * 3 + 60)
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR.format(seconds=seconds)])
    try:
        time.sleep(0.5)
        beside = measure(cases, args.budget)
    finally:
        competitor.kill()
        competitor.wait()
    again = measure(cases, args.budget)

    print(f"torch threads {torch.get_num_threads()}; ms per call, median (mean)")
    print(f"{'case':50s} {'alone':>17s} {'beside':>17s} {'again':>17s} {'slowdown':>9s}")
    rows = []
    for name in cases:
        base = min(alone[name][0], again[name][0])
        mean_base = min(alone[name][1], again[name][1])
        rows.append({"case": name, "alone_ms": alone[name][0], "beside_ms": beside[name][0],
                     "again_ms": again[name][0], "slowdown": beside[name][0] / base,
                     "alone_mean_ms": alone[name][1], "beside_mean_ms": beside[name][1],
                     "again_mean_ms": again[name][1], "mean_slowdown": beside[name][1] / mean_base})
        cells = " ".join(f"{m:8.3f} ({a:6.3f})" for m, a in (alone[name], beside[name], again[name]))
        print(f"{name:50s} {cells} {beside[name][0] / base:8.2f}x")
    if args.records:
        records.append(args.records, {"threads": torch.get_num_threads(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
