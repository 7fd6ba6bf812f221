"""What a node reordering buys an aggregation, its own cost counted.

    FASTALIGN_DATA=<datasets> python bench/reorder.py --graphs cora,citeseer,pubmed,blocks-1e6,blocks-1e7

For each graph, the spmm forward (sum, F columns of float32 features) on the given
numbering and on each ``Graph.node_order`` method (``degree``, ``rcm``), timed in turns
(``fastalign.bench.timing.time_interleaved``), and the time the reordering itself takes
(``node_order`` plus ``reordered``): the row says after how many aggregations it has paid
for itself. ``blocks-1eK``: a block model of 10^K edges (mean degree 10, communities of
100 nodes, 90% of each node's edges inside its community) numbered at random, as data
sets often are; for it the row ``communities`` is the ideal order (by community), which
a reordering can at best find. Rows go to bench/results/reorder_cpu.jsonl
(``--records``; ``''`` for none); ``python bench/tables.py`` makes the docs' table.
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch

import records
from fastalign import Graph, spmm
from fastalign.bench.graphs import planetoid_edge_index
from fastalign.bench.timing import time_interleaved
from fastalign.datasets import _sparse_block_edges

COMMUNITY = 100  # nodes per block of the block model


def block_model(num_edges: int, seed: int = 0):
    """(Graph, the ideal order): a block model of about ``num_edges`` directed edges."""
    n = num_edges // 10
    gen = torch.Generator().manual_seed(seed)
    blocks = max(1, n // COMMUNITY)
    y = torch.arange(n) % blocks
    y = y[torch.randperm(n, generator=gen)]  # communities numbered at random
    src, dst = _sparse_block_edges(y, blocks, 10.0, 0.9, gen)
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return Graph.from_edge_index(edge_index, num_nodes=n), torch.argsort(y, stable=True)


def graph_of(name: str, root):
    if name.startswith("blocks-1e"):
        return block_model(10 ** int(name[len("blocks-1e"):]))
    edge_index, n = planetoid_edge_index(name, root)  # the graph alone (PubMed's features are not needed)
    return Graph.from_edge_index(edge_index, num_nodes=n), None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_options(p, "reorder_cpu")
    p.add_argument("--graphs", default="cora,citeseer,pubmed,blocks-1e6,blocks-1e7")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per order")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # scipy imported before the timings: its import is not the reordering's cost
    importlib.import_module("scipy.sparse.csgraph")

    for name in args.graphs.split(","):
        g, ideal = graph_of(name, args.root)
        x = torch.randn(g.num_src, args.width, generator=torch.Generator().manual_seed(1))
        orders = {"given": (g, None, 0.0)}
        methods = [("degree", "degree"), ("rcm", "rcm")] + ([("communities", ideal)] if ideal is not None else [])
        for label, how in methods:
            t0 = time.perf_counter()
            new, order = g.reordered(how)
            orders[label] = (new, order, time.perf_counter() - t0)
        calls = []
        for new, order, _ in orders.values():
            xs = x if order is None else x[order]
            calls.append(lambda new=new, xs=xs: spmm(new, xs, "sum"))
        timings = time_interleaved(calls, "cpu", rounds=3, budget_s=args.budget)
        base = timings[0].median_s
        rows = []
        for (label, (_, _, cost)), t in zip(orders.items(), timings):
            gain = base - t.median_s
            rows.append({"order": label, "spmm_ms": t.median_s * 1e3, "reorder_s": cost,
                         "speedup": base / t.median_s,
                         "pays_back_after_calls": (cost / gain) if gain > 0 and cost > 0 else None})
            print(f"{name:>12} {label:>12}: spmm {t.median_s * 1e3:9.3f} ms ({base / t.median_s:.2f}x), "
                  f"reordering {cost:.3f} s", flush=True)
        records.append(args.records, {"graph": name, "num_nodes": g.num_dst, "num_edges": g.num_edges,
                                      "width": args.width, "threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
