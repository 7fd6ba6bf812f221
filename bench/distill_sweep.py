"""Alignahead++ experiments on Cora and CiteSeer: independent students vs Alignahead++
(and ablations) for GCN students of several depths and K.

Each configuration becomes one row (the ``fastalign train`` result) of
bench/results/distill_rounds.jsonl (``--records``); configurations already there are
skipped, so the sweep can be resumed. Configurations run in priority order (2-layer
baseline vs Alignahead++ K=2 first, then deeper, then the ablations and larger K) and the
sweep stops starting new ones after ``--deadline`` (UTC, HH:MM).

    python bench/distill_sweep.py --root DATA
    python bench/distill_sweep.py --summarize
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import asdict

import records
from fastalign.datasets import load_dataset
from fastalign.distill import RESIDUALS, LossWeights, TrainConfig, run_experiment, summarize_runs

# variant -> (align, structure weight, feature weight, deep supervision)
VARIANTS = {
    "independent": ("none", 0.0, 0.0, False),   # baseline students (no distillation, no DS)
    "alignahead": ("ahead", 1.0, 1.0, True),    # Alignahead++: structure + feature + DS
    "no-feature": ("ahead", 1.0, 0.0, True),
    "no-ds": ("ahead", 1.0, 1.0, False),
    "behind": ("behind", 1.0, 1.0, True),
    "ds-only": ("none", 0.0, 0.0, True),        # independent students with deep supervision
    # the structure term alone, weighted so that it is visible: with l1 / sigma 100 the KL
    # is ~1e-5 per pair at these embedding scales, so weight 1 leaves it negligible
    "structure-only": ("ahead", 1000.0, 0.0, False),
}


def plan(datasets, depths, ks, variants):
    """Configurations in priority order: (dataset, layers, K, variant)."""
    jobs = []
    for L in depths:
        for d in datasets:
            jobs.append((d, L, 1, "independent"))
            jobs.append((d, L, 2, "alignahead"))
    for L in depths:
        for d in datasets:
            for v in variants:
                if v not in ("independent", "alignahead"):
                    jobs.append((d, L, 1 if v == "ds-only" else 2, v))
    for K in ks:
        if K == 2:
            continue
        for L in depths:
            for d in datasets:
                jobs.append((d, L, K, "alignahead" if K > 1 else "independent"))
    seen, out = set(), []
    for j in jobs:
        if j not in seen and j[3] in variants and (j[2] in ks or j[3] in ("independent", "ds-only")):
            seen.add(j)
            out.append(j)
    return out


def config(L, K, variant, args):
    align, ws, wf, ds = VARIANTS[variant]
    # --structure-weight / --feature-weight replace the variant's non-zero weights (a
    # variant without a term keeps it off)
    if ws > 0 and args.structure_weight is not None:
        ws = args.structure_weight
    if wf > 0 and args.feature_weight is not None:
        wf = args.feature_weight
    return TrainConfig(model="gcn", layers=L, hidden=args.hidden, students=K, align=align,
                       mode=args.mode, epochs=args.epochs, dropout=args.dropout, weight_decay=args.weight_decay,
                       deep_supervision=ds, backend=args.backend, lr=args.lr,
                       residual=args.residual, residual_alpha=args.residual_alpha,
                       weight_decay_scope=args.weight_decay_scope, lr_schedule=args.lr_schedule,
                       align_warmup=args.align_warmup, hidden_weight_decay=args.hidden_weight_decay,
                       patience=args.patience,
                       weights=LossWeights(structure=ws, feature=wf, deep_supervision=args.ds_weight,
                                           feature_pairs=args.feature_pairs))


def config_differences(old: dict, new: dict, defaults: dict, prefix: str = "") -> list:
    """The keys where ``new`` differs from ``old``. A key that ``old`` lacks counts as its
    default: it is an option added after that JSON was written, and every option's default
    keeps the earlier behaviour."""
    diff = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if isinstance(before, dict) and isinstance(after, dict):
            diff += config_differences(before, after, defaults.get(key) or {}, f"{prefix}{key}.")
        elif before != after:
            diff.append(prefix + key)
    return diff


def next_utc_time(text, now):
    """The first UTC time HH:MM after ``now`` (so 01:20 given at 23:10 is tomorrow's)."""
    if not text:
        return None
    h, m = map(int, text.split(":"))
    t = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return t if t > now else t + dt.timedelta(days=1)


# options a recipe-less row names in the summary when they differ from TrainConfig's default
SHOWN_OPTIONS = ("hidden", "dropout", "weight_decay", "epochs", "residual", "weight_decay_scope",
                 "lr_schedule", "align_warmup", "hidden_weight_decay", "patience")


def key(r: dict) -> tuple:
    """A configuration: its data set, depth, K, variant and recipe (and the series of
    runs it belongs to)."""
    c = r["config"]
    return r.get("series"), r["dataset"], c["layers"], c["students"], r["variant"], r.get("recipe")


def summarize(rows: list) -> str:
    defaults = asdict(TrainConfig())
    table = []
    for r in records.latest(rows, key).values():
        c = r["config"]
        if r.get("recipe"):
            variant = f"{r['variant']} [{r['recipe']}]"
        else:
            extra = [f"{key}={c[key]}" for key in SHOWN_OPTIONS if c.get(key, defaults[key]) != defaults[key]]
            variant = r["variant"] + (f" ({', '.join(extra)})" if extra else "")
        table.append((r["dataset"], c["layers"], variant, c["students"], len(r["seeds"]),
                      r["mean_test_acc"], r["std_test_acc"], r["ensemble"]["mean_test_acc"],
                      r["epoch_time_s"]))
    order = list(VARIANTS)
    table.sort(key=lambda t: (t[0], t[1], order.index(t[2].split(" ")[0]), t[2], t[3]))
    lines = ["| dataset | layers | variant | K | seeds | test acc (mean +- std over seeds x students) "
             "| ensemble | epoch (ms) |", "|---|---|---|---|---|---|---|---|"]
    for d, L, v, K, n, m, s, e, t in table:
        lines.append(f"| {d} | {L} | {v} | {K} | {n} | {100 * m:.2f} +- {100 * s:.2f} | {100 * e:.2f} | {1e3 * t:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_options(p, "distill_rounds")
    p.add_argument("--series", default="rounds", help="a name for the series of runs this sweep belongs to")
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer"])
    p.add_argument("--layers", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--hidden", type=int, default=16, help="16 as in Kipf & Welling's GCN")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine, oversubscribed OpenMP threads were 8x slower)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--ds-weight", type=float, default=LossWeights.deep_supervision)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--residual", default="none", choices=RESIDUALS)
    p.add_argument("--residual-alpha", type=float, default=0.1)
    p.add_argument("--weight-decay-scope", default="all", choices=("all", "first"))
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--align-warmup", type=int, default=0)
    p.add_argument("--hidden-weight-decay", type=float, default=None)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--structure-weight", type=float, default=None,
                   help="replaces the variant's structure weight where it has one")
    p.add_argument("--feature-weight", type=float, default=None,
                   help="replaces the variant's feature weight where it has one")
    p.add_argument("--feature-pairs", default="all", choices=("all", "hidden"))
    p.add_argument("--recipe", default=None,
                   help="a name for this setting (part of a configuration's key; the summary shows it)")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds instead of 0..seeds-1")
    p.add_argument("--extend", action="store_true",
                   help="where a configuration has a row, run the seeds it lacks and append the merged row "
                        "(the configuration must be identical)")
    p.add_argument("--mode", default="alternating")
    p.add_argument("--backend", default="auto")
    p.add_argument("--deadline", default=None, help="UTC HH:MM (the next one) after which no new configuration starts")
    p.add_argument("--stop-at", default=None,
                   help="UTC HH:MM (the next one) after which no new seed starts (the configuration is saved with the seeds done)")
    p.add_argument("--summarize", action="store_true", help="print the markdown table of --records and exit")
    args = p.parse_args()
    if args.summarize:
        print(summarize(records.read(args.records)))
        return 0
    now = dt.datetime.now(dt.timezone.utc)
    deadline, stop_at = next_utc_time(args.deadline, now), next_utc_time(args.stop_at, now)
    stop = (lambda: dt.datetime.now(dt.timezone.utc) >= stop_at) if stop_at else None
    import torch

    torch.set_num_threads(args.threads)
    data = {d: load_dataset(d, args.root) for d in args.datasets}
    done = records.latest(records.read(args.records), key)
    for d, L, K, v in plan(args.datasets, args.layers, args.ks, args.variants):
        name = f"{d} L={L} K={K} {v}" + (f" [{args.recipe}]" if args.recipe else "")
        old = done.get((args.series, d, L, K, v, args.recipe))
        if old is not None and not args.extend:
            continue
        seeds = args.seed_list if args.seed_list else list(range(args.seeds))
        if old is not None:
            seeds = [s for s in seeds if s not in old["seeds"]]
            if not seeds:
                continue
        if any(t and dt.datetime.now(dt.timezone.utc) >= t for t in (deadline, stop_at)):
            print(f"deadline {args.deadline or args.stop_at} reached; stopping before {name}", flush=True)
            break
        cfg = config(L, K, v, args)
        if old is not None:
            diff = config_differences(old["config"], asdict(cfg), asdict(TrainConfig()))
            if diff:
                raise SystemExit(f"--extend {name}: the configuration differs in {diff}")
        t0 = time.time()
        r = run_experiment(cfg, data[d], seeds, stop=stop)
        r.update(series=args.series, variant=v, recipe=args.recipe, wall_time_s=time.time() - t0)
        if old is not None:  # the merged configuration, with where each part came from
            runs = sorted(old["runs"] + r["runs"], key=lambda run: run["seed"])
            merged = summarize_runs(old["config"], old["dataset"], old["metric"], runs)
            earlier = {k: old.get(k) for k in ("date", "commit", "machine", "command", "wall_time_s")}
            r = {**merged, "series": args.series, "variant": v, "recipe": args.recipe,
                 "extends": old.get("extends", []) + [dict(seeds=old["seeds"], **earlier)]}
        records.append(args.records, r)
        print(f"{name}: test {100 * r['mean_test_acc']:.2f} +- {100 * r['std_test_acc']:.2f} "
              f"ensemble {100 * r['ensemble']['mean_test_acc']:.2f} seeds {len(r['seeds'])}  "
              f"({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
