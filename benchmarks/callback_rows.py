"""The overhead case's rows for the callbacks that neither the default set nor the scheduled group covers: each
added alone to the bare engine (:class:`~benchmarks.workload.NullStepTrainer`), once idle -- registered, nothing due
-- and once firing on every step, so a row's overhead over the group's baseline is that callback's cost.

* ``CSVLogger``: ``every="never"`` (its handlers run, no step row is written) against ``every="1it"`` (a row formatted
  and buffered every step, appended at each flush) and its default ``"50it"``.
* ``MLflowLogger``: the same three, into the default SQLite store under the run directory (``stepbus[mlflow]``; the
  rows are left out when it is not installed).
* ``TimeLimit``: a budget that is never spent: the one clock read per step is all it does until it stops the run.
* ``ModelSummary``: fires at ``pre_training`` only, so its cost is in the fixed column, not per iteration.
* ``Profiler``: with ``handler_table=False`` its trace schedule (5 steps) is over early and it costs nothing after;
  with the handler table (its default) every handler of the run is timed; and recording every step of the run with
  ``torch.profiler``.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from benchmarks.workload import Batch, NullStepTrainer, Timing, run_stepbus
from callbacks import Callback
from callbacks.loggers.csv_logger import CSVLogger
from callbacks.model_summary import ModelSummary
from callbacks.profiler import Profiler
from callbacks.time_limit import TimeLimit

__all__ = ["variants"]

Variant = tuple[str, str, Callable[[], Timing] | None]


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120, color_system=None)


def _mlflow(every: str) -> Callable[[], list[Callback]]:
    def make() -> list[Callback]:
        from callbacks.loggers.mlflow import MLflowLogger

        return [MLflowLogger(every=every)]

    return make


def variants(batches: list[Batch], epochs: int, tmp: Path) -> list[Variant]:
    """The rows, in the ``callbacks`` group of the overhead case (its first row, the bare engine, is the baseline)."""
    iterations = epochs * len(batches)

    def engine(callbacks: Callable[[], list[Callback]]) -> Callable[[], Timing]:
        return lambda: run_stepbus(batches, epochs, callbacks, run_dir=tmp, cls=NullStepTrainer)

    def with_mlflow(callbacks: Callable[[], list[Callback]]) -> Callable[[], Timing] | None:
        return engine(callbacks) if importlib.util.find_spec("mlflow") is not None else None

    return [
        ("callbacks", "stepbus engine + CSVLogger, idle (every='never')", engine(lambda: [CSVLogger(every="never")])),
        ("callbacks", "stepbus engine + CSVLogger every 50 it", engine(lambda: [CSVLogger(every="50it")])),
        ("callbacks", "stepbus engine + CSVLogger every step", engine(lambda: [CSVLogger(every="1it")])),
        ("callbacks", "stepbus engine + MLflowLogger, idle (every='never')", with_mlflow(_mlflow("never"))),
        ("callbacks", "stepbus engine + MLflowLogger every 50 it", with_mlflow(_mlflow("50it"))),
        ("callbacks", "stepbus engine + MLflowLogger every step", with_mlflow(_mlflow("1it"))),
        ("callbacks", "stepbus engine + TimeLimit (a clock read per step)", engine(lambda: [TimeLimit("1d")])),
        (
            "callbacks",
            "stepbus engine + ModelSummary (at pre_training)",
            engine(lambda: [ModelSummary(console=_quiet())]),
        ),
        (
            "callbacks",
            "stepbus engine + Profiler, traces only (5 steps, then idle)",
            engine(lambda: [Profiler(handler_table=False, console=_quiet())]),
        ),
        (
            "callbacks",
            "stepbus engine + Profiler with its handler table (every handler timed)",
            engine(lambda: [Profiler(console=_quiet())]),
        ),
        (
            "callbacks",
            "stepbus engine + Profiler recording every step",
            engine(lambda: [Profiler(wait=0, warmup=0, active=iterations, handler_table=False, console=_quiet())]),
        ),
    ]
