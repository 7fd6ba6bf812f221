"""Epoch time and peak memory of K students in one process or spread over a torchrun
launch (gloo on the CPU), simultaneous mode.

    OMP_NUM_THREADS=2 python bench/distributed_epoch.py --students 4          # one process
    torchrun --nproc-per-node 2 bench/distributed_epoch.py --students 4       # two (1 thread each)
    python bench/distributed_epoch.py --device cuda --nodes 200000 --avg-degree 20 --students 4
    torchrun --nproc-per-node G bench/distributed_epoch.py --device cuda ...  # G GPUs (NCCL)

Prints one JSON line (from rank 0): the mean training time per epoch (the slowest
process's, first epoch excluded), each process's peak RSS (with --device cuda also its
peak GPU memory), and the bytes one process sends per step; rank 0 appends it to
bench/results/distill_cost.jsonl (``--records``; ``--records ''`` for none), from which
docs/distillation.md's table is made (``python bench/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource

import torch

import records
from fastalign.datasets import load_dataset
from fastalign.distill import DistributedWorld, TrainConfig, run_experiment


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_options(p, "distill_cost")
    p.add_argument("--dataset", default="cora")
    p.add_argument("--nodes", type=int, default=None, help="synthetic: number of nodes")
    p.add_argument("--avg-degree", type=float, default=None, help="synthetic: mean degree")
    p.add_argument("--students", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu or cuda (each rank on cuda:LOCAL_RANK)")
    args = p.parse_args()
    world = None
    device = args.device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        world = DistributedWorld(args.students, device)
    sizes = {k: v for k, v in (("num_nodes", args.nodes), ("avg_degree", args.avg_degree)) if v is not None}
    data = load_dataset(args.dataset, args.root, **sizes)
    cfg = TrainConfig(layers=args.layers, hidden=args.hidden, students=args.students, mode="simultaneous",
                      epochs=args.epochs, device=device)
    result = run_experiment(cfg, data, [0], world=world)
    gpu = torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else 0
    rss, gpus = [peak_rss_bytes()], [gpu]
    if world is not None:
        import torch.distributed as dist

        t = torch.tensor([float(rss[0]), float(gpu)], dtype=torch.float64,
                         device=device if device.startswith("cuda") else "cpu")
        parts = [torch.empty_like(t) for _ in range(world.size)]
        dist.all_gather(parts, t)
        rss = [int(x[0].item()) for x in parts]
        gpus = [int(x[1].item()) for x in parts]
        dist.barrier()
        dist.destroy_process_group()
    if world is None or world.is_main:
        run = result["runs"][0]
        row = {
            "dataset": args.dataset, "num_nodes": data.transductive.num_nodes,
            "num_edges": data.transductive.edge_index.size(1), "students": args.students,
            "processes": run["processes"], "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset (the trainer's rule: 1 below 50k edges)"),
            "device": args.device,
            "epoch_ms": round(result["epoch_time_s"] * 1e3, 2), "peak_rss_mib": [round(r / 2**20) for r in rss],
            **({"peak_gpu_mib": [round(g / 2**20) for g in gpus]} if device.startswith("cuda") else {}),
            "exchanged_bytes_per_step": run["exchanged_bytes_per_step"],
            "test_acc": round(result["mean_test_acc"], 4),
        }
        print(json.dumps(row))
        if args.records:
            records.append(args.records, {"kind": "distributed_epoch", **row})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
