"""The multi-student loop: alternating or simultaneous updates, model selection by best
validation score, metrics, and the summary the CLI prints and writes.

* ``alternating`` (the paper): within every step the students are updated in turn; the
  student being updated runs with gradients, each peer runs a no-grad forward (train
  mode, like the student) whose embeddings are the targets. K students cost K(K-1) peer
  forwards per step, and each update sees the peers' latest weights.
* ``simultaneous``: one forward per student per step; each student's loss uses the
  others' detached embeddings of that same pass; all are updated together.

An epoch is one pass over the training batches (the whole graph for Planetoid), every
student updated once per batch. Scores: accuracy, or micro-F1 for multi-label data. Each
student keeps its best-validation epoch (first best on ties); its test score at that
epoch is reported, and the ensemble averages the students' probabilities from their
best epochs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from ..datasets import NodeDataset
from . import checkpoint
from .inference import inference_cost, layerwise_inference, student_size
from .losses import FeatureAdapters, LossWeights, hint_pairs, student_loss
from .models import MODELS, Student, check_residual
from .options import BACKENDS, LR_SCHEDULES, MODES, WD_SCOPES  # noqa: F401  (torch-free)
from .pairing import ALIGNS, layer_pairs
from .exchange import DistributedWorld, World  # noqa: F401  (DistributedWorld: re-exported)


@dataclass
class TrainConfig:
    model: str = "gcn"
    layers: int = 2
    hidden: int = 16
    students: int = 2
    align: str = "ahead"
    mode: str = "alternating"
    epochs: int = 200
    lr: float = 0.01
    weight_decay: float = 5e-4
    dropout: float = 0.5
    heads: int = 8
    deep_supervision: bool = True
    weights: LossWeights = field(default_factory=LossWeights)
    backend: str = "auto"
    device: str = "cpu"
    batch_size: int = 2
    log_every: int = 0
    # deep-student recipe (defaults: the 2-layer Kipf & Welling setting, unchanged)
    residual: str = "none"          # none | plain | initial | gcnii (see models.Student)
    residual_alpha: float = 0.1     # share of the first hidden layer for initial / gcnii
    weight_decay_scope: str = "all"  # all parameters, or "first": the first graph layer only
    lr_schedule: str = "constant"   # constant | cosine (cosine annealing to 0 over the epochs)
    align_warmup: int = 0           # epochs of a linear ramp 0 -> 1 on the alignment terms
    # weight decay of the hidden layers 2..L-1 (GCNII's separate decay of its convolutions);
    # None: they follow weight_decay_scope like every other parameter
    hidden_weight_decay: Optional[float] = None
    patience: int = 0               # stop once no student's validation score improved for this many epochs (0: off)
    # mini-batches of a transductive graph: the subgraphs of a random partition of the
    # nodes into this many parts, drawn every epoch (1: the whole graph)
    num_parts: int = 1
    # model selection layer by layer over blocks of this many rows (distill.inference.layerwise_inference), for
    # graphs whose whole-graph forward does not fit on the device (0: one forward)
    eval_chunk_rows: int = 0
    # where the data set lives (None: device); each training batch and evaluation block is
    # moved to the device as it runs, so a graph bigger than the device trains in parts
    data_device: Optional[str] = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {self.align!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("students", "epochs", "batch_size", "hidden", "num_parts"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.layers, int) or not 2 <= self.layers <= 16:
            raise ValueError(f"layers must be an int in [2, 16], got {self.layers!r}")
        check_residual(self.residual, self.residual_alpha)
        if self.weight_decay_scope not in WD_SCOPES:
            raise ValueError(f"weight_decay_scope must be one of {WD_SCOPES}, got {self.weight_decay_scope!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not isinstance(self.align_warmup, int) or self.align_warmup < 0:
            raise ValueError(f"align_warmup must be a non-negative int, got {self.align_warmup!r}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        if self.hidden_weight_decay is not None and not self.hidden_weight_decay >= 0:
            raise ValueError(f"hidden_weight_decay must be None or non-negative, got {self.hidden_weight_decay!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"patience must be a non-negative int, got {self.patience!r}")
        if isinstance(self.eval_chunk_rows, bool) or not isinstance(self.eval_chunk_rows, int) \
                or self.eval_chunk_rows < 0:
            raise ValueError(f"eval_chunk_rows must be a non-negative int, got {self.eval_chunk_rows!r}")

    @property
    def op_backend(self) -> Optional[str]:
        return None if self.backend == "auto" else self.backend


# ----------------------------------------------------------------------------- metrics
def score(probs: Tensor, y: Tensor, multilabel: bool) -> float:
    """Accuracy of the arg-max, or micro-F1 of ``probs > 0.5`` for multi-label."""
    if probs.numel() == 0:
        return float("nan")
    if not multilabel:
        return (probs.argmax(1) == y).float().mean().item()
    pred, true = probs > 0.5, y > 0.5
    tp = (pred & true).sum().item()
    fp = (pred & ~true).sum().item()
    fn = (~pred & true).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)


def _probs(logits: Tensor, multilabel: bool) -> Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)


@torch.no_grad()
def predict(student: Student, eval_batches, chunk_rows: int = 0) -> Dict[str, Tensor]:
    """Logits per split (``val``, ``test``), concatenated over batches, on the batches'
    device. The student runs on its parameters' device: one forward per batch, or with
    ``chunk_rows`` layer by layer over blocks of that many rows (:func:`fastalign.distill.inference.layerwise_inference`),
    the batch staying where it is."""
    student.eval()
    device = next(student.parameters()).device
    out: Dict[str, List[Tensor]] = {}
    for b in eval_batches:
        if chunk_rows:
            logits = layerwise_inference(student, b.graph, b.x_input, chunk_rows, device)
        else:
            on = b if b.x.device == device else b.to(device)
            logits = student(on.graph, on.edge_index, on.x_input).logits.to(b.x.device)
        for split, mask in b.masks.items():
            if split == "train":
                continue
            out.setdefault(split, []).append(logits[mask])
    return {k: torch.cat(v) for k, v in out.items()}


def _labels(eval_batches) -> Dict[str, Tensor]:
    out: Dict[str, List[Tensor]] = {}
    for b in eval_batches:
        for split, mask in b.masks.items():
            if split != "train":
                out.setdefault(split, []).append(b.y[mask])
    return {k: torch.cat(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- one run
def build_students(cfg: TrainConfig, data: NodeDataset):
    pairs = layer_pairs(cfg.layers, cfg.align) if cfg.students > 1 else []
    # every student before any adapter: for a seed, the students start from the same
    # weights whatever the alignment terms (a paired comparison with independent students)
    students = [Student(cfg.model, data.num_features, cfg.hidden, data.num_classes, cfg.layers,
                        cfg.dropout, cfg.deep_supervision, cfg.heads, cfg.op_backend,
                        residual=cfg.residual, residual_alpha=cfg.residual_alpha).to(cfg.device)
                for _ in range(cfg.students)]
    hinted = hint_pairs(pairs, cfg.layers, cfg.weights.feature_pairs) if cfg.weights.feature > 0 else []
    adapters = [FeatureAdapters(s.widths, hinted).to(cfg.device) for s in students]
    opts = [torch.optim.Adam(_param_groups(cfg, s, a), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for s, a in zip(students, adapters)]
    return students, adapters, opts, pairs


def _param_groups(cfg: TrainConfig, student: Student, adapters: FeatureAdapters) -> List[dict]:
    """Adam's parameter groups: weight decay on every parameter (``all``) or on the first
    graph layer only (``first``, PyG's gcn.py); ``hidden_weight_decay`` then sets the
    hidden layers 2..L-1 apart (GCNII: 0.01 on its convolutions, 5e-4 on the rest)."""
    hidden = [p for layer in student.layers[1:-1] for p in layer.parameters()] \
        if cfg.hidden_weight_decay is not None else []
    first = list(student.layers[0].parameters()) if cfg.weight_decay_scope == "first" else []
    taken = {id(p) for p in hidden + first}
    rest = [p for p in list(student.parameters()) + list(adapters.parameters()) if id(p) not in taken]
    if cfg.weight_decay_scope == "all":
        groups = [{"params": rest}]
    else:
        groups = [{"params": first}, {"params": rest, "weight_decay": 0.0}]
    if hidden:
        groups.append({"params": hidden, "weight_decay": cfg.hidden_weight_decay})
    return groups


class StudentRandomness:
    """One random stream per student (its dropout masks), swapped in around its forward:
    a student draws the same masks whichever process runs it and whatever the others
    draw, so a distributed run repeats the single-process one."""

    def __init__(self, seed: int, num_students: int, device):
        self.device = torch.device(device)
        draw = torch.Generator().manual_seed(seed)
        seeds = torch.randint(0, 2**62, (num_students,), generator=draw).tolist()
        self.cpu = [torch.Generator().manual_seed(s).get_state() for s in seeds]
        self.gpu = ([torch.Generator(self.device).manual_seed(s).get_state() for s in seeds]
                    if self.device.type == "cuda" else None)

    @contextlib.contextmanager
    def of(self, k: int):
        saved = torch.get_rng_state()
        torch.set_rng_state(self.cpu[k])
        if self.gpu is not None:
            saved_gpu = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.gpu[k], self.device)
        try:
            yield
        finally:
            self.cpu[k] = torch.get_rng_state()
            torch.set_rng_state(saved)
            if self.gpu is not None:
                self.gpu[k] = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_gpu, self.device)


def train_step(cfg: TrainConfig, batch, students, adapters, opts, pairs, multilabel: bool,
               align_scale: float = 1.0, world: Optional[World] = None,
               rng: Optional[StudentRandomness] = None):
    """One step over a batch: every (local) student updated once. Returns the loss parts'
    mean over all students. ``align_scale`` multiplies the alignment terms (the warm-up
    ramp); ``world`` says which students are local and brings the others' embeddings."""
    K = len(students)
    world = world or World(K)
    stream = rng.of if rng is not None else (lambda k: contextlib.nullcontext())

    def forward(k):
        with stream(k):
            return students[k](batch.graph, batch.edge_index, batch.x_input)

    need_peers = bool(pairs) and K > 1
    local = world.local()
    parts_all = []
    if cfg.mode == "alternating":
        if world.size > 1:
            raise ValueError(ALTERNATING_DISTRIBUTED)
        for k in range(K):
            peers = []
            if need_peers:
                with torch.no_grad():
                    peers = [forward(j).hiddens for j in range(K) if j != k]
            students[k].train()
            out = forward(k)
            loss, parts = student_loss(batch, out, peers, pairs, adapters[k], cfg.weights,
                                       multilabel, cfg.op_backend, align_scale)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            parts_all.append(parts)
    else:
        outs = {k: forward(k) for k in local}
        detached = (world.exchange({k: [h.detach() for h in o.hiddens] for k, o in outs.items()},
                                   [m for _, m in pairs]) if need_peers else None)
        total = 0.0
        for k in local:
            peers = [detached[j] for j in range(K) if j != k] if need_peers else []
            loss, parts = student_loss(batch, outs[k], peers, pairs, adapters[k], cfg.weights,
                                       multilabel, cfg.op_backend, align_scale)
            total = total + loss
            parts_all.append(parts)
        for k in local:
            opts[k].zero_grad(set_to_none=True)
        total.backward()
        for k in local:
            opts[k].step()
    # the students' mean of each part; structure_by_pair stays a list, one value per pair
    mean = {key: torch.stack([p[key] for p in parts_all]).mean(0).tolist() for key in parts_all[0]}
    return world.mean_parts(mean, len(parts_all))


ALTERNATING_DISTRIBUTED = (
    "mode 'alternating' updates the students one after another, each seeing the others' "
    "latest weights: it cannot be spread over processes. Use --mode simultaneous with "
    "--distributed (one forward per student per step, peers' embeddings exchanged)."
)


def train_run(cfg: TrainConfig, data: NodeDataset, seed: int, log: Optional[Callable[[str], None]] = None,
              world: Optional[World] = None, save_dir: Optional[str] = None,
              data_info: Optional[dict] = None, resume: bool = False) -> dict:
    """Train ``cfg.students`` students from ``seed``; return per-student best-val scores,
    the ensemble's, and the mean training time per epoch. ``world``: where the students
    live (default: all in this process; a :class:`DistributedWorld` spreads them over
    processes, every rank calling this with the same arguments). ``save_dir``: each
    (local) student's best-validation weights are written there
    (:mod:`fastalign.distill.checkpoint`), with ``data_info`` (how the data set was
    loaded) in the file; in one process, also the whole state of the run after every
    epoch (``run_seed<s>.pt``), from which ``resume=True`` continues an interrupted run
    with the same result as an uninterrupted one (a finished seed is not run again)."""
    world = world or World(cfg.students)
    if world.size > 1 and cfg.mode != "simultaneous":
        raise ValueError(ALTERNATING_DISTRIBUTED)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # every rank builds every student (the same weights as one process would), then keeps its own
    students, adapters, opts, pairs = build_students(cfg, data)
    local = world.local()
    for k in range(cfg.students):
        if k not in local:
            students[k] = adapters[k] = opts[k] = None
    rng = StudentRandomness(seed, cfg.students, cfg.device)
    multilabel = data.multilabel
    eval_batches = data.eval_batches(cfg.batch_size)
    labels = _labels(eval_batches)
    best = {k: {"val": -1.0, "test": float("nan"), "epoch": -1, "probs": None} for k in local}
    kept = {}  # k -> the state_dicts of student k and its adapters at its best epoch (save_dir)
    exchanged = 0
    epoch_times = []
    # the unweighted structure KL of each aligned pair, averaged over the students and
    # the epoch's batches: first epoch, last epoch, and the mean over the epochs run
    s_first = s_sum = s_last = None
    scheds = ([torch.optim.lr_scheduler.CosineAnnealingLR(opts[k], T_max=cfg.epochs) for k in local]
              if cfg.lr_schedule == "cosine" else [])
    run_file = (os.path.join(save_dir, checkpoint.run_state_name(seed))
                if save_dir is not None and world.size == 1 else None)
    first_epoch = 1
    if resume and run_file is not None and os.path.exists(run_file):
        state = checkpoint.load_run_state(run_file, asdict(cfg), data_info)
        if state["done"]:
            return state["result"]
        for k in local:
            students[k].load_state_dict(state["students"][k])
            adapters[k].load_state_dict(state["adapters"][k])
            opts[k].load_state_dict(state["optimizers"][k])
        for sch, saved in zip(scheds, state["schedulers"]):
            sch.load_state_dict(saved)
        rng.cpu = list(state["rng_students"])
        if rng.gpu is not None and state.get("rng_students_gpu") is not None:
            rng.gpu = list(state["rng_students_gpu"])
        gen.set_state(state["rng_batches"])
        torch.set_rng_state(state["rng_torch"])
        best = {k: dict(state["best"][k]) for k in local}
        kept = {k: tuple(v) for k, v in state["kept"].items()}
        epoch_times = list(state["epoch_times"])
        s_first, s_sum, s_last = state["structure"]
        exchanged = state["exchanged"]
        first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        align_scale = min(1.0, epoch / cfg.align_warmup) if cfg.align_warmup else 1.0
        batches = data.train_batches(cfg.batch_size, gen, num_parts=cfg.num_parts)
        for k in local:
            students[k].train()
        _sync(cfg.device)
        t0 = time.perf_counter()
        parts = [train_step(cfg, _on(b, cfg), students, adapters, opts, pairs, multilabel, align_scale,
                            world=world, rng=rng)
                 for b in batches]
        for sch in scheds:
            sch.step()
        _sync(cfg.device)
        epoch_times.append(world.max_float(time.perf_counter() - t0))  # the slowest process's
        exchanged = max(exchanged, world.exchanged_bytes)
        if pairs and parts[0]["structure_by_pair"]:
            s_last = [sum(p["structure_by_pair"][i] for p in parts) / len(parts) for i in range(len(pairs))]
            s_first = s_first or s_last
            s_sum = s_last if s_sum is None else [a + b for a, b in zip(s_sum, s_last)]
        local_vals = {}
        for k in local:
            logits = predict(students[k], eval_batches, cfg.eval_chunk_rows)
            probs = {sp: _probs(v, multilabel) for sp, v in logits.items()}
            val = score(probs["val"], labels["val"], multilabel)
            if val > best[k]["val"]:
                best[k] = {"val": val, "test": score(probs["test"], labels["test"], multilabel),
                           "epoch": epoch, "probs": probs}
                if save_dir is not None:
                    kept[k] = (checkpoint.copy_state(students[k]), checkpoint.copy_state(adapters[k]))
            local_vals[k] = (val, best[k]["epoch"])
        every = world.gather_scalars(local_vals)
        vals = [v for v, _ in every]
        stalled = cfg.patience > 0 and epoch - max(e for _, e in every) >= cfg.patience
        if log and world.is_main and cfg.log_every and (epoch % cfg.log_every == 0 or epoch == cfg.epochs or stalled):
            p = parts[-1]
            by_pair = "".join(f" {l}->{m} {v:.2e}" for (l, m), v in zip(pairs, p["structure_by_pair"]))
            log(f"  seed {seed} epoch {epoch:4d}  task {p['task']:.4f}  ds {p['ds']:.4f}  "
                f"struct {p['structure']:.2e}{f' [{by_pair.strip()}]' if by_pair else ''}  "
                f"feat {p['feature']:.4f}  val {' '.join(f'{v:.3f}' for v in vals)}")
        if run_file is not None:  # the run as of this epoch, to resume from
            checkpoint.save_run_state(run_file, {
                "done": False, "epoch": epoch, "config": asdict(cfg), "data": data_info,
                "students": {k: students[k].state_dict() for k in local},
                "adapters": {k: adapters[k].state_dict() for k in local},
                "optimizers": {k: opts[k].state_dict() for k in local},
                "schedulers": [sch.state_dict() for sch in scheds],
                "rng_students": list(rng.cpu), "rng_students_gpu": list(rng.gpu) if rng.gpu else None,
                "rng_batches": gen.get_state(), "rng_torch": torch.get_rng_state(),
                "best": best, "kept": kept, "epoch_times": epoch_times,
                "structure": [s_first, s_sum, s_last], "exchanged": exchanged,
            })
        if stalled:
            break
    if save_dir is not None:
        info = data_info or {"name": data.name}
        info = {**info, "num_features": data.num_features, "num_classes": data.num_classes,
                "metric": data.metric}
        for k in local:
            metrics = {"val": best[k]["val"], "test": best[k]["test"], "best_epoch": best[k]["epoch"],
                       "metric": data.metric}
            state = kept.get(k) or (checkpoint.copy_state(students[k]), checkpoint.copy_state(adapters[k]))
            record = checkpoint.student_record(students[k], *state, asdict(cfg), info, metrics, seed, k)
            checkpoint.save(os.path.join(save_dir, checkpoint.checkpoint_name(seed, k)), record)
    everyone = world.gather_results(best)
    ens = {sp: torch.stack([b["probs"][sp] for b in everyone]).mean(0) for sp in ("val", "test")}
    timed = epoch_times[1:] if len(epoch_times) > 1 else epoch_times
    # what is deployed: the student proper, without its deep-supervision heads; its CPU
    # inference time over the first evaluation graph (1 and all threads)
    first = next(s for s in students if s is not None)
    on_cpu = str(cfg.device) == "cpu" and str(eval_batches[0].x.device) == "cpu"
    cost = inference_cost(first, eval_batches[0], reps=5) if on_cpu else student_size(first)
    result = {
        "seed": seed,
        "student_parameters": cost["parameters"],
        "student_bytes": cost["bytes"],
        "student_inference_ms": cost.get("inference_ms"),
        "students": [{"student": k, "val": b["val"], "test": b["test"], "best_epoch": b["epoch"]}
                     for k, b in enumerate(everyone)],
        "ensemble": {"val": score(ens["val"], labels["val"], multilabel),
                     "test": score(ens["test"], labels["test"], multilabel)},
        "epoch_time_s": sum(timed) / len(timed),
        "epochs_run": len(epoch_times),
        "processes": world.size,
        "exchanged_bytes_per_step": exchanged,  # sent by one process (0 in one process)
        "structure_by_pair": [
            {"pair": [l, m], "first_epoch": s_first[i], "last_epoch": s_last[i],
             "mean": s_sum[i] / len(epoch_times)}
            for i, (l, m) in enumerate(pairs)
        ] if s_last is not None else [],
    }
    if run_file is not None:  # the seed is done: a resume takes this result as it is
        checkpoint.save_run_state(run_file, {"done": True, "config": asdict(cfg), "data": data_info,
                                             "result": result})
    return result


def _on(batch, cfg: TrainConfig):
    """``batch`` on the device, moved there when the data set lives elsewhere
    (``cfg.data_device``); otherwise the batch itself, with its cached Graph and inputs."""
    elsewhere = cfg.data_device is not None and cfg.data_device != cfg.device
    return batch.to(cfg.device) if elsewhere else batch


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _mean_std(values: List[float]):
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (float("nan"), float("nan"))


# Graphs below this many edges train on one CPU thread unless OMP_NUM_THREADS says
# otherwise: on Cora a second thread gains nothing alone (14.6 s for the 8-layer,
# 3-student run with 2 threads, as fast with 1), while beside one other busy process
# every parallel region waits for a thread that is not scheduled (165 s with 2 threads,
# 16.5 s with 1). Measured with bench/busy_machine.py's competitor; docs/benchmarks.md.
ONE_THREAD_EDGES = 50_000


@contextlib.contextmanager
def _thread_count(cfg: TrainConfig, data: NodeDataset):
    """One torch thread for a small graph on the CPU (see ONE_THREAD_EDGES), unless the
    user chose the count (OMP_NUM_THREADS); restored afterwards."""
    batches = [data.transductive] if not data.inductive else [g for gs in data.graphs.values() for g in gs]
    edges = max((b.edge_index.size(1) for b in batches), default=0)
    small = str(cfg.device).startswith("cpu") and edges < ONE_THREAD_EDGES
    if not small or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_experiment(cfg: TrainConfig, data: NodeDataset, seeds: List[int],
                   log: Optional[Callable[[str], None]] = None,
                   stop: Optional[Callable[[], bool]] = None, world: Optional[World] = None,
                   save_dir: Optional[str] = None, data_info: Optional[dict] = None,
                   resume: bool = False) -> dict:
    """Runs every seed; the summary holds mean/std of the test score over all (seed,
    student) pairs, per-student and ensemble means, and the mean epoch time. ``stop``
    (checked before each seed after the first) ends the run early; ``seeds`` in the
    result lists the seeds that ran. ``world``: see :func:`train_run` (every rank gets
    the whole result; only the main one logs). ``save_dir``, ``data_info``, ``resume``:
    see :func:`train_run` (one checkpoint per seed and student)."""
    if not seeds:
        raise ValueError("seeds must not be empty")
    world = world or World(cfg.students)
    data.to(cfg.data_device or cfg.device)
    runs = []
    with _thread_count(cfg, data):
        for seed in seeds:
            # one decision for every rank (a rank that stopped alone would hang the others)
            if runs and stop is not None and world.max_float(float(bool(stop()))) > 0:
                break
            r = train_run(cfg, data, seed, log, world, save_dir=save_dir, data_info=data_info, resume=resume)
            runs.append(r)
            if log and world.is_main:
                accs = " ".join(f"{s['test']:.4f}" for s in r["students"])
                log(f"seed {seed}: test {accs}  ensemble {r['ensemble']['test']:.4f}  "
                    f"epoch {r['epoch_time_s'] * 1e3:.1f} ms")
    return summarize_runs(asdict(cfg), data.name, data.metric, runs)


def _median_timings(per_run: List[Optional[dict]]) -> Optional[dict]:
    timed = [t for t in per_run if t]
    if not timed:
        return None
    return {k: statistics.median(t[k] for t in timed if k in t) for k in timed[0]}


def summarize_runs(config: dict, dataset: str, metric: str, runs: List[dict]) -> dict:
    """The result of :func:`run_experiment` from its per-seed ``runs`` (also used to merge
    the runs of two invocations of one configuration on disjoint seeds)."""
    tests = [s["test"] for r in runs for s in r["students"]]
    vals = [s["val"] for r in runs for s in r["students"]]
    mean_test, std_test = _mean_std(tests)
    per_student = []
    for k in range(config["students"]):
        m, sd = _mean_std([r["students"][k]["test"] for r in runs])
        per_student.append({"student": k, "mean_val": _mean_std([r["students"][k]["val"] for r in runs])[0],
                            "mean_test": m, "std_test": sd})
    ens_m, ens_sd = _mean_std([r["ensemble"]["test"] for r in runs])
    pair_runs = [r.get("structure_by_pair") or [] for r in runs]
    by_pair = [
        {"pair": entries[0]["pair"],
         **{k: statistics.fmean(e[k] for e in entries) for k in ("first_epoch", "last_epoch", "mean")}}
        for entries in zip(*pair_runs)
    ] if pair_runs and all(pair_runs) else []
    return {
        "dataset": dataset,
        "metric": metric,
        "config": config,
        "seeds": [r["seed"] for r in runs],
        "mean_test_acc": mean_test,
        "std_test_acc": std_test,
        "mean_val_acc": _mean_std(vals)[0],
        "per_student": per_student,
        "ensemble": {"mean_test_acc": ens_m, "std_test_acc": ens_sd},
        "epoch_time_s": statistics.fmean(r["epoch_time_s"] for r in runs),
        # one student as deployed (its graph layers, no deep-supervision heads)
        "student_parameters": runs[0].get("student_parameters") if runs else None,
        "student_bytes": runs[0].get("student_bytes") if runs else None,
        # its CPU inference time (median over the seeds of each run's median), 1 and all threads
        "student_inference_ms": _median_timings([r.get("student_inference_ms") for r in runs]),
        # the unweighted structure KL per aligned pair, mean over the seeds
        "structure_by_pair": by_pair,
        "runs": runs,
    }
