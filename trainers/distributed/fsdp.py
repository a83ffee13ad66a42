"""Fully sharded data parallelism (``strategy="fsdp"``): torch's FSDP2, ``torch.distributed.fsdp.fully_shard``.

Each rank keeps only its shard (a slice along dimension 0) of every parameter, gradient and optimizer state; a
sharded module gathers its full parameters for its forward and backward and frees them after (``reshard_after_
forward``), and the backward reduce-scatters the gradients, so each rank steps its own shard. Memory per rank for
parameters, gradients and optimizer state is about ``1/world_size`` of what DDP keeps.

**Units.** ``fully_shard`` is applied to some submodules first -- each becomes one all-gather: the parameters of one
unit are whole at a time -- then to the root, which takes whatever parameters are left. ``units`` chooses them:

* ``"children"`` (the default): every direct child of the pipeline that holds parameters;
* ``"root"``: the pipeline alone (one all-gather of everything: least communication, most memory);
* a list of class names (``["TransformerBlock"]``): every submodule of those classes (the usual choice for a
  stack of layers), outermost first;
* in code, a function ``pipeline -> iterable of modules``.

``fully_shard`` works in place: ``trainer.pipeline`` stays the very module the app built, its attributes and methods
included (its class becomes a subclass of it and of ``FSDPModule``). Calling the pipeline (``self.pipeline(x)``,
``self(x)`` inside it) gathers the parameters; a method that reads a parameter outside a forward sees this rank's
shard (a ``DTensor``). Every forward is a collective: every rank must run the same forwards in the same order --
validation on every rank (``Validator(ranks="all")``), never on rank 0 alone.

**Optimizers.** Sharding replaces each parameter with a new ``nn.Parameter`` holding a ``DTensor``; the trainer's
optimizers, built before, are pointed at the new parameters in place (:func:`rebind`), so an LR scheduler or any
other object already holding an optimizer keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

__all__ = ["OPTIONS", "check_options", "no_sync", "rebind", "shard", "units_of"]

#: the ``fsdp=`` options and what each accepts
OPTIONS = {
    "units": "'children', 'root', a list of module class names, or a function pipeline -> modules",
    "reshard_after_forward": "True (free the gathered parameters after each forward) or False (keep them until "
    "the backward: less communication, more memory)",
}

Units = str | Sequence[str] | Callable[[nn.Module], Iterable[nn.Module]]


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``fsdp=`` options with their defaults, or a ``ValueError``/``TypeError`` naming the bad one."""
    settings = dict(options or {})
    unknown = sorted(set(settings) - set(OPTIONS))
    if unknown:
        valid = "; ".join(f"{key}: {what}" for key, what in OPTIONS.items())
        raise ValueError(f"fsdp options: unknown {unknown}; valid options are {valid}")
    units = settings.setdefault("units", "children")
    if not (callable(units) or units in ("children", "root") or _names(units)):
        raise ValueError(f"fsdp options: units must be {OPTIONS['units']}; got {units!r}")
    reshard = settings.setdefault("reshard_after_forward", True)
    if not isinstance(reshard, bool):
        raise TypeError(f"fsdp options: reshard_after_forward must be True or False, got {reshard!r}")
    return settings


def _names(units: object) -> bool:
    return isinstance(units, (list, tuple)) and bool(units) and all(isinstance(n, str) and n for n in units)


def units_of(pipeline: nn.Module, units: Units) -> list[nn.Module]:
    """The submodules ``units`` chooses (the root excluded), in the order ``fully_shard`` must see them: a unit
    nested in another before it (``fully_shard`` goes bottom-up). A ``ValueError`` when class names match nothing."""
    if units == "root":
        return []
    if units == "children":
        chosen = [child for child in pipeline.children() if any(True for _ in child.parameters())]
    elif callable(units):
        chosen = list(units(pipeline))
        inside = {id(m) for m in pipeline.modules()}
        for module in chosen:
            if not isinstance(module, nn.Module) or id(module) not in inside or module is pipeline:
                raise ValueError(
                    f"fsdp options: units() must return submodules of the pipeline (not the pipeline itself); got "
                    f"{type(module).__name__}"
                )
    else:
        wanted = set(units)
        chosen = [m for m in pipeline.modules() if m is not pipeline and type(m).__name__ in wanted]
        if not chosen:
            present = sorted({type(m).__name__ for m in pipeline.modules() if m is not pipeline})
            raise ValueError(
                f"fsdp options: units {sorted(wanted)} match no submodule of {type(pipeline).__name__}; its "
                f"submodules are of the classes {present}"
            )
    return list(reversed(chosen))  # pipeline.modules() is outermost first: shard the innermost first


def shard(pipeline: nn.Module, options: Mapping[str, Any]) -> None:
    """``fully_shard`` each unit, then the pipeline itself, in place, over the default process group."""
    reshard = bool(options["reshard_after_forward"])
    for module in units_of(pipeline, options["units"]):
        fully_shard(module, reshard_after_forward=reshard)
    fully_shard(pipeline, reshard_after_forward=reshard)


def rebind(optimizers: Iterable[torch.optim.Optimizer], before: Mapping[int, str], pipeline: nn.Module) -> None:
    """Point each optimizer's parameter groups at the pipeline's parameters of the same names, in place.

    ``before`` maps ``id(parameter)`` of the parameters as they were before sharding to their names. An optimizer
    that already holds state (stepped before the trainer was built), or a parameter that is not the pipeline's,
    is refused: its state could not follow the parameters onto their shards."""
    now = dict(pipeline.named_parameters())
    for optimizer in optimizers:
        if optimizer.state:
            raise ValueError(
                f"strategy='fsdp': the {type(optimizer).__name__} optimizer already holds state (it stepped before "
                "the trainer was built); its state cannot follow the parameters onto their shards -- give the "
                "trainer a fresh optimizer or a factory"
            )
        for group in optimizer.param_groups:
            moved = []
            for param in group["params"]:
                name = before.get(id(param))
                if name is None or name not in now:
                    raise ValueError(
                        f"strategy='fsdp': the {type(optimizer).__name__} optimizer holds a parameter of shape "
                        f"{tuple(param.shape)} that is not the pipeline's; with FSDP an optimizer may only step "
                        "the pipeline's parameters"
                    )
                moved.append(now[name])
            group["params"] = moved


@contextmanager
def no_sync(pipeline: nn.Module) -> Iterator[None]:
    """Inside an accumulation window: the backward keeps the gradients unreduced (FSDP's ``set_requires_gradient_
    sync(False)``); the window's last backward reduce-scatters their sum."""
    assert isinstance(pipeline, FSDPModule)
    pipeline.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        pipeline.set_requires_gradient_sync(True)
