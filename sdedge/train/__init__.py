"""The trainer: ``train(TrainConfig) -> TrainResult`` (loops, schedules, resume, DDP) and evaluation.

``evaluate_checkpoint(path, split)`` gives per-exit and ensemble accuracy of a checkpoint without
training (``sdedge eval``).
"""
from .api import train
from .config import TrainConfig, TrainConfigError, TrainResult
from .evaluate import evaluate_checkpoint, format_table

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "evaluate_checkpoint", "format_table", "train"]
