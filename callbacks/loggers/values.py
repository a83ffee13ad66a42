"""Which values the loggers write and how they flatten them (not a callback), so that TensorBoard and W&B carry
the same names and the same numbers.

Nothing here converts a tensor: a tensor left in ``state.metrics`` is skipped rather than synced to the host. The
per-step values come from ``MetricFlow.of(trainer)`` (one host copy per read); what is here is already a Python number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["as_markdown", "flat_scalars", "numbers", "published", "validation_numbers"]


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of ``values`` (``bool`` and tensors left out), as floats, finite or not."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def published(metrics: Mapping[str, Any]) -> dict[str, float]:
    """What callbacks published between validations (``lr``, ``grad_norm``, ``prune/*`` ...): the finite numbers
    outside ``val/`` and ``best/``, which are written at validation time instead."""
    return {k: v for k, v in numbers(metrics).items() if not k.startswith(("val/", "best/")) and math.isfinite(v)}


def validation_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The ``val/*`` and ``best/*`` numbers of ``metrics``."""
    return {k: v for k, v in numbers(metrics).items() if k.startswith(("val/", "best/"))}


def flat_scalars(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` flattened to dotted keys (``optimizer.lr``), keeping only bools, numbers and strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_scalars(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def as_markdown(config: Mapping[str, Any]) -> str:
    """``config`` as an indented (code block) list of ``key: value`` lines, sorted by key."""
    lines = [f"    {key}: {value!r}" for key, value in sorted(flat_scalars(config).items())]
    return "\n".join(lines) or "    (empty)"
