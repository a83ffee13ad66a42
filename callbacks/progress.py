"""``ProgressBar``: a rich progress display (overall and per epoch), validation results and a final summary.

Events used: ``pre_training`` (starts the display), ``pre_epoch`` (resets the epoch bar), ``post_step`` (every step,
but throttled: the display is refreshed at most ``refresh_per_second`` times a second whatever the step or epoch
rate, and only a refresh reads the loss back -- one host copy from ``MetricFlow.of(trainer)``), ``post_epoch`` (a line
per epoch on a plain console), ``post_validation`` (what that validation produced: a small table of its metrics
with their best values, and a line naming its images; a validation with images only gets that line alone; a
validator other than the default ``val`` is named by its prefix) and ``post_training`` (stops the display and
prints the summary: status, iterations, time, the ``best/*`` metrics and the checkpoint files the checkpointer
published). The summary runs at priority ``FINAL``, after the checkpointer's end save, so the paths it shows are the
final ones. Writes that failed while the run went on (``trainer.state.failed_writes``, where a checkpointer or
logger with ``on_error="warn"`` records each one under its name) get a row per writer, and the summary's final line
says so: ``training completed with 164 failed writes: Checkpointer 164``.

On a terminal it draws ``rich.progress`` bars with iterations, it/s, ETA, the window's mean loss and any
``state.metrics`` keys listed in ``metrics``. In a Jupyter notebook (rich's ``console.is_jupyter``) it draws the same
bars as one output of the running cell, replaced in place at each refresh (``callbacks.progress_notebook``: no
ipywidgets needed), and prints the epoch lines, validation tables and summary below it as rich's HTML output; a cell
that steps the trainer (``iterate()``, ``run_for()``) gets a display of its own, refreshed when the cell ends. When
the console is neither (CI, a log file) it prints a plain line at most every ``plain_every`` seconds plus one per
epoch instead, and every line and table at its whole length, never wrapped or cut at the console's width
(``callbacks.console_width``), so a log shows whole checkpoint paths.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from callbacks.console_width import console_for, print_whole
from callbacks.loggers.metric_flow import MetricFlow
from callbacks.progress_notebook import CellMoment, NotebookDisplay, notebook_shell
from callbacks.validation_names import DEFAULT_PREFIX, best_key, metric_name
from lifecycle import Callback, Event, Priority, Status

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.loggers.metric_flow import Window
    from trainers.engine.trainer import BaseTrainer

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Show the run's progress on the console -- on a terminal or in a notebook, bars with it/s, ETA, the loss and the
    ``metrics`` keys; otherwise a plain line at most every ``plain_every`` seconds and one per epoch -- then each
    validation's results and a summary at the end.

    Args:
        metrics: extra ``state.metrics`` keys to show next to the loss (e.g. ``["lr", "val/psnr"]``).
        refresh_per_second: the most display refreshes per second (> 0).
        plain_every: seconds between plain lines when the console is neither a terminal nor a notebook's (> 0).
        console: where to draw; stdout by default (``callbacks.console_width.console_for()``).
    """

    priority = Priority.PROGRESS
    rank_zero_only = True  # one display: rank 0 of a distributed job

    def __init__(
        self,
        metrics: Sequence[str] = (),
        *,
        refresh_per_second: float = 10.0,
        plain_every: float = 10.0,
        console: Console | None = None,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        name = f"ProgressBar {self.state_key!r}"
        if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"{name}: metrics must be a list of metric names, got {metrics!r}")
        for label, value in (("refresh_per_second", refresh_per_second), ("plain_every", plain_every)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}: {label} must be a finite number > 0, got {value!r}")
        self.metrics = tuple(metrics)
        self.interval = 1.0 / float(refresh_per_second)
        self.plain_every = float(plain_every)
        self.console = console or console_for()
        self.refreshes = 0  #: how often the display was refreshed (throttled)
        self._progress: Progress | None = None
        self._notebook: NotebookDisplay | None = None  # the bars' display in a notebook (then not started)
        self._trainer: weakref.ref[BaseTrainer] | None = None  # for the refresh at a cell's end
        self._shown = -1  # the iteration the notebook display shows
        self._overall: TaskID | None = None
        self._epoch: TaskID | None = None
        self._window: Window | None = None
        self._next = 0.0
        self._started = 0.0
        self._loss: float | None = None

    def priority_of(self, event: Event) -> int:
        # the summary names the final checkpoint, written by the checkpointer's post_training
        return Priority.FINAL if event is Event.POST_TRAINING else self.priority

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._close_notebook()  # a restored run starts again: its display continues in the running cell
        self._window = MetricFlow.of(trainer).window()
        self._started = time.perf_counter()
        shell = notebook_shell(self.console)
        live = shell is not None or self.console.is_terminal
        self._next = self._started + (self.interval if live else self.plain_every)
        if not live:
            return
        state = trainer.state
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self._overall = self._progress.add_task(
            "training", total=state.max_iterations, completed=state.iteration, rate="", info=""
        )
        self._epoch = self._progress.add_task("epoch", total=state.iterations_per_epoch, rate="", info="")
        if shell is None:
            self._progress.start()
            return
        self._trainer = weakref.ref(trainer)  # weak: a trainer dropped before its end leaves no display behind
        self._notebook = NotebookDisplay(self.console, shell, self._on_cell)
        self._show(trainer)

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._progress is not None and self._epoch is not None:
            state = trainer.state
            self._progress.update(
                self._epoch,
                description=f"epoch {state.epoch}/{state.max_epochs}",
                completed=state.epoch_iteration,
                total=state.iterations_per_epoch,
            )

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._throttled_refresh(trainer)

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._progress is None:
            self._refresh(trainer)
        else:
            self._throttled_refresh(trainer)  # short epochs must not redraw the bars each time
            if self._notebook is None:
                return  # a terminal's bars say it all; a notebook keeps a line per epoch below its display
        state = trainer.state
        loss = MetricFlow.of(trainer).epoch_means().get("epoch/loss")
        shown = f"  epoch/loss {loss:.5g}" if loss is not None else ""
        line = f"epoch {state.epoch}/{state.max_epochs} done at iteration {state.iteration}{shown}"
        self.console.print(line, soft_wrap=True)

    def post_validation(
        self,
        trainer: BaseTrainer,
        *,
        metrics: Mapping[str, float],
        prefix: str | None = None,
        best: Mapping[str, float] | None = None,
        images: Mapping[str, Any] | None = None,
        image_paths: Mapping[str, Path] | None = None,
        **payload: Any,
    ) -> None:
        if not isinstance(prefix, str):  # an older or custom validator: its metrics' namespace
            first = next(iter(metrics), DEFAULT_PREFIX)
            prefix = first.split("/", 1)[0] if "/" in first else DEFAULT_PREFIX
        name = "validation" if prefix == DEFAULT_PREFIX else f"validation {prefix!r}"
        heading = f"{name} at iteration {trainer.state.iteration}"
        shown = _images_line(images or {}, image_paths or {})
        if not metrics:  # nothing to tabulate: one line, never an empty table
            self.console.print(f"{heading}: {shown or 'no metrics and no images'}", markup=False, soft_wrap=True)
            return
        self.console.print(heading, markup=False, soft_wrap=True)
        table = Table(show_edge=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("best", justify="right")
        for key, value in metrics.items():
            where = best_key(prefix, metric_name(prefix, key))
            best_value = (best or {}).get(where, trainer.state.metrics.get(where))
            table.add_row(key, _fmt(value), _fmt(best_value) if best_value is not None else "")
        print_whole(self.console, table)
        if shown:
            self.console.print(shown, markup=False, soft_wrap=True)  # paths and names as they are, on one line

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        if self._progress is not None:
            self._refresh(trainer)  # the bars' final state (200/200), whatever the throttle said
        progress, self._progress = self._progress, None
        if self._notebook is not None:
            self._close_notebook()  # the display keeps the final state; nothing to stop
        elif progress is not None:
            progress.stop()
        state = trainer.state
        seconds = time.perf_counter() - self._started
        table = Table(title=f"training {status}", show_header=False, show_edge=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        if status is Status.STOPPED and trainer.stop_reason:
            table.add_row("stopped by", trainer.stop_reason)
        table.add_row("iterations", f"{state.iteration}/{state.max_iterations}")
        table.add_row("epochs", f"{state.epoch}/{state.max_epochs}")
        table.add_row("time", f"{seconds:.1f} s")
        for key, value in sorted(state.metrics.items()):
            if isinstance(key, str) and key.startswith("best/"):
                table.add_row(key, _fmt(value))
        for role, saved in state.saved_checkpoints().items():
            table.add_row(f"checkpoint/{role}", str(saved.path))
        failed = {writer: count for writer, count in sorted(state.failed_writes.items()) if count}
        for writer, count in failed.items():
            table.add_row(f"failed writes/{writer}", str(count))
        print_whole(self.console, table)  # not on a terminal: whole checkpoint paths, whatever their length
        if failed:
            total = sum(failed.values())
            each = ", ".join(f"{writer} {count}" for writer, count in failed.items())
            line = f"training {status} with {total} failed write{'' if total == 1 else 's'}: {each}"
            self.console.print(line, markup=False, soft_wrap=True, highlight=False)

    # ------------------------------------------------------------------ drawing
    def _throttled_refresh(self, trainer: BaseTrainer) -> None:
        now = time.perf_counter()
        if now < self._next:
            return  # the hot path: one clock read and one comparison
        self._next = now + (self.interval if self._progress is not None else self.plain_every)
        self._refresh(trainer)

    def _refresh(self, trainer: BaseTrainer) -> None:
        self.refreshes += 1
        state = trainer.state
        means = self._window.take() if self._window is not None else {}
        loss = means.get("train/loss")
        if loss is not None:
            self._loss = loss
        parts = [f"loss {self._loss:.5g}"] if self._loss is not None else []
        parts += [f"{key} {_fmt(state.metrics[key])}" for key in self.metrics if key in state.metrics]
        info = "  ".join(parts)
        rate = means.get("time/iter_ms")
        rate_text = f"{1000.0 / rate:,.0f} it/s" if rate else ""
        progress = self._progress
        if progress is not None and self._overall is not None and self._epoch is not None:
            progress.update(self._overall, completed=state.iteration, rate=rate_text, info=info)
            progress.update(self._epoch, completed=state.epoch_iteration)
            if self._notebook is not None:
                self._show(trainer)
            else:
                progress.refresh()
        elif means:
            self.console.print(
                f"epoch {state.epoch}/{state.max_epochs}  iteration {state.iteration}/{state.max_iterations}  "
                f"{rate_text}  {info}".rstrip(),
                soft_wrap=True,
            )

    def _show(self, trainer: BaseTrainer) -> None:
        if self._notebook is not None and self._progress is not None:
            self._notebook.show(self._progress.get_renderable())
            self._shown = trainer.state.iteration

    def _on_cell(self, moment: CellMoment) -> None:
        """A notebook cell starts: its first step refreshes, so a cell that steps shows its display from the start.
        A cell has run: if it stepped the trainer since the last refresh, show where it got to."""
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None:  # dropped before its post_training
            self._close_notebook()
        elif moment == "start":
            self._next = 0.0
        elif self._progress is not None and trainer.state.iteration != self._shown:
            self._refresh(trainer)
            self._next = time.perf_counter() + self.interval

    def _close_notebook(self) -> None:
        notebook, self._notebook, self._trainer = self._notebook, None, None
        if notebook is not None:
            notebook.close()


def _images_line(images: Mapping[str, Any], paths: Mapping[str, Path]) -> str:
    """``images rgb, depth in runs/a/render``: the names of a validation's images and where they were written."""
    if not images:
        return ""
    names = ", ".join(str(name) for name in images)
    folders = {Path(path).parent for path in paths.values()}
    return f"images {names} in {folders.pop()}" if len(folders) == 1 else f"images {names}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}" if math.isfinite(value) else str(value)
    return str(value)
