"""Paired comparison of Alignahead++ against independent students, seed by seed.

For each dataset, depth L and number of students K, every variant trains the same K
students from the same seeds (so the same initial weights: the trainer draws every
student before its adapters):

* ``independent``: no alignment terms (deep supervision on, as in every variant);
* ``sigma100``: Alignahead++ with the public code's l1 kernel at sigma = 100;
* ``auto-w<W>``: Alignahead++ at ``sigma="auto"`` with structure weight W, one per
  ``--auto-weights``; the weight reported is the one with the best mean validation
  score over the seeds (chosen on validation, reported on test).

Per seed the score is the mean test accuracy of the K students (each at its best
validation epoch); the table gives each variant's mean, and its difference from
``independent`` per seed: the mean difference, its standard error, and the sign test
(wins / losses, two-sided p-value); a last row per group pairs the chosen auto variant
with ``sigma100`` (the same recipe, only the kernel's scale differs). Each configuration is
one row (the trainer's result) of bench/results/distill_paired.jsonl (``--records``);
configurations already there are skipped, so a sweep can be resumed.

    python bench/distill_paired.py --root DATA --layers 2 4 --ks 2 3
    python bench/distill_paired.py --summarize
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import time

import records
from fastalign.datasets import load_dataset
from fastalign.distill import LossWeights, TrainConfig, run_experiment


def variants(auto_weights):
    """name -> (align, LossWeights)."""
    out = {"independent": ("none", LossWeights(structure=0.0, feature=0.0)),
           "sigma100": ("ahead", LossWeights(sigma=100.0))}
    for w in auto_weights:
        out[f"auto-w{w:g}"] = ("ahead", LossWeights(sigma="auto", structure=w))
    return out


def key(result: dict) -> tuple:
    """A configuration: (dataset, L, K, variant)."""
    c = result["config"]
    return result["dataset"], c["layers"], c["students"], result["variant"]


def run(args) -> None:
    done = records.latest(records.read(args.records), key)
    stop_at = None
    if args.stop_at:
        h, m = map(int, args.stop_at.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        stop_at = now.replace(hour=h, minute=m, second=0, microsecond=0)
        stop_at += dt.timedelta(days=1) if stop_at <= now else dt.timedelta(0)
    late = lambda: stop_at is not None and dt.datetime.now(dt.timezone.utc) >= stop_at  # noqa: E731
    data_cache = {}
    for L in args.layers:
        for K in args.ks:
            for dataset in args.datasets:
                for name, (align, weights) in variants(args.auto_weights).items():
                    if (dataset, L, K, name) in done:
                        continue
                    label = f"{dataset} L={L} K={K} {name}"
                    if late():
                        print(f"stop time reached; not starting {label}", flush=True)
                        return
                    if dataset not in data_cache:
                        data_cache[dataset] = load_dataset(dataset, args.root, seed=0)
                    cfg = TrainConfig(model="gcn", layers=L, hidden=args.hidden, students=K, align=align,
                                      mode=args.mode, epochs=args.epochs, weights=weights,
                                      backend=args.backend)
                    t0 = time.time()
                    result = run_experiment(cfg, data_cache[dataset], list(range(args.seeds)))
                    result.update(variant=name, wall_s=round(time.time() - t0, 1))
                    records.append(args.records, result)
                    print(f"{label}: test {100 * result['mean_test_acc']:.2f} "
                          f"({time.time() - t0:.0f} s)", flush=True)


def per_seed(result, split="test"):
    """seed -> mean score of the K students at their best-validation epochs."""
    return {r["seed"]: statistics.fmean(s[split] for s in r["students"]) for r in result["runs"]}


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins vs losses at p = 1/2 (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(base: dict, other: dict) -> dict:
    a, b = per_seed(base), per_seed(other)
    seeds = sorted(set(a) & set(b))
    diffs = [b[s] - a[s] for s in seeds]
    n = len(diffs)
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"seeds": n, "mean": statistics.fmean(b[s] for s in seeds),
            "diff": statistics.fmean(diffs) if n else float("nan"),
            "se": statistics.stdev(diffs) / math.sqrt(n) if n > 1 else float("nan"),
            "wins": wins, "losses": losses, "p": sign_test_p(wins, losses)}


def summarize(rows: list) -> str:
    results = records.latest(rows, key)
    lines = ["| dataset | L | K | variant | seeds | test acc | diff vs independent (+- s.e.) | "
             "wins / losses | sign test p | structure KL, mean over pairs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({k[:3] for k in results})
    for dataset, L, K in groups:
        base = results.get((dataset, L, K, "independent"))
        if base is None:
            continue
        autos = [(v, r) for (d, l, k, v), r in results.items() if (d, l, k) == (dataset, L, K) and v.startswith("auto-")]
        chosen = max(autos, key=lambda vr: statistics.fmean(per_seed(vr[1], "val").values()))[0] if autos else None
        base_mean = statistics.fmean(per_seed(base).values())
        lines.append(f"| {dataset} | {L} | {K} | independent | {len(base['runs'])} | {100 * base_mean:.2f} | | | | |")
        for v in ["sigma100"] + sorted(v for v, _ in autos):
            r = results.get((dataset, L, K, v))
            if r is None:
                continue
            c = compare(base, r)
            kl = [p["mean"] for p in r.get("structure_by_pair") or []]
            kl_s = f"{statistics.fmean(kl):.1e}" if kl else ""
            label = v + (" (chosen on val)" if v == chosen else "")
            lines.append(f"| {dataset} | {L} | {K} | {label} | {c['seeds']} | {100 * c['mean']:.2f} | "
                         f"{100 * c['diff']:+.2f} +- {100 * c['se']:.2f} | {c['wins']} / {c['losses']} | "
                         f"{c['p']:.3f} | {kl_s} |")
        s100 = results.get((dataset, L, K, "sigma100"))
        if chosen and s100 is not None:  # what the scale itself changes: the same recipe at sigma 100
            c = compare(s100, results[(dataset, L, K, chosen)])
            lines.append(f"| {dataset} | {L} | {K} | {chosen} vs sigma100 | {c['seeds']} | | "
                         f"{100 * c['diff']:+.2f} +- {100 * c['se']:.2f} | {c['wins']} / {c['losses']} | "
                         f"{c['p']:.3f} | |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_options(p, "distill_paired")
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    p.add_argument("--layers", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--ks", nargs="+", type=int, default=[2, 3])
    p.add_argument("--auto-weights", nargs="+", type=float, default=[1.0, 10.0, 100.0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--mode", default="simultaneous")
    p.add_argument("--backend", default="auto")
    p.add_argument("--stop-at", default=None, help="UTC HH:MM after which no new configuration starts")
    p.add_argument("--summarize", action="store_true", help="print the table of --records and exit")
    args = p.parse_args()
    if args.summarize:
        print(summarize(records.read(args.records)))
        return 0
    run(args)
    print(summarize(records.read(args.records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
