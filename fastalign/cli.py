"""The ``fastalign`` command: an argparse dispatcher with subcommands.

* ``fastalign train ...``  Alignahead++ students on a data set; a table and optional JSON.
* ``fastalign demo``       a short end-to-end run of the ops on a generated graph.
* ``fastalign bench ...``  added by ``fastalign.bench.command.add_bench_parser`` when that
                           module is present.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import List, Optional

# torch-free: the parser is built without importing torch (fast --help); the commands
# import what they run
from .distill.options import (
    ALIGNS, BACKENDS, FEATURE_PAIRS, KERNELS, LR_SCHEDULES, MODELS, MODES, RESIDUALS, WD_SCOPES, LossWeights,
    device_name,
)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return v


def _sigma(text: str):
    """A positive number, or "auto" (each layer's own mean edge distance)."""
    if text == "auto":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text}") from None


def _positive(text: str) -> float:
    """A finite number above 0 (a learning rate, a mean degree, a temperature)."""
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return v


def _non_negative(text: str) -> float:
    v = float(text)
    if not v >= 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return v


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train Alignahead++ students",
                              usage="fastalign train [OPTIONS]   (fastalign train --help lists them)",
                              description="Train K GNN students with Alignahead++ online distillation.")
    p.add_argument("--dataset", default="synthetic", type=str.lower,  # Cora or cora, as PyG spells it or not
                   choices=("synthetic", "cora", "citeseer", "pubmed", "ppi"))
    p.add_argument("--root", default=None, help="data root (default: $FASTALIGN_DATA or ~/.cache/fastalign/datasets)")
    p.add_argument("--model", default="gcn", choices=MODELS)
    p.add_argument("--layers", type=int, default=2, help="graph layers per student, 2..16")
    p.add_argument("--hidden", type=_positive_int, default=16, help="hidden width (16: Kipf & Welling)")
    p.add_argument("--heads", type=_positive_int, default=8, help="GAT attention heads")
    p.add_argument("--students", type=_positive_int, default=2, help="K; 1 = plain baseline")
    p.add_argument("--align", default="ahead", choices=ALIGNS)
    p.add_argument("--mode", default="alternating", choices=MODES)
    p.add_argument("--epochs", type=_positive_int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lr", type=_positive, default=0.01)
    p.add_argument("--weight-decay", type=_non_negative, default=5e-4)
    p.add_argument("--dropout", type=_non_negative, default=0.5)
    p.add_argument("--structure-weight", type=_non_negative, default=LossWeights.structure)
    p.add_argument("--feature-weight", type=_non_negative, default=LossWeights.feature)
    p.add_argument("--ds-weight", type=_non_negative, default=LossWeights.deep_supervision,
                   help="deep-supervision loss weight")
    p.add_argument("--no-deep-supervision", action="store_true", help="no auxiliary classifiers")
    p.add_argument("--kernel", default=LossWeights.kernel, choices=KERNELS)
    p.add_argument("--sigma", type=_sigma, default=LossWeights.sigma,
                   help="l1 / rbf kernel scale, or auto: each student's layer at its own mean edge "
                        "distance, so that the structure term does not flatten to uniform where the "
                        "embeddings are small (default 100, the public Alignahead code's)")
    p.add_argument("--tau", type=_positive, default=LossWeights.tau)
    p.add_argument("--feature-pairs", default=LossWeights.feature_pairs, choices=FEATURE_PAIRS,
                   help="aligned pairs that get a feature hint: all, or hidden (none touching the logits)")
    p.add_argument("--align-warmup", type=int, default=0,
                   help="epochs of a linear 0 -> 1 ramp on the structure and feature terms (0: off)")
    p.add_argument("--residual", default="none", choices=RESIDUALS,
                   help="hidden layers 2..L-1: none, plain (h + conv(h)), initial ((1-a) conv(h) + a h_1) "
                        "or gcnii (GCN only: initial residual + identity mapping)")
    p.add_argument("--residual-alpha", type=float, default=0.1, help="a for --residual initial / gcnii")
    p.add_argument("--weight-decay-scope", default="all", choices=WD_SCOPES,
                   help="weight decay on all parameters, or on the first graph layer only (PyG's gcn.py)")
    p.add_argument("--hidden-weight-decay", type=_non_negative, default=None,
                   help="weight decay of hidden layers 2..L-1 instead of what --weight-decay-scope "
                        "gives them (GCNII: 0.01 on its convolutions)")
    p.add_argument("--patience", type=int, default=0,
                   help="stop once no student's validation score improved for N epochs (0: off)")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="constant, or cosine annealing to 0 over --epochs")
    p.add_argument("--batch-size", type=_positive_int, default=2, help="graphs per mini-batch (PPI)")
    p.add_argument("--num-parts", type=_positive_int, default=1,
                   help="train on mini-batches: the subgraphs of a random partition of the nodes into "
                        "this many parts, drawn every epoch (PyG's RandomNodeLoader); the structure and "
                        "feature terms act on each part's subgraph; validation on the whole graph")
    p.add_argument("--eval-chunk-rows", type=_non_negative_int, default=0,
                   help="select models layer by layer over blocks of this many rows, for graphs whose "
                        "whole-graph forward does not fit on the device (0: one forward)")
    p.add_argument("--data-device", default=None, type=device_name,
                   help="keep the data set here (e.g. cpu with --device cuda) and move each training "
                        "part and evaluation block to --device as it runs (default: --device)")
    p.add_argument("--nodes", type=_positive_int, default=None, help="synthetic: number of nodes (default 600)")
    p.add_argument("--avg-degree", type=_positive, default=None, help="synthetic: mean degree (default 8)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="cpu", type=device_name, help="cpu or cuda[:i]")
    p.add_argument("--download", action="store_true",
                   help="let PyG download missing Planetoid files into --root (never done otherwise)")
    p.add_argument("--log-every", type=int, default=50,
                   help="progress line every N epochs (0: off): the epoch's mean losses over the students, "
                        "task (cross-entropy), ds (deep supervision: the auxiliary classifiers), struct "
                        "(the structure KL, unweighted; then per aligned pair l->m) and feat (the feature hint, unweighted), then each "
                        "student's validation score")
    p.add_argument("--distributed", action="store_true",
                   help="spread the students over the processes of a torchrun launch (student k on "
                        "rank k %% world size; gloo on the CPU, NCCL with --device cuda, each rank on "
                        "cuda:LOCAL_RANK); simultaneous mode only; rank 0 prints and writes --json")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write each student's best-validation weights to DIR/seed<s>_student<k>.pt "
                        "(for fastalign evaluate, predict and export), and the run's state after every "
                        "epoch (one process)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run saved in DIR (--save DIR) from its last completed epoch, with "
                        "the same options; finished seeds are not run again")
    p.set_defaults(func=cmd_train, parser=p)


def config_from_args(args):
    from .distill.trainer import TrainConfig

    weights = LossWeights(structure=args.structure_weight, feature=args.feature_weight,
                          deep_supervision=args.ds_weight, kernel=args.kernel, sigma=args.sigma,
                          tau=args.tau, feature_pairs=args.feature_pairs)
    return TrainConfig(model=args.model, layers=args.layers, hidden=args.hidden, students=args.students,
                       align=args.align, mode=args.mode, epochs=args.epochs, lr=args.lr,
                       weight_decay=args.weight_decay, dropout=args.dropout, heads=args.heads,
                       deep_supervision=not args.no_deep_supervision, weights=weights,
                       backend=args.backend, device=args.device, batch_size=args.batch_size,
                       log_every=args.log_every, residual=args.residual,
                       residual_alpha=args.residual_alpha, weight_decay_scope=args.weight_decay_scope,
                       lr_schedule=args.lr_schedule, align_warmup=args.align_warmup,
                       hidden_weight_decay=args.hidden_weight_decay, patience=args.patience,
                       num_parts=args.num_parts, eval_chunk_rows=args.eval_chunk_rows,
                       data_device=args.data_device)


def format_table(result: dict) -> str:
    metric = "micro-F1" if result["metric"] == "micro_f1" else "accuracy"
    seeds = len(result["seeds"])
    lines = [
        f"Each student's scores at its best-validation epoch, mean over {seeds} seed(s); std: the "
        "standard deviation of the test score over the seeds (over seeds x students for 'all'); "
        "ensemble: the students' averaged probabilities, each from its best epoch.",
        f"{'student':<10} {'val ' + metric:>16} {'test ' + metric:>16} {'test std':>9}",
    ]
    for s in result["per_student"]:
        lines.append(f"{s['student']:<10} {s['mean_val']:>16.4f} {s['mean_test']:>16.4f} {s['std_test']:>9.4f}")
    e = result["ensemble"]
    lines.append(f"{'ensemble':<10} {'':>16} {e['mean_test_acc']:>16.4f} {e['std_test_acc']:>9.4f}")
    lines.append(f"{'all':<10} {result['mean_val_acc']:>16.4f} {result['mean_test_acc']:>16.4f} "
                 f"{result['std_test_acc']:>9.4f}")
    pairs = result.get("structure_by_pair") or []
    if pairs:
        lines.append("structure KL (unweighted), per aligned pair, mean over seeds: "
                     + ", ".join(f"{p['pair'][0]}->{p['pair'][1]} first epoch {p['first_epoch']:.2e} "
                                 f"last {p['last_epoch']:.2e}" for p in pairs))
    if result.get("student_parameters"):
        timing = result.get("student_inference_ms") or {}
        speed = ", ".join(f"{ms:.2f} ms on {name.replace('_', ' ')}" for name, ms in timing.items())
        lines.append(f"each student: {result['student_parameters']:,} parameters "
                     f"({result['student_bytes']:,} bytes, without its deep-supervision heads)"
                     + (f"; CPU inference over the graph {speed}" if speed else ""))
    lines.append(f"epoch time {result['epoch_time_s'] * 1e3:.1f} ms "
                 f"({len(result['seeds'])} seed(s) x {len(result['per_student'])} student(s))")
    return "\n".join(lines)


def _start_distributed(args, cfg):
    """Join the torchrun launch's process group; returns (world, device)."""
    import torch
    import torch.distributed as dist

    from .distill.trainer import ALTERNATING_DISTRIBUTED
    from .distill.exchange import DistributedWorld

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise ValueError("--distributed: launch with torchrun, e.g. torchrun --nproc-per-node 2 "
                         "-m fastalign.cli train --distributed --mode simultaneous ...")
    if cfg.mode != "simultaneous":
        raise ValueError(ALTERNATING_DISTRIBUTED)
    device = args.device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistributedWorld(cfg.students, device), device


def cmd_train(args) -> int:
    import dataclasses

    from .datasets import load_dataset
    from .distill.trainer import run_experiment

    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds: {', '.join(map(str, repeated))} given more than once (each seed is one run)")
    if args.json:
        from .bench.report import check_output

        check_output(args.json, "--json")
    from .distill.commands import check_save_dir

    if args.resume is not None:
        if args.save is not None and os.path.abspath(args.save) != os.path.abspath(args.resume):
            raise ValueError("--save and --resume name two folders: --resume DIR continues (and saves into) DIR")
        if not os.path.isdir(args.resume):
            raise ValueError(f"--resume {args.resume}: no such folder (it is the --save DIR of the run)")
        if args.distributed:
            raise ValueError("--resume: a run spread over processes cannot be resumed (it keeps no run state)")
        args.save = args.resume
    check_save_dir(args.save)

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
        index = int(args.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA device(s)")
    cfg = config_from_args(args)
    world = None
    if args.distributed:
        world, device = _start_distributed(args, cfg)
        cfg = dataclasses.replace(cfg, device=device)
    main_rank = world is None or world.is_main
    say = (lambda m: print(m, flush=True)) if main_rank else (lambda m: None)
    try:
        sizes = {k: v for k, v in (("num_nodes", args.nodes), ("avg_degree", args.avg_degree)) if v is not None}
        if sizes and args.dataset != "synthetic":
            raise ValueError("--nodes and --avg-degree size the synthetic data set only")
        data = load_dataset(args.dataset, args.root, seed=args.seeds[0], download=args.download, **sizes)
        where = f", {world.size} processes" if world is not None else ""
        say(f"fastalign train: {args.dataset} ({data.metric}), {cfg.students} x {cfg.model} "
            f"L={cfg.layers} H={cfg.hidden}, align={cfg.align}, mode={cfg.mode}, "
            f"backend={cfg.backend}, device={cfg.device}{where}, seeds={args.seeds}")
        t0 = time.time()
        data_info = {"name": args.dataset, "load": {"name": args.dataset, "seed": args.seeds[0], **sizes}}
        try:
            result = run_experiment(cfg, data, list(args.seeds), log=say, world=world, save_dir=args.save,
                                    data_info=data_info, resume=args.resume is not None)
        except KeyboardInterrupt:
            if not args.save or world is not None:
                raise
            say(f"fastalign train: interrupted; continue with the same command and --resume {args.save}")
            return 130
        if world is not None:
            world.dist.barrier(group=world.group)  # no rank closes its connections while another uses them
    finally:
        if world is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not main_rank:
        return 0
    result["wall_time_s"] = time.time() - t0
    result["command"] = "fastalign " + " ".join(sys.argv[1:]) if sys.argv else ""
    print(format_table(result))
    if args.save:
        print(f"saved {len(result['seeds']) * cfg.students} student checkpoint(s) in {args.save} "
              "(fastalign evaluate | predict | export CHECKPOINT)")
    if args.json:
        from .bench.report import write_json

        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a short end-to-end run of the ops on a generated graph")
    p.add_argument("--nodes", type=_positive_int, default=2000)
    p.add_argument("--edges", type=_positive_int, default=20000)
    p.add_argument("--features", type=_positive_int, default=32)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo, parser=p)


def cmd_demo(args) -> int:
    import torch

    from . import Graph, ops

    backend = None if args.backend == "auto" else args.backend
    g = torch.Generator().manual_seed(args.seed)
    n, e = args.nodes, args.edges
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n, (e,), generator=g)
    keep = src != dst
    graph = Graph.from_edge_index(torch.stack([src[keep], dst[keep]]), num_nodes=n)
    x = torch.randn(n, args.features, generator=g, requires_grad=True)
    peer = torch.randn(n, args.features, generator=g)
    t = time.perf_counter()
    h = ops.gcn_aggregate(graph, x, backend=backend)
    m = ops.spmm(graph, x, "mean", backend=backend)
    loss = ops.structure_kl(graph, h, peer, kernel="l1", sigma=100.0, backend=backend)
    (loss + m.pow(2).mean()).backward()
    dt = time.perf_counter() - t
    print(f"graph: {n} nodes, {graph.num_edges} edges; features {args.features}")
    print(f"gcn_aggregate -> {tuple(h.shape)}, spmm(mean) -> {tuple(m.shape)}")
    print(f"structure_kl(l1, sigma=100) = {loss.item():.6e}; grad norm {x.grad.norm().item():.4e}")
    print(f"forward + backward: {dt * 1e3:.1f} ms (backend={args.backend})")
    return 0


def add_info_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, compiled extensions and the backend each device uses",
                              description="Print fastalign's version, Python, torch (and CUDA), triton and PyG, "
                                          "which compiled extensions loaded (and why one did not), and the "
                                          "backend each op's automatic choice takes on each device.")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=cmd_info, parser=p)


def cmd_info(args) -> int:
    from .info import collect, format_info

    facts = collect()
    print(json.dumps(facts, indent=1) if args.json else format_info(facts))
    return 0


def _version_string() -> str:
    from . import __version__

    return f"fastalign {__version__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastalign", description="fastalign: sparse GNN kernels and Alignahead++")
    parser.add_argument("--version", action="version", version=_version_string())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_train_parser(sub)
    add_demo_parser(sub)
    add_info_parser(sub)
    from .distill.commands import add_parsers as add_student_parsers

    add_student_parsers(sub)
    try:  # the bench subcommand lives with the benchmarks; absent module -> no subcommand
        from .bench.command import add_bench_parser
    except ImportError:
        pass
    else:
        add_bench_parser(sub)
    return parser


def _exit_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`) ends the command like Ctrl-C, through Python: open
    files are closed and temporary folders (the copy of a read-only data set) removed,
    which the default action (immediate death) would leave behind."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # run as the fastalign command, not called from Python
        _exit_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fastalign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`fastalign info | head`): not an error of ours; point stdout
        # at /dev/null so that the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, FileNotFoundError, PermissionError, ImportError) as exc:
        # the subcommand's own usage line, not the top-level one
        getattr(args, "parser", parser).error(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
