"""Trainers: the torch side of stepbus, one concern per subpackage -- ``engine`` (``BaseTrainer``), ``data``,
``checkpoint``, ``distributed``, ``config`` (``build``, ``load_config``, ``Registry``, ``ConfigError``), ``apps``
(the demo and the image field), ``gui`` and ``cli`` (the ``stepbus`` command). docs/architecture.md
draws the layers.

Names are imported lazily, so ``stepbus --help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:  # before any other import of lifecycle: a module of the user's named lifecycle has no lifecycle.installation
    from lifecycle.installation import check_installation
except ModuleNotFoundError as missing:
    if missing.name != "lifecycle.installation":
        raise
    import lifecycle as _shadowing

    _found = getattr(_shadowing, "__file__", None) or next(iter(getattr(_shadowing, "__path__", ())), "lifecycle")
    raise ImportError(  # the words of lifecycle.installation.shadowed_message, which cannot be imported here
        f"{_found} shadows stepbus's package 'lifecycle': `import lifecycle` finds it first on sys.path. "
        "Rename it (stepbus's packages are lifecycle, callbacks, trainers).",
        name="lifecycle",
        path=_found,
    ) from None

from lifecycle.lazy import lazy_attributes

check_installation()  # callbacks and trainers too: see lifecycle.installation

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.builder import build, load_config
    from trainers.config.errors import ConfigError
    from trainers.config.registry import Registry, RegistryError
    from trainers.config.schema import RunConfig
    from trainers.data.plan import BatchPlan, mix_seed
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
    "BatchPlan": "trainers.data.plan",
    "mix_seed": "trainers.data.plan",
    "param_groups": "trainers.engine.optim_groups",
    "build": "trainers.config.builder",
    "load_config": "trainers.config.builder",
    "RunConfig": "trainers.config.schema",
    "ConfigError": "trainers.config.errors",
    "Registry": "trainers.config.registry",
    "RegistryError": "trainers.config.registry",
}


__getattr__, __dir__ = lazy_attributes("trainers", _WHERE, __all__)
