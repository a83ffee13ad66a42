"""Engine overhead: the same tiny model trained by a raw PyTorch loop and by ``BaseTrainer``.

Case: a 16-32-1 MLP, batch 32, ``torch.set_num_threads(1)``, the same pre-built batches in the same order, N
iterations. Variants run interleaved (raw, stepbus with 0 callbacks, with 10 no-op callbacks on mixed events and
schedules), each repeated; the table reports the minimum and median microseconds per iteration and the overhead
over raw. A second pair of rows strips the model out (a step that does nothing) to show the engine's own cost
without the noise of a ~100 us training step. A third pair does the work of the scheduled callbacks -- LR decay at
Wisp's milestones, gradient clipping with a non-finite check, a prune hook every 100 iterations, validation and an
early-stopping check every epoch -- once written by hand in the raw loop, once as stepbus callbacks.

Run: ``python -m benchmarks`` (or ``make bench``); ``--quick`` for a smoke run. Prints a markdown table and writes
it to ``benchmarks/results.md`` unless ``--out`` says otherwise. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import gc
import io
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import blinker
import torch
from rich.console import Console
from torch import nn

from callbacks import (
    Callback,
    EarlyStopping,
    GradientGuard,
    GridPruning,
    LRDecay,
    ProgressBar,
    TensorBoardLogger,
    Validator,
    WandbLogger,
)
from lifecycle import Event, Status
from trainers.base import BaseTrainer

__all__ = ["main", "run"]

Batch = tuple[torch.Tensor, torch.Tensor]
RESULTS = Path(__file__).with_name("results.md")


# ---------------------------------------------------------------- no-op callbacks on mixed events and schedules
class _PreStep(Callback):
    def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Step(Callback):
    def step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _PostStep(Callback):
    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Every50(Callback):
    every = "50it"

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _EveryMinute(Callback):
    every = "1min"

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Epochs(Callback):
    every = "1ep"

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Training(Callback):
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


def ten_noop_callbacks() -> list[Callback]:
    """10 callbacks: 6 run every step (2 pre_step, 2 step, 2 post_step), 2 on schedules checked every step
    (50it, 1min), 1 per epoch, 1 per run."""
    return [
        _PreStep(state_key="pre_step_a"),
        _PreStep(state_key="pre_step_b"),
        _Step(state_key="step_a"),
        _Step(state_key="step_b"),
        _PostStep(state_key="post_step_a"),
        _PostStep(state_key="post_step_b"),
        _Every50(),
        _EveryMinute(),
        _Epochs(),
        _Training(),
    ]


# ---------------------------------------------------------------- the workload
def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def _batches(count: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 16, generator=generator), torch.randn(32, 1, generator=generator)) for _ in range(count)]


def _mse(pipeline: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.mse_loss(pipeline(batch[0]), batch[1])


def _raw(batches: list[Batch], epochs: int) -> float:
    model = _model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter_ns()
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return (time.perf_counter_ns() - start) / 1e3


class _SteadyState(Callback):
    """Times a run from the end of ``pre_training`` to the start of ``post_training``: a logger's one-off start
    and finish (a W&B run's ~0.5 s) are left out, so the row shows what it costs per iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.ended = 0

    def priority_of(self, event: Event) -> int:
        return -10_000 if event is Event.PRE_TRAINING else 10_000

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.started = time.perf_counter_ns()

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.ended = time.perf_counter_ns()


def _stepbus(
    batches: list[Batch],
    epochs: int,
    callbacks: Callable[[], list[Callback]],
    run_dir: Path | None = None,
    *,
    steady: bool = False,
) -> float:
    model = _model(0)
    trainer = BaseTrainer(
        model,
        batches,
        max_epochs=epochs,
        batch_size=None,
        shuffle=False,
        device="cpu",
        loss_fn=_mse,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        callbacks=callbacks(),
        run_dir=None if run_dir is None else Path(tempfile.mkdtemp(dir=run_dir)),
    )
    watch = trainer.add_callback(_SteadyState()) if steady else None
    start = time.perf_counter_ns()
    status = trainer.train()
    elapsed = (time.perf_counter_ns() - start) / 1e3
    assert status is Status.COMPLETED, status
    if isinstance(watch, _SteadyState):
        return (watch.ended - watch.started) / 1e3
    return elapsed


class _NullStepTrainer(BaseTrainer):
    """The engine alone: no forward, backward or optimizer step."""

    def step(self, batch: Any) -> dict[str, Any]:
        outputs: dict[str, Any] = {"loss": None}
        if self._step.active:
            self._step.emit(self, loss=None, outputs=outputs)
        return outputs


def _raw_scheduled(batches: list[Batch], epochs: int) -> float:
    """The raw loop doing by hand what the scheduled callbacks do."""
    model = _model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * len(batches)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[round(m * total) for m in (0.5, 0.75, 0.9)], gamma=0.333
    )
    params = list(model.parameters())
    val_x, val_y = batches[0]
    best, wait, iteration = float("inf"), 0, 0
    model.train()
    start = time.perf_counter_ns()
    for _ in range(epochs):
        for x, y in batches:
            iteration += 1
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if bool(torch.isfinite(norm) & torch.isfinite(loss)):
                optimizer.step()
            scheduler.step()
            if iteration % 100 == 0:
                _no_prune(model)
        model.eval()
        with torch.no_grad():
            value = nn.functional.mse_loss(model(val_x), val_y).item()
        model.train()
        best, wait = (value, 0) if value < best else (best, wait + 1)
    return (time.perf_counter_ns() - start) / 1e3


class _FlowReader(Callback):
    """What a logger does with the metric flow: a window read every 50 iterations."""

    every = "50it"

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.window = trainer.metric_flow.window()

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.window.take()


def _flow() -> list[Callback]:
    return [_FlowReader()]


def _progress() -> list[Callback]:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    return [ProgressBar(console=console)]


def _wandb() -> list[Callback]:
    return [WandbLogger(every="50it", mode="offline", settings={"x_disable_stats": True})]


def _tensorboard() -> list[Callback]:
    return [TensorBoardLogger(every="50it")]


def _no_prune(pipeline: nn.Module) -> None:
    """The benchmark's stand-in for a grid's ``prune()``: the cost of the call, not of pruning."""


def scheduled_callbacks(val_batch: Batch) -> list[Callback]:
    """The issue-3 callbacks doing what :func:`_raw_scheduled` does by hand."""
    val_x, val_y = val_batch

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        return {"loss": nn.functional.mse_loss(trainer.pipeline(val_x), val_y)}

    return [
        LRDecay(),
        GradientGuard(clip_norm=1.0, on_nonfinite="skip"),
        GridPruning("100it", prune=_no_prune),
        Validator(validate, every="1ep", at_end=False),
        EarlyStopping("val/loss", patience=1_000_000),
    ]


def _raw_null(batches: list[Batch], epochs: int) -> float:
    sink = None
    start = time.perf_counter_ns()
    for _ in range(epochs):
        for batch in batches:
            sink = batch
    del sink
    return (time.perf_counter_ns() - start) / 1e3


def _stepbus_null(batches: list[Batch], epochs: int, callbacks: Callable[[], list[Callback]]) -> float:
    trainer = _NullStepTrainer(
        _model(0),
        batches,
        max_epochs=epochs,
        batch_size=None,
        shuffle=False,
        device="cpu",
        loss_fn=_mse,
        callbacks=callbacks(),
    )
    start = time.perf_counter_ns()
    trainer.train()
    return (time.perf_counter_ns() - start) / 1e3


# ---------------------------------------------------------------- measurement
def run(iterations: int, repeats: int, batches_per_epoch: int = 100) -> list[dict[str, Any]]:
    """Measure every variant ``repeats`` times, interleaved; return rows of µs/iteration statistics."""
    torch.set_num_threads(1)
    epochs = max(1, iterations // batches_per_epoch)
    total = epochs * batches_per_epoch
    batches = _batches(batches_per_epoch)
    tmp = Path(tempfile.mkdtemp(prefix="stepbus-bench-"))
    variants: list[tuple[str, str, Callable[[], float]]] = [
        ("train", "raw PyTorch loop", lambda: _raw(batches, epochs)),
        ("train", "stepbus, 0 callbacks", lambda: _stepbus(batches, epochs, list)),
        ("train", "stepbus, 10 no-op callbacks", lambda: _stepbus(batches, epochs, ten_noop_callbacks)),
        (
            "scheduled",
            "raw loop + LR decay, clip, finite check, prune hook, validation",
            lambda: _raw_scheduled(batches, epochs),
        ),
        (
            "scheduled",
            "stepbus + LRDecay, GradientGuard, GridPruning, Validator, EarlyStopping",
            lambda: _stepbus(batches, epochs, lambda: scheduled_callbacks(batches[0])),
        ),
        ("logging", "stepbus, 0 callbacks (again, the baseline here)", lambda: _stepbus(batches, epochs, list)),
        ("logging", "stepbus + metric flow (a window read every 50 it)", lambda: _stepbus(batches, epochs, _flow)),
        ("logging", "stepbus + ProgressBar (terminal, 10 Hz)", lambda: _stepbus(batches, epochs, _progress)),
        (
            "logging",
            "stepbus + TensorBoardLogger every 50 it",
            lambda: _stepbus(batches, epochs, _tensorboard, run_dir=tmp),
        ),
        (
            "logging",
            "stepbus + WandbLogger every 50 it (offline; its ~0.5 s start and finish excluded)",
            lambda: _stepbus(batches, epochs, _wandb, run_dir=tmp, steady=True),
        ),
        ("engine", "raw Python loop over the batches", lambda: _raw_null(batches, epochs)),
        ("engine", "stepbus engine, 0 callbacks", lambda: _stepbus_null(batches, epochs, list)),
        ("engine", "stepbus engine, 10 no-op callbacks", lambda: _stepbus_null(batches, epochs, ten_noop_callbacks)),
        ("engine", "stepbus engine + ProgressBar (terminal, 10 Hz)", lambda: _stepbus_null(batches, epochs, _progress)),
    ]
    for _, _, fn in variants:  # warm-up: allocator, autograd graph caches, imports
        fn()
    samples: dict[str, list[float]] = {name: [] for _, name, _ in variants}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for _, name, fn in variants:
                samples[name].append(fn() / total)
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
        shutil.rmtree(tmp, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    baseline: dict[str, tuple[float, float]] = {}
    for group, name, _ in variants:
        low, mid = min(samples[name]), statistics.median(samples[name])
        if group not in baseline:
            baseline[group] = (low, mid)
        base_low, base_mid = baseline[group]
        rows.append(
            {
                "group": group,
                "variant": name,
                "min_us": low,
                "median_us": mid,
                "overhead_min_us": low - base_low,
                "overhead_median_us": mid - base_mid,
                "ratio": low / base_low,
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]], iterations: int, repeats: int) -> str:
    """The markdown report: machine, versions, then one row per variant."""
    lines = [
        f"Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, torch threads 1; "
        f"Python {platform.python_version()}, torch {torch.__version__}, blinker {_version(blinker)}.",
        f"{iterations} iterations per run, {repeats} interleaved repeats; microseconds per iteration.",
        "",
        "| case | variant | min µs/it | median µs/it | overhead vs raw (min) | overhead (median) | ratio (min) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['group']} | {row['variant']} | {row['min_us']:.2f} | {row['median_us']:.2f} | "
            f"{row['overhead_min_us']:+.2f} | {row['overhead_median_us']:+.2f} | "
            + (f"{row['ratio']:.3f}x |" if row["group"] != "engine" else "n/a |")
        )
    return "\n".join(lines) + "\n"


def _version(module: Any) -> str:
    from importlib.metadata import version

    try:
        return version(module.__name__)
    except Exception:  # noqa: BLE001 - a missing version only affects the report's header
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--iterations", type=int, default=2000, help="iterations per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=25, help="interleaved repeats (default 25)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (200 iterations, 2 repeats)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    args = parser.parse_args(argv)
    iterations, repeats = (200, 2) if args.quick else (args.iterations, args.repeats)
    if iterations < 1 or repeats < 1:
        parser.error("--iterations and --repeats must be >= 1")
    rows = run(iterations, repeats)
    report = table(rows, iterations, repeats)
    print(report)
    args.out.write_text("# Engine overhead (benchmarks/overhead.py)\n\n" + report)
    return 0
