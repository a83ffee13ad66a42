"""The trainer's counters: the single source of truth for "where are we" (never kept in a GUI).

It also counts the writes that failed without failing the run (``failed_writes``): a checkpointer or a logger told
to warn and go on records each failure with :meth:`State.count_failed_write` under its own name, and whatever
reports the run's outcome (the progress summary, ``metrics.json``) reads the counts here -- so that no callback
imports another. The counts are saved with the counters (one ``failed_writes/<writer>`` entry each, only when
there are any) and restored on resume, so a resumed run reports the failures of the runs it continues."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SavedCheckpoint", "State"]

_COUNTERS = ("epoch", "iteration", "epoch_iteration", "max_epochs", "iterations_per_epoch")
#: the prefix of a failed-write count in :meth:`State.state_dict`
FAILED_WRITES = "failed_writes/"


@dataclass(frozen=True, slots=True)
class SavedCheckpoint:
    """A checkpoint file a callback wrote: what loggers, summaries and GUIs show or upload."""

    path: Path  #: the file itself (not a ``last.pt`` link to it)
    iteration: int  #: ``state.iteration`` when it was taken
    reason: str  #: why: ``"schedule"``, ``"end"``, ``"request"``, ``"interrupt"`` ...
    score: float | None = None  #: the monitored metric's value, when the checkpointer ranks by one


@dataclass(slots=True)
class State:
    """Counters of one training run.

    * ``epoch``: 1-based current epoch; 0 before training starts.
    * ``iteration``: 1-based global count of steps started; after N steps it is N. It never repeats or goes back.
    * ``epoch_iteration``: 1-based step inside the current epoch; 0 before the epoch's first step.
    * ``max_epochs``, ``iterations_per_epoch``: the run's length.
    * ``optimizer_step``: optimizer steps so far (withheld ones included); with ``accumulate`` = 1 it equals
      ``iteration`` after each step, with ``accumulate`` = N it advances once per window of N iterations (and at each
      epoch's end: a window never crosses an epoch).
    * ``metrics``: latest values published by callbacks (``"val/psnr"``, ``"lr"`` ...).
    * ``last_checkpoint``, ``best_checkpoint``: the newest checkpoint written in this process and the best-ranked
      one (:class:`SavedCheckpoint`), published by a checkpointer; ``None`` until it saves one.
    * ``failed_writes``: writes that failed while the run went on, by writer (``{"Checkpointer": 3}``); see the
      module docstring.
    """

    max_epochs: int = 1
    iterations_per_epoch: int = 1
    epoch: int = 0
    iteration: int = 0
    epoch_iteration: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    accumulate: int = 1
    optimizer_step: int = 0
    last_checkpoint: SavedCheckpoint | None = None
    best_checkpoint: SavedCheckpoint | None = None
    #: epochs of this run had different lengths (the data was reloaded): the position is checked loosely on load
    varied_epochs: bool = False
    failed_writes: dict[str, int] = field(default_factory=dict)

    @property
    def max_iterations(self) -> int:
        """Total steps of a run that is not stopped early."""
        return self.max_epochs * self.iterations_per_epoch

    @property
    def optimizer_steps_per_epoch(self) -> int:
        """Accumulation windows per epoch: the last one may be shorter."""
        return -(-self.iterations_per_epoch // self.accumulate)

    @property
    def max_optimizer_steps(self) -> int:
        """Total optimizer steps of a run that is not stopped early."""
        return self.max_epochs * self.optimizer_steps_per_epoch

    @property
    def mid_window(self) -> bool:
        """True after an iteration that did not complete its accumulation window (gradients are pending)."""
        step = self.epoch_iteration
        return self.accumulate > 1 and 0 < step < self.iterations_per_epoch and step % self.accumulate != 0

    def saved_checkpoints(self) -> dict[str, SavedCheckpoint]:
        """The published checkpoints by role, ``{"last": ..., "best": ...}``, leaving out those not written."""
        saved = {"last": self.last_checkpoint, "best": self.best_checkpoint}
        return {role: checkpoint for role, checkpoint in saved.items() if checkpoint is not None}

    def count_failed_write(self, writer: str) -> int:
        """Record one failed write of ``writer`` (a callback's ``state_key``); returns its count so far."""
        if not isinstance(writer, str) or not writer:
            raise ValueError(f"a failed write needs the writer's name (a non-empty string), got {writer!r}")
        count = self.failed_writes.get(writer, 0) + 1
        self.failed_writes[writer] = count
        return count

    @property
    def epoch_finished(self) -> bool:
        """True once the current epoch's last step has been taken."""
        return self.epoch_iteration >= self.iterations_per_epoch

    def state_dict(self) -> dict[str, int]:
        """The counters as plain ints. The metrics are not among them: a checkpoint keeps the published ones in its
        metadata, and ``restore`` puts them back from there."""
        counters = {name: int(getattr(self, name)) for name in (*_COUNTERS, "optimizer_step")}
        if self.varied_epochs:
            counters["varied_epochs"] = 1
        counters.update({FAILED_WRITES + writer: count for writer, count in self.failed_writes.items()})
        return counters

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore counters saved by :meth:`state_dict`; a missing or non-integer key is a ``ValueError``."""
        missing = [name for name in _COUNTERS if name not in state]
        if missing:
            raise ValueError(f"state dict is missing counters {missing}; expected keys {list(_COUNTERS)}")
        values: dict[str, int] = {}
        for name in _COUNTERS:
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"state counter {name!r} must be a non-negative int, got {value!r}")
            values[name] = value
        if values["max_epochs"] < 1 or values["iterations_per_epoch"] < 1:
            raise ValueError(f"max_epochs and iterations_per_epoch must be >= 1, got {values}")
        if values["epoch_iteration"] > values["iterations_per_epoch"] or values["epoch"] > values["max_epochs"]:
            raise ValueError(f"inconsistent counters {values}: position lies beyond the run's length")
        varied = bool(state.get("varied_epochs", 0))
        expected = max(values["epoch"] - 1, 0) * values["iterations_per_epoch"] + values["epoch_iteration"]
        if varied:  # earlier epochs had other lengths: each had at least one step
            expected = max(values["iteration"], max(values["epoch"] - 1, 0) + values["epoch_iteration"])
        if values["iteration"] != expected or (values["epoch"] == 0 and values["epoch_iteration"] != 0):
            raise ValueError(
                f"inconsistent counters {values}: after {values['epoch']} epoch(s) at step {values['epoch_iteration']} "
                f"the iteration must be {expected if values['epoch'] else 0}"
            )
        # written before accumulation existed: one optimizer step per iteration
        optimizer_step = state.get("optimizer_step", values["iteration"])
        if isinstance(optimizer_step, bool) or not isinstance(optimizer_step, int):
            raise ValueError(f"state counter 'optimizer_step' must be an int, got {optimizer_step!r}")
        if not 0 <= optimizer_step <= values["iteration"]:
            iteration = values["iteration"]
            raise ValueError(f"inconsistent counters: optimizer_step={optimizer_step} after {iteration} iterations")
        failed = _failed_writes(state)
        for name, value in values.items():
            setattr(self, name, value)
        self.optimizer_step = optimizer_step
        self.varied_epochs = varied
        self.failed_writes = failed

    def __str__(self) -> str:
        return (
            f"epoch {self.epoch}/{self.max_epochs}, step {self.epoch_iteration}/{self.iterations_per_epoch}, "
            f"iteration {self.iteration}"
        )


def _failed_writes(state: dict[str, int]) -> dict[str, int]:
    """The ``failed_writes/<writer>`` entries of a state dict, checked: each a non-negative int."""
    failed: dict[str, int] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not key.startswith(FAILED_WRITES):
            continue
        writer = key[len(FAILED_WRITES) :]
        if not writer or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"state entry {key!r} must name a writer and count its failed writes (an int >= 0), got {value!r}"
            )
        failed[writer] = value
    return failed
