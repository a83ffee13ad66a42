"""Metric helpers shared by callbacks (not a callback): PSNR and MSE, and which direction is better for a metric.

The direction table is the single place that knows ``psnr`` improves upward and ``loss`` downward; the
``Validator`` (best tracking) and ``EarlyStopping`` (patience) both read it, so they never disagree -- unlike
Wisp, which kept ``max()`` for every metric, LPIPS included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

__all__ = ["DEFAULT_MODES", "Mode", "as_scalar", "improves", "metric_mode", "monitor_mode", "mse", "psnr"]

Mode = Literal["min", "max"]

#: Built-in directions, by metric name (the part after the last ``/``: ``val/psnr`` -> ``psnr``).
DEFAULT_MODES: Mapping[str, Mode] = {
    "psnr": "max",
    "ssim": "max",
    "loss": "min",
    "mse": "min",
    "lpips": "min",
}


def as_scalar(value: object) -> float | None:
    """``value`` as a float when it is a number or a one-element tensor (one host sync), else ``None`` -- so each
    caller can say in its own words what it expected. ``bool`` is not a number here."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, computed in float64 (a 0-d tensor on the inputs' device)."""
    if pred.shape != target.shape:
        raise ValueError(f"mse: shapes differ, prediction {tuple(pred.shape)} vs target {tuple(target.shape)}")
    return torch.mean((pred.double() - target.double()) ** 2)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range**2 / mse)``, in float64.

    ``data_range`` is the span of valid values (1.0 for images in [0, 1], 255 for 8-bit). Identical images give
    ``inf``, as the formula says.
    """
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    return 10.0 * torch.log10(float(data_range) ** 2 / mse(pred, target))


def metric_mode(name: str, declared: Mapping[str, str] | None = None) -> Mode:
    """Whether ``name`` improves upward (``"max"``) or downward (``"min"``).

    ``declared`` (e.g. ``{"acc": "max"}``) is consulted first, by full name then by the part after the last ``/``;
    then :data:`DEFAULT_MODES`. An unknown metric is a ``ValueError`` that says how to declare it.
    """
    base = name.rsplit("/", 1)[-1]
    for table in (declared or {}, DEFAULT_MODES):
        for key in (name, base):
            mode = table.get(key)
            if mode is not None:
                if mode not in ("min", "max"):
                    raise ValueError(f"mode of metric {key!r} must be 'min' or 'max', got {mode!r}")
                return "max" if mode == "max" else "min"
    known = sorted(set(DEFAULT_MODES) | set(declared or {}))
    raise ValueError(
        f"metric {name!r} has no known direction (known: {known}); declare it, e.g. modes={{{base!r}: 'max'}} "
        "if higher is better or 'min' if lower is better"
    )


def monitor_mode(monitor: str, mode: str | None, owner: str) -> Mode:
    """The direction of a monitored metric: ``mode`` when given (``"min"`` or ``"max"``), else inferred from the
    name with :func:`metric_mode`. Errors are ``ValueError`` prefixed with ``owner`` (the callback)."""
    if mode is None:
        try:
            return metric_mode(monitor)
        except ValueError as exc:
            raise ValueError(f"{owner}: {exc} (or pass mode=)") from None
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
    return "max" if mode == "max" else "min"


def improves(value: float, best: float | None, mode: Mode, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``. NaN never improves;
    anything finite or infinite-in-the-right-direction improves on ``None`` (no best yet)."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta
