"""Fetching the batches a :class:`~trainers.data.plan.BatchPlan` names: in-process, or through DataLoader workers
that each seed their own randomness per batch (``mix(seed, epoch, batch)``), so a resumed run sees the same items
and the same augmentation at every step.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from trainers.data.plan import BatchPlan, mix_seed

__all__ = ["Feeder", "SeededBatch", "default_collate_checked", "shard_batch"]


class SeededBatch(list[int]):
    """A batch's indices plus the seed its worker draws randomness from: ``mix(seed, epoch, batch)``."""

    __slots__ = ("seed",)

    def __init__(self, indices: list[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the worker queue
        return (SeededBatch, (list(self), self.seed))


class _PlanSampler:
    """A DataLoader ``batch_sampler`` that yields the plan's batches from a settable (epoch, start)."""

    def __init__(self, plan: BatchPlan) -> None:
        self.plan, self.epoch, self.start = plan, 1, 0

    def __iter__(self) -> Iterator[SeededBatch]:
        plan, epoch = self.plan, self.epoch
        # each rank draws its own augmentations (the same seed would repeat one random stream on every shard)
        extra = (plan.rank,) if plan.world_size > 1 else ()
        for j, indices in enumerate(plan.batches(epoch, self.start), start=self.start):
            yield SeededBatch(indices, mix_seed(plan.seed, epoch, j, *extra))

    def __len__(self) -> int:
        return self.plan.iterations_per_epoch - self.start


class _SeededFetch:
    """Runs in the worker: seeds the worker's torch, ``random`` (and numpy, if imported) from the batch's seed,
    then fetches its items. So random augmentations in ``__getitem__`` depend on (seed, epoch, batch) only -- not
    on the number of workers, which worker got the batch, or where a resumed run started."""

    def __init__(self, dataset: Any, prebuilt: bool) -> None:
        self.dataset, self.prebuilt = dataset, prebuilt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, batch: SeededBatch) -> list[Any]:
        torch.manual_seed(batch.seed)
        random.seed(batch.seed)
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed(batch.seed & 0xFFFFFFFF)
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None and not self.prebuilt:
            return getitems(list(batch))  # type: ignore[no-any-return]  # as given: torch's fetcher collates it
        return [self.dataset[i] for i in batch]


class _CollatePrebuilt:
    """Apply the user's collate_fn to a pre-built batch (picklable, unlike a lambda)."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> Any:
        return self.collate_fn(items[0])


class _RankShare:
    """Collate, then keep this rank's share of the pre-built batch (picklable, for workers)."""

    def __init__(self, collate_fn: Callable[[Any], Any], rank: int, world_size: int) -> None:
        self.collate_fn, self.rank, self.world_size = collate_fn, rank, world_size

    def __call__(self, items: list[Any]) -> Any:
        return shard_batch(self.collate_fn(items), self.rank, self.world_size)


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """``rank``'s share of a pre-built batch: every tensor in it (through lists, tuples and dicts) split along its
    first dimension with ``tensor_split``; anything else is kept whole. Raises ``ValueError`` when a tensor has
    fewer rows than there are ranks (a rank would get an empty batch)."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or len(batch) < world_size:
            rows = "a 0-d tensor" if batch.dim() == 0 else f"{len(batch)} rows"
            raise ValueError(
                f"a pre-built batch holds a tensor of shape {tuple(batch.shape)}: {rows} cannot be split among "
                f"{world_size} ranks (each needs at least one row); build batches of >= {world_size} rows"
            )
        return batch.tensor_split(world_size)[rank]
    if isinstance(batch, dict):
        return {key: shard_batch(value, rank, world_size) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(shard_batch(value, rank, world_size) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard_batch(value, rank, world_size) for value in batch)
    return batch


def default_collate_checked(batch: Any) -> Any:
    """``default_collate``, with a clear error where it would fail on a ready batch: a dataset whose
    ``__getitems__`` returns one (a dict of tensors, not a list of items) needs ``collate_fn=`` -- as torch's
    DataLoader does, where the same dataset fails with a bare ``KeyError: 0``."""
    if not isinstance(batch, (list, tuple)):
        raise TypeError(
            f"the dataset's __getitems__ returned a {type(batch).__name__}, not a list of items, so the default "
            "collate cannot stack it (torch's DataLoader fails there too); if it is a ready batch, pass "
            "collate_fn=lambda batch: batch"
        )
    return default_collate(list(batch))


def _first(items: list[Any]) -> Any:
    """The collate of pre-built batches: the batch exactly as the dataset gave it."""
    return items[0]


class Feeder:
    """Yields the batches of an epoch from any position.

    With ``num_workers=0`` batches are fetched in-process without a DataLoader: ``TensorDataset`` rows by one tensor
    index, datasets with ``__getitems__`` in one call, others item by item through ``collate_fn``. With workers, a
    persistent ``DataLoader`` runs the same plan and each worker seeds its RNGs per batch (see :class:`_SeededFetch`);
    torch's global RNG in the main process is never touched. Pre-built batches (``batch_size=None``) are handed over
    as the dataset gives them, through ``collate_fn`` only when one is given.
    """

    def __init__(
        self,
        dataset: Dataset[Any] | Sequence[Any],
        plan: BatchPlan,
        *,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any] | None,
        pin_memory: bool,
    ) -> None:
        self.dataset, self.plan = dataset, plan
        self.user_collate = collate_fn
        self.collate: Callable[[list[Any]], Any] = collate_fn or default_collate_checked
        self._loader: DataLoader[Any] | None = None
        self._sampler: _PlanSampler | None = None
        self._workers, self._pin = num_workers, pin_memory
        self._start_workers()

    def _start_workers(self) -> None:
        if self._workers == 0:
            return
        plan, collate_fn = self.plan, self.user_collate
        prebuilt = plan.batch_size is None
        collate = self.collate
        if prebuilt:
            collate = _first if collate_fn is None else _CollatePrebuilt(collate_fn)
        if prebuilt and plan.world_size > 1:
            collate = _RankShare(collate, plan.rank, plan.world_size)
        self._sampler = _PlanSampler(plan)
        # a DataLoader draws its workers' base seed from torch's global RNG when its first iterator is made --
        # in a resumed process at another epoch than in the original one -- unless it has its own generator
        generator = torch.Generator().manual_seed(mix_seed(plan.seed, 0x5EED))
        self._loader = DataLoader(
            _SeededFetch(self.dataset, prebuilt),  # type: ignore[arg-type]  # map-style: __len__ + __getitems__
            batch_sampler=self._sampler,
            num_workers=self._workers,
            collate_fn=collate,
            pin_memory=self._pin,
            persistent_workers=True,
            generator=generator,
        )

    def reload(self, plan: BatchPlan, dataset: Dataset[Any] | Sequence[Any] | None = None) -> None:
        """Use ``plan`` (and ``dataset``, when given) from the next :meth:`epoch` on; workers are started anew, so
        they hold the data as it is now (persistent workers keep the copy they were started with)."""
        self.close()
        self.plan = plan
        if dataset is not None:
            self.dataset = dataset
        self._start_workers()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` (1-based) from batch ``start`` (0-based) on."""
        if self._loader is not None and self._sampler is not None:
            self._sampler.epoch, self._sampler.start = epoch, start
            return iter(self._loader)
        return self._in_process(epoch, start)

    def _in_process(self, epoch: int, start: int) -> Iterator[Any]:
        dataset, plan = self.dataset, self.plan
        if plan.batch_size is None:
            user = self.user_collate
            if not plan.shuffle:
                given = (dataset[j] for j in range(start, plan.iterations_per_epoch))
            else:
                given = (dataset[indices[0]] for indices in plan.batches(epoch, start))
            batches = given if user is None else (user(batch) for batch in given)
            if plan.world_size > 1:
                rank, world = plan.rank, plan.world_size
                return (shard_batch(batch, rank, world) for batch in batches)
            return batches
        if isinstance(dataset, TensorDataset) and self.collate is default_collate_checked:
            tensors = dataset.tensors
            # the same values default_collate would stack, in one gather per tensor instead of one row at a time
            return ([t[indices] for t in tensors] for indices in plan.index_batches(epoch, start))
        getitems = getattr(dataset, "__getitems__", None)
        if getitems is not None:
            return (self.collate(getitems(indices)) for indices in plan.batches(epoch, start))
        return (self.collate([dataset[i] for i in indices]) for indices in plan.batches(epoch, start))

    def close(self) -> None:
        """Shut the worker processes down (they are persistent across epochs)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
