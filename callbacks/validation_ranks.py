"""Validation on every rank (``Validator(ranks="all")``): the steps every rank takes in step (shared by callbacks;
not a callback).

Each rank evaluates its own shard of the validation set into sums and counts (``callbacks.reductions``) and
torchmetrics metrics. The sums and counts of every rank are added with one ``all_reduce``, and each metric's
``compute()`` -- a collective over the default process group -- combines the states of every rank: sums and counts,
not means of means. Collectives only work when every rank calls the same ones in the same order, so before any of
them the ranks agree that each of them produced a result, naming the same values in the same order; afterwards they
check that they published the same numbers (a metric built with ``sync_on_compute=False`` would not). A rank that
failed raises its own error; every other rank raises one that names it -- no rank goes on alone to wait for the
others in a collective they never join.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from callbacks.reductions import pack, sum_over_ranks, unpack
from callbacks.validation_results import Collected, finished
from callbacks.validation_torchmetrics import Found, compute, publishable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from trainers.engine.trainer import BaseTrainer

__all__ = ["agreed", "check_ranks", "evaluate_everywhere", "everywhere", "same_names"]

T = TypeVar("T")


def check_ranks(ranks: object, owner: str) -> None:
    """Refuse a ``ranks`` that is neither ``"zero"`` nor ``"all"`` (a ``ValueError`` prefixed with ``owner``)."""
    if ranks not in ("zero", "all"):
        raise ValueError(
            f"{owner}: ranks must be 'zero' (rank 0 validates, the other ranks get its values) or 'all' (every rank "
            f"validates its shard into sums and counts or torchmetrics metrics), got {ranks!r}"
        )


def everywhere(trainer: BaseTrainer, step: Callable[[], T], owner: str) -> list[T]:
    """``step()`` on this rank; then every rank's result (small, picklable) in rank order. If ``step`` raised on
    any rank, every rank raises: that rank its own exception, the others a ``RuntimeError`` naming the first rank
    that failed and its error. A collective: every rank calls it at the same point."""
    result: T | None = None
    error: Exception | None = None
    try:
        result = step()
    except Exception as exc:  # noqa: BLE001 - re-raised below, once the other ranks heard of it
        error = exc
    outcome = ("ok", result) if error is None else ("failed", f"{type(error).__name__}: {error}")
    shared = trainer.all_gather_object(outcome)
    if error is not None:
        raise error
    for rank, (status, payload) in enumerate(shared):
        if status != "ok":
            raise RuntimeError(f"{owner}: validation failed on rank {rank}: {payload}")
    return [payload for _, payload in shared]


def same_names(names: Sequence[Sequence[str | None]], owner: str) -> None:
    """Refuse results that name different metrics on different ranks: their ``compute()`` calls would not pair."""
    for rank, mine in enumerate(names):
        if list(mine) != list(names[0]):
            raise ValueError(
                f"{owner}: with ranks='all' every rank must return the same metrics in the same order; rank 0 "
                f"returned {list(names[0])}, rank {rank} {list(mine)}"
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def agreed(results: Sequence[tuple[Mapping[str, float], Found]], owner: str) -> dict[str, float]:
    """Rank 0's published values, once every rank published exactly the same ones (NaN equal to NaN); else a
    ``ValueError`` naming the first value that differs -- a metric that did not combine the ranks' states, or a
    value derived from a sum differently on each rank."""
    first, found = results[0]
    for rank, (mine, _) in enumerate(results):
        if list(mine) != list(first):
            raise ValueError(f"{owner}: rank 0 computed {list(first)}, rank {rank} {list(mine)}")
        for name, value in mine.items():
            if _same(value, first[name]):
                continue
            why = (
                "its compute() did not combine the ranks' states; with ranks='all' use torchmetrics metrics with "
                "sync_on_compute=True (the default)"
                if name in found
                else "the ranks added the same sums, so what turned them into this value differs between the ranks"
            )
            raise ValueError(
                f"{owner}: metric {name!r} is {first[name]!r} on rank 0 but {value!r} on rank {rank}: {why}"
            )
    return dict(first)


def evaluate_everywhere(
    trainer: BaseTrainer, collect: Callable[[], Collected], owner: str
) -> tuple[dict[str, float], Found, dict[str, Any]]:
    """Every rank runs ``collect()`` (the validation of its shard) and packs its sums and counts; once all of them
    succeeded with the same values in the same order, one ``all_reduce`` adds the sums and counts of every rank,
    each metric's ``compute()`` runs on every rank in that order, and the values -- the same on every rank,
    checked -- are returned with their directions and this rank's images. Resetting the metrics is the caller's."""
    local: list[tuple[Collected, torch.Tensor]] = []

    def run() -> list[str | None]:
        collected = collect()
        local.append((collected, pack(collected.reductions, trainer.device)))
        return collected.signature()

    same_names(everywhere(trainer, run, owner), owner)
    collected, packed = local[0]
    summed = sum_over_ranks(packed, trainer.world_size)
    metrics = collected.metrics
    computed = {name: compute(metric, sync=True) for name, metric in metrics.items()}

    def publish() -> tuple[dict[str, float], Found]:
        numbers = finished(collected.values, unpack(collected.reductions, summed, owner))
        return publishable(numbers, metrics, computed, owner)

    results = everywhere(trainer, publish, owner)
    return agreed(results, owner), results[0][1], collected.images
