"""``CSVLogger``: the run's numbers as one CSV file (``<run_dir>/metrics.csv``), for a spreadsheet, pandas or a
shell script -- no server, no package.

The file has the columns ``step``, ``epoch``, then one per metric in the order the metrics first appeared, and one
row per write (:mod:`callbacks.loggers.csv_table` says how the file is kept valid). The rows hold the step, epoch
and validation scalars the TensorBoard logger writes, with the same names and numbers
(:mod:`callbacks.loggers.backend`): a step row on the ``every`` schedule (the window means of the step outputs from
``MetricFlow.of(trainer)``, ``time/*``, the numbers callbacks published such as ``lr``), an epoch row at each
``post_epoch`` (``epoch/*``, ``time/epoch_s``; with an epoch schedule such as ``"1ep"`` only on it, with the
published numbers, and no step rows), a validation row at each ``post_validation`` (that validation's ``metrics``
and ``best``), and a row of the numbers given to ``trainer.log`` at one step (several calls at the same step share
it). ``step`` is ``state.iteration``, ``epoch`` ``state.epoch``.

``trainer.log`` strings and images are not written: a CSV cell holds a number. Each such name is told once in a
warning rather than refused, because the same call is right for the TensorBoard and W&B loggers of the same run; a
value no logger can write is refused with the loggers' common ``TypeError`` (:mod:`callbacks.loggers.logged`).

Rows are appended in batches, at each epoch's end, after each validation, when a checkpoint is taken
(``state_dict()``, called while the checkpoint is built, writes the queued rows and records how many rows the file
holds and the step of the last), at the end of the run whatever its status, and every 256 rows. A resumed run
(``pre_training(resumed=True)``) first cuts the file back to what its checkpoint recorded -- rows a killed run wrote
after its checkpoint and a partial last line go -- with an atomic rewrite, then appends: every row is in the file
once, in order.

A failed write (a folder where the file should be, a full disk) follows ``on_error``: ``"disable"`` (default: warn
once, stop logging, keep training), ``"warn"`` (warn at each failure; the rows of a failed write are lost, the file
stays valid) or ``"raise"``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callbacks.loggers.backend import BackendLogger
from callbacks.loggers.csv_table import CsvTable, Resumed
from callbacks.loggers.failure_policy import BackendGuard, OnError
from callbacks.loggers.logged import Kind, scalar
from lifecycle import Priority, ScheduleSpec, Status
from trainers.checkpoint.atomic import remove_dead_temporaries

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle import State
    from trainers.engine.trainer import BaseTrainer

__all__ = ["CSVLogger"]

_log = logging.getLogger("stepbus.csv")


class CSVLogger(BackendLogger):
    """Write the run's numbers to a CSV file (``<run_dir>/metrics.csv`` by default): step rows, epoch rows,
    validation rows and the numbers given to ``trainer.log``, one column per metric; resumed runs continue it with
    every step exactly once.

    Args:
        path: the file; a relative path is taken from ``trainer.run_dir``.
        every: the schedule of the step rows (``"50it"``, ``"10min"``, ``"never"``), or of the epoch rows when it
            counts epochs (``"1ep"``: epoch means only, no step rows); validation rows come at their event.
        on_error: ``"disable"``, ``"warn"`` or ``"raise"`` (see the module docstring).
    """

    priority = Priority.LOGGING

    def __init__(
        self,
        path: str | os.PathLike[str] = "metrics.csv",
        *,
        every: ScheduleSpec = "50it",
        on_error: OnError = "disable",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key)
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip() or str(path).endswith(("/", os.sep)):
            raise ValueError(f"{self.owner}: path must be a file name such as 'metrics.csv', got {path!r}")
        self.path = Path(path)
        self.on_error = on_error
        self._guard = BackendGuard(self.owner, on_error, _log, lambda: self.path)
        self._table = CsvTable(self.path)
        self._state: State | None = None
        self._started = False  # pre_training ran and post_training has not: rows are taken
        self._ready = False  # the file was started (or cut back for a resume): rows may be written to it
        self._resumed = False
        self._record: tuple[int, int] | None = None  # (rows, step) of the checkpoint loaded
        self._logged: tuple[int, int, dict[str, float]] | None = None  # trainer.log numbers of one step
        self._unwritable: set[str] = set()  # trainer.log names that were not numbers (told once each)

    def setup(self, trainer: BaseTrainer) -> None:
        if not self.path.is_absolute():
            if trainer.run_dir is None:
                raise ValueError(
                    f"{self.owner}: path {str(self.path)!r} is relative and the trainer has no run_dir; give the "
                    f"trainer run_dir=... (the file is then <run_dir>/{self.path}) or an absolute path"
                )
            self.path = Path(trainer.run_dir) / self.path
        self._table = CsvTable(self.path)
        self._state = trainer.state
        super().setup(trainer)

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, *, resumed: bool = False, **payload: Any) -> None:
        self.open_rows(trainer)
        self._resumed, self._started, self._ready = resumed, True, False
        self._flush()  # starts the file: cut back to the checkpoint, or new

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        values = self.step_row(trainer) if self._taking() else None
        if values is not None:
            self._add(trainer, values)

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if not self._taking():
            return
        self._add(trainer, self.epoch_row(trainer))
        self._flush()

    def post_validation(
        self,
        trainer: BaseTrainer,
        *,
        metrics: Mapping[str, float],
        best: Mapping[str, float] | None = None,
        **payload: Any,
    ) -> None:
        if not self._taking():
            return
        self._add(trainer, self.validation_values(metrics, best))  # this validation's values, no other's
        self._flush()

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        if self._started and not self._guard.raised:  # a write that failed the run: write nothing more
            self._flush()
        self._started = False

    def flush(self) -> None:
        """Write the queued rows now (rather than at the next epoch's end, validation, checkpoint or 256 rows)."""
        if self._started and not self._guard.raised:
            self._flush()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Also writes the queued rows: a checkpoint is being taken, and its record must match the file."""
        if self._started and not self._guard.raised:
            self._flush()
        table = self._table
        return {**super().state_dict(), "rows": table.rows, "step": table.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "rows" in state and "step" in state:
            self._record = (int(state["rows"]), int(state["step"]))

    # ------------------------------------------------------------------ helpers
    def _taking(self) -> bool:
        return self._started and not self._guard.disabled

    def _is_open(self) -> bool:
        return self._taking()

    def _add(self, trainer: BaseTrainer, values: dict[str, float]) -> None:
        self._commit_logged()
        if values and self._table.add(trainer.state.iteration, trainer.state.epoch, values):
            self._flush()

    def _write_logged(self, name: str, kind: Kind, value: Any, step: int) -> None:
        if kind != "scalar":
            if name not in self._unwritable:
                self._unwritable.add(name)
                self._guard.warn(
                    f"trainer.log({name!r}, ...) sent {'a string' if kind == 'text' else f'an {kind}'}; a CSV cell "
                    "holds a number, so this name is not written (the TensorBoard and W&B loggers write it)"
                )
            return

        def note() -> None:
            number = scalar(value)  # a tensor's one host read
            logged = self._logged
            if logged is not None and (logged[0] != step or name in logged[2]):
                self._commit_logged()
                logged = None
            if logged is None:
                epoch = self._state.epoch if self._state is not None else 0
                logged = self._logged = (step, epoch, {})
            logged[2][name] = number

        self._run(f"read {name!r}", note)

    def _commit_logged(self) -> None:
        """Queue the row of the ``trainer.log`` numbers of one step (before any other row, and at each flush)."""
        logged, self._logged = self._logged, None
        if logged is not None and self._table.add(*logged):
            self._flush()

    def _flush(self) -> None:
        """Write the queued rows under the ``on_error`` policy; the first call of a run starts the file."""
        self._commit_logged()
        if self._guard.disabled:
            return
        table = self._table

        def write() -> None:
            if not self._ready:
                self._start_file()
                self._ready = True
            note = table.flush()
            if note is not None:
                self._guard.warn(note)

        if not self._run("write the rows", write):
            table.discard()  # lost: the file keeps its complete rows and stays valid

    def _start_file(self) -> None:
        """A new file, or the previous run's cut back to the checkpoint this run resumed from."""
        path, table = self.path, self._table
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(path.parent, re.escape(path.name))  # left by a process killed mid-rewrite
        if not self._resumed:
            earlier = table.start()
            if earlier:
                _log.warning("%s: replaced %s, which held %d rows of an earlier run", self.owner, path, earlier)
            return
        rows, step = self._record if self._record is not None else (None, None)
        assert self._state is not None  # set by setup
        self._report(table.resume(rows=rows, step=step, iteration=self._state.iteration))

    def _report(self, resumed: Resumed) -> None:
        if resumed.missing and self._record is not None and self._record[0] > 0:
            self._guard.warn(f"{self.path} is missing; the {self._record[0]} rows before the resume are lost")
        elif resumed.mismatch is not None:
            self._guard.warn(f"{self.path} does not match the checkpoint: {resumed.mismatch}")
        if resumed.dropped or resumed.torn:
            _log.info(
                "%s: resumed %s at row %d; dropped %d rows written after the checkpoint%s",
                self.owner,
                self.path,
                resumed.kept,
                resumed.dropped,
                f" and a partial last line ({resumed.torn} bytes)" if resumed.torn else "",
            )
