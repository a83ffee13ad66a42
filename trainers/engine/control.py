"""How a trainer is driven and told to end: ``iterate``/``train``/``run_for``, ``pause``/``resume``, ``stop``, and
SIGINT/SIGTERM.

Every stop goes through the loop (``lifecycle.Loop``): honoured at the next boundary, with ``post_epoch`` and
``post_training`` emitted exactly once. In a distributed run a stop is a wish the ranks vote on
(``trainers.distributed.stop_vote``), so every rank stops at the same iteration; a failed collective becomes a
``PeerFailure`` naming the lost ranks.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from lifecycle import Loop, State, Status
from trainers.distributed.ranks import INTERRUPT, STOP, Ranks
from trainers.engine.driver import LoopDriver
from trainers.engine.signals import TrainingInterrupted, graceful_signals

__all__ = ["Control"]


class Control:
    """The driving and stopping of one trainer (see the module docstring)."""

    __slots__ = ("_driver", "_loop", "_ranks", "_state", "interrupted_by", "stop_reason")

    def __init__(self, loop: Loop, driver: LoopDriver, ranks: Ranks, state: State) -> None:
        self._loop, self._driver, self._ranks, self._state = loop, driver, ranks, state
        #: the signal that interrupted ``train()``, if one did
        self.interrupted_by: int | None = None
        #: why the run was stopped: the first reason given to ``stop()``
        self.stop_reason: str | None = None

    def iterate(self) -> bool:
        self._ranks.check_open(self._state.iteration)
        try:
            return self._loop.iterate(self._driver)
        except Exception as error:
            self._raise_peer_failure(error)
            raise

    def train(self, *, handle_signals: bool) -> Status | None:
        self._ranks.check_open(self._state.iteration)
        loop, driver = self._loop, self._driver
        loop.paused = False
        try:
            with graceful_signals(self._on_signal) if handle_signals else nullcontext():
                while loop.iterate(driver):
                    if loop.paused:
                        return None
        except Exception as error:
            self._raise_peer_failure(error)
            raise
        return loop.status

    def run_for(self, seconds: float) -> bool:
        self._ranks.check_open(self._state.iteration)
        deadline = time.perf_counter() + seconds
        loop, driver = self._loop, self._driver
        while loop.iterate(driver):
            if loop.paused or time.perf_counter() >= deadline:
                return True
        return False

    def stop(self, reason: str | None = None) -> None:
        if reason is not None and self.stop_reason is None and not self._loop.ending:
            self.stop_reason = reason
        if self._ranks.votes:
            if not self._loop.ending:
                self._ranks.want(STOP)  # the ranks agree on it at the next vote round (at a window's end)
            return
        if self._state.mid_window and not self._loop.ending:
            self._driver.defer_stop(Status.STOPPED)  # the window's gradients are applied first
            return
        self._loop.stop(self._driver)

    def _on_signal(self, signum: int) -> None:
        """The signal handler: flags only (it may run between any two bytecodes), except a second signal."""
        if self.interrupted_by is not None:
            raise TrainingInterrupted(signum)
        self.interrupted_by = signum
        if self._loop.ending:
            return  # the run is ending anyway: let post_training finish (a second signal still aborts it)
        if self._ranks.votes:
            self._ranks.want(INTERRUPT)  # the ranks agree on it; the save follows then
            return
        if self._state.mid_window:
            self._driver.defer_stop(Status.INTERRUPTED)  # the save follows at the window's end
            return
        self._loop.request_stop(Status.INTERRUPTED)
        self._driver.queue_interrupt()

    def _raise_peer_failure(self, error: Exception) -> None:
        """In a job, when ``error`` is a failed collective: raise the ``PeerFailure`` naming the peers that are
        gone. Otherwise return, and the caller re-raises ``error`` itself."""
        failure = self._ranks.peer_failure(error, f"at iteration {self._state.iteration} ({self._state})")
        if failure is not None:
            raise failure from error
