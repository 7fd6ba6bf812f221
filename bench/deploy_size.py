"""What a deployer weighs: distilled small students against an independently trained
student of the same size and against wider single models, paired over seeds.

Per data set and seed, all from the same seed (so the same initial weights where the
architectures agree):

* ``distilled``: K = 2 GCN students of hidden width H trained together with Alignahead++
  (the trainer's defaults), each student scored alone;
* ``independent``: the same K = 2 students without the alignment terms;
* ``single-W``: one GCN of hidden width W (each of ``--wide``), no deep supervision.

Each model's best-validation weights are saved and measured as deployed
(``fastalign evaluate``'s facts): parameters, bytes and the median CPU inference time over
the whole graph on one thread and on all threads. The table gives the mean test
accuracy over seeds, the paired difference from ``independent`` (mean and sign count),
and accuracy per thousand parameters and per millisecond (one thread).

    python bench/deploy_size.py --root DATA --datasets cora citeseer --seeds 0 1 2 3 4

The figures are appended as one row to bench/results/distill_cost.jsonl (``--records``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import records
from fastalign.datasets import load_dataset
from fastalign.distill import LossWeights, TrainConfig, run_experiment
from fastalign.distill.checkpoint import build_student, checkpoint_name, load
from fastalign.distill.commands import size_and_speed


def variants(hidden: int, wide):
    yield "distilled", dict(students=2, hidden=hidden)
    yield "independent", dict(students=2, hidden=hidden, align="none",
                              weights=LossWeights(structure=0.0, feature=0.0))
    for w in wide:
        yield f"single-{w}", dict(students=1, hidden=w, align="none", deep_supervision=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    records.add_options(p, "distill_cost")
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--wide", type=int, nargs="+", default=[64, 256])
    p.add_argument("--epochs", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    started = time.time()
    for name in args.datasets:
        data = load_dataset(name, args.root)
        for variant, options in variants(args.hidden, args.wide):
            cfg = TrainConfig(epochs=args.epochs, log_every=0, **options)
            with tempfile.TemporaryDirectory() as folder:
                result = run_experiment(cfg, data, list(args.seeds), save_dir=folder)
                for run in result["runs"]:
                    for s in run["students"]:
                        record = load(os.path.join(folder, checkpoint_name(run["seed"], s["student"])))
                        facts = size_and_speed(build_student(record), data, reps=20)
                        rows.append({"dataset": name, "variant": variant, "seed": run["seed"],
                                     "student": s["student"], "test": s["test"], "val": s["val"], **facts})
            print(f"{name} {variant}: done ({time.time() - started:.0f} s)", flush=True)
    if args.records:
        records.append(args.records, {"kind": "deploy_size", "torch": torch.__version__,
                                      "threads": torch.get_num_threads(), "rows": rows})
    print(table(rows))
    return 0


def table(rows) -> str:
    out = ["| data set | model | parameters | test acc. (mean over seeds) | vs independent (wins/losses) "
           "| ms, 1 thread | ms, all threads | acc. per 1k params | acc. per ms (1 thread) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]

        def per_seed(variant):  # mean over a variant's students, per seed
            seeds = sorted({r["seed"] for r in mine if r["variant"] == variant})
            return {s: statistics.fmean(r["test"] for r in mine if r["variant"] == variant and r["seed"] == s)
                    for s in seeds}

        base = per_seed("independent")
        for variant in dict.fromkeys(r["variant"] for r in mine):
            rs = [r for r in mine if r["variant"] == variant]
            acc = per_seed(variant)
            mean = statistics.fmean(acc.values())
            diffs = [acc[s] - base[s] for s in acc if s in base]
            versus = ("" if variant == "independent" else
                      f"{statistics.fmean(diffs) * 100:+.2f} pt ({sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)})")
            ms1 = statistics.median(r["inference_ms"]["1_thread"] for r in rs)
            msn = statistics.median(list(r["inference_ms"].values())[-1] for r in rs)
            params = rs[0]["parameters"]
            out.append(f"| {name} | {variant} | {params:,} | {mean * 100:.2f}% | {versus} | {ms1:.2f} | {msn:.2f} "
                       f"| {mean * 100 / (params / 1000):.2f} | {mean * 100 / ms1:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
