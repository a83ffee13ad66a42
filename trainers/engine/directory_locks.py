"""The trainer's hold on the directories it writes: its run directory, and every checkpoint directory outside it.

Each is locked with :class:`~trainers.checkpoint.run_lock.RunLock` (``<dir>/.stepbus.lock``), by rank 0 only (the
directories are the job's, and rank 0 is the process that writes them):

* taken when the driving starts -- the first ``iterate()``, ``train()`` or ``run_for()`` -- before the loop runs, so
  before ``pre_training`` and anything its handlers write (``config.yaml``, TensorBoard and W&B files, a
  checkpointer's clean-up of leftover temporaries). A refusal raises
  :class:`~trainers.checkpoint.run_lock.RunDirectoryBusy` on every rank with no event emitted and nothing written:
  the trainer is as it was and may try again;
* held across ``iterate()`` calls (a GUI) and while ``train()`` is paused;
* released once the run has ended -- after ``post_training``, or after the ``exception`` handlers where
  ``post_training`` itself raised -- by ``trainer.close()``, or by the OS when the process ends. A trainer closed
  before its run ended takes the locks again at its next ``iterate()``.

A write outside a run (a manual checkpoint before the first step or after the last) holds them for its duration:
``with trainer.holding_directories(): ...``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from lifecycle import Loop
from trainers.checkpoint.format import CheckpointError, EarlierRunCheckpoints
from trainers.checkpoint.run_lock import RunDirectoryBusy, RunLock
from trainers.distributed.collective import RankZeroFailure
from trainers.distributed.ranks import Ranks
from trainers.engine.requests import Requests

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["CLAIM", "DirectoryLocks", "LockMethods"]

#: the request kind served right after the locks are taken at the start of a run, on rank 0, before any event: a
#: writer checks there that the directory it owns may be written by this run (the Checkpointer refuses another
#: run's checkpoints there). A refusal releases the locks and leaves the trainer as it was, like a busy directory.
CLAIM = "claim_directories"

T = TypeVar("T")

_CHECKPOINT_ADVICE = "wait for it to end or give this run's checkpointer another dir"


class DirectoryLocks:
    """The locks of one trainer (see the module docstring)."""

    __slots__ = ("_loop", "_ranks", "_requests", "_trainer", "due", "held", "locks")

    def __init__(self, trainer: BaseTrainer, loop: Loop, ranks: Ranks, requests: Requests) -> None:
        self._trainer, self._loop, self._ranks, self._requests = trainer, loop, ranks, requests
        #: the next ``iterate()``/``train()``/``run_for()`` takes the locks before the loop runs
        self.due = True
        #: whether the run holds its directories (on every rank; only rank 0 has :attr:`locks`)
        self.held = False
        #: the locks this process holds, in the order taken
        self.locks: list[RunLock] = []

    def run(self, drive: Callable[[], T]) -> T:
        """``drive()`` (an ``iterate``, ``train`` or ``run_for`` of the loop) with the locks taken first when they
        are due; released when the run ended without the driver's ``end_training`` (nothing left to emit)."""
        if self.due:
            self.take()
        try:
            return drive()
        finally:
            if self._loop.finished:
                self.release()

    def take(self) -> None:
        """Lock the directories on rank 0; :class:`RunDirectoryBusy` on every rank when one is in use."""
        if self._loop.finished:
            self.due = False  # iterate() after the end emits nothing and writes nothing
            return
        self._ranks.check_open(self._trainer.state.iteration)
        self._ranks.on_rank_zero(self._acquire_and_claim, _refused)
        self.held, self.due = True, False

    def release(self) -> None:
        """Unlock every directory (idempotent); the run has ended."""
        self.held = self.due = False
        self._unlock()

    def close(self) -> None:
        """``trainer.close()``: unlock; an unfinished run locks again when it is driven next."""
        self.release()
        self.due = not self._loop.finished

    def holds(self, directory: str | os.PathLike[str]) -> bool:
        """Whether this process holds a lock covering ``directory`` (it lies in a locked directory)."""
        resolved = Path(directory).resolve()
        return any(resolved.is_relative_to(lock.directory.resolve()) for lock in self.locks)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Hold the locks for the body (a collective outside a run): as they are while a run holds them, else taken
        for it and released after it."""
        if self.held:
            yield
            return
        self._ranks.on_rank_zero(self._acquire, _refused)
        try:
            yield
        finally:
            self._unlock()

    def _wanted(self) -> list[RunLock]:
        trainer = self._trainer
        wanted: list[RunLock] = []
        covered: list[Path] = []
        if trainer.run_dir is not None:
            wanted.append(RunLock(trainer.run_dir))
            covered.append(trainer.run_dir.resolve())
        for directory in trainer.checkpoint_dirs():
            resolved = directory.resolve()
            if not any(resolved.is_relative_to(folder) for folder in covered):
                wanted.append(RunLock(directory, kind="checkpoint directory", advice=_CHECKPOINT_ADVICE))
                covered.append(resolved)
        return wanted

    def _acquire(self) -> None:
        taken: list[RunLock] = []
        try:
            for lock in self._wanted():
                lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        self.locks = taken

    def _acquire_and_claim(self) -> None:
        self._acquire()
        try:
            self._requests.run_now(CLAIM)
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        locks, self.locks = self.locks, []
        for lock in reversed(locks):
            lock.release()


def _refused(failure: RankZeroFailure) -> BaseException:
    """What the other ranks raise when rank 0 could not lock the directories."""
    if failure.kind == "RunDirectoryBusy":
        return RunDirectoryBusy(failure.message)
    if failure.path is not None and failure.reason is not None:  # a writer's claim refused its directory
        if failure.kind == "EarlierRunCheckpoints":
            return EarlierRunCheckpoints(failure.path, failure.reason)
        if failure.kind == "CheckpointError":
            return CheckpointError(failure.path, failure.reason)
    return RuntimeError(f"rank 0 could not lock the run's directories: {failure}")


class LockMethods:
    """The trainer's methods over its :class:`DirectoryLocks` (a mixin of ``BaseTrainer``)."""

    _locks: DirectoryLocks

    def holds_directory(self, directory: str | os.PathLike[str]) -> bool:
        """Whether this process holds the lock covering ``directory`` (the run directory's, or a checkpoint
        directory's outside it): no other live process writes there. Only rank 0 of a job holds locks."""
        return self._locks.holds(directory)

    def holding_directories(self) -> AbstractContextManager[None]:
        """``with trainer.holding_directories():`` write into the run's directories outside a run (a manual
        checkpoint before the first or after the last step): their locks are held for the body, as they are from
        the first ``iterate()`` to the run's end. A collective; ``RunDirectoryBusy`` when another process holds one."""
        return self._locks.holding()
