"""Which share of the validation set this process evaluates, in the validation now running (shared by callbacks and
apps; not a callback).

The same ``validate()`` serves ``Validator(ranks="zero")`` -- rank 0 alone evaluates the whole set -- and
``ranks="all"`` -- every rank evaluates its own shard. Only the validator knows which one is running, so it says so
here, per trainer, for the length of the run: :func:`validation_shard` is ``(trainer.rank, trainer.world_size)``
inside a ``ranks="all"`` validation and ``(0, 1)`` -- everything -- otherwise (a ``ranks="zero"`` run, a single
process, a direct call of ``validate()``). An app takes shard ``index`` of ``count``, e.g. the items
``range(index, n, count)``, and returns sums and counts (``callbacks.reductions``) that the ranks add up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["ValidationShard", "validation_shard"]


class ValidationShard:
    """A trainer's current validation shard (``trainer.extension(ValidationShard)``): ``(0, 1)`` between runs."""

    def __init__(self, trainer: BaseTrainer) -> None:
        self.index, self.count = 0, 1

    @classmethod
    def of(cls, trainer: BaseTrainer) -> ValidationShard:
        return trainer.extension(cls)

    @contextmanager
    def sharded(self, index: int, count: int) -> Iterator[None]:
        """Inside the block this process evaluates shard ``index`` of ``count``; afterwards, everything again."""
        saved = self.index, self.count
        self.index, self.count = index, count
        try:
            yield
        finally:
            self.index, self.count = saved


def validation_shard(trainer: BaseTrainer) -> tuple[int, int]:
    """``(index, count)``: this process validates shard ``index`` of ``count`` of the validation set --
    ``(trainer.rank, trainer.world_size)`` while a ``Validator(ranks="all")`` runs, ``(0, 1)`` otherwise."""
    shard = ValidationShard.of(trainer)
    return shard.index, shard.count
