"""Trainers: ``BaseTrainer`` (torch: model, optimizer, data, one step), the demo, and the ``stepbus`` CLI."""

from trainers.base import BaseTrainer, LossFn, OptimizerSpec
from trainers.data import BatchPlan, mix_seed

__all__ = ["BaseTrainer", "BatchPlan", "LossFn", "OptimizerSpec", "mix_seed"]
