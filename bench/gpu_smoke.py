#!/usr/bin/env python
"""Correctness at scale, before anything is timed: every op on each GPU backend (triton,
and cuda where fastalign._C_cuda is built) against an independent computation on a
power-law graph of 500,000 nodes and 40M edges (hubs of ~10k in-edges cut into
segments; E x F above 2^31, so 32-bit offset arithmetic would show), float32 and
bfloat16, forward and backward, F = 64. bench/gpu_check.py runs one process per group
of checks and backend (``--group``, ``--backend``), so that a crash costs only its rows.

Independent computations: torch.sparse.mm on CSR (cuSPARSE) for spmm sum/mean and the
GCN aggregation (its normalisation written out per edge), and the pure-PyTorch
reference backend run over chunks of destination rows for the rest (graph attention
included) (rows are independent
in the forward; the gradients of the chunks add up), so that no E x F tensor of the whole
graph is built. bfloat16 results are compared with the float32 truth.

Each check prints one line (PASS / FAIL with the relative error ||out - ref|| / ||ref||);
the exit code is 1 if any failed. Checks that do not fit --budget-s are recorded as
skipped. JIT compilation happens here, so the benchmark after it starts warm.

    python bench/gpu_smoke.py --budget-s 90 [--group kl --backend triton --records r.jsonl]
    python bench/gpu_smoke.py --dry-run     # CPU, the C++ backend standing in (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_report as R  # noqa: E402  (standard library only)

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
CHUNK_EDGES = 2_000_000  # reference chunks: ~1 GB per gathered E x 64 float64 tensor


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


def row_chunks(g, chunk_edges):
    """(r0, r1, sub-Graph of rows r0..r1-1 over all sources) covering the graph."""
    from fastalign import Graph

    rowptr = g.rowptr.long().cpu()
    r0, n = 0, g.num_dst
    while r0 < n:
        target = int(rowptr[r0]) + chunk_edges
        r1 = int(torch.searchsorted(rowptr, torch.tensor(target), right=True)) - 1
        r1 = min(max(r1, r0 + 1), n)
        e0, e1 = int(rowptr[r0]), int(rowptr[r1])
        sub = Graph((g.rowptr[r0:r1 + 1] - g.rowptr[r0]).contiguous(), g.col[e0:e1], g.num_src,
                    validate=False)
        yield r0, r1, e0, e1, sub
        r0 = r1


class Smoke:
    def __init__(self, budget_s, backends, dtypes, chunk_edges, checks=None, group="all", records=None):
        """``backends``: {label: backend name} (a dry run's labels name the GPU backend
        that a CPU one stands in for); ``checks``: the labels to run (None: all)."""
        self.end = time.monotonic() + budget_s
        self.backends, self.dtypes, self.chunk = backends, dtypes, chunk_edges
        self.checks, self.group, self.records = checks, group, records
        self.faults = R.Faults()
        self.failed = 0
        self.rows = []
        self.truths = {}  # op -> reference tensors (the inputs are the same for every dtype)

    def report(self, op, backend, dtype, status, err=None, ms=None, tol=None):
        dn = str(dtype).replace("torch.", "")
        line = f"  {op:24s} {backend:7s} {dn:9s} {status:7s}"
        if err is not None:
            line += f" rel err {err:.2e} (tol {tol:.0e})"
        if ms is not None:
            line += f"  {ms:8.1f} ms"
        print(line, flush=True)
        self.rows.append((op, backend, dn, status, err))
        if self.records:
            R.append_record(self.records, dict(kind="smoke", group=self.group, check=op, backend=backend,
                                               dtype=dn, status=status, rel_err=err, tol=tol, ms=ms))

    def check(self, op, dtype, run, truth):
        """run(backend) -> tensors; truth() -> float64 tensors (computed once per op)."""
        if self.checks is not None and op not in self.checks:
            return
        tol = TOL[dtype]
        for backend, name in self.backends.items():
            if time.monotonic() > self.end:
                self.report(op, backend, dtype, "skipped (time)")
                continue
            try:
                if op not in self.truths:
                    self.truths[op] = truth()
                want = self.truths[op]
                self.faults.crash(backend)
                t = time.monotonic()
                got = run(name)
                if got[0].is_cuda:
                    torch.cuda.synchronize()
                ms = (time.monotonic() - t) * 1e3
                errs = [rel_err(a, b) for a, b in zip(got, want)]
                worst = max(errs)
                ok = worst <= tol and all(torch.isfinite(a).all() for a in got)
                if not ok:
                    self.failed += 1
                self.report(op, backend, dtype, "PASS" if ok else "FAIL", worst, ms, tol)
            except Exception as exc:  # one failure must not end the check
                self.failed += 1
                self.report(op, backend, dtype, f"ERROR {type(exc).__name__}: {str(exc)[:160]}")
                traceback.print_exc()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=90.0)
    ap.add_argument("--nodes", type=int, default=500_000)
    ap.add_argument("--edges", type=int, default=40_000_000)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--group", choices=sorted(R.SMOKE_GROUPS) + ["all"], default="all")
    ap.add_argument("--backend", choices=("triton", "cuda", "all"), default="all")
    ap.add_argument("--records", default=None, help="append one JSON line per check to this file")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU tensors, a small graph, the C++ backend standing in for the GPU ones")
    args = ap.parse_args(argv)
    R.Faults().at_start()
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # torch's CSR beta notices

    import fastalign
    from fastalign import Graph, backends
    from fastalign.ops.gcn_aggregate import gcn_norm_state

    wanted = ("triton", "cuda") if args.backend == "all" else (args.backend,)
    if args.dry_run:
        dev = torch.device("cpu")
        # the C++ backend stands in for each GPU backend; one of them when all are asked for
        names = {b: "cpu" for b in wanted} if args.backend != "all" else {"cpu": "cpu"}
        dtypes = [torch.float32]
        args.nodes, args.edges = min(args.nodes, 3000), min(args.edges, 40_000)
        chunk = 5_000
    else:
        if not torch.cuda.is_available():
            print("no CUDA device", flush=True)
            return 2
        dev = torch.device("cuda")
        names = {b: b for b in wanted if backends.is_available(b, dev)}
        dtypes, chunk = [torch.float32, torch.bfloat16], CHUNK_EDGES
    checks = None if args.group == "all" else R.SMOKE_GROUPS[args.group]
    print(f"gpu_smoke: backends {names}, checks {args.group}, device {dev}", flush=True)
    t0 = time.monotonic()
    from fastalign.bench.graphs import power_law_edge_index

    ei = power_law_edge_index(args.nodes, args.edges, seed=0, device=dev)  # the benchmark's graph
    g = Graph.from_edge_index(ei.to(torch.int32), num_nodes=args.nodes)
    del ei
    rt, ct, pt = g.transpose()
    n, E, F = g.num_dst, g.num_edges, args.width
    print(f"graph: N={n} E={E} max in-degree {int(g.in_degree.max())} "
          f"max out-degree {int((rt[1:] - rt[:-1]).max())} (built in {time.monotonic() - t0:.1f} s)",
          flush=True)
    smoke = Smoke(args.budget_s - (time.monotonic() - t0), names, dtypes, chunk, checks, args.group, args.records)
    if not args.dry_run:  # a backend asked for that cannot run here: its rows say why
        from fastalign import extensions

        for b in wanted:
            if b not in names:
                why = extensions.why_unavailable(b) or "not available on this device"
                for dtype in dtypes:
                    for op in checks or [c for grp in R.SMOKE_GROUPS.values() for c in grp]:
                        smoke.report(op, b, dtype, f"unavailable ({why})")
    gen = torch.Generator(device=dev).manual_seed(1)

    def rand(*shape, scale=1.0, uniform=False):
        """Inputs on the bfloat16 grid: every dtype sees the same numbers, so one float32
        truth serves all, and bfloat16 is judged on its arithmetic, not its inputs."""
        t = torch.rand(*shape, generator=gen, device=dev) if uniform else \
            torch.randn(*shape, generator=gen, device=dev)
        return (t * scale).to(torch.bfloat16).float()

    x32, gout32, peer32 = rand(n, F), rand(n, F), rand(n, F)
    gs32, z32, gk32 = rand(E), rand(E, scale=3.0), rand(n, uniform=True)
    # the truth in float64 (a float32 reference is itself ~1e-4 off on the structure KL)
    x64, gout64, peer64 = x32.double(), gout32.double(), peer32.double()
    gs64, z64, gk64 = gs32.double(), z32.double(), gk32.double()
    ones = torch.ones(E, device=dev, dtype=torch.float64)
    A = torch.sparse_csr_tensor(g.rowptr, g.col, ones, (n, n))
    At = torch.sparse_csr_tensor(rt, ct, ones, (n, n))
    sigma = float(F)  # l1 similarities of N(0,1) rows of width F: well scaled

    def grads(fn, x, gout):
        x = x.clone().requires_grad_()
        out = fn(x)
        out.backward(gout)
        return out.detach(), x.grad

    for dtype in dtypes:
        x, gout, peer = x32.to(dtype), gout32.to(dtype), peer32.to(dtype)

        # spmm sum / mean: cuSPARSE, forward and the x gradient (A^T gout)
        deg = g.in_degree.clamp(min=1).to(dev).double().unsqueeze(1)
        smoke.check("spmm sum fwd+bwd", dtype,
                    lambda b: grads(lambda v: fastalign.spmm(g, v, "sum", backend=b), x, gout),
                    lambda: (torch.sparse.mm(A, x64), torch.sparse.mm(At, gout64)))
        smoke.check("spmm mean fwd+bwd", dtype,
                    lambda b: grads(lambda v: fastalign.spmm(g, v, "mean", backend=b), x, gout),
                    lambda: (torch.sparse.mm(A, x64) / deg, torch.sparse.mm(At, gout64 / deg)))

        # spmm max: the reference over row chunks (the gradient chunks add up)
        def max_truth():
            xr = x64.clone().requires_grad_()
            out = torch.empty(n, F, device=dev, dtype=torch.float64)
            for r0, r1, _, _, sub in row_chunks(g, smoke.chunk):
                o = fastalign.spmm(sub, xr, "max", backend="torch")
                o.backward(gout64[r0:r1])
                out[r0:r1] = o.detach()
            return out, xr.grad

        smoke.check("spmm max fwd+bwd", dtype,
                    lambda b: grads(lambda v: fastalign.spmm(g, v, "max", backend=b), x, gout), max_truth)

        # GCN aggregation: the normalised operator written out per edge, on cuSPARSE
        def gcn_truth():
            dis, loop = gcn_norm_state(g, None, True, False, torch.float64)
            row, col = g.row, g.col.long()
            norm = dis[row] * dis[col] * (row != col)
            An = torch.sparse_csr_tensor(g.rowptr, g.col, norm, (n, n))
            Ant = torch.sparse_csr_tensor(rt, ct, norm[pt], (n, n))
            diag = (loop * dis * dis).unsqueeze(1)
            return torch.sparse.mm(An, x64) + diag * x64, torch.sparse.mm(Ant, gout64) + diag * gout64

        smoke.check("gcn_aggregate fwd+bwd", dtype,
                    lambda b: grads(lambda v: fastalign.gcn_aggregate(g, v, backend=b), x, gout), gcn_truth)

        # edge similarity (l1) and edge softmax: per-edge outputs, by chunks of rows
        def sim_truth():
            xr = x64.clone().requires_grad_()
            out = torch.empty(E, device=dev, dtype=torch.float64)
            for r0, r1, e0, e1, sub in row_chunks(g, smoke.chunk):
                s = fastalign.edge_similarity(sub, (xr[r0:r1], xr), "l1", sigma=sigma, backend="torch")
                s.backward(gs64[e0:e1])
                out[e0:e1] = s.detach()
            return out, xr.grad

        smoke.check("edge_similarity l1", dtype,
                    lambda b: grads(lambda v: fastalign.edge_similarity(g, v, "l1", sigma=sigma, backend=b),
                                    x, gs32.to(dtype)), sim_truth)

        def softmax_truth():
            zr = z64.clone().requires_grad_()
            out = torch.empty(E, device=dev, dtype=torch.float64)
            for r0, r1, e0, e1, sub in row_chunks(g, smoke.chunk):
                p = fastalign.edge_softmax(sub, zr[e0:e1], backend="torch")
                p.backward(gs64[e0:e1])
                out[e0:e1] = p.detach()
            return out, zr.grad

        smoke.check("edge_softmax fwd+bwd", dtype,
                    lambda b: grads(lambda v: fastalign.edge_softmax(g, v, backend=b), z32.to(dtype),
                                    gs32.to(dtype)), softmax_truth)

        # structure KL (l1, peer detached), per node, and the student's gradient, at
        # tau = 0.1: a per-node KL of about 0.1 (about 1e-3 at tau = 1, where float32
        # cancellation in the KL's difference of log-sum-exps would need a loose
        # tolerance), so the float32 tolerance can stay tight without flaking
        def kl_truth():
            hr = x64.clone().requires_grad_()
            out = torch.empty(n, device=dev, dtype=torch.float64)
            for r0, r1, _, _, sub in row_chunks(g, smoke.chunk):
                kl = fastalign.structure_kl(sub, (hr[r0:r1], hr), (peer64[r0:r1], peer64), "l1",
                                            sigma=sigma, tau=0.1, reduction="none", backend="torch")
                kl.backward(gk64[r0:r1])
                out[r0:r1] = kl.detach()
            return out, hr.grad

        smoke.check("structure_kl l1 fwd+bwd", dtype,
                    lambda b: grads(lambda v: fastalign.structure_kl(g, v, peer, "l1", sigma=sigma, tau=0.1,
                                                                     reduction="none", backend=b),
                                    x, gk32.to(dtype)), kl_truth)
        # graph attention (8 heads x F/8 channels; no added loops and no dropout, so that
        # the reference over row chunks, whose edge positions and node ids are local, is
        # the same function): out and the x gradient
        heads = 8
        a_src32, a_dst32 = rand(n, heads), rand(n, heads)

        def gat(v, a_s, a_d, graph, backend):
            out = fastalign.gat_aggregate(graph, v.view(v.size(0), heads, -1), a_s, a_d,
                                          add_self_loops=False, backend=backend)
            return out.reshape(out.size(0), -1)

        def gat_truth():
            xr = x64.clone().requires_grad_()
            out = torch.empty(n, F, device=dev, dtype=torch.float64)
            a_s, a_d = a_src32.double(), a_dst32.double()
            for r0, r1, _, _, sub in row_chunks(g, smoke.chunk):
                o = gat(xr, a_s, a_d[r0:r1], sub, "torch")
                o.backward(gout64[r0:r1])
                out[r0:r1] = o.detach()
            return out, xr.grad

        a_s, a_d = a_src32.to(dtype), a_dst32.to(dtype)
        smoke.check("gat_aggregate 8 heads fwd+bwd", dtype,
                    lambda b: grads(lambda v: gat(v, a_s, a_d, g, b), x, gout), gat_truth)
        del x, gout, peer
    passed = sum(r[3] == "PASS" for r in smoke.rows)
    print(f"gpu_smoke: {passed} passed, {smoke.failed} failed, "
          f"{len(smoke.rows) - passed - smoke.failed} skipped in {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if smoke.failed else 0


if __name__ == "__main__":
    sys.exit(main())
