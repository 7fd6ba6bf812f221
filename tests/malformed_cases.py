"""Every registered op called with malformed index tensors, one corruption at a time
(run as a script by tests/test_malformed_inputs.py, in a child process: a case that
crashes the interpreter must not take the test run with it).

For each case it prints ``START<tab><case>`` before the call and
``END<tab><case><tab><outcome>`` after it, ``<outcome>`` being ``ok`` (no error), or the exception's type and message.
The parent fails on a case that did not end (crash or hang), that ended in anything but
ValueError / TypeError, or whose message does not name the problem.

    python tests/malformed_cases.py [--backends torch,cpu] [--namespace fastalign|fastalign_cpu]
"""

from __future__ import annotations

import argparse
import sys

import torch

import fastalign.ops  # noqa: F401  (registers torch.ops.fastalign)
from fastalign import Graph, backends

N = 7  # nodes; node 6 isolated


def valid_inputs():
    src = torch.tensor([1, 2, 3, 4, 5, 0, 0, 2, 3, 5, 1, 1])
    dst = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3, 4, 4, 5, 5])
    g = Graph.from_edge_index(torch.stack([src, dst]), num_nodes=N)
    rt, ct, pt = g.transpose()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(g.num_edges, generator=gen, dtype=torch.float64) + 0.5
    _, arg = fastalign.backends.get("torch").spmm_forward(g.rowptr, g.col, w, x, "max")
    return dict(rowptr=g.rowptr.clone(), col=g.col.clone(), rowptr_t=rt.clone(), col_t=ct.clone(),
                perm_t=pt.clone(), arg=arg.clone(), x=x, w=w, E=g.num_edges)


def corruptions(v):
    """(name, field, tensor): one index tensor replaced by a malformed one."""
    E = v["E"]
    rp, col = v["rowptr"], v["col"]
    out = []

    def put(t, i, value):
        t = t.clone()
        t[i] = value
        return t

    for field in ("col", "col_t"):
        t = v[field]
        out += [
            (f"{field}=2**40", field, put(t, 1, 2**40)),
            (f"{field}=-1", field, put(t, 1, -1)),
            (f"{field}=1000", field, put(t, 1, 1000)),
            (f"{field}=N", field, put(t, 1, N)),
        ]
    for field in ("rowptr", "rowptr_t"):
        t = v[field]
        out += [
            (f"{field}[-1] past the edges", field, put(t, -1, E + 40)),
            (f"{field}[-1] short of the edges", field, put(t, -1, E - 1)),
            (f"{field} decreasing", field, put(t, 2, int(t[3]) + 1)),
            (f"{field} entry 2**40", field, put(t, 2, 2**40)),
            (f"{field}[0] = 1", field, put(t, 0, 1)),
            (f"{field} float", field, t.double()),
            (f"{field} 2-D", field, t.view(1, -1)),
        ]
    out += [
        ("col int32 beside int64 rowptr", "col", col.int()),
        ("col too short", "col", col[:-1].clone()),
        ("perm_t=E", "perm_t", put(v["perm_t"], 0, E)),
        ("perm_t=-1", "perm_t", put(v["perm_t"], 0, -1)),
        ("perm_t int32", "perm_t", v["perm_t"].int()),
        ("perm_t too short", "perm_t", v["perm_t"][:-1].clone()),
        ("arg=E", "arg", put(v["arg"], (0, 0), E)),
        ("arg=-2", "arg", put(v["arg"], (0, 0), -2)),
        ("arg=2**40", "arg", put(v["arg"].long(), (0, 0), 2**40)),
        ("arg int16", "arg", v["arg"].short()),
        ("arg float", "arg", v["arg"].double()),
        ("arg an edge of another row", "arg", put(v["arg"], (0, 0), int(rp[3]))),
    ]
    return out


def op_calls(ns, backend):
    """name -> (fields it reads, fn(v) that calls the op)."""
    F = 4
    kern = ("l1", 2.0, 2, 1.0)
    if ns == "fastalign":
        ops = torch.ops.fastalign
        b = (backend,)
        calls = {
            "spmm sum": (("rowptr", "col"), lambda v: ops.spmm(v["rowptr"], v["col"], v["w"], v["x"], "sum",
                                                              None, None, None, None, *b)),
            "spmm max": (("rowptr", "col"), lambda v: ops.spmm(v["rowptr"], v["col"], v["w"], v["x"], "max",
                                                              None, None, None, None, *b)),
            "spmm_max_backward": (("col", "rowptr_t", "col_t", "perm_t", "arg"), lambda v: ops.spmm_max_backward(
                v["col"], v["rowptr_t"], v["col_t"], v["perm_t"], v["w"], v["x"], v["arg"], v["x"], True, *b)),
            "sddmm": (("rowptr", "col"), lambda v: ops.sddmm(v["rowptr"], v["col"], v["x"], v["x"], *b)),
            "gcn_aggregate": (("rowptr", "col"), lambda v: ops.gcn_aggregate(
                v["rowptr"], v["col"], v["w"], torch.ones(N, dtype=torch.float64), torch.ones(N, dtype=torch.float64),
                v["x"], None, None, None, None, *b)),
            "edge_similarity": (("rowptr", "col"), lambda v: ops.edge_similarity(
                v["rowptr"], v["col"], v["x"], v["x"], None, None, None, *kern, *b)),
            "edge_similarity_backward": (("rowptr", "col", "rowptr_t", "col_t", "perm_t"),
                                         lambda v: ops.edge_similarity_backward(
                v["rowptr"], v["col"], v["rowptr_t"], v["col_t"], v["perm_t"], v["x"], v["x"], v["w"], *kern, *b)),
            "edge_softmax": (("rowptr",), lambda v: ops.edge_softmax(v["rowptr"], v["w"], *b)),
            "edge_softmax_backward": (("rowptr",), lambda v: ops.edge_softmax_backward(v["rowptr"], v["w"], v["w"], *b)),
            "structure_kl": (("rowptr", "col"), lambda v: ops.structure_kl(
                v["rowptr"], v["col"], v["x"], v["x"], v["x"], v["x"], None, None, None, *kern, 1.0, False, *b)),
            "structure_kl_backward": (("rowptr", "col", "rowptr_t", "col_t", "perm_t"),
                                      lambda v: ops.structure_kl_backward(
                v["rowptr"], v["col"], v["rowptr_t"], v["col_t"], v["perm_t"], v["x"], v["x"], v["x"], v["x"],
                torch.zeros(N), torch.zeros(N), torch.zeros(N), torch.ones(N, dtype=torch.float64),
                *kern, 1.0, True, *b)),
        }
        if backends.has_fast_path(backend, ("structure_kl_forward_with_grad_state",
                                            "structure_kl_student_backward"), torch.float64):
            calls["structure_kl (grad state)"] = (("rowptr", "col"), lambda v: ops.structure_kl(
                v["rowptr"], v["col"], v["x"], v["x"], v["x"], v["x"], None, None, None, *kern, 1.0, True, *b))
            calls["structure_kl_student_backward"] = (("rowptr_t", "col_t", "perm_t"),
                                                      lambda v: ops.structure_kl_student_backward(
                v["rowptr_t"], v["col_t"], v["perm_t"], v["x"], v["x"], torch.zeros(N, F, dtype=torch.float64),
                torch.zeros(v["E"], 2, dtype=torch.float64), torch.ones(N, dtype=torch.float64), *kern, 1.0,
                False, *b))
        return calls
    backends.get("cpu")  # loads fastalign._C, which registers torch.ops.fastalign_cpu
    ops = torch.ops.fastalign_cpu  # the C++ kernels called directly: their own checks
    return {
        "spmm_forward sum": (("rowptr", "col"), lambda v: ops.spmm_forward(v["rowptr"], v["col"], v["w"], v["x"], "sum")),
        "spmm_forward max": (("rowptr", "col"), lambda v: ops.spmm_forward(v["rowptr"], v["col"], v["w"], v["x"], "max")),
        # the transpose is in the schema but this kernel does not read it
        "spmm_max_backward": (("col", "arg"), lambda v: ops.spmm_max_backward(
            v["col"], v["rowptr_t"], v["col_t"], v["perm_t"], v["w"], v["x"], v["arg"], v["x"], True)),
        "sddmm": (("rowptr", "col"), lambda v: ops.sddmm(v["rowptr"], v["col"], v["x"], v["x"])),
        "gcn_aggregate": (("rowptr", "col"), lambda v: ops.gcn_aggregate(
            v["rowptr"], v["col"], v["w"], torch.ones(N, dtype=torch.float64), torch.ones(N, dtype=torch.float64), v["x"])),
        "edge_similarity": (("rowptr", "col"), lambda v: ops.edge_similarity(v["rowptr"], v["col"], v["x"], v["x"], *kern)),
        "edge_similarity_backward": (("rowptr", "col", "rowptr_t", "col_t", "perm_t"),
                                     lambda v: ops.edge_similarity_backward(
            v["rowptr"], v["col"], v["rowptr_t"], v["col_t"], v["perm_t"], v["x"], v["x"], v["w"], *kern)),
        "edge_softmax": (("rowptr",), lambda v: ops.edge_softmax(v["rowptr"], v["w"])),
        "edge_softmax_backward": (("rowptr",), lambda v: ops.edge_softmax_backward(v["rowptr"], v["w"], v["w"])),
        "structure_kl_forward": (("rowptr", "col"), lambda v: ops.structure_kl_forward(
            v["rowptr"], v["col"], v["x"], v["x"], v["x"], v["x"], *kern, 1.0)),
        "structure_kl_forward_with_grad_state": (("rowptr", "col"), lambda v: ops.structure_kl_forward_with_grad_state(
            v["rowptr"], v["col"], v["x"], v["x"], v["x"], v["x"], *kern, 1.0)),
        "structure_kl_backward": (("rowptr", "col", "rowptr_t", "col_t", "perm_t"), lambda v: ops.structure_kl_backward(
            v["rowptr"], v["col"], v["rowptr_t"], v["col_t"], v["perm_t"], v["x"], v["x"], v["x"], v["x"],
            torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64),
            torch.ones(N, dtype=torch.float64), *kern, 1.0, True)),
        "structure_kl_student_backward": (("rowptr_t", "col_t", "perm_t"), lambda v: ops.structure_kl_student_backward(
            v["rowptr_t"], v["col_t"], v["perm_t"], v["x"], v["x"], torch.zeros(N, F, dtype=torch.float64),
            torch.zeros(v["E"], 2, dtype=torch.float64), torch.ones(N, dtype=torch.float64), *kern, 1.0, False)),
    }


# Corruptions that are none to an op: the C++ max backward is given no row pointer (so
# an int32 col has nothing to disagree with) and no row ranges (so an arg naming a valid
# edge of another row is, to it, a valid arg; it sums such entries in row order).
BLIND = {("fastalign_cpu", "spmm_max_backward", "arg an edge of another row"),
         ("fastalign_cpu", "spmm_max_backward", "col int32 beside int64 rowptr")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="torch,cpu")
    ap.add_argument("--namespace", default="fastalign")
    args = ap.parse_args(argv)
    base = valid_inputs()
    names = [args.namespace] if args.namespace == "fastalign_cpu" else args.backends.split(",")
    for backend in names:
        ns = args.namespace
        for op, (fields, call) in op_calls(ns, backend).items():
            call(dict(base))  # the valid inputs pass
            for cname, field, bad in corruptions(base):
                if field not in fields or (ns, op, cname) in BLIND:
                    continue
                case = f"{ns}:{backend}:{op}:{cname}"
                print(f"START\t{case}", flush=True)
                v = dict(base)
                v[field] = bad
                try:
                    call(v)
                    outcome = "ok"
                except Exception as exc:  # noqa: BLE001 - the outcome is what is reported
                    outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                print(f"END\t{case}\t{outcome}", flush=True)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
