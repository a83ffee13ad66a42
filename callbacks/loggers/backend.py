"""``BackendLogger``: what the TensorBoard and W&B loggers share as callbacks (the base class, not a logger).

* **Rows on a schedule.** ``every`` paces the step rows -- the window means of the step outputs on ``post_step``
  (``"50it"``, ``"10min"``) -- or, when it counts epochs (``"1ep"``, Wisp's default; ``"2ep"``, ``at=["3ep"]``),
  the epoch rows: then no step row is written at all (``post_step`` is not even connected) and each scheduled
  epoch's row carries the epoch means (``epoch/*``), ``time/epoch_s`` and the numbers callbacks published
  (``lr`` ...). With a step schedule every epoch gets its row; ``"never"`` writes no step rows.
* **The rows themselves** are computed here for every logger: :meth:`BackendLogger.open_rows` (from each
  ``pre_training``) opens the step window on ``MetricFlow.of(trainer)``, :meth:`BackendLogger.step_row` and
  :meth:`BackendLogger.epoch_row` return what a step or epoch row holds, and ``pre_epoch`` starts the epoch's clock.
* **Validation per validator.** ``post_validation`` writes the ``metrics`` and ``best`` of its payload -- that
  validation's own values -- and the images under the validator's ``prefix``. The keys written are remembered (and
  kept in the checkpoint), so the step rows never repeat a validator's values as "published" numbers.
* **``trainer.log`` values.** ``setup`` registers a sink (``trainer.log_sink``; ``teardown`` removes it): each value's
  kind is checked when it is logged (:mod:`callbacks.loggers.logged`; a value the logger cannot write is a
  ``TypeError`` there), and it is written at once through the subclass while the backend is open (before
  ``pre_training`` and after the end: not written, with one warning).
* **Writes off the training thread.** With ``background=True`` (the default) a subclass hands each row to
  :meth:`BackendLogger._write`, which queues it for the logger's :class:`~callbacks.loggers.background.BackgroundWriter`
  (flushed at each epoch's end by the subclass, when a checkpoint is taken -- :meth:`BackendLogger.state_dict` --
  at ``post_training`` and in ``teardown``); ``background=False`` writes at once, on the training thread.
* **The ``on_error`` state** (``disabled``, ``failures``), carried across a resume; each failure the run survives
  is also counted in ``trainer.state.failed_writes`` under the logger's ``state_key`` (from ``setup`` on).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from callbacks.loggers.background import BackgroundWriter
from callbacks.loggers.failure_policy import BackendGuard
from callbacks.loggers.logged import Kind, kind_of
from callbacks.loggers.metric_flow import MetricFlow
from callbacks.loggers.values import numbers, published, validation_numbers
from lifecycle import Callback, Event, HandlerSpec, Schedule, ScheduleSpec

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.loggers.metric_flow import Window
    from trainers.engine.trainer import BaseTrainer

__all__ = ["BackendLogger", "image_prefix"]


def image_prefix(prefix: object, metrics: Mapping[str, Any]) -> str:
    """Where a validation's images go: the validator's ``prefix`` from the payload, else the first path part of its
    first metric (``render/psnr`` -> ``render``), else ``"val"``."""
    if isinstance(prefix, str) and prefix.strip("/"):
        return prefix.strip("/")
    first = next(iter(metrics), None)
    return first.split("/", 1)[0] if isinstance(first, str) and "/" in first else "val"


class BackendLogger(Callback):
    """Base of the TensorBoard, W&B, MLflow and CSV loggers (see the module docstring). Subclasses set
    ``self._guard`` in ``__init__`` and implement :meth:`_is_open` and :meth:`_write_logged`; those that hold
    something open (an event file, a run) implement :meth:`_disabled_now`."""

    _guard: BackendGuard
    rank_zero_only = True  # one writer: rank 0 of a distributed job
    scheduled: tuple[str, ...] | None = ("post_step",)  # `every` paces the step rows; the other events always run
    #: lists of dicts given to ``trainer.log`` are tables (W&B) rather than refused
    accepts_tables = False

    def __init__(
        self, *, every: ScheduleSpec, priority: int | None, state_key: str | None, background: bool = True
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key)
        #: how messages name this logger: ``"TensorBoardLogger 'TensorBoardLogger'"``
        self.owner = f"{type(self).__name__} {self.state_key!r}"
        if not isinstance(background, bool):
            raise ValueError(f"{self.owner}: background must be true or false, got {background!r}")
        #: whether writes run on the logger's own thread (see :mod:`callbacks.loggers.background`)
        self.background = background
        self._writes: BackgroundWriter | None = None
        try:
            schedule = Schedule.parse(every)
        except ValueError as exc:
            raise ValueError(f"{self.owner}: {exc}") from None
        #: True when ``every`` counts epochs: one row per scheduled epoch and no step rows
        self.epoch_rows = schedule.unit == "ep"
        if self.epoch_rows:
            self.scheduled = ("post_epoch",)
        self._validation_keys: set[str] = set()
        self._remove_sink: Callable[[], None] | None = None
        self._warned_closed = False
        self._window: Window | None = None
        self._epoch_start = 0.0

    def handlers(self) -> Iterator[HandlerSpec]:
        for event, method, schedule in super().handlers():
            if event is Event.POST_STEP and self.epoch_rows:
                continue  # epoch rows only: nothing to do per step
            yield event, method, schedule

    def setup(self, trainer: BaseTrainer) -> None:
        """Register the ``trainer.log`` sink and count failures in the trainer's state (subclasses call this last,
        once nothing else can refuse)."""
        self._remove_sink = trainer.log_sink(self._on_log, name=f"{self.state_key}.log")
        self._guard.count_in(trainer.state, self.state_key)
        if self._writes is not None:
            self._writes.wait()  # set up again: what an earlier trainer queued goes first
        self._writes = BackgroundWriter(self._guard, f"stepbus-{self.state_key}", enabled=self.background)

    def teardown(self, trainer: BaseTrainer) -> None:
        self._drain(close=True)
        self._guard.count_in(None)
        remove, self._remove_sink = self._remove_sink, None
        if remove is not None:
            remove()

    # ------------------------------------------------------------------ the on_error state
    @property
    def disabled(self) -> bool:
        """True once a failure disabled the logger (``on_error="disable"``)."""
        return self._guard.disabled

    @property
    def failures(self) -> int:
        """Backend failures so far (carried across a resume)."""
        return self._guard.failures

    # ------------------------------------------------------------------ what the rows hold
    def open_rows(self, trainer: BaseTrainer) -> None:
        """At ``pre_training``: the trainer's metric flow, created now so that it sees every epoch from the first,
        and this logger's step window on it (none with epoch rows only)."""
        flow = MetricFlow.of(trainer)
        self._window = None if self.epoch_rows else flow.window()

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._epoch_start = time.perf_counter()

    def step_row(self, trainer: BaseTrainer) -> dict[str, Any] | None:
        """A step row: the window means since the previous one (one host copy) and the published numbers; ``None``
        without a step window."""
        if self._window is None:
            return None
        values: dict[str, Any] = self._window.take()
        values.update(self.published_numbers(trainer))
        return values

    def epoch_row(self, trainer: BaseTrainer) -> dict[str, Any]:
        """An epoch row: the epoch means, ``time/epoch_s``, and with epoch rows only the published numbers."""
        values: dict[str, Any] = MetricFlow.of(trainer).epoch_means()
        values["time/epoch_s"] = time.perf_counter() - self._epoch_start
        if self.epoch_rows:  # the epoch is the only row: what callbacks published goes in it
            values.update(self.published_numbers(trainer))
        return values

    def published_numbers(self, trainer: BaseTrainer) -> dict[str, float]:
        """The numbers callbacks published (``lr``, ``grad_norm`` ...), less every validator's values."""
        keys = self._validation_keys
        return {k: v for k, v in published(trainer.state.metrics).items() if k not in keys}

    def validation_values(self, metrics: Mapping[str, Any], best: Mapping[str, Any] | None) -> dict[str, float]:
        """One validation's row: its ``metrics`` and its ``best`` values (remembered as validation keys)."""
        values = {**numbers(metrics), **numbers(best or {})}
        self._validation_keys.update(values)
        return values

    def final_numbers(self, trainer: BaseTrainer) -> dict[str, float]:
        """The latest validation values in ``state.metrics``: ``val/*``, ``best/*`` and every key a validation wrote
        (``render/psnr`` ...)."""
        keys = self._validation_keys
        final = validation_numbers(trainer.state.metrics)
        final.update({k: v for k, v in numbers(trainer.state.metrics).items() if k in keys})
        return final

    # ------------------------------------------------------------------ writing
    def flush(self) -> None:
        """Write everything logged so far now, and wait for it (a notebook about to read the files, a test). The
        logger also does this at each epoch's end, when a checkpoint is taken and at the end of the run."""
        self._drain()

    def _run(self, what: str, action: Callable[[], None]) -> bool:
        """Run one backend call now, on the training thread, under the ``on_error`` policy (opening, closing, what
        the row needs before it is handed over). Returns False when it failed or the logger is disabled (then
        :meth:`_disabled_now` has run)."""
        if self._guard.run(what, action):
            return True
        if self._guard.disabled:
            self._disabled_now()
        return False

    def _write(self, what: str, action: Callable[[], None]) -> bool:
        """Hand one write to the background writer (or make it now with ``background=False``) under the
        ``on_error`` policy; ``what`` completes "could not ...". ``action`` runs on another thread: it reads only
        what it was given -- plain numbers, pixels, strings -- never the trainer or a tensor the step may change.
        Returns False when the logger is disabled (then :meth:`_disabled_now` has run)."""
        writes = self._writes
        if writes is None:  # not set up: nothing can be open to write to
            return False
        if writes.submit(what, action):
            return True
        if self._guard.disabled:
            self._disabled_now()
        return False

    def _drain(self, *, close: bool = False) -> bool:
        """Wait for the queued writes and apply the policy to their failures (an epoch's end, the run's end);
        ``close``: then end the writer's thread (the run's end). Returns False when the logger is (now) disabled."""
        writes = self._writes
        if writes is None or (writes.close() if close else writes.flush()):
            return not self._guard.disabled
        if self._guard.disabled:
            self._disabled_now()
        return False

    def _disabled_now(self) -> None:
        """A failure disabled the logger: let go of what is open (an event file, a run). Called again for each
        write refused afterwards, so it must do nothing the second time."""

    # ------------------------------------------------------------------ trainer.log
    def _on_log(self, name: str, value: Any, iteration: int) -> None:
        kind = kind_of(name, value, self.owner, tables=self.accepts_tables)  # refused here, before any read
        if not self._is_open():
            if not self._warned_closed and not self._guard.disabled:
                self._warned_closed = True
                self._guard.warn(
                    f"trainer.log({name!r}, ...) at iteration {iteration} while the logger has nothing open (it "
                    "writes from pre_training to the end of the run); not written"
                )
            return
        self._write_logged(name, kind, value, iteration)

    def _is_open(self) -> bool:
        """Whether the backend can write now (an event file, a run)."""
        raise NotImplementedError

    def _write_logged(self, name: str, kind: Kind, value: Any, step: int) -> None:
        """Write one ``trainer.log`` value of a checked ``kind`` at ``step``, under the ``on_error`` policy."""
        raise NotImplementedError

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Also waits for the queued writes: a checkpoint is being taken, and every row logged before it goes to
        the backend first (a failure they met is reported at the logger's next event)."""
        if self._writes is not None:
            self._writes.wait()
        return {"failures": self.failures, "validation_keys": sorted(self._validation_keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._guard.failures = int(state.get("failures", 0))
        self._validation_keys.update(str(k) for k in state.get("validation_keys", ()))
