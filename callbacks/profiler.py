"""``Profiler``: ``torch.profiler`` traces of a few steps on a schedule, and a table of what every handler cost.

Events used: ``pre_training`` (starts ``torch.profiler.profile`` with a ``torch.profiler.schedule`` of ``skip_first``,
``wait``, ``warmup``, ``active`` steps, ``repeat`` times), ``post_step`` (``prof.step()``: one profiler step per
iteration) and ``post_training`` (stops it, whatever the status, then prints and writes the handler table). The
handlers run at priority -3000, after every built-in callback (the checkpointer and the progress summary included),
so a profiled step holds every other ``post_step`` handler and the table every other ``post_training`` handler.

**What a profiled step spans.** ``prof.step()`` is called at the end of each iteration's ``post_step``, so a profiler
step runs from the end of one iteration to the end of the next: fetching the batch, ``pre_step``, the forward pass,
backward, the ``step`` handlers, the optimizer step and the ``post_step`` handlers -- and where the iteration opens an
epoch, the previous epoch's ``post_epoch`` (a validation there included) and this one's ``pre_epoch``. The schedule
counts the iterations this process runs: ``ProfilerStep#0`` is the first (iteration 1 of a fresh run, iteration k+1 of
a run resumed at k), so a resumed run profiles per its schedule again from where it resumed. There is nothing to save
in a checkpoint.

**Traces** go to ``<run_dir>/profile`` (or ``dir``) as ``rank0.<time_ns>.pt.trace.json`` (``.gz`` with ``gzip``):
the Chrome trace format that TensorBoard's profiler plugin (``tensorboard --logdir <run_dir>``) and the Perfetto UI
open. Each is exported under a ``.partial`` name and renamed when complete, so a run killed while writing leaves no
half-written trace under a trace's name. A trace is written when a cycle's last active step ends; a run that ends
(completed, stopped, interrupted or failed) while a cycle is recording writes what that cycle recorded, and one that
ends while warming up writes nothing. Once the schedule is over (``repeat`` cycles; ``repeat=0`` repeats until the
run ends) the profiler is stopped and the steps cost nothing more. CPU activity is recorded, and CUDA's when the
trainer's device is a CUDA device. Only rank 0 profiles (``rank_zero_only``): the ranks of a data-parallel job run
the same step.

**The handler table** (``handler_table=True``): from the moment the callback is added to the trainer until its own
``post_training``, the bus times every handler (:meth:`lifecycle.Bus.time_handlers`; a handler skipped by its
schedule is not counted). The table covers the whole run, not only the profiled steps, so the call counts are the
run's (a handler on ``"3it"`` shows ``n // 3`` calls). Per handler: calls, total ms, mean µs and its total as a
percentage of the steps' time, which is measured from the start of each ``pre_step`` to the end of its
``post_step``; the row ``engine step`` is what the engine itself spent in those spans (forward, backward, the
optimizer), so the callbacks' share is visible beside it. A handler's time includes the events it emits itself (a
validator's validation inside its ``post_step``). Rows are printed largest first on ``console`` (lines off a terminal
are never wrapped) and written to ``<dir>/handlers.csv``. ``trainer.bus`` is timed by one timer at a time: with
``handler_table=True`` a second one on the same trainer is refused when it is added.

A failed write (a full disk) follows ``on_error`` like a logger's: ``"disable"`` (default: warn, stop profiling,
keep training), ``"warn"`` or ``"raise"``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.profiler as tp
from rich.console import Console
from rich.table import Table

from callbacks.console_width import console_for, print_whole
from callbacks.helpers import output_dir
from callbacks.loggers.failure_policy import BackendGuard, OnError
from lifecycle import Callback, HandlerTimes, Status

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["TABLE_COLUMNS", "Profiler"]

_log = logging.getLogger("stepbus.profiler")

#: the columns of ``handlers.csv``, in order
TABLE_COLUMNS = ("kind", "handler", "event", "calls", "total_ms", "mean_us", "max_us", "percent_of_steps")

#: after every built-in callback, the final ones (Priority.FINAL, -2000) included
_LAST = -3000

_RECORDING = (tp.ProfilerAction.RECORD, tp.ProfilerAction.RECORD_AND_SAVE)


def _never(step: int) -> tp.ProfilerAction:
    return tp.ProfilerAction.NONE


class Profiler(Callback):
    """Profile a few training steps with ``torch.profiler`` (Chrome traces for TensorBoard or Perfetto) and time
    every callback's handlers over the run (a table on the console and in ``handlers.csv``).

    Args:
        dir: where traces and ``handlers.csv`` go; ``None`` for ``<trainer.run_dir>/profile``.
        wait, warmup, active, repeat, skip_first: the ``torch.profiler.schedule``, in iterations: skip
            ``skip_first``, then each cycle idles ``wait`` steps, warms up ``warmup`` (recorded, then dropped) and
            records ``active`` (>= 1) into one trace; ``repeat`` cycles (0: until the run ends).
        record_shapes, profile_memory, with_stack: what ``torch.profiler.profile`` records besides the ops: input
            shapes, tensor memory, Python stacks (each makes traces larger and steps slower).
        gzip: write ``*.pt.trace.json.gz``.
        handler_table: time every handler and print and write the table (see the module docstring).
        on_error: ``"disable"``, ``"warn"`` or ``"raise"`` for a trace or table that cannot be written.
        console: where the table is printed; stdout by default (``callbacks.console_width.console_for()``).
    """

    priority = _LAST
    rank_zero_only = True  # one profile: rank 0's

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        *,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        repeat: int = 1,
        skip_first: int = 0,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
        gzip: bool = False,
        handler_table: bool = True,
        on_error: OnError = "disable",
        console: Console | None = None,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        self.owner = owner = f"Profiler {self.state_key!r}"
        counts = {"wait": wait, "warmup": warmup, "active": active, "repeat": repeat, "skip_first": skip_first}
        for label, value in counts.items():
            least = 1 if label == "active" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                why = {
                    "active": " (the steps each trace records; to profile nothing, leave the Profiler out)",
                    "repeat": " (0 repeats the cycle until the run ends)",
                }.get(label, "")
                raise ValueError(f"{owner}: {label} must be an int >= {least}, got {value!r}{why}")
        flags = {
            "record_shapes": record_shapes,
            "profile_memory": profile_memory,
            "with_stack": with_stack,
            "gzip": gzip,
            "handler_table": handler_table,
        }
        for label, flag in flags.items():
            if not isinstance(flag, bool):
                raise ValueError(f"{owner}: {label} must be true or false, got {flag!r}")
        self.wait, self.warmup, self.active, self.repeat, self.skip_first = wait, warmup, active, repeat, skip_first
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.gzip, self.handler_table = gzip, handler_table
        self.console = console or console_for()
        self._given = Path(dir) if dir is not None else None
        self.directory: Path | None = self._given
        self._guard = BackendGuard(owner, on_error, _log, lambda: self.directory)
        #: the traces written so far: path -> the iterations it recorded
        self.traces: dict[Path, tuple[int, ...]] = {}
        self.times: HandlerTimes | None = None  #: the bus's handler times while this callback is added
        self._prof: tp.profile | None = None
        self._schedule: Callable[[int], tp.ProfilerAction] = _never
        self._step = 0  # the profiler step the current iteration is
        self._first = 0  # the iteration the run stood at when profiling started
        self._recorded: list[int] = []  # iterations recorded into the trace in progress
        self._end: int | None = None  # the profiler step at which the schedule is over (None: never)
        self._error: Exception | None = None  # a write's failure to raise once torch's profiler is through

    # ------------------------------------------------------------------ added to and removed from a trainer
    def setup(self, trainer: BaseTrainer) -> None:
        self.directory = output_dir(self, self._given, trainer, "profile")
        self._guard.count_in(trainer.state, self.state_key)
        if self.handler_table:
            try:
                self.times = trainer.bus.time_handlers()
            except RuntimeError as exc:
                raise RuntimeError(f"{self.owner}: {exc}; or give this Profiler handler_table=False") from None

    def teardown(self, trainer: BaseTrainer) -> None:
        self._close()
        if self.times is not None:
            self.times.stop()
        self._guard.count_in(None)

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        activities = [tp.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(tp.ProfilerActivity.CUDA)
        self._schedule = tp.schedule(
            wait=self.wait, warmup=self.warmup, active=self.active, repeat=self.repeat, skip_first=self.skip_first
        )
        cycle = self.wait + self.warmup + self.active
        self._end = self.skip_first + self.repeat * cycle if self.repeat else None
        self._step, self._recorded, self._first = 0, [], trainer.state.iteration
        self._prof = tp.profile(
            activities=activities,
            schedule=self._schedule,
            on_trace_ready=self._write_trace,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        self._prof.__enter__()  # type: ignore[no-untyped-call]  # torch leaves it unannotated

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        prof = self._prof
        if prof is None:
            return
        if self._schedule(self._step) in _RECORDING:
            self._recorded.append(trainer.state.iteration)
        self._step += 1
        with warnings.catch_warnings():  # each cycle is exported as it ends: that a new one starts empty is the point
            warnings.filterwarnings("ignore", message="Warning: Profiler clears events at the end of each cycle")
            prof.step()  # writes the trace when this iteration ended a cycle's active steps
        over = self._end is not None and self._step >= self._end
        if over or self._guard.disabled or self._error is not None:
            self._close()  # the schedule is over (or writing failed): no more per-step work

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        iteration = trainer.state.iteration
        if (
            self._prof is not None
            and iteration == self._first + self._step + 1
            and self._schedule(self._step) in _RECORDING
        ):
            self._recorded.append(iteration)  # a step that failed before its post_step: recorded as far as it ran
        self._close()  # a trace in progress is finished with the steps it recorded
        times = self.times
        if times is None:
            return
        times.stop()
        rows = table_rows(times, exclude=f"{self.state_key}.post_training")
        title = f"handler times over {times.steps.count} steps (training {status})"
        print_whole(self.console, _rich_table(rows, title))
        for path, iterations in self.traces.items():
            span = f"{iterations[0]}-{iterations[-1]}" if iterations else "none"
            self.console.print(f"profile trace {path}: iterations {span}", markup=False, soft_wrap=True)
        directory = self.directory
        assert directory is not None  # set by setup
        self._guard.run("write the handler table", lambda: _write_atomic(directory / "handlers.csv", _csv(rows)))

    # ------------------------------------------------------------------ the trace
    def _close(self) -> None:
        """Stop the profiler (a trace being recorded is written, one warming up is not); then raise a write's
        failure that ``on_error="raise"`` kept until torch's profiler was through with it."""
        prof, self._prof = self._prof, None
        if prof is not None:
            prof.__exit__(None, None, None)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_trace(self, prof: tp.profile) -> None:
        directory = self.directory
        assert directory is not None  # set by setup
        suffix = ".gz" if self.gzip else ""
        stem = f"rank0.{time.time_ns()}.pt.trace"
        final, partial = directory / f"{stem}.json{suffix}", directory / f"{stem}.partial.json{suffix}"

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(partial))
            os.replace(partial, final)

        try:
            written = self._guard.run("write a profiler trace", write)
        except Exception as exc:  # noqa: BLE001 - on_error="raise": raised by _close, not inside torch's step()
            self._error, written = exc, False
        if written:
            self.traces[final] = tuple(self._recorded)
        else:
            with contextlib.suppress(OSError):  # nothing there, or no folder at all
                partial.unlink(missing_ok=True)
        self._recorded = []


# ---------------------------------------------------------------------- the handler table
def table_rows(times: HandlerTimes, *, exclude: str = "") -> list[dict[str, Any]]:
    """The rows of the handler table, as ``handlers.csv`` holds them (columns :data:`TABLE_COLUMNS`): the engine's
    own step time, then each handler by total time, largest first (two handlers of one callback on one event are told
    apart by their functions' names), then the steps' total."""
    steps = times.steps
    handlers = sorted((r for r in times.handlers() if r.name != exclude), key=lambda r: -r.total_ns)
    rows: list[dict[str, Any]] = []
    if steps.count:
        dispatched = sum(d.total_ns for d in times.events() if d.event in ("pre_step", "step", "post_step"))
        engine = max(steps.total_ns - dispatched, 0)
        name = "engine step (forward, backward, optimizer)"
        rows.append(_row("engine", name, "", steps.count, engine, None, steps.total_ns))
    named = Counter((r.name, r.event) for r in handlers)
    for r in handlers:
        name = r.name if named[r.name, r.event] == 1 else f"{r.name} ({r.function})"  # one callback, two handlers
        rows.append(_row("handler", name, r.event, r.calls, r.total_ns, r.max_ns, steps.total_ns))
    if steps.count:
        name = "steps (pre_step to post_step)"
        rows.append(_row("steps", name, "", steps.count, steps.total_ns, None, steps.total_ns))
    return rows


def _row(
    kind: str, name: str, event: str, calls: int, total_ns: int, max_ns: int | None, steps_ns: int
) -> dict[str, Any]:
    share = 100.0 * total_ns / steps_ns if steps_ns else None
    return {
        "kind": kind,
        "handler": name,
        "event": event,
        "calls": calls,
        "total_ms": round(total_ns / 1e6, 3),
        "mean_us": round(total_ns / calls / 1e3, 2) if calls else 0.0,
        "max_us": round(max_ns / 1e3, 2) if max_ns is not None else "",
        "percent_of_steps": round(share, 2) if share is not None else "",
    }


def _rich_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, show_edge=False)
    table.add_column("handler")
    table.add_column("event")
    for heading in ("calls", "total ms", "mean µs", "% of steps"):
        table.add_column(heading, justify="right")
    for row in rows:
        share = row["percent_of_steps"]
        cells = (f"{row['total_ms']:.3f}", f"{row['mean_us']:.1f}", f"{share:.1f}" if share != "" else "")
        table.add_row(row["handler"], row["event"], str(row["calls"]), *cells, end_section=row["kind"] == "engine")
    return table


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` under a temporary name, then renamed: never a half-written table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
