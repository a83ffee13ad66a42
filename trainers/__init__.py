"""Trainers: ``BaseTrainer`` (torch: model, optimizer, data, one step), configs (``build``, ``load_config``,
``Registry``, ``ConfigError``), the demo, and the ``stepbus`` CLI.

Names are imported lazily, so ``stepbus --help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from trainers.base import BaseTrainer, LossFn, OptimizerSpec
    from trainers.builder import build, load_config
    from trainers.config import RunConfig
    from trainers.config_error import ConfigError
    from trainers.data import BatchPlan, mix_seed
    from trainers.optim_groups import param_groups
    from trainers.registry import Registry, RegistryError

__all__ = [
    "BaseTrainer",
    "BatchPlan",
    "ConfigError",
    "LossFn",
    "OptimizerSpec",
    "Registry",
    "RegistryError",
    "RunConfig",
    "build",
    "load_config",
    "mix_seed",
    "param_groups",
]

_WHERE = {
    "BaseTrainer": "trainers.base",
    "LossFn": "trainers.base",
    "OptimizerSpec": "trainers.base",
    "BatchPlan": "trainers.data",
    "mix_seed": "trainers.data",
    "param_groups": "trainers.optim_groups",
    "build": "trainers.builder",
    "load_config": "trainers.builder",
    "RunConfig": "trainers.config",
    "ConfigError": "trainers.config_error",
    "Registry": "trainers.registry",
    "RegistryError": "trainers.registry",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
