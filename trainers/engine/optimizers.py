"""The trainer's optimizers: one, or several by name (a GAN's ``generator`` and ``discriminator``).

``optimizer=`` is a torch optimizer, a factory ``params -> optimizer``, ``None`` (``Adam(lr=1e-3)``), or a mapping of
names to optimizers or factories ``pipeline -> optimizer`` (a named optimizer usually covers one part of the
pipeline, so its factory is given the module and picks the part: ``lambda p: Adam(p.generator.parameters())``).

A lone optimizer is named :data:`SINGLE`. Named optimizers must not share a parameter: two optimizers stepping one
tensor would each apply the other's gradient. Parameters that no optimizer holds are simply not trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from trainers.checkpoint.format import LONE_OPTIMIZER

__all__ = ["SINGLE", "OptimizerSpec", "build_optimizers", "parameters_of"]

#: A built optimizer, a factory ``params -> optimizer``, ``None``, or names -> optimizers / ``pipeline -> optimizer``.
OptimizerSpec = (
    torch.optim.Optimizer
    | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    | Mapping[str, "torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer]"]
    | None
)

#: the name of a trainer's lone optimizer (the ``optimizer`` payload of its ``step`` events)
SINGLE = LONE_OPTIMIZER


def build_optimizers(spec: OptimizerSpec, pipeline: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """The optimizers ``spec`` describes over ``pipeline``, by name (a lone one is named :data:`SINGLE`)."""
    if isinstance(spec, Mapping):
        return _named(spec, pipeline)
    return {SINGLE: _single(spec, pipeline)}


def parameters_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter ``optimizer`` steps, in its group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _single(spec: Any, pipeline: nn.Module) -> torch.optim.Optimizer:
    params = list(pipeline.parameters())
    if spec is None:
        if not params:
            raise ValueError(
                f"{type(pipeline).__name__} has no parameters to optimise; pass optimizer=... for a custom setup"
            )
        return torch.optim.Adam(params, lr=1e-3)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if callable(spec):
        return _checked(spec(params), spec, "the optimizer factory")
    raise TypeError(
        "optimizer must be a torch.optim.Optimizer, a factory params -> optimizer, a mapping of names to optimizers "
        f"or factories pipeline -> optimizer, or None; got {spec!r}"
    )


def _named(spec: Mapping[Any, Any], pipeline: nn.Module) -> dict[str, torch.optim.Optimizer]:
    if not spec:
        raise ValueError("optimizer: the mapping of named optimizers is empty; give at least one name")
    built: dict[str, torch.optim.Optimizer] = {}
    for name, value in spec.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"optimizer names must be identifiers such as 'generator'; got {name!r}")
        if isinstance(value, torch.optim.Optimizer):
            built[name] = value
        elif callable(value):
            built[name] = _checked(value(pipeline), value, f"the factory of optimizer {name!r}")
        else:
            raise TypeError(
                f"optimizer {name!r} must be a torch.optim.Optimizer or a factory pipeline -> optimizer; got {value!r}"
            )
    _check_disjoint(built, pipeline)
    return built


def _checked(built: object, factory: object, what: str) -> torch.optim.Optimizer:
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(f"{what} {factory!r} returned {type(built).__name__}, not a torch.optim.Optimizer")
    return built


def _check_disjoint(optimizers: Mapping[str, torch.optim.Optimizer], pipeline: nn.Module) -> None:
    names = {id(p): name for name, p in pipeline.named_parameters()}
    owner: dict[int, str] = {}
    for name, optimizer in optimizers.items():
        for p in parameters_of(optimizer):
            other = owner.setdefault(id(p), name)
            if other != name:
                shown = names.get(id(p), "a parameter")
                raise ValueError(
                    f"optimizers {other!r} and {name!r} both hold {shown}: give each parameter to one optimizer "
                    "(e.g. the generator's to one, the discriminator's to the other)"
                )
