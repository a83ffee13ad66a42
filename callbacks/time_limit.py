"""``TimeLimit``: stop training gracefully once a budget of training time is spent, counted across resumes.

Events used: ``pre_training`` (starts the clock; a resumed run whose budget is already spent stops at once, before
any step), ``post_step`` and ``post_epoch`` (one clock read each: stop when the budget is spent) and
``post_training`` (freezes the count and publishes ``time_limit/elapsed_s`` in ``trainer.state.metrics``).

Stopping calls ``trainer.stop()``: the run ends after the current step with ``post_epoch`` and
``post_training(status="stopped")``, so a Checkpointer with ``at_end`` saves the stopping iteration and the run can
be resumed from it exactly. The reason is kept in :attr:`TimeLimit.reason` and logged (logger
``stepbus.time_limit``), as EarlyStopping does.

The time counted is wall time from ``pre_training`` to the end of the run, summed over the processes that resumed
it: the elapsed seconds are in :meth:`TimeLimit.state_dict`, read at the moment a checkpoint is saved, so a run
resumed from a checkpoint (``stepbus train --resume auto`` after a cluster job's wall-time limit) continues the same
budget. Time after a killed run's last checkpoint is not in any checkpoint and is not counted. A paused trainer's
pause counts (it is wall time), the time to build the trainer and load the checkpoint does not.

In a distributed run the clock is the bus's (``trainer.bus.clock``): the time the ranks agreed on in the stop vote,
which every rank reads with the same value at the same point, so every rank decides to stop at the same iteration
(and the stop itself is voted on, so the ranks end together whatever happens).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lifecycle import Callback, Priority, Schedule, Status

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["DURATION_FORMS", "TimeLimit", "format_duration", "parse_duration"]

_log = logging.getLogger("stepbus.time_limit")

#: the accepted forms of a duration, in words (the end of every refusal)
DURATION_FORMS = (
    "a number of seconds > 0 (90, 1.5), or a string of one or more '<N><unit>' parts with unit s, sec, min, h or d "
    "('90s', '30min', '2h', '1d', '1h30min')"
)

_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|min|sec|s)"
_WHOLE = re.compile(rf"^\s*(?:{_PART}\s*)+$", re.IGNORECASE)
_PARTS = re.compile(_PART, re.IGNORECASE)


def _part_seconds(number: str, unit: str) -> float:
    """One ``<N><unit>`` part in seconds, read by the schedules' parser (``"30min"`` -> 1800.0); a day is 24 h."""
    if float(number) == 0.0:
        return 0.0  # "1h0min": a zero part adds nothing (the total must still be > 0)
    unit = unit.lower()
    schedule = Schedule.parse(f"{number}h" if unit == "d" else f"{number}{unit}")
    assert schedule.unit == "s", schedule  # a wall-time period, by the pattern above
    assert schedule.period is not None
    return schedule.period * (24.0 if unit == "d" else 1.0)


def parse_duration(value: object, owner: str = "duration") -> float:
    """``value`` in seconds: a number of seconds, a ``timedelta``, or a string such as ``"90s"``, ``"30min"``,
    ``"2h"``, ``"1d"``, ``"1h30min"``. Zero, negatives, NaN, infinity and anything else are a ``ValueError`` that
    names ``owner``, the value and the valid forms."""

    def refuse(why: str) -> ValueError:
        return ValueError(f"{owner}: {why}, got {value!r}; valid forms: {DURATION_FORMS}")

    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise refuse(f"a duration must be a number of seconds or a string, not {type(value).__name__}")
    elif isinstance(value, str):
        if _WHOLE.match(value) is None:
            raise refuse("not a duration")
        seconds = sum(_part_seconds(number, unit) for number, unit in _PARTS.findall(value))
    else:
        seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise refuse("a duration must be finite")
    if seconds <= 0:
        raise refuse("a duration must be > 0 (to train without a limit, leave it out)")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400.0`` -> ``"1h 30min"``, ``90.0`` -> ``"1min 30s"``, ``1.25`` -> ``"1.25s"``: for messages."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")) if n]
    return " ".join(parts)


class TimeLimit(Callback):
    """Stop training once ``max_time`` of training time is spent, counting the time of earlier processes of a
    resumed run (the budget of a cluster job that resubmits itself with ``--resume auto``).

    The clock is read once per step (``post_step``) and once per epoch (``post_epoch``); when the elapsed time
    reaches ``max_time`` the callback calls ``trainer.stop()``, so the run ends after that step with
    ``post_training(status="stopped")`` (a Checkpointer's ``at_end`` save included). A run resumed with its budget
    already spent stops in ``pre_training``, before any step. A fresh run (not restored from a checkpoint) starts at
    zero, whatever state this instance carried. In a config, ``trainer.max_time: 2h`` adds this callback.

    Args:
        max_time: the budget: seconds (``5400``), a ``timedelta``, or a string of ``<N><unit>`` parts with unit s,
            sec, min, h or d (``"90s"``, ``"30min"``, ``"2h"``, ``"1d"``, ``"1h30min"``); > 0.
    """

    priority = Priority.METRICS  # a stop decision, like early stopping

    def __init__(
        self,
        max_time: float | str | timedelta,
        *,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        name = f"TimeLimit {self.state_key!r}"
        #: the budget in seconds
        self.max_time = parse_duration(max_time, f"{name}: max_time")
        #: seconds counted before the current process's ``pre_training`` (from the checkpoint), or in total once
        #: the run ended
        self.carried = 0.0
        #: why training was stopped, and at which iteration (``None`` while it runs)
        self.reason: str | None = None
        self.stopped_iteration: int | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._anchor: float | None = None  # the clock at this process's pre_training; None outside a run
        self._loaded = False  # the state came from load_state_dict (a restore) and not yet from a run

    @property
    def elapsed(self) -> float:
        """The training time counted so far, in seconds (earlier processes of a resumed run included)."""
        if self._anchor is None:
            return self.carried
        return self.carried + max(0.0, self._clock() - self._anchor)

    @property
    def remaining(self) -> float:
        """Seconds left of the budget (0 once it is spent)."""
        return max(0.0, self.max_time - self.elapsed)

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, *, resumed: bool = False, **_: Any) -> None:
        resumed = resumed or trainer.resumed_from is not None
        if not (resumed and self._loaded):
            if self.carried and not resumed:
                _log.info(
                    "TimeLimit %r: a fresh run starts its budget at zero (this instance had counted %s)",
                    self.state_key,
                    format_duration(self.carried),
                )
            self.carried = 0.0
        self._loaded = False
        self.reason = self.stopped_iteration = None
        self._clock = trainer.bus.clock  # the ranks' agreed clock in a distributed run
        self._anchor = self._clock()
        if self.carried >= self.max_time:
            self._stop(
                trainer,
                f"the time limit {format_duration(self.max_time)} was already spent when the run resumed "
                f"({format_duration(self.carried)} of training); no step is taken. Raise max_time to train on",
                level=logging.WARNING,
            )

    def post_step(self, trainer: BaseTrainer, **_: Any) -> None:
        self._check(trainer)

    def post_epoch(self, trainer: BaseTrainer, **_: Any) -> None:
        self._check(trainer)

    def post_training(self, trainer: BaseTrainer, *, status: Status, **_: Any) -> None:
        self.carried, self._anchor = self.elapsed, None  # frozen: the end save and later state_dict() agree
        trainer.state.metrics["time_limit/elapsed_s"] = self.carried

    def _check(self, trainer: BaseTrainer) -> None:
        if self.reason is not None or self._anchor is None:
            return
        elapsed = self.carried + self._clock() - self._anchor
        if elapsed >= self.max_time:
            self._stop(
                trainer,
                f"the time limit {format_duration(self.max_time)} is spent ({format_duration(elapsed)} of training)",
                level=logging.INFO,
            )

    def _stop(self, trainer: BaseTrainer, reason: str, *, level: int) -> None:
        iteration = trainer.state.iteration
        self.reason, self.stopped_iteration = reason, iteration
        _log.log(level, "TimeLimit %r: stopping at iteration %d: %s", self.state_key, iteration, reason)
        trainer.stop(f"{self.state_key}: {reason}")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            elapsed = float(state["elapsed_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"TimeLimit {self.state_key!r}: not a TimeLimit state dict (expected the key elapsed_s, a number of "
                f"seconds): {type(exc).__name__}: {exc}"
            ) from None
        if not math.isfinite(elapsed) or elapsed < 0:
            raise ValueError(f"TimeLimit {self.state_key!r}: elapsed_s must be a finite number >= 0, got {elapsed!r}")
        self.carried, self._anchor, self._loaded = elapsed, None, True

    def __repr__(self) -> str:
        return (
            f"<TimeLimit state_key={self.state_key!r} max_time={format_duration(self.max_time)} "
            f"elapsed={format_duration(self.elapsed)}>"
        )
