"""Training as ``lvisctl train`` runs it: the engine (:mod:`lvisctl.engine`) assembled with lvisctl's model,
data and LVIS evaluation.

Layer: above ``inference``, ``evaluation`` and ``visualization`` (the evaluation during training predicts,
scores and draws), below ``pipeline`` and ``cli``. ``engine`` knows nothing of LVIS; this package injects it.
"""

from lvisctl.engine.trainer import TrainingInterrupted, TrainResult
from lvisctl.training.build import Builders, Start, build_trainer
from lvisctl.training.hooks import default_hooks
from lvisctl.training.launch import train

__all__ = [
    "Builders",
    "Start",
    "TrainResult",
    "TrainingInterrupted",
    "build_trainer",
    "default_hooks",
    "train",
]
