"""How far the structure loss and its gradient are from float64 when the embeddings are
stored in float32, bfloat16 or float16: fastalign's CPU kernels (arithmetic in float32)
against the PyG-style loss (arithmetic in the embeddings' dtype), on a power-law graph.

Each is compared with the float64 reference at the same rounded inputs, so the figure is
the error of the computation, not of rounding the inputs.

    python bench/low_precision_error.py [--graph powerlaw-10k] [--features 64]
"""

from __future__ import annotations

import argparse

import torch

import fastalign
from fastalign import Graph
from fastalign.bench import peers
from fastalign.bench.graphs import graph_specs
from fastalign.bench.suites import ALIGN_PARAMS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graph", default="powerlaw-10k")
    p.add_argument("--features", type=int, default=64)
    args = p.parse_args()
    spec = next(s for s in graph_specs("small") if s.name == args.graph)
    edge_index, n = spec.load()
    graph = Graph.from_edge_index(edge_index, num_nodes=n)
    gen = torch.Generator().manual_seed(0)
    hs64 = torch.randn(n, args.features, generator=gen, dtype=torch.float64)
    hp64 = torch.randn(n, args.features, generator=gen, dtype=torch.float64)

    def loss_and_grad(fn, hs, hp):
        hs = hs.detach().requires_grad_()
        loss = fn(hs, hp)
        (grad,) = torch.autograd.grad(loss, hs)
        return loss.double(), grad.double()

    contenders = {
        "fastalign[cpu]": lambda hs, hp: fastalign.structure_kl(graph, hs, hp, backend="cpu", **ALIGN_PARAMS),
        "PyG-style loss": lambda hs, hp: peers.pyg_structure_loss(hs, hp, edge_index, n, **ALIGN_PARAMS),
    }
    reference = lambda hs, hp: fastalign.structure_kl(graph, hs, hp, backend="torch", **ALIGN_PARAMS)  # noqa: E731
    print(f"structure loss {ALIGN_PARAMS} on {args.graph} (N={n:,}, E={graph.num_edges:,}), F={args.features}")
    print("| contender | dtype | loss rel. error | gradient rel. error (norm) |")
    print("|---|---|---|---|")
    for name, fn in contenders.items():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            hs, hp = hs64.to(dtype), hp64.to(dtype)
            loss, grad = loss_and_grad(fn, hs, hp)
            ref_loss, ref_grad = loss_and_grad(reference, hs.double(), hp.double())
            loss_err = abs(loss - ref_loss).item() / abs(ref_loss).item()
            grad_err = ((grad - ref_grad).norm() / ref_grad.norm()).item()
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {loss_err:.1e} | {grad_err:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
