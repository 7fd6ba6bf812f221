"""A student's evaluation on a large graph: one whole-graph forward against layer-wise
inference over row blocks (Student.inference), time and (on a GPU) peak device memory.

    python bench/layerwise_inference.py --nodes 200000 --avg-degree 20 --chunk-rows 50000
    python bench/layerwise_inference.py --device cuda --nodes 2449029 --avg-degree 50 --chunk-rows 200000

With --device cuda the graph and features stay in host memory for the layer-wise run
(each block moves to the GPU as it runs) and are moved whole for the one forward; the
peak GPU memory of each is torch.cuda.max_memory_allocated. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fastalign.datasets import synthetic_csbm
from fastalign.distill import Student


def _timed(fn, device, repeats):
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out, min(times), peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=200_000)
    p.add_argument("--avg-degree", type=float, default=20.0)
    p.add_argument("--model", default="gcn", choices=("gcn", "sage", "gat"))
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=50_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    data = synthetic_csbm(num_nodes=args.nodes, avg_degree=args.avg_degree, seed=0)
    batch = data.transductive
    torch.manual_seed(0)
    student = Student(args.model, data.num_features, args.hidden, data.num_classes, args.layers,
                      heads=4).to(device).eval()

    def whole():
        on = batch if device.type == "cpu" else batch.to(device)
        with torch.no_grad():
            return student(on.graph, on.edge_index, on.x).logits.cpu()

    def layerwise():
        return student.inference(batch.graph, batch.x, args.chunk_rows, device).cpu()

    want, t_whole, m_whole = _timed(whole, device, args.repeats)
    got, t_layer, m_layer = _timed(layerwise, device, args.repeats)
    row = {
        "nodes": batch.num_nodes, "edges": batch.edge_index.size(1), "features": data.num_features,
        "model": args.model, "layers": args.layers, "hidden": args.hidden, "device": args.device,
        "chunk_rows": args.chunk_rows, "whole_ms": round(t_whole * 1e3, 1),
        "layerwise_ms": round(t_layer * 1e3, 1),
        "max_abs_diff": float((got - want).abs().max()) if got.numel() else 0.0,
    }
    if m_whole is not None:
        row.update(whole_peak_gpu_mib=round(m_whole / 2**20), layerwise_peak_gpu_mib=round(m_layer / 2**20))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
