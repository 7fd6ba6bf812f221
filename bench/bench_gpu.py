#!/usr/bin/env python
"""One process of the GPU check's benchmark: one graph, one part (bench/gpu_check.py runs
each in its own process, so that a crash or a hang costs only its rows).

Parts (the rows: bench/gpu_report.py ``part_rows``), F = 64, float32 and bfloat16:

* ``triton``: the Triton backend (spmm sum forward, max forward, sum forward+backward,
  GCN layer, GAT layer, structure KL forward+backward) with its variants (one row per
  program instead of packed rows, 8 warps for the heaviest kernels, the atomic
  structure-KL backward), and cuSPARSE (``torch.sparse.mm`` on CSR) forward and
  forward+backward: the headline;
* ``cuda``: the CUDA backend's rows;
* ``peers``: ``torch.compile`` of gather + ``index_add_``, PyG's GCNConv and GATConv, the
  PyG-style structure loss, eager and compiled (``dynamic=True``; compiled ahead on a
  small graph by ``--warm-peer``, so that the disk caches serve every graph).

Graphs: docs/design.md's power-law recipe (``fastalign.bench.graphs.power_law_edge_index``,
drawn on the CPU, so the same graph on every machine), int32 CSR, cached on disk between
processes (``--graph-cache``).

Each row is timed twice (``fastalign.bench.timing``): per call between CUDA events
(median), and k calls back to back between one pair of events (the device time, without
the per-call host cost); peak memory where the row is about memory; spmm rows also
carry their relative error against cuSPARSE, a correctness check at full scale. Rows
are appended to ``--records`` as they are measured.

    python bench/bench_gpu.py --graph reddit --part triton --records out/records.jsonl
    python bench/bench_gpu.py --graph reddit --part triton --warm     # compile, no timing
    python bench/bench_gpu.py --warm-peer gcn                        # compile a peer ahead
    python bench/bench_gpu.py --dry-run --graph arxiv --part triton --records r.jsonl  # CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_report as R  # noqa: E402  (standard library only)
import torch  # noqa: E402

from fastalign.bench.graphs import power_law_edge_index  # noqa: E402
from fastalign.bench.runner import is_oom  # noqa: E402
from fastalign.bench.timing import peak_memory, time_back_to_back, time_call  # noqa: E402

HEAVY_KERNELS = {"spmm_max_fwd": ("agg",), "skl_fwd_bwd": ("skl_fwd", "skl_grad")}


@contextlib.contextmanager
def env_set(**env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_graph(name, sizes, dev, cache_dir):
    """(Graph, edge_index int64) of a benchmark graph on ``dev``: its int32 CSR from the
    disk cache, else generated and cached (written to a temporary name, then renamed:
    processes building the same graph at once never read half a file)."""
    from fastalign import Graph

    n, e = sizes[name]
    path = os.path.join(cache_dir, f"{name}-{n}-{e}.pt") if cache_dir else None
    if path and os.path.exists(path):
        rowptr, col = torch.load(path)
    else:  # drawn on the CPU (one random stream everywhere), sorted into CSR on the device
        ei = power_law_edge_index(n, e, seed=0, device=dev)
        g = Graph.from_edge_index(ei.to(torch.int32), num_nodes=n)
        rowptr, col = g.rowptr.cpu(), g.col.cpu()
        del ei, g
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            torch.save((rowptr, col), tmp)
            os.replace(tmp, path)
    g = Graph(rowptr.to(dev), col.to(dev), n, validate=False)
    g.transpose()
    return g, g.edge_index.long()  # the peers take PyG's int64 edge_index


class Worker:
    def __init__(self, args, dev):
        self.args, self.dev = args, dev
        self.faults = R.Faults()
        self.end = time.monotonic() + args.budget_s
        self.notes = dict(kv.split("=", 1) for kv in args.note)
        # the dry run (CPU) lets the C++ and reference backends stand in for the GPU ones
        self.backend = {"triton": "cpu", "cuda": "torch"} if args.dry_run else {"triton": "triton", "cuda": "cuda"}
        self.planned = set()

    def left(self):
        return self.end - time.monotonic()

    def emit(self, rec):
        rec = dict(kind="bench", **rec, **self.notes)
        if self.args.records:
            R.append_record(self.args.records, rec)
        ms, b2b = rec.get("ms"), rec.get("ms_b2b")
        print(f"  {rec['graph']:9s} {rec['dtype']:8s} {rec['op']:13s} {rec['impl']:38s} "
              + (f"{ms:9.3f} ms/call {b2b:9.3f} ms b2b" if ms is not None else f"{rec.get('status', ''):>12s}")
              + (f"  peak {rec['peak_bytes'] / 2**20:9.1f} MiB" if rec.get("peak_bytes") is not None else "")
              + (f"  rel err {rec['rel_err']:.1e}" if rec.get("rel_err") is not None else ""), flush=True)

    def row(self, base, op, dtype, impl, fn, *, model_bytes=None, mem=False, check=None, need_s=1.0):
        """Time one planned row (warm-up, per call, back to back; peak memory if ``mem``;
        ``check()`` -> relative error), or record why not. Never raises."""
        key = (op, dtype, impl)
        assert key in self.planned, f"row {key} is not in gpu_report.part_rows"
        need_s *= self.faults.scale  # a rehearsal's caps are scaled
        rec = dict(base, F=R.WIDTH, dtype=dtype, op=op, impl=impl)
        if self.args.warm:  # compile and fill caches only
            try:
                self._call_first(fn, impl, base["graph"], op, dtype)
            except Exception as exc:
                print(f"  warm {op} {dtype} {impl}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            return
        if self.left() < need_s:
            self.emit(dict(rec, status="skipped (time)"))
            return
        try:
            if self.faults.oom(impl):
                raise RuntimeError("CUDA out of memory (injected by the dry run)")
            self._call_first(fn, impl, base["graph"], op, dtype)
            t = time_call(fn, self.dev, warmup=1, min_reps=3, max_reps=self.args.reps,
                          budget_s=min(1.0, max(self.left() / 8, 0.1)), cuda_events=True)
            rec["ms"], rec["reps"] = t.median_s * 1e3, t.reps
            calls = int(min(50, max(3, 0.3 / max(t.median_s, 1e-6))))
            rec["ms_b2b"] = time_back_to_back(fn, self.dev, calls) * 1e3
            rec["b2b_calls"] = calls
            if mem:
                rec["peak_bytes"] = peak_memory(fn, self.dev)
            if model_bytes:
                rec["model_bytes"] = model_bytes
                rec["gbs"] = model_bytes / (rec["ms_b2b"] * 1e-3) / 1e9
                if self.args.copy_gbs:
                    rec["frac_copy"] = rec["gbs"] / self.args.copy_gbs
            if check is not None:
                rec["rel_err"] = check()
        except Exception as exc:  # one row failing must not end the part
            rec.pop("ms", None)
            rec.pop("ms_b2b", None)
            rec["status"] = "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc)[:200]}"
            if not is_oom(exc):
                traceback.print_exc()
        finally:
            gc.collect()
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        self.emit(rec)

    def _call_first(self, fn, impl, graph, op, dtype):
        """The first call (Triton compiles here); in a dry run, the injected compile time."""
        if impl.startswith(R.TRITON):
            self.faults.compile(f"{graph}-{op}-{dtype}-{impl}", kernels=2 if "bwd" in op else 1)
        if impl.startswith(R.CUDA) or impl.startswith(R.TRITON):
            self.faults.crash("cuda" if impl.startswith(R.CUDA) else "triton")
        fn()
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------ parts
    def copy_bandwidth(self):
        n = (4 << 30) // 4 if self.dev.type == "cuda" else 1 << 20
        a = torch.empty(n, dtype=torch.float32, device=self.dev)
        t = time_call(lambda: a.clone(), self.dev, warmup=2, min_reps=5, max_reps=10, cuda_events=True)
        gbs = 2 * a.numel() * 4 / t.median_s / 1e9
        print(f"device copy: {gbs:.0f} GB/s", flush=True)
        if self.args.records:
            R.append_record(self.args.records, dict(kind="copy", copy_gbs=gbs, **self.notes))
        self.args.copy_gbs = gbs

    def ours(self, part, g, ei, n, E):
        """The rows of the ``triton`` or ``cuda`` part, in their planned order."""
        import fastalign
        from fastalign.nn import GATConv, GCNConv

        dev, be, F = self.dev, self.backend[part], R.WIDTH
        base = dict(graph=self.args.graph, N=n, E=E)
        force_warps = packed = None
        if part == "triton" and not self.args.dry_run:
            from fastalign.kernels.heuristics import force_warps, rows_packing
            from fastalign.kernels.segments import row_plan

            packed = {dn: rows_packing(row_plan(g.rowptr), F, getattr(torch, dn)) is not None for dn in R.DTYPES}
        inputs = {}

        def inp(dn):
            """The inputs of one dtype, made on first use (the same numbers in every part)."""
            if dn not in inputs:
                inputs.clear()  # one dtype's inputs at a time
                gc.collect()
                dtype = getattr(torch, dn)
                gen = torch.Generator(device="cpu").manual_seed(0)
                x = torch.randn(n, F, generator=gen).to(dev, dtype)
                csr = torch.sparse_csr_tensor(g.rowptr, g.col, torch.ones(E, dtype=dtype, device=dev), (n, n))
                d = dict(x=x, xg=x.clone().requires_grad_(), gout=torch.randn(n, F, generator=gen).to(dev, dtype),
                         hs=torch.randn(n, F, generator=gen).to(dev, dtype).requires_grad_(),
                         hp=torch.randn(n, F, generator=gen).to(dev, dtype), el=torch.finfo(dtype).bits // 8,
                         csr=csr)
                if not self.args.warm:  # cuSPARSE in float32 on the same inputs: the truth
                    csr32 = csr if dtype == torch.float32 else torch.sparse_csr_tensor(
                        g.rowptr, g.col, torch.ones(E, device=dev), (n, n))
                    d["truth"] = torch.sparse.mm(csr32, x.float()).double()
                inputs[dn] = d
            return inputs[dn]

        for op, dn, impl in R.part_rows(part):
            d = inp(dn)
            x, xg, gout, hs, hp = d["x"], d["xg"], d["gout"], d["hs"], d["hp"]
            spmm_bytes = 4 * (n + 1) + 4 * E + E * F * d["el"] + n * F * d["el"]
            kl_bytes = 3 * (2 * E * F * d["el"] + 4 * E) + 4 * n * F * d["el"]

            def fb(fn, xg=xg, gout=gout):
                def run():
                    xg.grad = None
                    fn().backward(gout)
                return run

            def kl(hs=hs, hp=hp, **env):
                def run():
                    hs.grad = None
                    with env_set(**env):
                        fastalign.structure_kl(g, hs, hp, "l1", tau=1.0, backend=be).backward()
                return run

            def rel(fn, d=d):
                def check():
                    out = fn().double()
                    return float((out - d["truth"]).norm() / d["truth"].norm().clamp(min=1e-30))
                return check

            if op == "spmm_fwd":
                if impl == R.CUSPARSE:
                    self.row(base, op, dn, impl, lambda csr=d["csr"], x=x: torch.sparse.mm(csr, x),
                             model_bytes=spmm_bytes)
                    continue
                if impl == R.ONE_ROW and packed is not None and not packed[dn]:
                    self.emit(dict(base, F=F, dtype=dn, op=op, impl=impl, status="n/a (rows not packed here)"))
                    continue
                env = dict(FASTALIGN_TRITON_PACK_ROWS="0") if impl == R.ONE_ROW else {}

                def spmm(x=x, env=env):
                    with env_set(**env):
                        return fastalign.spmm(g, x, backend=be)
                self.row(base, op, dn, impl, spmm, model_bytes=spmm_bytes, check=rel(spmm))
            elif op == "spmm_max_fwd":
                smax = lambda x=x: fastalign.spmm(g, x, "max", backend=be)  # noqa: E731
                self.row(base, op, dn, impl, self._warps(force_warps, op, smax) if impl == R.WARPS8 else smax,
                         model_bytes=spmm_bytes)
            elif op == "spmm_fwd_bwd":
                fn = (lambda csr=d["csr"], xg=xg: torch.sparse.mm(csr, xg)) if impl == R.SPARSE_MM else \
                    (lambda xg=xg: fastalign.spmm(g, xg, backend=be))
                self.row(base, op, dn, impl, fb(fn), model_bytes=2 * spmm_bytes)
            elif op == "gcn_fwd_bwd":
                conv = GCNConv(F, F, cached=True, backend=be).to(dev)
                self.row(base, op, dn, impl, fb(lambda conv=conv, xg=xg: conv(xg, g)), model_bytes=2 * spmm_bytes,
                         mem=True)
            elif op == "gat_fwd_bwd":
                gat = GATConv(F, F // 8, heads=8, backend=be).to(dev)
                self.row(base, op, dn, impl, fb(lambda gat=gat, xg=xg: gat(xg, g)), mem=True)
            elif op == "skl_fwd_bwd":
                if impl == R.ATOMIC:
                    fn, nbytes = kl(FASTALIGN_TRITON_SKL_BACKWARD="atomic"), kl_bytes * 2 // 3
                elif impl == R.WARPS8:
                    fn, nbytes = self._warps(force_warps, op, kl()), kl_bytes
                else:
                    fn, nbytes = kl(), kl_bytes
                self.row(base, op, dn, impl, fn, model_bytes=nbytes, mem=True)
            else:  # pragma: no cover - part_rows and this dispatch are kept together
                raise AssertionError(f"no way to measure {op}")

    @staticmethod
    def _warps(force_warps, op, fn):
        if force_warps is None:  # dry run: no Triton launch to change
            return fn

        def run():
            with force_warps(8, HEAVY_KERNELS[op]):
                return fn()
        return run

    def peers(self, g, ei, n, E):
        """The rows of the ``peers`` part, in their planned order."""
        from fastalign.bench import peers as P

        dev, F = self.dev, R.WIDTH
        base = dict(graph=self.args.graph, N=n, E=E)
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else None
        compile_ = (lambda f: f) if self.args.dry_run else (lambda f: P.compiled(f, dynamic=True))
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(n, F, generator=gen).to(dev)
        xg = x.clone().requires_grad_()
        gout = torch.randn(n, F, generator=gen).to(dev)
        hs = torch.randn(n, F, generator=gen).to(dev).requires_grad_()
        hp = torch.randn(n, F, generator=gen).to(dev)
        src, dst = ei[0], ei[1]

        def fb(module):
            def run():
                xg.grad = None
                module(xg, ei).backward(gout)
            return run

        def loss_run(fn):
            def run():
                hs.grad = None
                fn(hs, hp, ei, n, "l1", 1.0).backward()
            return run

        # the eager layers' E x F intermediates (messages and their gradients)
        eager_bytes = {"gcn_fwd_bwd": 3 * E * F * 4, "gat_fwd_bwd": 4 * E * F * 4, "skl_fwd_bwd": 4 * E * F * 4}
        for op, dn, impl in R.part_rows("peers"):
            rec = dict(base, F=F, dtype=dn, op=op, impl=impl)
            if op != "spmm_fwd" and not P.have_pyg():
                self.emit(dict(rec, status="n/a (no torch_geometric)"))
                continue
            if impl.endswith("eager") and free is not None and eager_bytes[op] > 1.5 * free:
                # clearly beyond the device: recorded without trying (an attempt that merely
                # runs out is recorded as OOM, itself a finding)
                self.emit(dict(rec, status=f"skipped (memory: needs ~{eager_bytes[op] / 2**30:.0f} GiB, "
                                           f"{free / 2**30:.0f} free)"))
                continue
            wrap = compile_ if impl.endswith("compiled") else (lambda f: f)
            if op == "spmm_fwd":
                gia = compile_(_gather_index_add)
                self.row(base, op, dn, impl, lambda: gia(x, src, dst, n), need_s=5)
            elif op == "gcn_fwd_bwd":
                self.row(base, op, dn, impl, fb(wrap(P.pyg_gcn_conv(F, F).to(dev))), mem=True, need_s=5)
            elif op == "gat_fwd_bwd":
                from torch_geometric.nn import GATConv

                self.row(base, op, dn, impl, fb(wrap(GATConv(F, F // 8, heads=8).to(dev))), mem=True, need_s=5)
            else:
                self.row(base, op, dn, impl, loss_run(wrap(P.pyg_structure_loss)), mem=True, need_s=5)

def _gather_index_add(x, src, dst, n: int):
    out = torch.zeros(n, x.size(1), dtype=x.dtype, device=x.device)
    return out.index_add_(0, dst, x.index_select(0, src))


def warm_peer(name, dev, dry_run):
    """Compile one peer (forward and backward, dynamic shapes) on a small graph, so that
    inductor's and Triton's disk caches hold it before the peers are timed."""
    faults = R.Faults()
    if dry_run:
        faults.compile(f"peer-{name}", kernels=6)
        return
    from fastalign.bench import peers as P

    n, e, F = 20_000, 200_000, R.WIDTH
    ei = power_law_edge_index(n, e, seed=0).to(dev)
    x = torch.randn(n, F, device=dev, requires_grad=True)
    if name == "gather_index_add":
        f = P.compiled(_gather_index_add, dynamic=True)
        run = lambda: f(x, ei[0], ei[1], n).sum().backward()  # noqa: E731
    elif name in ("gcn", "gat"):
        from torch_geometric.nn import GATConv

        m = P.pyg_gcn_conv(F, F) if name == "gcn" else GATConv(F, F // 8, heads=8)
        f = P.compiled(m.to(dev), dynamic=True)
        run = lambda: f(x, ei).sum().backward()  # noqa: E731
    else:
        f = P.compiled(P.pyg_structure_loss, dynamic=True)
        hp = torch.randn(n, F, device=dev)
        run = lambda: f(x, hp, ei, n, "l1", 1.0).backward()  # noqa: E731
    for _ in range(2):  # GCNConv(cached=True) compiles again once its cache is filled
        run()
    torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graph", choices=sorted(R.GRAPHS))
    ap.add_argument("--part", choices=("triton", "cuda", "peers"))
    ap.add_argument("--warm", action="store_true", help="call every row once (compile, cache the graph)")
    ap.add_argument("--warm-peer", choices=R.PEER_WARM)
    ap.add_argument("--records", default=None, help="append the rows to this JSON-lines file")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=120.0, help="no row starts after this")
    ap.add_argument("--graph-cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "fastalign_gpu_graphs"))
    ap.add_argument("--note", action="append", default=[], help="KEY=VALUE added to every record")
    ap.add_argument("--dry-run", action="store_true", help="CPU tensors, small graphs, CPU backends standing in")
    args = ap.parse_args(argv)
    R.Faults().at_start()
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # torch's CSR beta notices
    if args.dry_run:
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    else:
        dev = torch.device("cuda")
    if args.warm_peer:
        warm_peer(args.warm_peer, dev, args.dry_run)
        return 0
    if not (args.graph and args.part):
        ap.error("--graph and --part are needed (or --warm-peer)")
    sizes = R.DRY_GRAPHS if args.dry_run else R.GRAPHS
    t0 = time.monotonic()
    g, ei = load_graph(args.graph, sizes, dev, args.graph_cache)
    n, E = g.num_dst, g.num_edges
    print(f"[{args.graph}] N={n} E={E} max in-degree {int(g.in_degree.max())} "
          f"(ready in {time.monotonic() - t0:.1f} s)", flush=True)
    w = Worker(args, dev)
    w.planned = set(R.part_rows(args.part))
    args.copy_gbs = None  # measured by the triton part (the model bandwidth's yardstick)
    if args.part == "triton" and not args.warm:
        w.copy_bandwidth()
    if args.part == "peers":
        w.peers(g, ei, n, E)
    else:
        w.ours(args.part, g, ei, n, E)
    if args.part == "triton" and not args.warm and not args.dry_run and args.records:
        plans(args.graph, g, args.records)
    return 0


def plans(graph, g, records):
    """What the Triton backend chose on this graph: the segment plan of the CSR and of its
    transpose and the block configs of each op (kind "plan" records)."""
    from fastalign.kernels.segments import row_plan

    for side, rowptr in (("csr", g.rowptr), ("transpose", g.transpose()[0])):
        pl = row_plan(rowptr)
        R.append_record(records, dict(kind="plan", graph=graph, side=side, split=pl.split,
                                      max_degree=pl.max_degree, avg_degree=pl.avg_degree, long_rows=pl.num_long,
                                      segments=pl.num_segs,
                                      configs={repr(k): list(v) for k, v in pl.configs.items()}))


if __name__ == "__main__":
    sys.exit(main())
