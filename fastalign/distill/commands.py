"""``fastalign evaluate | predict | export``: what is done with a trained student's
checkpoint (``fastalign train --save DIR`` writes one per seed and student).

    fastalign evaluate DIR/seed0_student0.pt                 # scores on its data set's splits
    fastalign evaluate CKPT --dataset citeseer --root DATA   # another graph of the same width
    fastalign predict CKPT --out predictions.csv             # per-node class and probabilities
    fastalign export CKPT --out student.pt2                  # runs without fastalign installed
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

SPLITS = ("train", "val", "test")


def _common(p) -> None:
    from .options import BACKENDS, device_name

    p.add_argument("checkpoint", help="a file written by fastalign train --save")
    p.add_argument("--dataset", default=None, type=str.lower,
                   help="data set to run on (default: the one the student was trained on)")
    p.add_argument("--root", default=None, help="data root (default: $FASTALIGN_DATA or ~/.cache/fastalign/datasets)")
    p.add_argument("--device", default="cpu", type=device_name, help="cpu or cuda[:i]")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="kernel backend")


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="scores of a trained student (a --save checkpoint)",
                              description="Scores of a trained student on every split of its data set, "
                                          "or of another data set with the same feature width.")
    _common(p)
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")
    p.set_defaults(func=cmd_evaluate, parser=p)

    p = subparsers.add_parser("predict", help="per-node classes and probabilities of a trained student",
                              description="Per-node predictions of a trained student: the class (or, for "
                                          "multi-label data, the labels above 0.5) and the probabilities.")
    _common(p)
    p.add_argument("--split", default="all", choices=("all",) + SPLITS,
                   help="which nodes (default: every node; inductive data sets: the split's graphs)")
    p.add_argument("--out", required=True, help="output file: .csv (one row per node) or .pt (tensors)")
    p.set_defaults(func=cmd_predict, parser=p)

    p = subparsers.add_parser("export", help="a trained student as a program that runs without fastalign",
                              description="Exports a trained student with torch.export, in plain PyTorch "
                                          "operations (no fastalign kernels): load it with "
                                          "torch.export.load(FILE).module() and call it with (x, edge_index).")
    p.add_argument("checkpoint", help="a file written by fastalign train --save")
    p.add_argument("--out", required=True,
                   help="the exported program: .pt2 (torch.export) or .onnx (ONNX, plain PyTorch form only; "
                        "needs the onnx and onnxscript packages, checked with onnxruntime where installed)")
    p.add_argument("--keep-kernels", action="store_true",
                   help="export the student with fastalign's kernels (custom ops): faster, but the "
                        "program then loads only where fastalign is installed, after import fastalign.ops")
    p.set_defaults(func=cmd_export, parser=p)


# --------------------------------------------------------------------------- shared
def _load(args):
    """(record, student, data) for evaluate and predict."""
    from ..datasets import load_dataset
    from .checkpoint import build_student, check_data, load

    record = load(args.checkpoint)
    trained_on = record["data"].get("load") or {"name": record["data"].get("name", "synthetic")}
    if args.dataset is None or args.dataset == trained_on["name"]:
        how = dict(trained_on)
    else:
        how = {"name": args.dataset}
    name = how.pop("name")
    data = load_dataset(name, args.root, **how)
    check_data(record, data.num_features, data.num_classes, name)
    backend = None if args.backend == "auto" else args.backend
    return record, build_student(record, backend, args.device), data


def _batches(data, split: str) -> List[Tuple[object, object]]:
    """(batch, node mask) pairs covering ``split`` ("all": every node)."""
    from ..datasets import merge_graphs

    if not data.inductive:
        b = data.transductive
        return [(b, None if split == "all" else b.masks[split])]
    splits = SPLITS if split == "all" else (split,)
    return [(merge_graphs([g], s), None) for s in splits for g in data.graphs.get(s, [])]


def _logits(student, batch, device):
    import torch

    with torch.no_grad():
        on = batch.to(device) if str(batch.x.device) != str(device) else batch
        return student(on.graph, on.edge_index, on.x_input).logits.cpu()


# --------------------------------------------------------------------------- commands
def evaluate(record, student, data, device="cpu") -> Dict[str, float]:
    """The student's score on each split of ``data`` (accuracy or micro-F1)."""
    import torch

    from .trainer import _probs, score

    out = {}
    for split in SPLITS:
        logits, labels = [], []
        for batch, mask in _batches(data, split):
            z = _logits(student, batch, device)
            m = mask.cpu() if mask is not None else torch.ones(z.size(0), dtype=torch.bool)
            logits.append(z[m])
            labels.append(batch.y.cpu()[m])
        if logits:
            out[split] = score(_probs(torch.cat(logits), data.multilabel), torch.cat(labels), data.multilabel)
    return out


def size_and_speed(student, data, device="cpu", reps: int = 10) -> dict:
    """The student's size, and on the CPU its inference time over the data set's first
    evaluation graph (:func:`fastalign.distill.inference.inference_cost`)."""
    from .inference import inference_cost, student_size

    if str(device) != "cpu":
        return student_size(student)
    return inference_cost(student, _batches(data, "all")[0][0], reps)


def cmd_evaluate(args) -> int:
    if args.json:
        from ..bench.report import check_output

        check_output(args.json, "--json")
    record, student, data = _load(args)
    scores = evaluate(record, student, data, args.device)
    facts = size_and_speed(student, data, args.device)
    trained = record["metrics"]
    print(f"fastalign evaluate: {args.checkpoint} ({record['architecture']['model']} student "
          f"{record['student_index']}, seed {record['seed']}, best epoch {trained.get('best_epoch')}) "
          f"on {data.name} ({data.metric})")
    for split, value in scores.items():
        print(f"  {split:<5} {value:.4f}")
    line = f"  {facts['parameters']:,} parameters ({facts['bytes']:,} bytes)"
    if "inference_ms" in facts:
        line += f"; inference over {facts['nodes']:,} nodes: " + ", ".join(
            f"{ms:.2f} ms on {name.replace('_', ' ')}" for name, ms in facts["inference_ms"].items())
    print(line)
    if args.json:
        from ..bench.report import write_json

        write_json({"checkpoint": args.checkpoint, "dataset": data.name, "metric": data.metric,
                    "scores": scores, "trained": trained, **facts}, args.json)
        print(f"wrote {args.json}")
    return 0


def predict(student, data, split: str = "all", device="cpu"):
    """(predictions, probabilities) of the nodes of ``split``: the arg-max class per node,
    or for multi-label data the 0/1 labels above 0.5."""
    import torch

    from .trainer import _probs

    probs = []
    for batch, mask in _batches(data, split):
        p = _probs(_logits(student, batch, device), data.multilabel)
        probs.append(p if mask is None else p[mask.cpu()])
    probs = torch.cat(probs) if probs else torch.empty(0, data.num_classes)
    pred = (probs > 0.5).long() if data.multilabel else probs.argmax(1)
    return pred, probs


def cmd_predict(args) -> int:
    from ..bench.report import check_output

    check_output(args.out, "--out", (".csv", ".pt"))
    suffix = os.path.splitext(args.out)[1].lower()
    record, student, data = _load(args)
    pred, probs = predict(student, data, args.split, args.device)
    if suffix == ".pt":
        import torch

        torch.save({"pred": pred, "probs": probs, "split": args.split, "dataset": data.name}, args.out)
    else:
        with open(args.out, "w") as f:
            head = ([f"label_{c}" for c in range(probs.size(1))] if data.multilabel else ["class"])
            f.write(",".join(["node"] + head + [f"p_{c}" for c in range(probs.size(1))]) + "\n")
            for i in range(probs.size(0)):
                labels = pred[i].tolist() if data.multilabel else [int(pred[i])]
                f.write(",".join([str(i)] + [str(v) for v in labels] + [f"{v:.6g}" for v in probs[i].tolist()]) + "\n")
    print(f"fastalign predict: {probs.size(0)} nodes of {data.name} ({args.split}) -> {args.out}")
    return 0


def export(record, path: str, keep_kernels: bool = False) -> Optional[float]:
    """Exports the checkpoint's student (plain PyTorch, or with ``keep_kernels``
    fastalign's custom ops; dynamic node and edge counts) to ``path``: a torch.export
    program, or ONNX when ``path`` ends in ``.onnx``. Returns the largest difference
    between the written program and the student on another random graph (a check that
    it computes the same; None for ONNX without onnxruntime to run it)."""
    import torch
    from torch.export import Dim

    from ..graph import Graph
    from .checkpoint import build_student
    from .portable import KernelStudent, PortableStudent

    student = build_student(record, backend=None if keep_kernels else "torch")
    portable = KernelStudent(student).eval() if keep_kernels else PortableStudent.from_student(student)
    gen = torch.Generator().manual_seed(0)
    width = record["architecture"]["in_dim"]

    def random_graph(n):
        return torch.randn(n, width, generator=gen), torch.randint(0, n, (2, 4 * n), generator=gen)

    example = random_graph(64)
    shapes = ({0: Dim("nodes", min=2)}, {1: Dim("edges", min=1)})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".onnx"):
        run = _export_onnx(portable, example, shapes, path)
    else:
        torch.export.save(torch.export.export(portable, example, dynamic_shapes=shapes), path)
        run = torch.export.load(path).module()
    if run is None:
        return None
    x, edge_index = random_graph(93)  # another size than the example's
    with torch.no_grad():
        want = student(Graph.from_edge_index(edge_index, num_nodes=93), edge_index, x).logits
        got = run(x, edge_index)
    return float((want - got).abs().max())


def _export_onnx(portable, example, shapes, path):
    """The plain-PyTorch student as ONNX (torch.onnx's exporter from torch.export);
    returns ``run(x, edge_index)`` through onnxruntime, or None where it is not installed."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages ({exc.name} is missing): "
                          "pip install onnx onnxscript") from None
    # the exporters' notes (attribute types, torchvision's ops) are not the user's concern
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # progress lines
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(portable, example, path, dynamo=True, dynamic_shapes=shapes)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path)
    names = [i.name for i in session.get_inputs()]

    def run(x, edge_index):
        return torch.from_numpy(session.run(None, {names[0]: x.numpy(), names[1]: edge_index.numpy()})[0])

    return run


def cmd_export(args) -> int:
    from ..bench.report import check_output
    from .checkpoint import load

    check_output(args.out, "--out", (".pt2", ".onnx"))
    onnx = args.out.lower().endswith(".onnx")
    if onnx and args.keep_kernels:
        raise ValueError("--keep-kernels makes a torch.export program (.pt2): ONNX has no fastalign kernels")
    record = load(args.checkpoint)
    diff = export(record, args.out, args.keep_kernels)
    a = record["architecture"]
    form = "ONNX" if onnx else "torch.export, " + ("fastalign's kernels" if args.keep_kernels else "plain PyTorch")
    check = (f"matches the student within {diff:.1e}" if diff is not None
             else "not run: onnxruntime is not installed")
    print(f"fastalign export: {a['model']} student ({a['num_layers']} layers, {a['in_dim']} -> "
          f"{a['num_classes']}) -> {args.out} ({form}; {check})")
    if onnx:
        print(f"  load: onnxruntime.InferenceSession({args.out!r}).run(None, {{'x': x, 'edge_index': edge_index}})")
    else:
        first = "import fastalign.ops; " if args.keep_kernels else ""
        print(f"  load: {first}torch.export.load({args.out!r}).module()(x, edge_index) -> logits")
    return 0


def check_save_dir(path: Optional[str]) -> None:
    """``train --save DIR``: a folder that can be written, checked before the run."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--save {path}: exists and is not a folder")
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--save {path}: the folder cannot be written")
