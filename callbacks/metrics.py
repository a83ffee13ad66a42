"""Metric helpers shared by callbacks (not a callback): PSNR and MSE, and which direction is better for a metric.

The direction table is the single place that knows ``psnr`` improves upward and ``loss`` downward; the
``Validator`` (best tracking), ``EarlyStopping`` (patience) and the ``Checkpointer`` (the best file) all read it,
so they never disagree -- unlike Wisp, which kept ``max()`` for every metric, LPIPS included. A metric's name
matches a direction by its full name or by any part between ``/``, the most specific first: ``val/iou/lod0`` is
found under ``iou`` (declared ``modes={"iou": "max"}``), ``val/loss/rgb`` under ``loss``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

__all__ = [
    "DEFAULT_MODES",
    "Mode",
    "as_scalar",
    "find_mode",
    "improves",
    "metric_mode",
    "monitor_mode",
    "mse",
    "name_keys",
    "psnr",
    "suggested_key",
]

Mode = Literal["min", "max"]

#: Built-in directions, by metric name; a name matches by any of its parts between ``/`` (``val/psnr/lod0`` ->
#: ``psnr``; see :func:`find_mode`).
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


def name_keys(name: str) -> tuple[str, ...]:
    """The keys a direction is looked up under, in order: the full name, its trailing paths from the longest
    (``iou/lod0`` of ``val/iou/lod0``), then each single part from the most specific outward (``lod0``, ``iou``,
    ``val``). A key written without the validator's prefix thus matches the published name too."""
    parts = name.split("/")
    trailing = ["/".join(parts[i:]) for i in range(1, len(parts) - 1)]
    return tuple(dict.fromkeys([name, *trailing, *reversed(parts)]))


def find_mode(name: str, declared: Mapping[str, str] | None = None) -> Mode | None:
    """The direction of ``name`` or ``None`` when nothing matches: for each of :func:`name_keys` in turn, a
    declared mode, then the built-in :data:`DEFAULT_MODES` -- so ``val/iou/lod0`` with ``{"iou": "max"}`` is
    ``"max"`` and ``val/loss/lod0`` is ``"min"``. A declared mode other than ``"min"``/``"max"`` is a ``ValueError``."""
    tables = (declared or {}, DEFAULT_MODES)
    for key in name_keys(name):
        for table in tables:
            mode = table.get(key)
            if mode is not None:
                if mode not in ("min", "max"):
                    raise ValueError(f"mode of metric {key!r} must be 'min' or 'max', got {mode!r}")
                return "max" if mode == "max" else "min"
    return None


def suggested_key(name: str) -> str:
    """The ``modes=`` key to suggest for an unknown ``name``: the name without a leading ``best/`` and ``val/`` (the
    validator declares its metrics by their own names, ``acc`` for ``val/acc``), which :func:`find_mode` matches."""
    parts = name.split("/")
    for namespace in ("best", "val"):
        if len(parts) > 1 and parts[0] == namespace:
            parts = parts[1:]
    return "/".join(parts)


def metric_mode(name: str, declared: Mapping[str, str] | None = None) -> Mode:
    """Whether ``name`` improves upward (``"max"``) or downward (``"min"``), looked up by :func:`find_mode`.

    An unknown metric is a ``ValueError`` that says how to declare it, with a key that would be found.
    """
    mode = find_mode(name, declared)
    if mode is not None:
        return mode
    known = sorted(set(DEFAULT_MODES) | set(declared or {}))
    key = suggested_key(name)
    also = "; a key may also be one part of the name between '/' and then covers every metric with that part"
    raise ValueError(
        f"metric {name!r} has no known direction (known: {known}); declare it, e.g. modes={{{key!r}: 'max'}} "
        f"if higher is better or 'min' if lower is better{also if '/' in name else ''}"
    )


def monitor_mode(monitor: str, mode: str | None, owner: str) -> Mode:
    """The direction of a monitored metric: ``mode`` when given (``"min"`` or ``"max"``), else looked up from the
    name with :func:`find_mode` -- at construction, so an unknown one is refused before training. Errors are
    ``ValueError`` prefixed with ``owner`` (the callback)."""
    if mode is None:
        found = find_mode(monitor)
        if found is not None:
            return found
        known = sorted(DEFAULT_MODES)
        raise ValueError(
            f"{owner}: metric {monitor!r} has no known direction (known: {known}); pass mode='max' if higher is "
            "better or mode='min' if lower is better"
        )
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
