"""``lr_range_test(trainer)``: the learning-rate range test (Smith's "LR finder", as in fastai's ``lr_find``,
Lightning's ``Tuner.lr_find`` and Ignite's ``FastaiLRFinder``) on a copy of the trainer's state.

It takes ``steps`` optimizer steps with the learning rate growing from ``min_lr`` to ``max_lr``, records the loss
of each, and stops early once the smoothed loss diverges; the suggestion is the learning rate where the smoothed loss
falls fastest (the rules are in :mod:`trainers.tune.curve`). The steps are the trainer's own -- ``compute_loss``
or ``optimization_step``, the precision, accumulation (one learning rate per optimizer step, that is per
``accumulate`` micro-batches), every optimizer -- on batches of the run's first epochs, taken through
:class:`trainers.engine.probe.Probe`: callbacks see none of them, and afterwards the weights, optimizer state,
GradScaler, counters, callbacks, RNG states and data position are exactly as before, so a ``train()`` that follows
is the run it would have been without the test.

The learning rate is set on every parameter group of the chosen optimizer, keeping the groups' ratios: a group
configured at ``lr_scale`` times the optimizer's ``lr`` runs at ``lr_scale`` times the swept rate, so the
suggestion is a value for the optimizer's ``lr`` setting. Other optimizers (named optimizers: a GAN's
discriminator while the generator is tested) step at their own learning rates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainers.engine.probe import Probe
from trainers.tune.curve import Mode, Settings, diverged, learning_rates, suggest

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer
    from trainers.tune.files import LRFindFiles

__all__ = ["LRRangeResult", "lr_range_test"]


@dataclass(frozen=True)
class LRRangeResult:
    """What a range test found.

    ``lrs``, ``losses``, ``smoothed``: one entry per step taken (fewer than ``settings.steps`` when it diverged;
    the diverging step is the last). ``suggestion``: the suggested learning rate, ``lrs[suggestion_index]``, or
    ``None``; ``reason``: how it was chosen or why there is none. ``stopped``: why the test ended;
    ``diverged``: whether it ended early. ``optimizer``: the optimizer whose learning rate was swept."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestion: float | None
    suggestion_index: int | None
    reason: str
    stopped: str
    diverged: bool
    optimizer: str
    settings: Settings

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (non-finite losses as ``None``): the settings, the outcome and one point per step."""
        s = self.settings
        return {
            "suggestion": self.suggestion,
            "suggestion_index": self.suggestion_index,
            "reason": self.reason,
            "stopped": self.stopped,
            "diverged": self.diverged,
            "optimizer": self.optimizer,
            "settings": {
                "min_lr": s.min_lr,
                "max_lr": s.max_lr,
                "steps": s.steps,
                "mode": s.mode,
                "smooth": s.smooth,
                "diverge": s.diverge,
                "skip_start": s.skip_start,
                "skip_end": s.skip_end,
            },
            "points": [
                {"lr": lr, "loss": _finite(loss), "smoothed": _finite(smoothed)}
                for lr, loss, smoothed in zip(self.lrs, self.losses, self.smoothed, strict=True)
            ],
        }

    def save(self, directory: str | os.PathLike[str], *, name: str = "lr_find") -> LRFindFiles:
        """Write ``<name>.json`` and the plot ``<name>.png`` into ``directory`` (see :mod:`trainers.tune.files`)."""
        from trainers.tune.files import write_lr_find

        return write_lr_find(self, Path(directory), name=name)


def lr_range_test(
    trainer: BaseTrainer,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    mode: Mode = "exponential",
    smooth: float = 0.9,
    diverge: float | None = 4.0,
    optimizer: str | None = None,
    skip_start: int = 10,
    skip_end: int = 1,
) -> LRRangeResult:
    """Run the learning-rate range test on ``trainer`` and return the curve and the suggestion (see the module
    docstring); the trainer is left exactly as it was.

    Args:
        min_lr, max_lr: the first and the last learning rate (``0 < min_lr < max_lr``).
        steps: optimizer steps at most (>= 2), one learning rate each.
        mode: ``"exponential"`` (evenly spaced on a log axis) or ``"linear"``.
        smooth: the weight of the loss's moving average (0 <= smooth < 1; 0: no smoothing).
        diverge: stop once the smoothed loss exceeds ``diverge`` times its best (> 1; ``None``: never stop early).
        optimizer: the name of the optimizer whose learning rate is swept; required with named optimizers.
        skip_start, skip_end: points the suggestion ignores at either end of the curve.

    Raises ``ValueError`` for a bad setting or optimizer name, ``RuntimeError`` from inside ``iterate()`` or in a
    distributed job; an error of the step itself (``compute_loss`` raising) propagates after the trainer was put
    back."""
    settings = Settings(min_lr, max_lr, steps, mode, smooth, diverge, skip_start, skip_end)
    name = chosen_optimizer(trainer, optimizer)
    target = trainer.optimizers[name]
    scales = _group_scales(target)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, stopped, early = 0.0, f"completed all {steps} steps", False
    with Probe(trainer) as probe:
        for i, lr in enumerate(learning_rates(settings)):
            _set_lr(target, lr, scales)
            loss = probe.step()
            average = smooth * average + (1 - smooth) * loss
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(average / (1 - smooth ** (i + 1)))
            why = diverged(smoothed, loss, diverge)
            if why is not None:
                stopped, early = f"diverged at step {i + 1} of {steps} (lr {lr:.3g}): {why}", True
                break
    found = suggest(lrs, smoothed, skip_start=skip_start, skip_end=skip_end)
    return LRRangeResult(
        tuple(lrs), tuple(losses), tuple(smoothed), found.lr, found.index, found.reason, stopped, early, name, settings
    )


def chosen_optimizer(trainer: BaseTrainer, optimizer: str | None) -> str:
    """The name of the optimizer to sweep: ``optimizer``, or the trainer's lone one; ``ValueError`` otherwise."""
    names: Sequence[str] = list(trainer.optimizers)
    listed = ", ".join(repr(n) for n in names)
    if optimizer is None:
        if len(names) > 1:
            raise ValueError(
                f"lr range test: this trainer has named optimizers ({listed}): choose the one to sweep with "
                "optimizer=NAME (on the command line: --optimizer NAME)"
            )
        return names[0]
    if optimizer not in names:
        raise ValueError(f"lr range test: no optimizer named {optimizer!r}; this trainer's optimizers are {listed}")
    return optimizer


def _group_scales(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each parameter group's learning rate relative to the optimizer's own ``lr`` (1 where there is none)."""
    base = optimizer.defaults.get("lr")
    base = float(base) if isinstance(base, (int, float, torch.Tensor)) else 0.0
    scales = []
    for group in optimizer.param_groups:
        own = group.get("lr")
        scales.append(float(own) / base if base > 0 and isinstance(own, (int, float, torch.Tensor)) else 1.0)
    return scales


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, scales: Sequence[float]) -> None:
    for group, scale in zip(optimizer.param_groups, scales, strict=True):
        value = lr * scale
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"].fill_(value)  # a tensor learning rate (capturable optimizers) stays a tensor
        else:
            group["lr"] = value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
