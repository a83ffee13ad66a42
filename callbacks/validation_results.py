"""What a validation returned, sorted by how the validator publishes it (shared by callbacks; not a callback).

``validate()`` or a validator's ``fn`` returns a dict: plain numbers (or one-element tensors), sums and counts
(``callbacks.reductions``: the ranks add their parts, then each becomes one number), torchmetrics metrics
(``callbacks.validation_torchmetrics``: their ``compute()`` combines the ranks' states) and an optional
``"images"`` entry. :func:`collect` checks and sorts them; :func:`finished` turns the sums and counts into the
numbers they publish, in the result's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from callbacks.images import checked_images
from callbacks.metrics import as_scalar
from callbacks.reductions import Reduction
from callbacks.validation_torchmetrics import is_metric

__all__ = ["Collected", "collect", "finished", "refuse_numbers"]


@dataclass
class Collected:
    """A rank's validation result, checked."""

    #: plain numbers and sums and counts by name, in the result's order
    values: dict[str, float | Reduction] = field(default_factory=dict)
    #: torchmetrics metrics by name (``None``: a collection given whole, whose keys are the names)
    metrics: dict[str | None, Any] = field(default_factory=dict)
    #: the images as uint8 ``HxWxC`` (rank 0 only)
    images: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def reductions(self) -> dict[str, Reduction]:
        """The sums and counts by name, in order: what the ranks add up."""
        return {name: value for name, value in self.values.items() if isinstance(value, Reduction)}

    def signature(self) -> list[str | None]:
        """What must be the same on every rank before the collectives: the metrics' names, then each sum's name
        and kind (its kind fixes how many numbers it adds)."""
        return [*self.metrics, *(f"{name} ({value.kind})" for name, value in self.reductions.items())]


def collect(
    result: Any,
    *,
    given: Mapping[str | None, Any],
    known: list[Any],
    everywhere: bool,
    owner: str,
    source: str,
    with_images: bool,
) -> Collected:
    """``result`` checked and sorted: numbers as floats, sums and counts as they are, torchmetrics metrics (with
    ``given``, the validator's ``metrics=``; each new one is added to ``known``, the metrics it resets) and, when
    ``with_images``, the images. ``everywhere`` (``ranks="all"``) refuses plain numbers: they are one rank's shard
    only. Errors are prefixed with ``owner`` and name the ``source``."""
    if result is None and given:
        result = {}
    if not isinstance(result, Mapping):
        raise TypeError(f"{owner}: {source} must return a dict of metrics, got {type(result).__name__}")
    images = checked_images(result.get("images"), owner=owner, source=source) if with_images else {}
    collected = Collected(metrics=dict(given), images=images)
    plain: list[str] = []
    for key, value in result.items():
        name = str(key)
        if name == "images":
            continue
        if isinstance(value, Reduction):
            collected.values[name] = value
        elif not is_metric(value):
            collected.values[name] = _number(name, value, owner, source)
            plain.append(name)
        elif name in collected.metrics:
            raise ValueError(f"{owner}: {source} returned {name!r}, a name of metrics=")
        else:
            collected.metrics[name] = value
            if all(value is not seen for seen in known):
                known.append(value)
    if plain and everywhere:
        refuse_numbers(f"{owner}: {sorted(plain)} from {source}")
    return collected


def refuse_numbers(what: str) -> NoReturn:
    """With ``ranks="all"`` a plain number is one rank's shard only; ``what`` names them (and their owner)."""
    raise TypeError(
        f"{what} must be sums and counts (callbacks.Mean, callbacks.Sum) or torchmetrics metrics: with ranks='all' "
        "each rank sees only its shard, so plain numbers would differ between ranks (return e.g. Mean(total, count) "
        "or Sum(value), which the ranks add up, or a torchmetrics MeanMetric), or use ranks='zero'"
    )


def _number(name: str, value: Any, owner: str, source: str) -> float:
    number = as_scalar(value)
    if number is not None:
        return number
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    raise TypeError(
        f"{owner}: metric {name!r} from {source} must be a number, a one-element tensor, a sum or mean "
        f"(callbacks.Mean, callbacks.Sum) or a torchmetrics metric, got {type(value).__name__}{shape}; put images "
        "under the 'images' key"
    )


def finished(values: Mapping[str, float | Reduction], reduced: Mapping[str, float]) -> dict[str, float]:
    """``values`` with each sum or mean replaced by its published number (``reduced``, by name), in order."""
    return {name: reduced[name] if isinstance(value, Reduction) else value for name, value in values.items()}
