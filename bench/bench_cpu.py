"""CPU benchmark of the fastalign "cpu" backend against its peers, pair by pair.

Graph: the CPU benchmark graph of docs/design.md, fastalign.bench.graphs.power_law_edge_index(100_000,
1_000_000, seed=0) (heavy-tailed in-degree, self loops dropped), features standard
normal, F = 64, float32, 2 threads. Each pair runs in the same process and is reported
as a ratio (ours / peer; below 1 is faster):

  spmm_fwd       fastalign.spmm(sum)                vs torch.sparse.mm on a CSR tensor (MKL)
  spmm_fwd_bwd   the same, forward + backward in x  vs torch.sparse.mm forward + backward
  gcn_layer      Linear + fastalign.gcn_aggregate   vs PyG GCNConv(cached=True) on edge_index,
                 forward + backward                    eager and under torch.compile
  structure_loss fastalign.structure_kl(l1, sigma=100, peer detached), forward + backward
                 vs the PyG-style loss (fastalign.bench.peers.pyg_structure_loss: gather
                 both endpoints, per-edge kernel, torch_geometric.utils.softmax, KL,
                 scatter), eager and under torch.compile; plus peak memory

Timing: two warm-up calls of each (compiles, caches), then ours and the peer are called
alternately until each ran at least 3 times and the budget (--budget s) is spent; the
median of each. Alternating makes the ratio robust to load from other processes. Peak memory: fastalign.bench.timing.peak_memory: the process's peak RSS
(VmHWM, reset through /proc/self/clear_refs after malloc_trim) minus the RSS before the
call, so it sees every allocation (torch tensors, MKL and C++ scratch), not only tensors.

Usage:
    python bench/bench_cpu.py --out results.json      # the table, ratios and memory
    python bench/bench_cpu.py --only structure_loss   # some pairs (words of their names)
    pytest bench/bench_cpu.py --benchmark-only        # the same contenders, pytest-benchmark
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fastalign  # noqa: E402
from fastalign.bench.peers import compiled, csr_adjacency, pyg_gcn_conv, pyg_structure_loss  # noqa: E402
from fastalign.bench.timing import peak_memory  # noqa: E402
from tests.graphs import power_law_edge_index  # noqa: E402

NUM_NODES, NUM_EDGES, WIDTH, THREADS = 100_000, 1_000_000, 64, 2


class Setup:
    """The graph, features and every contender's callable (built once)."""

    def __init__(self, num_nodes=NUM_NODES, num_edges=NUM_EDGES, width=WIDTH):
        torch.manual_seed(0)
        self.n = num_nodes
        self.edge_index = power_law_edge_index(num_nodes, num_edges, seed=0)
        self.graph = fastalign.Graph.from_edge_index(self.edge_index, num_nodes=num_nodes)
        self.graph.transpose()  # cached, as in training
        self.adj = csr_adjacency(self.edge_index, num_nodes)
        self.x = torch.randn(num_nodes, width)
        self.grad = torch.randn(num_nodes, width)
        self.h_student = torch.randn(num_nodes, width)
        self.h_peer = torch.randn(num_nodes, width)
        self.lin = torch.nn.Linear(width, width, bias=False)
        self.bias = torch.nn.Parameter(torch.zeros(width))
        self.pyg_conv = pyg_gcn_conv(width, width)
        self.pyg_conv_compiled = compiled(self.pyg_conv)
        self.pyg_loss_compiled = compiled(pyg_structure_loss)

    # spmm --------------------------------------------------------------------
    def spmm_fwd_ours(self):
        with torch.no_grad():
            return fastalign.spmm(self.graph, self.x, "sum", backend="cpu")

    def spmm_fwd_torch(self):
        with torch.no_grad():
            return torch.sparse.mm(self.adj, self.x)

    def spmm_fwd_bwd_ours(self):
        x = self.x.detach().requires_grad_()
        fastalign.spmm(self.graph, x, "sum", backend="cpu").backward(self.grad)
        return x.grad

    def spmm_fwd_bwd_torch(self):
        x = self.x.detach().requires_grad_()
        torch.sparse.mm(self.adj, x).backward(self.grad)
        return x.grad

    # GCN layer -----------------------------------------------------------------
    def _zero(self, module_params):
        for p in module_params:
            p.grad = None

    def gcn_ours(self):
        self._zero([self.lin.weight, self.bias])
        out = fastalign.gcn_aggregate(self.graph, self.lin(self.x), backend="cpu") + self.bias
        out.backward(self.grad)
        return self.lin.weight.grad

    def _gcn_pyg(self, conv):
        self._zero(self.pyg_conv.parameters())
        conv(self.x, self.edge_index).backward(self.grad)
        return self.pyg_conv.lin.weight.grad

    def gcn_pyg_eager(self):
        return self._gcn_pyg(self.pyg_conv)

    def gcn_pyg_compiled(self):
        return self._gcn_pyg(self.pyg_conv_compiled)

    # structure loss ------------------------------------------------------------
    def loss_ours(self):
        hs = self.h_student.detach().requires_grad_()
        fastalign.structure_kl(self.graph, hs, self.h_peer, "l1", sigma=100.0, backend="cpu").backward()
        return hs.grad

    def _loss_pyg(self, fn):
        hs = self.h_student.detach().requires_grad_()
        fn(hs, self.h_peer, self.edge_index, self.n, "l1", 1.0, 100.0).backward()
        return hs.grad

    def loss_pyg_eager(self):
        return self._loss_pyg(pyg_structure_loss)

    def loss_pyg_compiled(self):
        return self._loss_pyg(self.pyg_loss_compiled)


# (name, ours, peer, measure memory)
PAIRS = [
    ("spmm_fwd vs torch.sparse.mm", "spmm_fwd_ours", "spmm_fwd_torch", False),
    ("spmm_fwd_bwd vs torch.sparse.mm", "spmm_fwd_bwd_ours", "spmm_fwd_bwd_torch", False),
    ("gcn_layer vs PyG GCNConv eager", "gcn_ours", "gcn_pyg_eager", False),
    ("gcn_layer vs PyG GCNConv compiled", "gcn_ours", "gcn_pyg_compiled", False),
    ("structure_loss vs PyG-style eager", "loss_ours", "loss_pyg_eager", True),
    ("structure_loss vs PyG-style compiled", "loss_ours", "loss_pyg_compiled", True),
]


def _commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def time_pair(ours, peer, *, warmup=2, min_reps=3, budget_s=2.0):
    """Median wall time of each, timed alternately (ours, peer, ours, ...), so that load
    from other processes on a shared machine hits both alike."""
    for _ in range(warmup):
        ours()
        peer()
    times = ([], [])
    start = time.perf_counter()
    while len(times[0]) < min_reps or time.perf_counter() - start < budget_s:
        for fn, out in zip((ours, peer), times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        if len(times[0]) >= 100:
            break
    return statistics.median(times[0]), statistics.median(times[1]), len(times[0])


def run(out_path=None, budget_s=2.0, num_nodes=NUM_NODES, num_edges=NUM_EDGES, only=None):
    torch.set_num_threads(THREADS)
    setup = Setup(num_nodes, num_edges)
    memory, rows = {}, []
    for name, ours, peer, with_memory in PAIRS:
        if only and not any(word in name for word in only):
            continue
        t_ours, t_peer, reps = time_pair(getattr(setup, ours), getattr(setup, peer), budget_s=budget_s)
        print(f"  {name:40s} {t_ours * 1e3:9.1f} ms vs {t_peer * 1e3:9.1f} ms ({reps} reps)", flush=True)
        row = {"pair": name, "ours_ms": t_ours * 1e3, "peer_ms": t_peer * 1e3, "ratio": t_ours / t_peer, "reps": reps}
        if with_memory:
            for fn in (ours, peer):
                if fn not in memory:
                    memory[fn] = peak_memory(getattr(setup, fn), "cpu")
            row["ours_peak_bytes"], row["peer_peak_bytes"] = memory[ours], memory[peer]
            if memory[ours] is not None and memory[peer]:
                row["memory_ratio"] = memory[ours] / memory[peer]
        rows.append(row)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "command": " ".join(["python", "bench/bench_cpu.py"] + sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "graph": {"nodes": num_nodes, "edges": setup.graph.num_edges, "features": WIDTH},
        "torch": torch.__version__,
        "pairs": rows,
    }
    print(render(record))
    if out_path:
        with open(out_path, "w") as f:
            json.dump(record, f, indent=2)
    return record


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f} MiB"


def render(record):
    lines = [
        "| pair | ours (ms) | peer (ms) | ours / peer | peak memory ours / peer |",
        "|---|---:|---:|---:|---|",
    ]
    for r in record["pairs"]:
        mem = ""
        if "ours_peak_bytes" in r:
            mem = f"{_mib(r['ours_peak_bytes'])} / {_mib(r['peer_peak_bytes'])}"
            if "memory_ratio" in r:
                mem += f" ({r['memory_ratio']:.1%})"
        lines.append(f"| {r['pair']} | {r['ours_ms']:.1f} | {r['peer_ms']:.1f} | {r['ratio']:.3f} | {mem} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:  # script mode without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def setup():
        if not fastalign.backends.is_available("cpu"):
            pytest.skip("fastalign._C is not built")
        torch.set_num_threads(THREADS)
        return Setup()

    CONTENDERS = sorted({fn for _, ours, peer, _ in PAIRS for fn in (ours, peer)})

    @pytest.mark.parametrize("contender", CONTENDERS)
    def test_bench(benchmark, setup, contender):
        call = getattr(setup, contender)
        call()  # warm-up: compiles, caches
        benchmark.group = contender.rsplit("_", 1)[0] if "pyg" not in contender else contender.split("_pyg")[0]
        benchmark.pedantic(call, rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per contender")
    parser.add_argument("--nodes", type=int, default=NUM_NODES, help="smaller graphs for a smoke test")
    parser.add_argument("--edges", type=int, default=NUM_EDGES)
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="run only the pairs whose name contains one of these words (e.g. structure_loss)")
    args = parser.parse_args()
    run(args.out, args.budget, args.nodes, args.edges, args.only)
