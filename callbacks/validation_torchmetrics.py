"""torchmetrics objects as a validator's results (shared by callbacks; not a callback).

A ``Validator`` accepts ``torchmetrics.Metric`` and ``MetricCollection`` objects beside plain numbers: the metrics
the validation updated, either returned by ``validate()`` / ``fn`` or given to the validator as ``metrics=``. Here
they are recognised, computed, turned into the plain numbers the validator publishes (with each one's direction,
the metric's ``higher_is_better``) and reset.

torchmetrics is never imported here: an object can only be a torchmetrics metric when the user's code already
imported torchmetrics, so :func:`is_metric` looks the package up in ``sys.modules``, and ``import callbacks``
costs nothing for a run without it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from callbacks.metrics import Mode, as_scalar, metric_mode, name_keys

if TYPE_CHECKING:  # pragma: no cover
    from typing import TypeAlias

    from torchmetrics import Metric, MetricCollection

    #: what ``Validator(metrics=...)`` takes: names to metrics (a collection under a name publishes
    #: ``<name>/<key>``), or one collection, whose keys are the names
    Metrics: TypeAlias = Mapping[str, Metric | MetricCollection] | MetricCollection

__all__ = [
    "Found",
    "Measured",
    "check_metrics",
    "compute",
    "direction",
    "is_metric",
    "measure",
    "metric_objects",
    "publishable",
    "reset",
]

#: one published value of a metric: the number, the metric's ``higher_is_better`` and its class name
Measured = tuple[float, bool | None, str]
#: the ``higher_is_better`` and class name of each published value that came from a metric object
Found = dict[str, tuple[bool | None, str]]


def _torchmetrics() -> ModuleType | None:
    """The torchmetrics package when the program imported it; ``None`` otherwise (nothing can be a metric)."""
    return sys.modules.get("torchmetrics")


def is_metric(value: object) -> bool:
    """Whether ``value`` is a ``torchmetrics.Metric`` or ``MetricCollection`` (without importing torchmetrics)."""
    tm = _torchmetrics()
    return tm is not None and isinstance(value, (tm.Metric, tm.MetricCollection))


def _is_collection(value: object) -> bool:
    tm = _torchmetrics()
    return tm is not None and isinstance(value, tm.MetricCollection)


def check_metrics(metrics: object, fn: object, owner: str) -> dict[str | None, Any]:
    """The metrics given to a validator, by name (``{None: collection}`` for a collection given as a whole, whose
    keys are the names); a ``TypeError``/``ValueError`` prefixed with ``owner`` for anything else, or when no
    ``fn`` is there to update them."""
    if fn is None:
        raise TypeError(
            f"{owner}: metrics= needs fn(trainer, metrics) to update them (trainer.validate() takes no metrics; it "
            "may return the metric objects it updated instead)"
        )
    if _is_collection(metrics):
        return {None: metrics}
    if not isinstance(metrics, Mapping) or not metrics:
        raise TypeError(
            f"{owner}: metrics must be a non-empty dict of names to torchmetrics Metric or MetricCollection objects, "
            f"or a MetricCollection, got {type(metrics).__name__}"
        )
    found: dict[str | None, Any] = {}
    for name, metric in metrics.items():
        if not isinstance(name, str) or not name.strip() or name.strip("/") != name or name == "images":
            raise ValueError(
                f"{owner}: metrics name {name!r} must be a non-empty name without '/' at its ends, and not 'images'"
            )
        if not is_metric(metric):
            raise TypeError(
                f"{owner}: metrics[{name!r}] must be a torchmetrics Metric or MetricCollection, got "
                f"{type(metric).__name__}"
            )
        found[name] = metric
    return found


def metric_objects(metric: Any) -> Iterator[Any]:
    """Every ``Metric`` inside ``metric`` (itself included): a collection's members, a wrapper's wrapped metric."""
    tm = _torchmetrics()
    if tm is not None:
        yield from (module for module in metric.modules() if isinstance(module, tm.Metric))


@contextmanager
def _local(metric: Any) -> Iterator[None]:
    """Inside the block ``compute()`` uses this process's states alone: torchmetrics sees no process group, so a
    metric computed on rank 0 only does not wait for the other ranks to join its sync."""
    saved = [(m, m.distributed_available_fn) for m in metric_objects(metric)]
    for m, _ in saved:
        m.distributed_available_fn = _no_group
    try:
        yield
    finally:
        for m, fn in saved:
            m.distributed_available_fn = fn


def _no_group() -> bool:
    return False


def compute(metric: Any, *, sync: bool) -> Any:
    """``metric.compute()``: with ``sync`` the states of every rank combined (torchmetrics's sync at compute, a
    collective), else this process's alone."""
    if sync:
        return metric.compute()
    with _local(metric):
        return metric.compute()


def reset(metrics: Iterator[Any] | list[Any]) -> None:
    """``reset()`` each metric, so the next validation starts from empty states."""
    for metric in metrics:
        metric.reset()


def _directions(metric: Any) -> tuple[dict[str, bool | None], bool | None]:
    """The ``higher_is_better`` of each key a collection's ``compute()`` returns, and the one for a key no member is
    named by (an entry of a dict-valued member): the members' common direction, ``None`` when they differ."""
    if not _is_collection(metric):
        return {}, metric.higher_is_better
    members = {str(key): m.higher_is_better for key, m in metric.items(keep_base=False, copy_state=False)}
    common = set(members.values())
    return members, common.pop() if len(common) == 1 else None


def _entries(name: str | None, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _entries(str(key) if name is None else f"{name}/{key}", inner)
    else:
        yield str(name), value


def measure(name: str | None, metric: Any, computed: Any) -> dict[str, Measured]:
    """What ``metric.compute()`` returned (``computed``) as published values: ``name`` for a number, ``name/key``
    for each entry of a dict (the keys alone for a collection given whole, ``name`` ``None``), each with its
    direction. A value that is not one number is a ``TypeError`` (without an owner: the caller adds its own)."""
    kind = type(metric).__name__
    if name is None and not isinstance(computed, Mapping):
        raise TypeError(f"{kind}.compute() must return a dict, got {type(computed).__name__}")
    members, common = _directions(metric)
    measured: dict[str, Measured] = {}
    for key, value in _entries(name, computed):
        number = as_scalar(value)
        if number is None:
            shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
            raise TypeError(
                f"metric {key!r}: {kind}.compute() gave {type(value).__name__}{shape}, not one number; use a metric "
                "that averages (e.g. average='macro'), or a ClasswiseWrapper, whose compute() is a dict of numbers"
            )
        top = key if name is None else key[len(name) + 1 :]
        higher = next((h for member, h in members.items() if top == member or top.startswith(member + "/")), common)
        measured[key] = (number, higher, kind)
    return measured


def publishable(
    numbers: Mapping[str, float], metrics: Mapping[str | None, Any], computed: Mapping[str | None, Any], owner: str
) -> tuple[dict[str, float], Found]:
    """A validation's published values -- its plain ``numbers``, then the entries of each metric's ``computed``
    value -- and each metric entry's direction. Errors are prefixed with ``owner``."""
    values = dict(numbers)
    found: Found = {}
    for name, metric in metrics.items():
        try:
            entries = measure(name, metric, computed[name])
        except TypeError as exc:
            raise TypeError(f"{owner}: {exc}") from None
        for key, (number, higher, kind) in entries.items():
            if key in values:
                raise ValueError(f"{owner}: two values are named {key!r}; rename one")
            values[key], found[key] = number, (higher, kind)
    return values, found


def direction(name: str, found: tuple[bool | None, str] | None, modes: Mapping[str, Mode], owner: str) -> Mode:
    """The direction of the published value ``name``: a plain number's (``found`` ``None``) from ``modes`` and the
    built-in table (:func:`callbacks.metrics.metric_mode`); a metric object's from ``modes`` by any key of its name,
    else its ``higher_is_better``, else the table. An unknown one is a ``ValueError`` prefixed with ``owner``."""
    try:
        if found is not None:
            declared = next((modes[key] for key in name_keys(name) if key in modes), None)
            if declared is not None:
                return declared
            if found[0] is not None:
                return "max" if found[0] else "min"
        return metric_mode(name, modes)
    except ValueError as exc:
        why = "" if found is None else f" (its torchmetrics {found[1]} has higher_is_better=None)"
        raise ValueError(f"{owner}: {exc}{why}") from None
