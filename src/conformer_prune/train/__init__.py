"""Training: typed config and the resumable training engine."""

from conformer_prune.train.config import OptimConfig, TrainConfig
from conformer_prune.train.loop import run_training

__all__ = ["OptimConfig", "TrainConfig", "run_training"]
