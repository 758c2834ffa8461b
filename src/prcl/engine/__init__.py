"""Training: the mean-teacher step, schedules, EMA, checkpoints, loaders, several processes."""

from prcl.engine.trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "train"]
