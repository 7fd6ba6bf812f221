#!/usr/bin/env python
"""GPU benchmark of the Triton backend against its peers, side by side in one process.

Graphs: docs/design.md's power-law recipe (dst = perm[floor(u^1.6 N)], src uniform, self
loops dropped, seeded): fastalign.bench.graphs.power_law_edge_index, drawn on the CPU
(the same graph on every machine) and built on the device, int32 indices:
arxiv-like (N=169,343, E=2,332,486), reddit-like (232,965 / 114,615,892), products-like
(2,449,029 / 123,718,280).

Measured with fastalign.bench.timing (median of CUDA-event timings after a warm-up that
also JIT-compiles; peak memory as torch.cuda.max_memory_allocated above the level before
the call):
  * device copy bandwidth (clone of a 4 GB buffer, bytes read + written);
  * spmm forward (sum): ours vs torch.sparse.mm on CSR (cuSPARSE) vs torch.compile of
    gather + index_add_ (and the "cuda" backend when fastalign._C_cuda is built);
  * spmm forward+backward (x) vs torch.sparse.mm forward+backward;
  * GCN layer forward+backward: fastalign.nn.GCNConv(cached=True) vs PyG GCNConv
    (cached=True) eager and under torch.compile;
  * structure_kl forward+backward (l1, tau=1) vs the PyG-style loss eager and compiled,
    time and peak memory (ours also with the opt-in atomic single-pass backward);
  * achieved bandwidth of our kernels: a byte model (each index and gathered feature row
    counted once per edge, outputs once) over time, also as a fraction of the copy
    bandwidth. Gathers can hit L2, so this is an effective figure.

Sections run in priority order (F=64 on every graph first, then F=128/256) against a
deadline (--budget-s); whatever does not fit is recorded as skipped. Writes
bench_gpu.json and bench_gpu.md under --out.

    python bench/bench_gpu.py --out gpu_check_out [--quick] [--budget-s 300]
    TRITON_INTERPRET=1 python bench/bench_gpu.py --smoke --out /tmp/b   # CPU dry run
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch

from fastalign.bench.graphs import power_law_edge_index
from fastalign.bench.runner import is_oom
from fastalign.bench.timing import peak_memory, time_call

GRAPHS = {
    "arxiv": (169_343, 2_332_486),
    "reddit": (232_965, 114_615_892),
    "products": (2_449_029, 123_718_280),
}
SMOKE_GRAPHS = {"tiny": (300, 3_000), "tiny-hub": (200, 6_000)}


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


# --------------------------------------------------------------------------- helpers
def timeit(fn, dev, reps, max_s=3.0, warmup=2):
    """Median milliseconds of ``fn`` (CUDA events) after ``warmup`` calls (two: compiled
    peers compile again on their second call, e.g. once PyG's GCNConv has filled its
    cache), for at most ``reps`` calls or ``max_s`` seconds."""
    t = time_call(fn, dev, warmup=warmup, min_reps=1, max_reps=reps, budget_s=max_s, cuda_events=True)
    return t.median_s * 1e3


def with_env(fn, **env):
    """``fn`` run with environment variables set (restored after)."""
    def run():
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return run


def _gather_index_add(x, src, dst, n: int):
    out = torch.zeros(n, x.size(1), dtype=x.dtype, device=x.device)
    return out.index_add_(0, dst, x.index_select(0, src))


# --------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, args, dev):
        self.args, self.dev = args, dev
        self.records = []
        self.deadline = Deadline(args.budget_s)
        self.copy_gbs = None
        self._compiled = {}
        self.plans = []
        self.peer_width = 64  # the issue's reference points; the first width in --smoke

    def compiled(self, key, factory):
        """One torch.compile(dynamic=True) per peer function (per width for modules), kept
        across graphs: a single compile serves every graph size (compile time would not
        fit the device budget otherwise)."""
        from fastalign.bench import peers as P

        if key not in self._compiled:
            self._compiled[key] = P.compiled(factory(), dynamic=True)
        return self._compiled[key]

    def save(self):
        """JSON and markdown after every record: a run cut short keeps what it measured."""
        meta = getattr(self, "meta", {})
        with open(os.path.join(self.args.out, "bench_gpu.json"), "w") as f:
            json.dump(dict(meta, copy_gbs=self.copy_gbs, records=self.records, plans=self.plans), f, indent=1)
        with open(os.path.join(self.args.out, "bench_gpu.md"), "w") as f:
            f.write(f"# fastalign GPU benchmark\n\n{json.dumps(meta)}\n\n{summarise(self.records, self.copy_gbs)}\n")

    def record(self, **rec):
        self.records.append(rec)
        self.save()
        ms = rec.get("ms")
        mem = rec.get("peak_bytes")
        print(
            f"  {rec['graph']:9s} F={rec['F']:<4d} {rec['dtype']:8s} {rec['op']:13s} {rec['impl']:22s} "
            + (f"{ms:9.3f} ms" if ms is not None else f"{rec.get('status', ''):>12s}")
            + (f"  peak {mem / 2**20:9.1f} MiB" if mem is not None else "")
            + (f"  {rec['gbs']:7.0f} GB/s" if rec.get("gbs") else ""),
            flush=True,
        )

    def measure(self, base, impl, fn, *, model_bytes=None, mem=False, need_s=1.0):
        rec = dict(base, impl=impl)
        if self.deadline.left() < need_s:
            self.record(**rec, status="skipped (time)")
            return None
        try:
            ms = timeit(fn, self.dev, self.args.reps, max_s=min(3.0, max(self.deadline.left() / 4, 0.2)))
            rec["ms"] = ms
            if mem:
                rec["peak_bytes"] = peak_memory(fn, self.dev)
            if model_bytes:
                rec["model_bytes"] = model_bytes
                rec["gbs"] = model_bytes / (ms * 1e-3) / 1e9
                if self.copy_gbs:
                    rec["frac_copy"] = rec["gbs"] / self.copy_gbs
        except Exception as exc:  # record and go on: one peer failing must not end the run
            rec["status"] = "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc)[:200]}"
            if not is_oom(exc):
                traceback.print_exc()
        finally:
            gc.collect()
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        self.record(**rec)
        return rec.get("ms")

    # ------------------------------------------------------------------ sections
    def copy_bandwidth(self):
        n = (4 << 30) // 4 if self.dev.type == "cuda" else 1 << 20
        a = torch.empty(n, dtype=torch.float32, device=self.dev)
        ms = timeit(lambda: a.clone(), self.dev, 10)
        self.copy_gbs = 2 * a.numel() * 4 / (ms * 1e-3) / 1e9
        print(f"device copy: {self.copy_gbs:.0f} GB/s", flush=True)
        del a

    def graph_section(self, gname, n, e, widths, dtypes, peers):
        import fastalign
        from fastalign import Graph, backends
        from fastalign.bench import peers as P
        from fastalign.kernels.heuristics import rows_packing
        from fastalign.kernels.segments import row_plan
        from fastalign.nn import GCNConv

        dev, args = self.dev, self.args
        t0 = time.monotonic()
        ei = power_law_edge_index(n, e, seed=0, device=dev)
        g = Graph.from_edge_index(ei.to(torch.int32), num_nodes=n)
        g.transpose()
        E = g.num_edges
        ei64 = ei  # PyG peers take int64 edge_index
        print(f"[{gname}] N={n} E={E} max in-degree {int(g.in_degree.max())} "
              f"(built in {time.monotonic() - t0:.1f}s)", flush=True)
        ours = ["triton"] + (["cuda"] if backends.is_available("cuda", dev) else [])
        compiled_sum = self.compiled("gather_index_add", lambda: _gather_index_add)
        for F in widths:
            for dtype in dtypes:
                dn = str(dtype).replace("torch.", "")
                base = dict(graph=gname, N=n, E=E, F=F, dtype=dn)
                el = torch.finfo(dtype).bits // 8
                x = torch.randn(n, F, device=dev).to(dtype)
                spmm_bytes = 4 * (n + 1) + 4 * E + E * F * el + n * F * el
                csr = torch.sparse_csr_tensor(
                    g.rowptr, g.col, torch.ones(E, dtype=dtype, device=dev), (n, n)
                )
                # ---- spmm forward
                b = dict(base, op="spmm_fwd")
                for be in ours:
                    self.measure(b, f"fastalign[{be}]", lambda be=be: fastalign.spmm(g, x, backend=be),
                                 model_bytes=spmm_bytes)
                if rows_packing(row_plan(g.rowptr), F, dtype) is not None:
                    # the packed rows' own figure: the same op, one row per program
                    self.measure(b, "fastalign[triton] one row per program",
                                 with_env(lambda: fastalign.spmm(g, x, backend="triton"),
                                          FASTALIGN_TRITON_PACK_ROWS="0"),
                                 model_bytes=spmm_bytes)
                self.measure(b, "torch.sparse.mm (cuSPARSE)", lambda: torch.sparse.mm(csr, x))
                if peers and (F == self.peer_width or args.full_peers):
                    src, dst = ei64[0], ei64[1]
                    self.measure(b, "compile(gather+index_add_)", lambda: compiled_sum(x, src, dst, n), need_s=30)
                # ---- spmm forward + backward (x)
                b = dict(base, op="spmm_fwd_bwd")
                xg = x.clone().requires_grad_()
                gout = torch.randn(n, F, device=dev).to(dtype)

                def fb(fn):
                    def run():
                        xg.grad = None
                        fn().backward(gout)
                    return run

                for be in ours:
                    self.measure(b, f"fastalign[{be}]", fb(lambda be=be: fastalign.spmm(g, xg, backend=be)),
                                 model_bytes=2 * spmm_bytes)
                self.measure(b, "torch.sparse.mm", fb(lambda: torch.sparse.mm(csr, xg)))
                # ---- GCN layer forward + backward (float32: PyG's reference points)
                if dtype == torch.float32:
                    b = dict(base, op="gcn_fwd_bwd")
                    for be in ours:
                        conv = GCNConv(F, F, cached=True, backend=be).to(dev)
                        self.measure(b, f"fastalign[{be}]", fb(lambda conv=conv: conv(xg, g)),
                                     model_bytes=2 * spmm_bytes, mem=True)
                    if peers and P.have_pyg():
                        pconv = P.pyg_gcn_conv(F, F).to(dev)
                        self.measure(b, "PyG GCNConv eager", fb(lambda: pconv(xg, ei64)), mem=True, need_s=5)
                        if F == self.peer_width or args.full_peers:
                            cconv = self.compiled(("gcn", F), lambda: P.pyg_gcn_conv(F, F).to(dev))
                            # one compiled module per width serves every graph: drop the
                            # previous graph's cached normalisation (cached=True)
                            cconv._orig_mod._cached_edge_index = None
                            cconv._orig_mod._cached_adj_t = None
                            self.measure(b, "PyG GCNConv compiled", fb(lambda: cconv(xg, ei64)),
                                         mem=True, need_s=40)
                # ---- GATConv (8 heads x F/8 channels) forward + backward (float32, as PyG)
                if dtype == torch.float32 and F % 8 == 0:
                    b = dict(base, op="gat_fwd_bwd")
                    from fastalign.nn import GATConv

                    for be in ours:
                        gconv = GATConv(F, F // 8, heads=8, backend=be).to(dev)
                        self.measure(b, f"fastalign[{be}]", fb(lambda gconv=gconv: gconv(xg, g)), mem=True)
                    if peers and P.have_pyg() and (F == self.peer_width or args.full_peers):
                        from torch_geometric.nn import GATConv as PyGGATConv

                        est = 3 * E * F * 4  # the eager layer's E x heads x channels messages and grads
                        if dev.type == "cuda" and est > 1.1 * torch.cuda.mem_get_info(dev)[0]:
                            self.record(**dict(b, impl="PyG GATConv eager", status="skipped (memory)"))
                        else:
                            pgat = PyGGATConv(F, F // 8, heads=8).to(dev)
                            self.measure(b, "PyG GATConv eager", fb(lambda: pgat(xg, ei64)), mem=True, need_s=5)
                        cgat = self.compiled(("gat", F), lambda: PyGGATConv(F, F // 8, heads=8).to(dev))
                        self.measure(b, "PyG GATConv compiled", fb(lambda: cgat(xg, ei64)), mem=True, need_s=40)
                # ---- structure_kl forward + backward
                b = dict(base, op="skl_fwd_bwd")
                hs = torch.randn(n, F, device=dev).to(dtype).requires_grad_()
                hp = torch.randn(n, F, device=dev).to(dtype)

                def kl_run(fn):
                    def run():
                        hs.grad = None
                        fn().backward()
                    return run

                # forward: 2 students' gathers; backward: both sides, recomputed
                kl_bytes = 3 * (2 * E * F * el + 4 * E) + 4 * n * F * el
                for be in ours:
                    self.measure(
                        b, f"fastalign[{be}]",
                        kl_run(lambda be=be: fastalign.structure_kl(g, hs, hp, "l1", tau=1.0, backend=be)),
                        model_bytes=kl_bytes, mem=True,
                    )
                # the opt-in single-pass backward (source gradients by atomics)
                self.measure(
                    b, "fastalign[triton] atomic bwd",
                    with_env(kl_run(lambda: fastalign.structure_kl(g, hs, hp, "l1", tau=1.0, backend="triton")),
                             FASTALIGN_TRITON_SKL_BACKWARD="atomic"),
                    model_bytes=kl_bytes * 2 // 3, mem=True,
                )
                if peers and P.have_pyg() and dtype == torch.float32 and (F == self.peer_width or args.full_peers):
                    loss = lambda: P.pyg_structure_loss(hs, hp, ei64, n, "l1", 1.0)  # noqa: E731
                    est = 4 * E * F * el  # the eager loss's E x F intermediates (119 GB on reddit)
                    if dev.type == "cuda" and est > 1.1 * torch.cuda.mem_get_info(dev)[0]:  # else try: OOM is caught
                        self.record(**dict(b, impl="PyG-style loss eager", status="skipped (memory)"))
                    else:
                        self.measure(b, "PyG-style loss eager", kl_run(loss), mem=True, need_s=8)
                    closs = self.compiled("pyg_loss", lambda: P.pyg_structure_loss)
                    self.measure(b, "PyG-style loss compiled",
                                 kl_run(lambda: closs(hs, hp, ei64, n, "l1", 1.0)), mem=True, need_s=60)
                del x, xg, gout, hs, hp, csr
        # what the Triton backend chose for this graph: segment plan and tuned configs
        for side, rp in (("csr", g.rowptr), ("transpose", g.transpose()[0])):
            pl = row_plan(rp)
            self.plans.append(dict(
                graph=gname, side=side, split=pl.split, max_degree=pl.max_degree,
                avg_degree=pl.avg_degree, long_rows=pl.num_long, segments=pl.num_segs,
                configs={repr(k): list(v) for k, v in pl.configs.items()},
            ))
            print(f"  plan {side}: {pl!r} configs {self.plans[-1]['configs']}", flush=True)
        del g, ei, ei64
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def summarise(records, copy_gbs):
    """Markdown table + goal ratios against the best peer of each (graph, F, dtype, op)."""
    peers_of = {
        "spmm_fwd": ("torch.sparse.mm (cuSPARSE)",),
        "spmm_fwd_bwd": ("torch.sparse.mm",),
        "gcn_fwd_bwd": ("PyG GCNConv compiled",),
        "skl_fwd_bwd": ("PyG-style loss compiled",),
    }
    idx = {(r["graph"], r["F"], r["dtype"], r["op"], r["impl"]): r for r in records}
    lines = [
        f"device copy bandwidth: {copy_gbs:.0f} GB/s" if copy_gbs else "",
        "",
        "| graph | F | dtype | op | implementation | ms | peak MiB | vs peer | GB/s (model) | of copy BW |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        peer = None
        for p in peers_of.get(r["op"], ()):
            peer = idx.get((r["graph"], r["F"], r["dtype"], r["op"], p))
            if peer is None and r["op"] == "spmm_fwd" and r["dtype"] == "bfloat16":
                peer = idx.get((r["graph"], r["F"], "float32", r["op"], p))
        ratio = ""
        if peer and peer.get("ms") and r.get("ms") and r["impl"].startswith("fastalign"):
            ratio = f"{r['ms'] / peer['ms']:.2f}x"
        ms = f"{r['ms']:.3f}" if r.get("ms") is not None else r.get("status", "")
        mem = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else ""
        gbs = f"{r['gbs']:.0f}" if r.get("gbs") else ""
        frac = f"{100 * r['frac_copy']:.0f}%" if r.get("frac_copy") else ""
        lines.append(f"| {r['graph']} | {r['F']} | {r['dtype']} | {r['op']} | {r['impl']} | {ms} | {mem} | {ratio} | {gbs} | {frac} |")
    lines += ["", "vs peer: our time / the peer's (spmm: cuSPARSE fp32 for bf16 rows too when no bf16 "
              "peer; gcn: PyG compiled; skl: PyG-style compiled)."]
    lines += goals(records)
    lines += backend_choice(records)
    return "\n".join(lines)


# (op, our dtype, peer impl, peer dtype, graphs, time ratio at most, peak-memory ratio at most)
GOALS = (
    ("spmm_fwd", "float32", "torch.sparse.mm (cuSPARSE)", "float32", ("reddit", "products"), 0.75, None),
    ("spmm_fwd", "float32", "torch.sparse.mm (cuSPARSE)", "float32", ("arxiv",), 1.0, None),
    ("spmm_fwd", "bfloat16", "torch.sparse.mm (cuSPARSE)", "float32", ("arxiv", "reddit", "products"), 0.5, None),
    ("spmm_fwd_bwd", "float32", "torch.sparse.mm", "float32", ("arxiv", "reddit", "products"), 0.4, None),
    ("gcn_fwd_bwd", "float32", "PyG GCNConv compiled", "float32", ("arxiv", "reddit", "products"), 0.5, None),
    ("skl_fwd_bwd", "float32", "PyG-style loss compiled", "float32", ("arxiv", "reddit", "products"), 0.25, 0.10),
    ("skl_fwd_bwd", "bfloat16", "PyG-style loss compiled", "float32", ("arxiv", "reddit", "products"), 0.25, 0.10),
    ("gat_fwd_bwd", "float32", "PyG GATConv compiled", "float32", ("reddit",), 0.333, 0.10),  # 3x faster
)
OURS = ("fastalign[triton]", "fastalign[cuda]")


def goals(records, width=64):
    """One line per goal and graph at F = ``width``: the best of our backends (by time)
    against the peer, met / missed / not measured."""
    idx = {(r["graph"], r["F"], r["dtype"], r["op"], r["impl"]): r for r in records}
    lines = ["", f"## goals (F = {width}; ours: the faster of {', '.join(OURS)})", "",
             "| op | dtype | graph | ours | peer | time ratio | goal | peak ratio | goal | result |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for op, dtype, peer_impl, peer_dtype, graphs, t_goal, m_goal in GOALS:
        for graph in graphs:
            ours = [idx.get((graph, width, dtype, op, impl)) for impl in OURS]
            ours = [r for r in ours if r and r.get("ms")]
            peer = idx.get((graph, width, peer_dtype, op, peer_impl))
            mine = min(ours, key=lambda r: r["ms"]) if ours else None
            if mine is None or not (peer and peer.get("ms")):
                why = "ours" if mine is None else f"peer {peer.get('status', 'missing') if peer else 'missing'}"
                lines.append(f"| {op} | {dtype} | {graph} | | | | {t_goal}x | | "
                             f"{'' if m_goal is None else f'{m_goal:.0%}'} | not measured ({why}) |")
                continue
            t = mine["ms"] / peer["ms"]
            ok = t <= t_goal
            mem = ""
            if m_goal is not None:
                if mine.get("peak_bytes") is not None and peer.get("peak_bytes"):
                    m = mine["peak_bytes"] / peer["peak_bytes"]
                    mem = f"{m:.1%}"
                    ok = ok and m <= m_goal
                else:
                    mem, ok = "n/a", False
            lines.append(f"| {op} | {dtype} | {graph} | {mine['impl']} {mine['ms']:.3f} ms | {peer['ms']:.3f} ms | "
                         f"{t:.2f}x | {t_goal}x | {mem} | {'' if m_goal is None else f'{m_goal:.0%}'} | "
                         f"{'met' if ok else 'missed'} |")
    return lines


def backend_choice(records):
    """Triton against the hand-written CUDA kernels, op by op: the measurement that
    fastalign.backends.PREFERENCE_BY_OP is to be set from. Per op, cuda's time over
    triton's on every (graph, F, dtype) where both ran, their geometric mean, and the
    faster backend by that mean."""
    backend_of = {"fastalign[triton]": "triton", "fastalign[cuda]": "cuda"}
    times = {}
    for r in records:
        if r.get("ms") and r["impl"] in backend_of:
            times.setdefault((r["op"], r["graph"], r["F"], r["dtype"]), {})[backend_of[r["impl"]]] = r["ms"]
    ratios = {}
    for (op, *_), t in times.items():
        if "triton" in t and "cuda" in t:
            ratios.setdefault(op, []).append(t["cuda"] / t["triton"])
    if not ratios:
        return []
    lines = ["", "## triton vs cuda (cuda ms / triton ms; below 1: cuda faster)", "",
             "| op | rows | geometric mean | range | faster |", "| --- | ---: | ---: | --- | --- |"]
    for op, values in ratios.items():
        mean = statistics.geometric_mean(values)
        lines.append(f"| {op} | {len(values)} | {mean:.2f} | {min(values):.2f} to {max(values):.2f} | "
                     f"{'cuda' if mean < 1 else 'triton'} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--quick", action="store_true", help="F=64 only, fewer repetitions")
    ap.add_argument("--smoke", action="store_true", help="tiny graphs (CPU dry run under TRITON_INTERPRET=1)")
    ap.add_argument("--graphs", default=None, help="comma list of " + ",".join(GRAPHS))
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=330.0, help="deadline for all sections")
    ap.add_argument("--no-peers", action="store_true", help="ours and cuSPARSE only")
    ap.add_argument("--full-peers", action="store_true", help="compiled / PyG peers at every F")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    graphs = SMOKE_GRAPHS if args.smoke else GRAPHS
    if args.graphs:
        graphs = {k: GRAPHS.get(k) or SMOKE_GRAPHS[k] for k in args.graphs.split(",")}
    widths = [int(w) for w in args.widths.split(",")]
    if args.quick:
        widths, args.reps = [64], min(args.reps, 5)
    if args.smoke:
        widths, args.reps = [8], 1
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if dev.type == "cpu":
        dtypes = [torch.float32]  # bf16 arithmetic is wrong in the interpreter
    os.makedirs(args.out, exist_ok=True)

    from fastalign.bench.runner import git_commit

    bench = Bench(args, dev)
    if args.smoke:
        bench.peer_width = widths[0]
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(), device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        torch=torch.__version__, args=vars(args),
    )
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    bench.meta = meta
    print(json.dumps(meta), flush=True)
    bench.copy_bandwidth()
    # priority: the first width on every graph (with the peers), then the other widths
    plan = [(w, name) for w in widths[:1] for name in graphs] + [(w, name) for name in graphs for w in widths[1:]]
    for w, name in plan:
        if bench.deadline.left() < 5:
            print(f"[{name}] F={w}: skipped (time)", flush=True)
            bench.records.append(dict(graph=name, F=w, dtype="-", op="-", impl="-", status="skipped (time)"))
            continue
        n, e = graphs[name]
        try:
            bench.graph_section(name, n, e, [w], dtypes, peers=not args.no_peers)
        except Exception as exc:
            traceback.print_exc()
            bench.records.append(dict(graph=name, F=w, dtype="-", op="-", impl="-",
                                      status=f"error: {type(exc).__name__}: {str(exc)[:200]}"))
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        bench.save()
    bench.save()
    print(summarise(bench.records, bench.copy_gbs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
