"""Alignahead++ online distillation between GNN students (see docs/distillation.md)."""

from .losses import FeatureAdapters, LossWeights, student_loss, task_loss
from .models import MODELS, Student, StudentOutput
from .pairing import ALIGNS, layer_pairs
from .trainer import MODES, TrainConfig, run_experiment, score, train_run

__all__ = [
    "ALIGNS", "MODELS", "MODES", "FeatureAdapters", "LossWeights", "Student", "StudentOutput",
    "TrainConfig", "layer_pairs", "run_experiment", "score", "student_loss",
    "task_loss", "train_run",
]
