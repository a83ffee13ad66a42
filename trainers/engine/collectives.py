"""The trainer's methods between ranks: who this process is, and the collectives callbacks may call.

A mixin of :class:`~trainers.engine.trainer.BaseTrainer` over its ``_ranks`` (``trainers.distributed.ranks``): in a
single process every collective is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from trainers.distributed.collective import RankZeroFailure
from trainers.distributed.ranks import Ranks

__all__ = ["RankMethods"]

T = TypeVar("T")


class RankMethods:
    """Rank, world size and the object collectives of a trainer."""

    _ranks: Ranks

    @property
    def rank(self) -> int:
        """This process's rank in the ``torch.distributed`` job (0 when there is none)."""
        return self._ranks.rank

    @property
    def world_size(self) -> int:
        """The number of processes in the job (1 when there is none)."""
        return self._ranks.world_size

    @property
    def sharded(self) -> bool:
        """Whether the pipeline's parameters are sharded over the ranks (``strategy="fsdp"`` in a job): each rank
        holds a shard of every parameter, and every forward is a collective."""
        return self._ranks.sharded

    @property
    def is_global_zero(self) -> bool:
        """Whether this is rank 0: the process that logs, shows progress and writes files."""
        return self._ranks.rank == 0

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (small, picklable) on every rank; a collective: every rank calls it at one point."""
        return self._ranks.broadcast(obj, src)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` in a single process). A collective."""
        return self._ranks.all_gather(obj)

    def on_rank_zero(
        self, fn: Callable[[], T], *, elsewhere: Callable[[RankZeroFailure], BaseException] | None = None
    ) -> T:
        """``fn()`` on rank 0 only, its result (small, picklable) on every rank; if it raises, every rank raises
        (the others ``elsewhere(failure)``, see :meth:`trainers.distributed.ranks.Job.on_rank_zero`). A collective."""
        return self._ranks.on_rank_zero(fn, elsewhere)

    def barrier(self) -> None:
        """Wait for every rank (nothing in a single process); a collective, bounded by the timeout."""
        self._ranks.barrier()
