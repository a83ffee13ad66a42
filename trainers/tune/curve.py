"""The arithmetic of a learning-rate range test, in plain Python (no torch): the settings and their checks, the
learning rates swept, the smoothed loss, when to stop, and the suggested learning rate.

* **Learning rates**: step ``i`` of ``steps`` (0-based) uses ``min_lr * (max_lr / min_lr) ** (i / (steps - 1))``
  in ``"exponential"`` mode (evenly spaced on a log axis) or ``min_lr + (max_lr - min_lr) * i / (steps - 1)`` in
  ``"linear"`` mode; the first is ``min_lr``, the last ``max_lr``.
* **Smoothing**: an exponential moving average with bias correction, as fastai and Lightning do it:
  ``avg = smooth * avg + (1 - smooth) * loss``, ``smoothed_i = avg / (1 - smooth ** (i + 1))`` (``smooth=0``: the
  raw loss).
* **Divergence**: the test stops after the step whose smoothed loss exceeds ``diverge`` times the best smoothed
  loss so far (while that best is positive), or whose loss is not finite; that step is kept in the curve.
* **Suggestion**: the learning rate where the smoothed loss falls fastest -- the most negative gradient of the
  smoothed loss against ``log10(lr)`` (``numpy.gradient``'s second-order differences) -- over the points left
  after dropping the first ``skip_start`` and the last ``skip_end`` (Lightning's default rule: its defaults are
  10 and 1) and any non-finite one. None, with the reason, when fewer than 3 points are left or the loss never
  falls there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MIN_POINTS",
    "MODES",
    "Mode",
    "Settings",
    "Suggestion",
    "diverged",
    "learning_rates",
    "smoothed_losses",
    "suggest",
]

#: how the learning rate grows from step to step
Mode = Literal["exponential", "linear"]
MODES: tuple[Mode, ...] = ("exponential", "linear")
#: the fewest points the suggestion reads a slope from
MIN_POINTS = 3


@dataclass(frozen=True)
class Settings:
    """A range test's settings, checked on construction (``ValueError`` naming the setting, the value and what
    would be valid). The names are :func:`~trainers.tune.range_test.lr_range_test`'s keyword arguments."""

    min_lr: float = 1e-7
    max_lr: float = 10.0
    steps: int = 100
    mode: Mode = "exponential"
    smooth: float = 0.9
    diverge: float | None = 4.0
    skip_start: int = 10
    skip_end: int = 1

    def __post_init__(self) -> None:
        for name in ("min_lr", "max_lr"):
            value = getattr(self, name)
            if not _number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"lr range test: {name} must be a finite number > 0, got {value!r}")
        if self.max_lr <= self.min_lr:
            raise ValueError(
                f"lr range test: max_lr must be greater than min_lr, got min_lr={self.min_lr!r}, max_lr={self.max_lr!r}"
            )
        if not _integer(self.steps) or self.steps < 2:
            raise ValueError(f"lr range test: steps must be an integer >= 2, got {self.steps!r}")
        if self.mode not in MODES:
            raise ValueError(f"lr range test: mode must be 'exponential' or 'linear', got {self.mode!r}")
        if not _number(self.smooth) or not 0 <= self.smooth < 1:
            raise ValueError(f"lr range test: smooth must be a number in [0, 1), got {self.smooth!r}")
        if self.diverge is not None and (
            not _number(self.diverge) or not math.isfinite(self.diverge) or self.diverge <= 1
        ):
            raise ValueError(
                f"lr range test: diverge must be a finite number > 1 (or None: never stop early), got {self.diverge!r}"
            )
        for name in ("skip_start", "skip_end"):
            value = getattr(self, name)
            if not _integer(value) or value < 0:
                raise ValueError(f"lr range test: {name} must be an integer >= 0, got {value!r}")


def learning_rates(settings: Settings) -> list[float]:
    """The learning rate of each step (see the module docstring)."""
    low, high, last = float(settings.min_lr), float(settings.max_lr), settings.steps - 1
    if settings.mode == "exponential":
        return [low * (high / low) ** (i / last) for i in range(settings.steps)]
    return [low + (high - low) * i / last for i in range(settings.steps)]


def smoothed_losses(losses: Sequence[float], smooth: float) -> list[float]:
    """The bias-corrected exponential moving average of ``losses`` (see the module docstring)."""
    average, result = 0.0, []
    for i, loss in enumerate(losses):
        average = smooth * average + (1 - smooth) * loss
        result.append(average / (1 - smooth ** (i + 1)))
    return result


def diverged(smoothed: Sequence[float], raw: float, diverge: float | None) -> str | None:
    """Why the test stops after the last point, or ``None`` to go on (see the module docstring)."""
    if not math.isfinite(raw):
        return f"the loss is not finite ({raw})"
    last = smoothed[-1]
    if not math.isfinite(last):
        return f"the smoothed loss is not finite ({last})"
    best = min(smoothed)
    if diverge is not None and len(smoothed) > 1 and best > 0 and last > diverge * best:
        return f"the smoothed loss {last:.4g} exceeds {diverge:g} x its best, {best:.4g}"
    return None


@dataclass(frozen=True)
class Suggestion:
    """The suggested learning rate and the index of its point in the curve, or ``None`` for both; ``reason`` says
    how it was chosen, or why there is none."""

    lr: float | None
    index: int | None
    reason: str


def suggest(lrs: Sequence[float], smoothed: Sequence[float], *, skip_start: int = 10, skip_end: int = 1) -> Suggestion:
    """The learning rate at the steepest descent of the smoothed loss (see the module docstring)."""
    stop = len(smoothed) - skip_end
    candidates = [i for i in range(skip_start, stop) if math.isfinite(smoothed[i])]
    if len(candidates) < MIN_POINTS:
        return Suggestion(
            None,
            None,
            f"too few points: {len(smoothed)} step(s), of which {len(candidates)} remain after skipping the first "
            f"{skip_start} and the last {skip_end} (at least {MIN_POINTS} are needed); start from a lower min_lr, "
            "take more steps, or skip fewer",
        )
    x = [math.log10(lrs[i]) for i in candidates]
    y = [smoothed[i] for i in candidates]
    slopes = _gradient(y, x)
    best = min(range(len(slopes)), key=slopes.__getitem__)
    if not slopes[best] < 0:
        return Suggestion(None, None, "the smoothed loss never fell over the range tested: try a lower min_lr")
    index = candidates[best]
    return Suggestion(lrs[index], index, f"steepest descent of the smoothed loss (step {index + 1} of {len(smoothed)})")


def _gradient(y: Sequence[float], x: Sequence[float]) -> list[float]:
    """``numpy.gradient(y, x)``: second-order central differences inside, first-order at the ends."""
    n = len(y)
    slopes = [(y[1] - y[0]) / (x[1] - x[0])]
    for i in range(1, n - 1):
        left, right = x[i] - x[i - 1], x[i + 1] - x[i]
        slopes.append(
            (left**2 * y[i + 1] + (right**2 - left**2) * y[i] - right**2 * y[i - 1]) / (left * right * (left + right))
        )
    slopes.append((y[n - 1] - y[n - 2]) / (x[n - 1] - x[n - 2]))
    return slopes


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
