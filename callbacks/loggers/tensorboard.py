"""``TensorBoardLogger``: scalars, images, text, the config and the run's hyper-parameters as TensorBoard events.

Events used: ``pre_training`` (opens ``torch.utils.tensorboard.SummaryWriter`` under ``<run_dir>/tb``; after a
resume with ``purge_step`` = the next iteration, so events a crashed run wrote beyond its checkpoint are discarded and
no step is written twice or goes backwards), ``post_step`` on an iteration or time schedule (the window means of the
step outputs from ``MetricFlow.of(trainer)`` -- one host copy per write -- plus the numbers callbacks published in
``state.metrics``, e.g. ``lr``, ``grad_norm``), ``post_epoch`` (``epoch/*`` means, ``time/epoch_s``, then a flush;
with an epoch schedule such as ``"1ep"`` only on it, with the published numbers and no step rows at all),
``post_validation`` (that validation's ``metrics`` and ``best`` values, and its images under the validator's prefix)
and ``post_training`` (hyper-parameters with the final metrics, then close, whatever the status). Values given to
``trainer.log(name, value)`` are written when logged: numbers and one-element tensors as scalars, ``HxWxC`` tensors
as images, strings as text (see :mod:`callbacks.loggers.backend`). Every step is ``state.iteration``.

The events are built and written on the logger's own thread (``background=True``, the default; see
:mod:`callbacks.loggers.background`), flushed to the event file at each epoch's end, when a checkpoint is taken and
at the end of the run.

A backend failure (a directory that cannot be created, a full disk) follows ``on_error``: ``"disable"`` (default:
warn once, stop logging, keep training), ``"warn"`` (warn at each failure and keep trying) or ``"raise"``. A full
disk is told in plain words (``no space left on device (0 bytes free on /mnt)``) and only that way: the traceback
TensorBoard's writer thread would print is kept off stderr (:mod:`callbacks.loggers.event_files`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callbacks.helpers import output_dir
from callbacks.loggers.backend import BackendLogger, image_prefix
from callbacks.loggers.event_files import add_scalars, check_writer, open_summary_writer
from callbacks.loggers.failure_policy import BackendGuard, OnError, require_package
from callbacks.loggers.logged import Kind, pixels, scalar
from callbacks.loggers.values import as_markdown, flat_scalars
from lifecycle import Priority, ScheduleSpec, Status

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

    from trainers.engine.trainer import BaseTrainer

__all__ = ["TensorBoardLogger"]

_log = logging.getLogger("stepbus.tensorboard")


class TensorBoardLogger(BackendLogger):
    """Write the run as TensorBoard event files (in ``<run_dir>/tb`` by default): step and epoch scalars, each
    validation's metrics and images, the values given to ``trainer.log``, the config, and the hyper-parameters with
    the final metrics.

    Args:
        dir: the log directory; ``None`` for ``<trainer.run_dir>/tb``.
        every: the schedule of the step scalars (``"50it"``, ``"10min"``, ``"never"``), or of the epoch scalars
            when it counts epochs (``"1ep"``: epoch means only, no step scalars); validation values come at their
            event.
        log_images: write validation images (``add_image``).
        background: build and write the events on the logger's own thread (``False``: on the training thread).
        on_error: ``"disable"``, ``"warn"`` or ``"raise"`` (see the module docstring).
    """

    priority = Priority.LOGGING

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        *,
        every: ScheduleSpec = "50it",
        log_images: bool = True,
        background: bool = True,
        on_error: OnError = "disable",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key, background=background)
        name = self.owner
        if not isinstance(log_images, bool):
            raise ValueError(f"{name}: log_images must be true or false, got {log_images!r}")
        self.directory = Path(dir) if dir is not None else None
        self.log_images, self.on_error = log_images, on_error
        self._guard = BackendGuard(name, on_error, _log, lambda: self.directory)
        self._writer: SummaryWriter | None = None

    def setup(self, trainer: BaseTrainer) -> None:
        require_package("tensorboard", "tensorboard", self.owner)
        self.directory = output_dir(self, self.directory, trainer, "tb")
        super().setup(trainer)

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, *, resumed: bool = False, **payload: Any) -> None:
        self.open_rows(trainer)
        step = trainer.state.iteration

        def open_writer() -> None:
            directory = self.directory
            assert directory is not None  # set by setup
            # after a resume, events at or beyond the next iteration (written after the checkpoint) are dropped
            self._writer = open_summary_writer(directory, purge_step=step + 1 if resumed else None)
            if trainer.config is not None:
                self._writer.add_text("config", as_markdown(trainer.config), step)

        self._run("open the event file", open_writer)

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        values = self.step_row(trainer) if self._writer is not None else None
        if values is not None:
            self._scalars(values, trainer.state.iteration)

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._writer is None:
            return
        self._scalars(self.epoch_row(trainer), trainer.state.iteration)
        self.flush()

    def post_validation(
        self,
        trainer: BaseTrainer,
        *,
        metrics: Mapping[str, float],
        best: Mapping[str, float] | None = None,
        images: Mapping[str, Any] | None = None,
        prefix: str | None = None,
        **payload: Any,
    ) -> None:
        if self._writer is None:
            return
        step = trainer.state.iteration
        self._scalars(self.validation_values(metrics, best), step)  # this validation's values, no other's
        writer = self._writer
        if self.log_images and images and writer is not None:
            folder = image_prefix(prefix, metrics)
            arrays = {f"{folder}/{name}": pixels(image, str(name)) for name, image in images.items()}  # host copies

            def write_images() -> None:
                for tag, array in arrays.items():
                    writer.add_image(tag, array, step, dataformats="HWC")

            self._write("write images", write_images)

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        if self._writer is not None:
            self._drain(close=True)
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._guard.raised:  # a write failed and failed the run: close what is open, write nothing more
            with contextlib.suppress(Exception):
                writer.close()
            return
        state = trainer.state
        hparams: dict[str, Any] = {"max_epochs": state.max_epochs, "iterations_per_epoch": state.iterations_per_epoch}
        hparams.update(flat_scalars(trainer.config or {}))
        # under hparam/: add_hparams also writes these as scalars, which must not repeat the val/* time series
        final = {f"hparam/{k}": v for k, v in self.final_numbers(trainer).items()}
        final["hparam/iterations"] = float(state.iteration)

        def finish() -> None:
            try:
                assert self.directory is not None  # set by setup
                writer.flush()  # raises what the writer thread met, if anything
                check_writer(writer, self.directory)  # add_hparams opens a second writer: not onto a full disk
                writer.add_hparams(hparams, final, run_name=".", global_step=state.iteration)
                writer.add_text("status", str(status), state.iteration)
            finally:
                writer.close()

        self._run("write the final hyper-parameters and close", finish)

    # ------------------------------------------------------------------ helpers
    def _is_open(self) -> bool:
        return self._writer is not None

    def state_dict(self) -> dict[str, Any]:
        """Also puts every event logged so far in the event file: a checkpoint is being taken (on the writer thread,
        a failure is reported at the logger's next event, not in the checkpoint's)."""
        writer, writes = self._writer, self._writes
        if writer is not None and writes is not None:
            writes.submit("flush", writer.flush, report=False)
        return super().state_dict()

    def _write_logged(self, name: str, kind: Kind, value: Any, step: int) -> None:
        writer = self._writer
        if writer is None:
            return
        # read now, on the training thread: the step may change a tensor after it was logged
        if kind == "scalar":
            number = scalar(value)
            self._write(f"write {name!r}", lambda: writer.add_scalar(name, number, step))
        elif kind == "image":
            array = pixels(value, name)
            self._write(f"write {name!r}", lambda: writer.add_image(name, array, step, dataformats="HWC"))
        else:
            text = str(value)
            self._write(f"write {name!r}", lambda: writer.add_text(name, text, step))

    def flush(self) -> None:
        """Write every event logged so far to the event file now (the writer thread's queue, then the event
        writer's own), and wait for it."""
        writer = self._writer
        if writer is not None:
            self._write("flush", writer.flush)
            self._drain()

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        writer = self._writer
        if writer is None:
            return

        def write() -> None:
            add_scalars(writer, values, step)  # one event for the row

        self._write("write scalars", write)

    def _disabled_now(self) -> None:
        self._writer = None
