"""What the torch-free :class:`lifecycle.Loop` calls at each phase of a run, done for a trainer.

The loop decides *which* phase comes next; the driver does the engine's own bookkeeping around each one -- the
epoch's data positioned, the batch placed on the device, the stop vote settled, queued requests served, the RNG
state of a restored checkpoint put back at exactly the point it was saved -- and calls the trainer's overridable
lifecycle method (``pre_epoch()``, ``step()`` ...) in between. Bookkeeping comes first, so an override that forgets
``super()`` loses its signal, never the data position. Once the run has ended -- after ``post_training``, or after
the ``exception`` handlers where ``post_training`` itself raised -- it unlocks the run's directories
(``engine.directory_locks``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lifecycle import Loop, Phase, Status
from trainers.checkpoint.rng import restore_rng
from trainers.data.feeder import Feeder
from trainers.data.placement import to_device
from trainers.distributed.ranks import INTERRUPT, STOP, Ranks
from trainers.engine.directory_locks import DirectoryLocks
from trainers.engine.reload import DataReload
from trainers.engine.requests import Requests

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["LoopDriver"]

_log = logging.getLogger("stepbus")


class LoopDriver:
    """Implements :class:`lifecycle.Driver` for one trainer (see the module docstring)."""

    __slots__ = (
        "_batches",
        "_deferred",
        "_device",
        "_failing",
        "_feeder",
        "_locks",
        "_loop",
        "_move",
        "_non_blocking",
        "_pending_rng",
        "_ranks",
        "_requests",
        "_rng_point",
        "_vote_every",
        "_votes",
        "_windows",
        "reload",
        "stepping",
        "trainer",
    )

    def __init__(
        self,
        trainer: BaseTrainer,
        loop: Loop,
        feeder: Feeder,
        requests: Requests,
        ranks: Ranks,
        *,
        vote_every: int,
        locks: DirectoryLocks,
    ) -> None:
        self.trainer = trainer
        self._locks = locks
        self._failing = False  # fail() ran: no exception handler follows a failing post_training
        self._loop, self._feeder, self._requests, self._ranks = loop, feeder, requests, ranks
        self._votes, self._vote_every = ranks.votes, vote_every
        self._batches: Iterator[Any] = iter(())
        self._device = trainer.device
        self._move = trainer.device.type != "cpu"
        self._non_blocking = trainer.device.type == "cuda"
        #: between pre_step and post_step: no resumable checkpoint can be taken
        self.stepping = False
        self._deferred: Status | None = None  # a stop asked for inside an accumulation window
        self._windows = trainer.state.accumulate > 1  # checked per step: a plain attribute, not the property
        self._pending_rng: Any = None  # from a restored checkpoint, put back at the resume point
        self._rng_point = "start"  # where that point is: before pre_training, after it, or after pre_epoch
        #: data that changes between epochs (``trainer.reload_data()``, a changed length)
        self.reload = DataReload(trainer, feeder)

    def restore_rng_at(self, rng: Any, counters: dict[str, int]) -> None:
        """Put ``rng`` (a checkpoint's RNG state) back where the saved run stood: re-fired events must not draw
        from it before that point."""
        self._pending_rng = rng
        if counters["epoch"] == 0:
            self._rng_point = "start"
        elif counters["epoch_iteration"] >= counters["iterations_per_epoch"]:
            self._rng_point = "boundary"
        else:
            self._rng_point = "epoch"  # pre_epoch of this epoch had run (even at step 0: e.g. stopped in it)

    # ------------------------------------------------------------------ the phases
    def begin_training(self) -> None:
        if self._pending_rng is not None and self._rng_point == "start":
            self._restore_rng()  # saved before training started: this pre_training is the original run's too
        self.trainer.pre_training()
        if self._votes:
            self.settle(wait=True)
        if self._pending_rng is not None and self._rng_point == "boundary":
            self._restore_rng()  # saved after a post_epoch: the next pre_epoch is the uninterrupted run's

    def begin_epoch(self) -> None:
        t = self.trainer
        t.pipeline.train()
        inside = t.state.epoch_iteration > 0  # a resumed epoch: its length is the saved one
        if not inside and self.reload.due():
            self.reload.apply(inside=False)  # the data changed between epochs
        self._batches = self._feeder.epoch(t.state.epoch, t.state.epoch_iteration)
        t.pre_epoch()
        if self.reload.due():  # pre_epoch resampled or asked for a reload
            self.reload.apply(inside=inside)
            self._batches = self._feeder.epoch(t.state.epoch, t.state.epoch_iteration)
        if self._votes:
            self.settle(wait=True)
        if self._pending_rng is not None:
            self._restore_rng()  # saved inside an epoch: this pre_epoch re-opened it; the next step is the run's

    def run_step(self) -> None:
        t = self.trainer
        try:
            batch = next(self._batches)
        except IndexError:
            self.reload.check_unchanged()  # the dataset shrank inside the epoch: say so, naming the iteration
            raise
        except StopIteration:
            raise RuntimeError(
                f"the data ran out at iteration {t.state.iteration} ({t.state}): the dataset yielded fewer "
                f"batches than its length promised ({t.state.iterations_per_epoch} per epoch)"
            ) from None
        if self._move:
            batch = to_device(batch, self._device, self._non_blocking)
        self.stepping = True
        t.pre_step(batch)
        outputs = t.step(batch)
        self.stepping = False
        t.post_step(outputs)
        if self._windows:
            if t.state.mid_window:
                return  # an accumulation window is open: votes, stops and requests wait for its end
            if self._deferred is not None:
                self._end_deferred()
        if self._votes and t.state.iteration % self._vote_every == 0:
            self.settle(wait=False)  # the previous round's result; this round's is read at the next one
        if self._requests.pending and not t.post_epoch_pending:
            self._requests.drain()  # requested during a step: served now (at an epoch's last step, after post_epoch)

    def end_epoch(self) -> None:
        self._batches = iter(())
        self.reload.check_unchanged()
        self.trainer.post_epoch()
        if self._votes:
            self.settle(wait=True)
        if self._requests.pending:
            self._requests.drain()

    def end_training(self, status: Status) -> None:
        ended = False
        try:
            self._ranks.finish_vote()  # no vote round outlives the run (after a failure, fail() abandoned it)
            if self._requests.pending and status is not Status.FAILED:
                self._requests.drain()  # before post_training, so loggers still receive what the requests publish
            self.trainer.post_training(status)
            ended = True
        finally:
            if ended or self._failing:  # else the exception handlers of this failure run next: still locked
                self._locks.release()

    def fail(self, error: BaseException) -> None:
        after_end = self._loop.phase is Phase.FINISHING  # post_training raised: nothing follows these handlers
        self._failing = True
        try:
            self.stepping = False
            self._ranks.abandon_vote()  # a peer may be gone: waiting for its vote could take the whole timeout
            self._requests.pending.clear()  # the run may be mid-step: nothing queued (an interrupt save) is served
            self.trainer.on_exception(error)
        finally:
            if after_end:
                self._locks.release()

    def serve_requests(self) -> None:
        if self._requests.pending:
            self._requests.drain()

    # ------------------------------------------------------------------ resumable points
    @property
    def post_epoch_pending(self) -> bool:
        """From the end of an epoch's last step until its ``post_epoch``: not a resumable point."""
        state, loop = self.trainer.state, self._loop
        return loop.in_iterate and loop.phase is Phase.IN_EPOCH and state.epoch_iteration >= state.iterations_per_epoch

    def check_resumable_point(self) -> None:
        """Raise ``RuntimeError`` where a resumable checkpoint cannot be taken: inside a step, at an epoch's last
        step before its ``post_epoch`` (a restore would repeat the epoch's end), or inside an accumulation window
        (its gradients, pending on every rank, are not in a checkpoint)."""
        state = self.trainer.state
        if self.stepping or self.post_epoch_pending or state.mid_window:
            if self.stepping:
                where = "inside a step"
            elif state.mid_window:
                where = f"inside an accumulation window (accumulate={state.accumulate}: its gradients are pending)"
            else:
                where = "before this epoch's post_epoch"
            raise RuntimeError(
                f"no resumable checkpoint can be taken {where} (iteration {state.iteration}, {state}); "
                "take it from post_step, post_epoch or between iterate() calls, or call trainer.request_checkpoint()"
            )

    # ------------------------------------------------------------------ stops
    def defer_stop(self, status: Status) -> None:
        """End the run with ``status`` once the open accumulation window is complete (safe from a signal handler)."""
        if self._deferred is None or status is Status.INTERRUPTED:
            self._deferred = status

    def _end_deferred(self) -> None:
        status, self._deferred = self._deferred, None
        assert status is not None
        self._loop.request_stop(status)
        if status is Status.INTERRUPTED:
            self.queue_interrupt()

    # ------------------------------------------------------------------ stops agreed between ranks
    def settle(self, *, wait: bool) -> None:
        """A round of the stop vote (distributed runs): apply what the ranks agreed on, on every rank."""
        agreed = self._ranks.settle(wait=wait)
        if agreed == INTERRUPT:
            self._loop.request_stop(Status.INTERRUPTED)
            self.queue_interrupt()
        elif agreed == STOP:
            self._loop.request_stop(Status.STOPPED)

    def queue_interrupt(self) -> None:
        """Serve ``"interrupt"`` requests (a checkpointer's save) at the next safe point, when anything serves them."""
        if self._requests.servers("interrupt"):
            self._requests.pending["interrupt"] = None

    def _restore_rng(self) -> None:
        state, self._pending_rng = self._pending_rng, None
        if state is not None:
            for note in restore_rng(state):
                _log.warning("resume: %s", note)
