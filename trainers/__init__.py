"""Trainers: ``BaseTrainer`` (torch: model, optimizer, data, one step), configs (``build``, ``load_config``,
``Registry``, ``ConfigError``), the demo, and the ``stepbus`` CLI.

Names are imported lazily, so ``stepbus --help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.builder import build, load_config
    from trainers.config.errors import ConfigError
    from trainers.config.registry import Registry, RegistryError
    from trainers.config.schema import RunConfig
    from trainers.data.feeder import BatchPlan, mix_seed
    from trainers.engine.optim_groups import param_groups
    from trainers.engine.trainer import BaseTrainer, LossFn, OptimizerSpec

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
    "BaseTrainer": "trainers.engine.trainer",
    "LossFn": "trainers.engine.trainer",
    "OptimizerSpec": "trainers.engine.trainer",
    "BatchPlan": "trainers.data.feeder",
    "mix_seed": "trainers.data.feeder",
    "param_groups": "trainers.engine.optim_groups",
    "build": "trainers.config.builder",
    "load_config": "trainers.config.builder",
    "RunConfig": "trainers.config.schema",
    "ConfigError": "trainers.config.errors",
    "Registry": "trainers.config.registry",
    "RegistryError": "trainers.config.registry",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
