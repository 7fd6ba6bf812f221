"""Trained students on disk: one file per (seed, student), written by ``fastalign train
--save DIR`` as ``DIR/seed<s>_student<k>.pt``.

A checkpoint is a dict of plain types and tensors (``torch.load(path, weights_only=True)``
reads it):

* ``format``, ``format_version``: what the file is;
* ``student``: the student proper's ``state_dict`` (its graph layers: what is deployed);
  ``aux_heads`` (the deep-supervision classifiers) and ``adapters`` (the feature-hint
  maps) apart: training needs them, inference does not;
* ``architecture``: what rebuilds the student (model, widths, layers, heads, residual);
* ``config``: the whole training configuration; ``data``: the data set's name, how it
  was loaded (``load``), its feature width, classes and metric;
* ``metrics``: validation and test scores at the kept (best-validation) epoch;
* ``seed``, ``student_index``, ``versions`` (fastalign, torch).

Files are written atomically (a temporary file in the same folder, flushed, then renamed
over the name): a run killed while writing leaves the previous file or none.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

import torch

from .models import Student

FORMAT = "fastalign.student"
FORMAT_VERSION = 1
_KEYS = ("student", "architecture", "config", "data", "metrics")


class CheckpointError(ValueError):
    """A file that is not a readable fastalign student checkpoint of this version."""


def checkpoint_name(seed: int, student: int) -> str:
    return f"seed{seed}_student{student}.pt"


def run_state_name(seed: int) -> str:
    return f"run_seed{seed}.pt"


# what may differ between a run and its resumption (not part of the result)
_RESUME_FREE = ("log_every",)


def save_run_state(path: str, state: dict) -> None:
    """The state of a run after an epoch (or its result, once done), replaced atomically
    each time: a kill leaves the last completed epoch's. Not flushed to the disk: a
    killed process loses nothing the rename has published."""
    _write(path, {"format": FORMAT + ".run", "format_version": FORMAT_VERSION, **state}, durable=False)


def load_run_state(path: str, config: dict, data: Optional[dict]) -> dict:
    """A run's saved state, checked against the configuration and data set of the run
    that resumes it (:class:`CheckpointError` when they differ)."""
    state = _read(path, "run state")
    if not isinstance(state, dict) or state.get("format") != FORMAT + ".run" \
            or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a run state of this fastalign version")
    saved = {k: v for k, v in state["config"].items() if k not in _RESUME_FREE}
    now = {k: v for k, v in config.items() if k not in _RESUME_FREE}
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise CheckpointError(f"{path}: the run being resumed had another configuration ("
                              + ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in changed[:3])
                              + "); resume with the same options")
    if data is not None and state.get("data") is not None and state["data"] != data:
        raise CheckpointError(f"{path}: the run being resumed trained on {state['data']}, not {data}")
    return state


def copy_state(module) -> dict:
    """A copy of ``module.state_dict()`` on the CPU (the kept epoch's weights)."""
    return _tensors(module.state_dict())


def _tensors(state) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def student_record(student: Student, state: dict, adapter_state: dict, config: dict, data: dict,
                   metrics: dict, seed: int, index: int) -> dict:
    """The checkpoint of one trained student: ``state`` and ``adapter_state`` are the
    ``state_dict`` of the student and of its feature adapters at the kept epoch
    (``student`` gives the architecture); tensors are copied to the CPU."""
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "student": _tensors({k: v for k, v in state.items() if not k.startswith("aux.")}),
        "aux_heads": _tensors({k[len("aux."):]: v for k, v in state.items() if k.startswith("aux.")}),
        "adapters": _tensors(adapter_state),
        "architecture": architecture(student),
        "config": config,
        "data": data,
        "metrics": metrics,
        "seed": seed,
        "student_index": index,
        "versions": {"fastalign": __version__, "torch": str(torch.__version__)},
    }


def architecture(student: Student) -> dict:
    first = student.layers[0]
    widths = list(student.widths)
    return {
        "model": student.model,
        "in_dim": _in_dim(first, student.model),
        "hidden": widths[0],
        "num_classes": widths[-1],
        "num_layers": student.num_layers,
        "heads": student.layers[0].conv.heads if student.model == "gat" else 1,
        "residual": student.residual,
        "residual_alpha": float(student.residual_alpha),
        "dropout": float(student.dropout),
    }


def _in_dim(layer, model: str) -> int:
    if model == "gcn":
        return layer.lin.in_features
    if model == "sage":
        return layer.lin_l.in_features
    return layer.conv.lin.in_features


def save(path: str, record: dict) -> None:
    """Writes ``record`` to ``path`` atomically (and flushed to the disk)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write(path, record, durable=True)


def _write(path: str, obj, durable: bool) -> None:
    """``torch.save(obj)`` into a temporary file beside ``path``, renamed over it: a kill
    leaves the previous file or none, never half a file (``durable``: fsync first, so
    that a power loss does not either)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str, what: str):
    """``torch.load(path, weights_only=True)``, or one CheckpointError line saying why not."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: pickle, zip or torch errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable {what} ({first[:200]})") from None


def load(path: str) -> dict:
    """Reads and checks a checkpoint; :class:`CheckpointError` (one line) when it is not
    one, is damaged or is of another format version."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    record = _read(path, "checkpoint")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastalign student checkpoint (written by `fastalign train --save`)")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        made = record.get("versions", {}).get("fastalign", "?")
        raise CheckpointError(f"{path}: checkpoint format {version} (fastalign {made}); this fastalign "
                              f"reads format {FORMAT_VERSION}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint, missing {', '.join(missing)}")
    return record


def build_student(record: dict, backend: Optional[str] = None, device="cpu") -> Student:
    """The trained student of a checkpoint (eval mode, no auxiliary heads), on ``device``."""
    a = record["architecture"]
    student = Student(a["model"], a["in_dim"], a["hidden"], a["num_classes"], a["num_layers"],
                      a["dropout"], deep_supervision=False, heads=a["heads"], backend=backend,
                      residual=a["residual"], residual_alpha=a["residual_alpha"])
    try:
        student.load_state_dict(record["student"])
    except RuntimeError as exc:
        raise CheckpointError(f"damaged checkpoint: its weights do not fit its architecture "
                              f"({str(exc).splitlines()[0][:200]})") from None
    return student.to(device).eval()


def check_data(record: dict, num_features: int, num_classes: int, name: str) -> None:
    """The data set must have the student's input width and classes."""
    a = record["architecture"]
    if num_features != a["in_dim"]:
        raise CheckpointError(f"data set {name} has {num_features} features per node; the student was "
                              f"trained on {record['data'].get('name')} with {a['in_dim']}")
    if num_classes != a["num_classes"]:
        raise CheckpointError(f"data set {name} has {num_classes} classes; the student predicts "
                              f"{a['num_classes']}")
