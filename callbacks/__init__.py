"""Callbacks: independent behaviours that subscribe to lifecycle events. One module per callback.

The built-in callbacks import torch; they are loaded on first use, so ``from callbacks import Callback`` stays
torch-free.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from callbacks.base import Callback, HandlerSpec

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.checkpointer import Checkpointer
    from callbacks.early_stopping import EarlyStopping
    from callbacks.gradient_guard import GradientGuard, NonFiniteError
    from callbacks.grid_pruning import GridPruning
    from callbacks.loggers.metrics_file import MetricsFile
    from callbacks.loggers.tensorboard import TensorBoardLogger
    from callbacks.loggers.wandb import WandbLogger
    from callbacks.lr_decay import LRDecay
    from callbacks.metrics import mse, psnr
    from callbacks.preview import Frame, Preview
    from callbacks.progress import ProgressBar
    from callbacks.validator import Validator

__all__ = [
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "Frame",
    "GradientGuard",
    "GridPruning",
    "HandlerSpec",
    "LRDecay",
    "MetricsFile",
    "NonFiniteError",
    "Preview",
    "ProgressBar",
    "TensorBoardLogger",
    "Validator",
    "WandbLogger",
    "mse",
    "psnr",
]

_WHERE = {
    "Checkpointer": "callbacks.checkpointer",
    "EarlyStopping": "callbacks.early_stopping",
    "GradientGuard": "callbacks.gradient_guard",
    "NonFiniteError": "callbacks.gradient_guard",
    "GridPruning": "callbacks.grid_pruning",
    "LRDecay": "callbacks.lr_decay",
    "MetricsFile": "callbacks.loggers.metrics_file",
    "ProgressBar": "callbacks.progress",
    "Preview": "callbacks.preview",
    "Frame": "callbacks.preview",
    "TensorBoardLogger": "callbacks.loggers.tensorboard",
    "Validator": "callbacks.validator",
    "WandbLogger": "callbacks.loggers.wandb",
    "mse": "callbacks.metrics",
    "psnr": "callbacks.metrics",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
