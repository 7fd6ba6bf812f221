"""A student's evaluation on a large graph: one whole-graph forward against layer-wise
inference over row blocks (Student.inference), time and (on a GPU) peak device memory.

    python bench/layerwise_inference.py --nodes 200000 --avg-degree 20 --chunk-rows 50000
    python bench/layerwise_inference.py --device cuda --nodes 2449029 --avg-degree 50 --chunk-rows 200000

With --device cuda the graph and features stay in host memory for the layer-wise run
(each block moves to the GPU as it runs) and are moved whole for the one forward. The
extra memory of each call (device memory on a GPU, peak RSS on the CPU) and its median
time come from fastalign.bench.timing. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from fastalign.bench.timing import peak_memory, time_call
from fastalign.datasets import synthetic_csbm
from fastalign.distill import Student
from fastalign.distill.inference import layerwise_inference


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
        return layerwise_inference(student, batch.graph, batch.x, args.chunk_rows, device).cpu()

    want, got = whole(), layerwise()
    t_whole = time_call(whole, device, warmup=1, min_reps=args.repeats, budget_s=0)
    t_layer = time_call(layerwise, device, warmup=1, min_reps=args.repeats, budget_s=0)
    m_whole, m_layer = peak_memory(whole, device), peak_memory(layerwise, device)
    mib = (lambda b: None if b is None else round(b / 2**20))
    row = {
        "nodes": batch.num_nodes, "edges": batch.edge_index.size(1), "features": data.num_features,
        "model": args.model, "layers": args.layers, "hidden": args.hidden, "device": args.device,
        "chunk_rows": args.chunk_rows, "whole_ms": round(t_whole.median_s * 1e3, 1),
        "layerwise_ms": round(t_layer.median_s * 1e3, 1),
        "whole_peak_mib": mib(m_whole), "layerwise_peak_mib": mib(m_layer),
        "max_abs_diff": float((got - want).abs().max()) if got.numel() else 0.0,
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
