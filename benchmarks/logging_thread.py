"""Case 5: what a log point costs the training thread, with each logger's writes made there (``background=False``)
and on its own thread (``background=True``, the default).

The tiny MLP of :mod:`benchmarks.workload` trains with one logger writing a row every 50 iterations (TensorBoard,
W&B offline, MLflow into its default SQLite store). The bus times the logger's handlers
(:meth:`lifecycle.Bus.time_handlers`): ``post_step`` is called at the log points only (its schedule), so its mean is
the training thread's cost of one log point -- the window means, the published numbers and the write, or handing
the write over. ``post_epoch`` includes the flush at the epoch's end (the background writer's queue, then the
backend's own). The run's µs per iteration says whether the steps paid for the writer thread in another way (the
GIL). Interleaved repeats; medians.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.workload import make_batches, run_stepbus
from callbacks import Callback, MLflowLogger, TensorBoardLogger, WandbLogger
from lifecycle import Event, HandlerTimes
from trainers.engine.trainer import BaseTrainer

__all__ = ["report", "run", "table"]

Make = Callable[[bool], Callback]

LOGGERS: dict[str, Make] = {
    "TensorBoardLogger": lambda background: TensorBoardLogger(every="50it", background=background),
    "WandbLogger (offline)": lambda background: WandbLogger(
        every="50it", mode="offline", background=background, settings={"x_disable_stats": True}
    ),
    "MLflowLogger (SQLite)": lambda background: MLflowLogger(every="50it", background=background),
}


class _Timer(Callback):
    """Times every handler of the run from ``pre_training`` on, and keeps the logger's rows at the end."""

    priority = 1_000_000  # before the logger's pre_training: its handlers are timed from their first call

    def priority_of(self, event: Event) -> int:
        return -1_000_000 if event is Event.POST_TRAINING else self.priority  # after the logger's post_training

    def __init__(self, owner: str, found: dict[str, Any]) -> None:
        super().__init__()
        self.owner, self.found = owner, found
        self._times: HandlerTimes | None = None

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._times = trainer.bus.time_handlers()

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        times = self._times
        assert times is not None
        for row in times.handlers():
            if row.name.startswith(self.owner + "."):
                self.found[row.event] = row.mean_us
        times.stop()


def _measure(make: Make, background: bool, batches: list[Any], epochs: int, tmp: Path) -> dict[str, float]:
    found: dict[str, Any] = {}
    logger = make(background)
    owner = logger.state_key
    timing = run_stepbus(batches, epochs, lambda: [logger, _Timer(owner, found)], run_dir=tmp)
    iterations = epochs * len(batches)
    return {
        "log point": found.get("post_step", float("nan")),
        "epoch end": found.get("post_epoch", float("nan")),
        "run end": found.get("post_training", float("nan")),
        "per it": timing.steady / iterations,
    }


def run(iterations: int, repeats: int, per_epoch: int = 1000) -> list[dict[str, Any]]:
    """Each logger on each thread ``repeats`` times, interleaved; medians."""
    torch.set_num_threads(1)
    per_epoch = min(per_epoch, iterations)
    epochs = max(1, iterations // per_epoch)
    batches = make_batches(per_epoch)
    tmp = Path(tempfile.mkdtemp(prefix="stepbus-logging-"))
    samples: dict[tuple[str, bool], list[dict[str, float]]] = {}
    for make in LOGGERS.values():  # warm-up: imports, the W&B service, the SQLite schema
        _measure(make, True, batches[:100], 1, tmp)
    for _ in range(repeats):
        for name, make in LOGGERS.items():
            for background in (False, True):
                samples.setdefault((name, background), []).append(_measure(make, background, batches, epochs, tmp))
    rows = []
    for (name, background), runs in samples.items():
        row: dict[str, Any] = {"logger": name, "background": background}
        for key in runs[0]:
            row[key] = statistics.median(r[key] for r in runs)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], iterations: int, repeats: int) -> str:
    lines = [
        f"{iterations} iterations of the tiny MLP per run, a row every 50 iterations, {repeats} interleaved repeats, "
        "medians; µs on the training thread per call of the logger's handler.",
        "",
        "| logger | writes made on | log point (post_step) µs | epoch end (post_epoch) µs | run end (post_training) "
        "µs | run µs/it |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        where = "its own thread (background=True)" if row["background"] else "the training thread (background=False)"
        lines.append(
            f"| {row['logger']} | {where} | {row['log point']:.1f} | {row['epoch end']:.1f} | {row['run end']:.1f} "
            f"| {row['per it']:.2f} |"
        )
    by = {(r["logger"], r["background"]): r for r in rows}
    lines += ["", "Cost of a log point on the training thread, on its own thread / on the training thread:", ""]
    for name in LOGGERS:
        before, after = by[(name, False)]["log point"], by[(name, True)]["log point"]
        lines.append(f"- {name}: {after:.1f} / {before:.1f} µs = {after / before:.2f}x")
    return "\n".join(lines) + "\n"


def report(iterations: int, repeats: int) -> str:
    """Run the case and return its markdown section."""
    heading = "## Case 5: a log point on the training thread (benchmarks/logging_thread.py)\n\n"
    return heading + table(run(iterations, repeats), iterations, repeats)


if __name__ == "__main__":
    print(report(int(sys.argv[1]) if len(sys.argv) > 1 else 3000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
