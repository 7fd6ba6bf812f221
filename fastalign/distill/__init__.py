"""Alignahead++ online distillation between GNN students (see docs/distillation.md).

Names load on first use (the option vocabulary in :mod:`.options` needs no torch)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FeatureAdapters": "losses", "LossWeights": "options", "student_loss": "losses", "task_loss": "losses",
    "MODELS": "options", "Student": "models", "StudentOutput": "models",
    "ALIGNS": "options", "layer_pairs": "pairing",
    "MODES": "options", "TrainConfig": "trainer", "run_experiment": "trainer", "score": "trainer",
    "train_run": "trainer", "World": "exchange", "DistributedWorld": "exchange",
    "Alignahead": "alignahead", "graph_layer_names": "alignahead",
    "build_students": "trainer", "train_step": "trainer", "summarize_runs": "trainer", "RESIDUALS": "options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"fastalign.distill.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastalign.distill' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
