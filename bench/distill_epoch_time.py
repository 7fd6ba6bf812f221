"""Time one training epoch of K Alignahead++ students with each backend, interleaved.

    python bench/distill_epoch_time.py --dataset cora --students 3 --backends auto torch

An epoch is the training step of every student (alternating mode by default, so K
forwards with gradients and K(K-1) peer forwards, plus the structure and feature losses)
without evaluation. The backends run in turn, ``--rounds`` times, and the median of each
is reported with the spread, because the machine may be shared. The figures are appended
to bench/results/distill_cost.jsonl (``--records``; ``--records ''`` for none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import records
from fastalign.datasets import load_dataset
from fastalign.distill import TrainConfig, build_students, train_step


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_options(p, "distill_cost")
    p.add_argument("--dataset", default="cora")
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--mode", default="alternating")
    p.add_argument("--backends", nargs="+", default=["auto", "torch"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    data = load_dataset(args.dataset, args.root).to(args.device)
    setups = {}
    for b in args.backends:
        torch.manual_seed(0)
        cfg = TrainConfig(layers=args.layers, hidden=args.hidden, students=args.students, mode=args.mode,
                          backend=b, device=args.device, epochs=1)
        setups[b] = (cfg,) + build_students(cfg, data)
    times = {b: [] for b in args.backends}
    for r in range(args.rounds + 1):  # round 0 warms up
        for b, (cfg, students, adapters, opts, pairs) in setups.items():
            batches = data.train_batches(cfg.batch_size, torch.Generator().manual_seed(r))
            _sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.epochs):
                for batch in batches:
                    train_step(cfg, batch, students, adapters, opts, pairs, data.multilabel)
            _sync(args.device)
            if r > 0:
                times[b].append((time.perf_counter() - t0) / args.epochs)
    out = {"kind": "epoch_time", "dataset": args.dataset, "students": args.students, "layers": args.layers, "hidden": args.hidden,
           "mode": args.mode, "device": args.device, "threads": torch.get_num_threads(),
           "epoch_time_s": {b: statistics.median(t) for b, t in times.items()},
           "epoch_time_all_s": times}
    for b, t in times.items():
        print(f"{b:>8}: median {1e3 * statistics.median(t):8.1f} ms/epoch  "
              f"(min {1e3 * min(t):.1f}, max {1e3 * max(t):.1f}, {len(t)} rounds x {args.epochs} epochs)")
    if args.records:
        out = records.append(args.records, out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
