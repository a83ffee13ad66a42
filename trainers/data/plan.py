"""Data order as a pure function of (seed, epoch), so a run can start at any (epoch, step) without replaying.

Epoch ``e`` visits the dataset in the permutation drawn from a private generator seeded with ``mix(seed, e)``
(or in index order with ``shuffle=False``); batch ``j`` is slice ``j`` of that permutation. Nothing here touches
the main process's global RNGs (DataLoader workers seed their own, per batch), so model code that draws random
numbers does not shift the data order, and vice versa.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch

__all__ = ["BatchPlan", "check_shares", "mix_seed"]

_log = logging.getLogger("stepbus")


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix64 steps): stable across processes and platforms."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


class BatchPlan:
    """Which dataset indices make each batch of each epoch.

    ``batch_size=None`` means the dataset's items already are batches (each index is one step). With
    ``world_size`` > 1, ``batch_size`` is the global batch and the index batches are ``rank``'s share of it.
    """

    def __init__(
        self,
        size: int,
        batch_size: int | None,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        if batch_size is None:
            self.iterations_per_epoch = size
        elif drop_last:
            self.iterations_per_epoch = size // batch_size
        else:
            self.iterations_per_epoch = math.ceil(size / batch_size)

    def resized(self, size: int) -> BatchPlan:
        """The same plan over a dataset of ``size`` items (checked): the data of the epochs after a reload."""
        plan = BatchPlan(
            size,
            self.batch_size,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
        )
        plan.check(self.drop_last)
        return plan

    def check(self, drop_last: bool) -> None:
        """A ``ValueError`` when an epoch has no batch; in a job, :func:`check_shares`."""
        if self.iterations_per_epoch < 1:
            raise ValueError(
                f"dataset of {self.size} items with batch_size={self.batch_size}, drop_last={drop_last} gives no "
                "batch per epoch; use a smaller batch_size or drop_last=False"
            )
        if self.world_size > 1:
            check_shares(self, self.world_size, drop_last)

    def batch_sizes(self) -> tuple[int, int]:
        """The (global) sizes of a full batch and of the epoch's last batch (``batch_size=None``: 1, 1)."""
        if self.batch_size is None:
            return 1, 1
        last = self.size - (self.iterations_per_epoch - 1) * self.batch_size
        return self.batch_size, min(last, self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of dataset indices for ``epoch`` (1-based)."""
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.size, generator=generator)

    def index_batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Index tensors of the batches of ``epoch`` from batch ``start`` (0-based) on; ``start`` costs nothing."""
        order = self.order(epoch)
        step = self.batch_size or 1
        world, rank = self.world_size, self.rank
        sharded = world > 1 and self.batch_size is not None
        for j in range(start, self.iterations_per_epoch):
            indices = order[j * step : (j + 1) * step]
            yield indices.tensor_split(world)[rank] if sharded else indices

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """The same as lists of ints."""
        return (indices.tolist() for indices in self.index_batches(epoch, start))


def check_shares(plan: BatchPlan, world: int, drop_last: bool) -> None:
    """Every rank needs at least one item of every batch; uneven shares are allowed but change the gradient."""
    if plan.batch_size is None:
        return  # pre-built batches are checked as they are split
    full, last = plan.batch_sizes()
    if last < world:
        which = "every batch" if last == full else f"the last batch of each epoch ({last} items)"
        raise ValueError(
            f"{which} must have at least one item per rank: batch_size={plan.batch_size} over {world} ranks leaves "
            f"a rank with nothing; use a batch_size >= {world}"
            + ("" if last == full else " and drop_last=True, or a dataset size that divides evenly")
        )
    if full % world or last % world:
        _log.warning(
            "batch_size=%d (last batch %d) does not divide among %d ranks: the shares differ by one item, and "
            "DDP's gradient (the mean over ranks of each rank's mean) weighs items of smaller shares more than a "
            "single process would; use a batch_size divisible by %d%s for the same result",
            full,
            last,
            world,
            world,
            "" if drop_last or last == full else " and drop_last=True",
        )
