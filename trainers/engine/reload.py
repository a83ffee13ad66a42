"""Data that changes between epochs: ``trainer.reload_data()`` and a changed ``len(dataset)``.

A trainer that resamples its data each epoch (Wisp's SDF trainer draws new points) changes the dataset between
epochs. Two things go stale when it does: the batch plan, whose length was the dataset's length when it was made
(a dataset that grew from 2048 to 3584 items would never have its new items visited), and DataLoader workers, which
keep the copy of the dataset they were started with. So:

* at each epoch's start -- before its batches are positioned, and again after its ``pre_epoch`` handlers (a
  resample may run there) -- a changed ``len(dataset)`` or a call of ``trainer.reload_data()`` rebuilds the plan for
  the new length and starts the workers anew; ``state.iterations_per_epoch`` follows (``state.iteration`` keeps
  counting; ``max_iterations`` is the estimate at the current length);
* a length that changed *during* an epoch (found when the epoch's last step is done) is an error naming the
  iteration: change the data in ``post_epoch`` or ``pre_epoch``;
* the plan is a pure function of (seed, epoch, the epoch's length), and the length is in every checkpoint, so a
  resume is exact as long as the dataset has the same items again when the epoch resumes -- for a resample, draw it
  from ``(seed, epoch)`` in ``pre_epoch``, which a resumed run emits again for the epoch it resumes inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from trainers.data.feeder import Feeder

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["DataReload"]


class DataReload:
    """The reload side of one trainer's data (see the module docstring)."""

    __slots__ = ("_dataset", "_feeder", "_requested", "_trainer")

    def __init__(self, trainer: BaseTrainer, feeder: Feeder) -> None:
        self._trainer, self._feeder = trainer, feeder
        self._requested = False
        self._dataset: Dataset[Any] | Sequence[Any] | None = None

    def request(self, dataset: Dataset[Any] | Sequence[Any] | None) -> None:
        """Reload at the next epoch start (at once when called from ``pre_epoch``), with ``dataset`` if given."""
        self._requested = True
        if dataset is not None:
            self._dataset = dataset

    def due(self) -> bool:
        """A reload was asked for, or the dataset's length is not the plan's."""
        return self._requested or self._length() != self._feeder.plan.size

    def apply(self, *, inside: bool) -> None:
        """Rebuild the plan and restart the workers. ``inside``: the epoch is already under way (a resumed one),
        so its length cannot change."""
        trainer, state = self._trainer, self._trainer.state
        if self._dataset is not None:
            trainer.dataset, self._dataset = self._dataset, None
        size = self._length()
        plan = self._feeder.plan
        if inside and size != plan.size:
            raise RuntimeError(
                f"epoch {state.epoch} resumes after step {state.epoch_iteration} over a dataset of {plan.size} items, "
                f"but after pre_epoch the dataset has {size}: give it the epoch's items again before the epoch "
                "resumes (e.g. resample from (seed, epoch) in pre_epoch)"
            )
        self._requested = False
        self._feeder.reload(plan if size == plan.size else plan.resized(size), trainer.dataset)
        self._set_length(self._feeder.plan.iterations_per_epoch)

    def resume_at(self, counters: Mapping[str, int], size: object) -> None:
        """Restored ``counters`` of a run that had reloaded its data (``varied_epochs``), whose epoch ran over
        ``size`` items: plan for that length until the next reload. (A run that never reloaded keeps today's plan:
        its length was checked against the saved iterations per epoch.)"""
        if not counters.get("varied_epochs") or not isinstance(size, int) or size <= 0:
            return
        if size != self._feeder.plan.size:
            self._feeder.reload(self._feeder.plan.resized(size))
            self._set_length(self._feeder.plan.iterations_per_epoch)

    def iterations_for(self, size: int) -> int:
        """Iterations per epoch of this trainer's plan over ``size`` items (for a restore)."""
        return self._feeder.plan.resized(size).iterations_per_epoch

    def check_unchanged(self) -> None:
        """At an epoch's last step: the length must not have changed during the epoch."""
        size, state = self._length(), self._trainer.state
        if size != self._feeder.plan.size:
            raise RuntimeError(
                f"the dataset's length changed from {self._feeder.plan.size} to {size} during epoch {state.epoch} "
                f"(found after iteration {state.iteration}): change the data between epochs -- in post_epoch or "
                "pre_epoch -- and call trainer.reload_data()"
            )

    def _set_length(self, iterations: int) -> None:
        state = self._trainer.state
        if iterations != state.iterations_per_epoch:
            state.iterations_per_epoch = iterations
            state.varied_epochs = True

    @property
    def size(self) -> int:
        """The length the current plan was made for (saved in checkpoints)."""
        return self._feeder.plan.size

    def _length(self) -> int:
        return len(self._trainer.dataset)  # type: ignore[arg-type]
