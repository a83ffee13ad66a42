"""The loop state machine: which lifecycle events one ``iterate()`` emits.

It is torch-free and calls a *driver* (the trainer's, ``trainers.engine.driver``) at each phase, so every ordering rule
is testable with a plain Python object. One ``iterate()`` runs at most one step, plus whatever events fall before or
after it::

    first call:        pre_training, pre_epoch, <step 1>
    mid-epoch:         <step>
    epoch's last step: <step>, post_epoch                 (eager: never deferred to the next call)
    run's last step:   <step>, post_epoch, post_training(status="completed")  -> returns False
    after the end:     nothing                                                 -> returns False

``<step>`` is the driver's ``run_step()`` (``pre_step``, ``step``, ``post_step``). Counters are advanced by the loop
before the event that starts them: ``state.epoch`` before ``pre_epoch``, ``state.iteration`` and
``state.epoch_iteration`` before ``pre_step``; so inside any handler they describe the current epoch and step.

``stop()`` is honoured at the next boundary -- after ``pre_training``, after ``pre_epoch`` (no step is taken), or
after the current step -- then pending requests are served, then ``post_epoch`` (if an epoch is open) and
``post_training(status="stopped")`` fire once each. :meth:`Loop.request_stop` is the same with another status
(``"interrupted"`` for a signal) and never emits by itself, so a signal handler may call it at any moment: a
request that lands between two ``iterate()`` calls is honoured at the start of the next one. A stop requested
during the run's final ``post_epoch`` changes nothing: the run completed. Outside ``iterate()`` (a GUI button
between ticks) ``stop()`` finishes at once. An exception anywhere emits
``exception(error=...)``, then ``post_training(status="failed")`` (``"interrupted"`` for ``KeyboardInterrupt``) unless
``post_training`` was already under way, then propagates; errors raised by those two emissions are attached to the
original as notes (and logged) instead of replacing it. Every handler of those two events runs even when one raises
(``lifecycle.bus``): a handler that raises in ``exception`` neither stops the crash dump of a handler after it nor
``post_training(status="failed")``; each of their failures becomes a note of its own on the original error.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Protocol

from lifecycle.errors import CallbackError, add_note
from lifecycle.events import Status
from lifecycle.state import State

__all__ = ["Driver", "Loop", "Phase"]

_log = logging.getLogger(__name__)


class Phase(str, Enum):
    """Where the loop is between two ``iterate()`` calls."""

    IDLE = "idle"  #: nothing emitted yet (or a restored run not yet restarted)
    BETWEEN_EPOCHS = "between_epochs"  #: training started, no epoch open
    IN_EPOCH = "in_epoch"  #: an epoch is open
    FAILING = "failing"  #: an error is being handled (the exception event); post_training(failed) follows
    FINISHING = "finishing"  #: post_training is being emitted (also while an error raised in it is handled)
    DONE = "done"  #: post_training was emitted (or the run was stopped before it started)


class Driver(Protocol):
    """What the loop calls at each phase; ``trainers.engine.driver.LoopDriver`` does it for a ``BaseTrainer``."""

    def begin_training(self) -> None:
        """Emit ``pre_training`` (``resumed=True`` after :meth:`Loop.restore`)."""

    def begin_epoch(self) -> None:
        """Prepare the epoch's data at ``state.epoch_iteration`` and emit ``pre_epoch``."""

    def run_step(self) -> None:
        """Fetch the next batch, emit ``pre_step``, step, emit ``step`` and ``post_step``."""

    def end_epoch(self) -> None:
        """Emit ``post_epoch``."""

    def end_training(self, status: Status) -> None:
        """Emit ``post_training(status=...)``."""

    def fail(self, error: BaseException) -> None:
        """Emit ``exception(error=...)``."""

    def serve_requests(self) -> None:
        """Serve queued on-demand requests (a checkpoint asked for by an interrupt) before the run is finished."""


class Loop:
    """The state machine. ``iterate(driver)`` is the only method that emits anything during normal operation."""

    __slots__ = (
        "_in_iterate",
        "paused",
        "pending_end",
        "phase",
        "resumed",
        "state",
        "status",
        "stop_requested",
        "stop_status",
    )

    def __init__(self, state: State) -> None:
        self.state = state
        self.phase = Phase.IDLE
        self.status: Status | None = None
        self.stop_requested = False
        self.stop_status = Status.STOPPED
        self.paused = False
        self.resumed = False
        self.pending_end = False
        self._in_iterate = False

    @property
    def finished(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def started(self) -> bool:
        return self.phase is not Phase.IDLE

    @property
    def in_iterate(self) -> bool:
        """True while ``iterate()`` runs (so a ``stop()`` from a handler is deferred to the next boundary)."""
        return self._in_iterate

    def restore(self, *, ended: bool = True) -> None:
        """Continue from the counters now in ``state`` (loaded from a checkpoint) on the next ``iterate()``:
        ``pre_training`` fires again (the driver passes ``resumed=True``), then ``pre_epoch`` for the open epoch if the
        checkpoint was taken mid-epoch, then the next step. No consumed step is repeated.

        At the run's end the counters say nothing is left to step; ``ended=False`` says the saved run had not yet
        emitted ``post_training`` (saved at its final ``post_epoch``, then killed), so the next ``iterate()`` emits
        ``pre_training(resumed=True)`` and ``post_training(status="completed")`` -- the end is not skipped."""
        if self.phase is not Phase.IDLE:
            raise RuntimeError(f"cannot restore counters once training has started (phase {self.phase.value})")
        self.pending_end = not ended
        state = self.state
        if state.epoch > 0 and state.epoch_iteration == 0:  # saved before the epoch's first step
            state.epoch -= 1
            state.epoch_iteration = state.iterations_per_epoch if state.epoch > 0 else 0
        self.resumed = state.iteration > 0

    def iterate(self, driver: Driver) -> bool:
        """Run one step with the events around it; return whether training continues."""
        if self.phase is Phase.DONE:
            return False
        if self.paused:
            return True
        if self._in_iterate:
            raise RuntimeError("iterate() called re-entrantly from inside a lifecycle handler")
        state = self.state
        self._in_iterate = True
        try:
            if self.stop_requested:  # requested between two calls (a signal): nothing more is stepped
                if self.phase is Phase.IDLE:
                    self.phase, self.status = Phase.DONE, self.stop_status
                    return False
                return self._finish(driver, self.stop_status)
            if self.phase is Phase.IDLE:
                if state.iteration >= state.max_iterations:  # a restored run with no step left
                    if not self.pending_end:  # ... that had ended: nothing to emit
                        self.phase, self.status = Phase.DONE, Status.COMPLETED
                        return False
                    self.phase = Phase.BETWEEN_EPOCHS
                    driver.begin_training()
                    return self._complete(driver, Status.COMPLETED)
                open_epoch = 0 < state.epoch_iteration < state.iterations_per_epoch
                self.phase = Phase.IN_EPOCH if open_epoch else Phase.BETWEEN_EPOCHS
                driver.begin_training()
                if open_epoch:
                    driver.begin_epoch()
                if self.stop_requested:
                    return self._finish(driver, self.stop_status)
            if self.phase is Phase.BETWEEN_EPOCHS:
                state.epoch += 1
                state.epoch_iteration = 0
                self.phase = Phase.IN_EPOCH
                driver.begin_epoch()
                if self.stop_requested:
                    return self._finish(driver, self.stop_status)
            state.iteration += 1
            state.epoch_iteration += 1
            driver.run_step()
            if state.epoch_iteration >= state.iterations_per_epoch:
                return self._end_epoch(driver)
            if self.stop_requested:
                return self._finish(driver, self.stop_status)
            return True
        except BaseException as error:
            self._fail(driver, error)
            raise
        finally:
            self._in_iterate = False

    @property
    def ending(self) -> bool:
        """True once the run is ending: an error being handled, ``post_training`` under way, or done."""
        return self.phase is Phase.DONE or self.phase is Phase.FINISHING or self.phase is Phase.FAILING

    def request_stop(self, status: Status = Status.STOPPED) -> None:
        """Ask the run to end with ``status`` at the next boundary; emits nothing (safe from a signal handler).
        An interrupt outranks a stop already requested, never the other way round."""
        if self.ending:
            return
        if not self.stop_requested or status is Status.INTERRUPTED:
            self.stop_status = status
        self.stop_requested = True

    def stop(self, driver: Driver) -> None:
        """Request a stop. Inside ``iterate()`` it is honoured at the next boundary; outside it finishes now."""
        if self.ending:
            return
        self.request_stop(Status.STOPPED)
        if self._in_iterate:
            return
        if self.phase is Phase.IDLE:  # never started: nothing to balance, nothing emitted
            self.phase, self.status = Phase.DONE, self.stop_status
            return
        self._in_iterate = True
        try:
            self._finish(driver, self.stop_status)
        except BaseException as error:
            self._fail(driver, error)
            raise
        finally:
            self._in_iterate = False

    def _end_epoch(self, driver: Driver) -> bool:
        state = self.state
        self.phase = Phase.BETWEEN_EPOCHS
        driver.end_epoch()
        if state.epoch >= state.max_epochs and state.epoch_iteration >= state.iterations_per_epoch:
            return self._complete(driver, Status.COMPLETED)
        if self.stop_requested:
            return self._complete(driver, self.stop_status)
        return True

    def _finish(self, driver: Driver, status: Status) -> bool:
        driver.serve_requests()  # e.g. the checkpoint an interrupt asked for: taken before post_epoch cuts the epoch
        if self.phase is Phase.IN_EPOCH:
            self.phase = Phase.BETWEEN_EPOCHS
            driver.end_epoch()
        return self._complete(driver, status)

    def _complete(self, driver: Driver, status: Status) -> bool:
        self.phase, self.status = Phase.FINISHING, status
        driver.end_training(status)
        self.phase = Phase.DONE
        return False

    def _fail(self, driver: Driver, error: BaseException) -> None:
        already_finishing = self.phase is Phase.FINISHING
        if self.state.iteration:
            add_note(error, f"stepbus: raised at iteration {self.state.iteration} ({self.state})")
        status = Status.INTERRUPTED if isinstance(error, KeyboardInterrupt) else Status.FAILED
        # while `exception` handlers run, FAILING says post_training follows; FINISHING that it was under way
        self.phase, self.status = (Phase.FINISHING if already_finishing else Phase.FAILING), status
        try:
            try:
                driver.fail(error)
            except BaseException as secondary:  # noqa: BLE001 - reported on the original, which must win
                _attach(error, "an 'exception' handler", secondary)
            self.phase = Phase.FINISHING
            if not already_finishing:
                try:
                    driver.end_training(status)
                except BaseException as secondary:  # noqa: BLE001
                    _attach(error, "a 'post_training' handler", secondary)
        finally:
            self.phase = Phase.DONE


def _attach(error: BaseException, where: str, secondary: BaseException) -> None:
    message = f"while handling this error, {where} also failed: {type(secondary).__name__}: {secondary}"
    _log.error(message)
    add_note(error, message)
    if isinstance(secondary, CallbackError):  # the later failures of the same emission (already logged by the bus)
        for later in secondary.also_failed:
            add_note(error, f"while handling this error, {where} also failed: {type(later).__name__}: {later}")
