"""Case 1, engine overhead: the same tiny model trained by a raw PyTorch loop, by ``BaseTrainer``, and by the peers
(PyTorch-Ignite's ``Engine``, Lightning's ``Trainer``; from ``stepbus[bench]``, see :mod:`benchmarks.peers`).

Workload: a 16-32-1 MLP, batch 32, Adam, ``torch.set_num_threads(1)``, the same pre-built batches in the same order,
3 epochs of 1000 batches (N = 3000 iterations). Variants run interleaved, each repeated; the table reports the
minimum and median microseconds per iteration in steady state (from the framework's start-of-training event to its
end-of-training event) and, apart, its fixed start-up and tear-down cost.

* ``train``: raw loop; stepbus with 0 callbacks, 10 no-op callbacks on mixed events and schedules, and the full
  default set (ProgressBar, TensorBoard every 50 it, LR decay, checkpoint per epoch, gradient guard); the raw loop
  doing the default set's work by hand (the same rows and display), the same loop again right after it (the run's
  noise floor: what one loop measures against itself), and doing less (for context); Ignite bare and
  with the comparable handlers; Lightning with its extras off (``barebones``) and with its defaults on.
* ``engine``: the same without the model (a step that does nothing), so the engines' own cost is not lost in the
  noise of a ~300 us training step: raw loop, stepbus / Ignite / Lightning with nothing and with ten no-op
  callbacks or handlers.
* ``callbacks``: what individual stepbus callbacks cost over the bare engine (loggers, the metric flow, and, idle
  and firing, the callbacks of :mod:`benchmarks.callback_rows`: CSV, MLflow, time limit, model summary, profiler);
  ``scheduled``: stepbus's scheduled callbacks next to the raw loop doing the same work by hand.
* ``accumulate`` and ``bf16``: gradient accumulation over 4 batches and bfloat16 autocast on the CPU, each done by
  hand in the raw loop (the group's baseline), by stepbus's trainer options and by the peers' (see
  :mod:`benchmarks.step_options`).

The hand-written loops are in :mod:`benchmarks.raw_loops`.

Run: ``python -m benchmarks --case overhead`` (all cases: ``python -m benchmarks``); ``--quick`` for a smoke run.
Nothing here is a pass/fail test.
"""

from __future__ import annotations

import gc
import platform
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import blinker
import torch
from torch import nn

from benchmarks import callback_rows, step_options
from benchmarks.peers import PEERS, ignite_run, lightning_run, versions
from benchmarks.raw_loops import no_prune, raw, raw_default_essentials, raw_default_work, raw_null, raw_scheduled
from benchmarks.workload import (
    Batch,
    NullStepTrainer,
    Timing,
    default_set,
    make_batches,
    progress,
    run_stepbus,
    ten_noop_callbacks,
)
from callbacks import (
    Callback,
    EarlyStopping,
    GradientGuard,
    GridPruning,
    LRDecay,
    TensorBoardLogger,
    Validator,
    WandbLogger,
)
from callbacks.loggers.metric_flow import MetricFlow
from trainers.engine.trainer import BaseTrainer

__all__ = [
    "BY_HAND",
    "BY_HAND_AGAIN",
    "default_set",
    "noise_floor",
    "paired_ratio",
    "report",
    "run",
    "ten_noop_callbacks",
]

#: the fair baseline of the default set's row, and the same loop run again right after it (the run's noise floor)
BY_HAND = "raw loop doing the default set's work by hand"
BY_HAND_AGAIN = "the same by-hand loop, run again (the noise floor)"


# ---------------------------------------------------------------- callbacks measured on their own
class _FlowReader(Callback):
    """What a logger does with the metric flow: a window read every 50 iterations."""

    every = "50it"

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.window = MetricFlow.of(trainer).window()

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.window.take()


def _flow() -> list[Callback]:
    return [_FlowReader()]


def _wandb() -> list[Callback]:
    return [WandbLogger(every="50it", mode="offline", settings={"x_disable_stats": True})]


def _tensorboard() -> list[Callback]:
    return [TensorBoardLogger(every="50it")]


def scheduled_callbacks(val_batch: Batch) -> list[Callback]:
    """The scheduled callbacks doing what :func:`benchmarks.raw_loops.raw_scheduled` does by hand."""
    val_x, val_y = val_batch

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        return {"loss": nn.functional.mse_loss(trainer.pipeline(val_x), val_y)}

    return [
        LRDecay(),
        GradientGuard(clip_norm=1.0, on_nonfinite="skip"),
        GridPruning("100it", prune=no_prune),
        Validator(validate, every="1ep", at_end=False),
        EarlyStopping("val/loss", patience=1_000_000),
    ]


# ---------------------------------------------------------------- measurement
Variant = tuple[str, str, Callable[[], Timing] | None]


def variants(batches: list[Batch], epochs: int, tmp: Path) -> list[Variant]:
    """Every row: (group, name, runner); the runner is ``None`` where a peer is not installed. The first row of a
    group is its baseline."""
    have = versions()
    ignite, lightning = have["ignite"] is not None, have["lightning"] is not None

    def peer(available: bool, fn: Callable[[], Timing]) -> Callable[[], Timing] | None:
        return fn if available else None

    def null(callbacks: Callable[[], list[Callback]]) -> Callable[[], Timing]:
        return lambda: run_stepbus(batches, epochs, callbacks, cls=NullStepTrainer)

    return [
        ("train", "raw PyTorch loop", lambda: raw(batches, epochs)),
        ("train", "stepbus, 0 callbacks", lambda: run_stepbus(batches, epochs, list)),
        ("train", "stepbus, 10 no-op callbacks", lambda: run_stepbus(batches, epochs, ten_noop_callbacks)),
        ("train", "stepbus, full default set", lambda: run_stepbus(batches, epochs, default_set, run_dir=tmp)),
        ("train", BY_HAND, lambda: raw_default_work(batches, epochs, tmp)),
        ("train", BY_HAND_AGAIN, lambda: raw_default_work(batches, epochs, tmp)),
        (
            "train",
            "raw loop doing less by hand (latest loss every 50 it, one bar)",
            lambda: raw_default_essentials(batches, epochs, tmp),
        ),
        ("train", "Ignite Engine, bare", peer(ignite, lambda: ignite_run(batches, epochs))),
        (
            "train",
            "Ignite Engine + comparable handlers",
            peer(ignite, lambda: ignite_run(batches, epochs, handlers=True, tmp=Path(tempfile.mkdtemp(dir=tmp)))),
        ),
        ("train", "Lightning Trainer, extras off", peer(lightning, lambda: lightning_run(batches, epochs))),
        (
            "train",
            "Lightning Trainer, defaults on",
            peer(lightning, lambda: lightning_run(batches, epochs, defaults=True, tmp=Path(tempfile.mkdtemp(dir=tmp)))),
        ),
        ("engine", "raw Python loop over the batches", lambda: raw_null(batches, epochs)),
        ("engine", "stepbus, 0 callbacks", null(list)),
        ("engine", "stepbus, 10 no-op callbacks", null(ten_noop_callbacks)),
        ("engine", "Ignite Engine, bare", peer(ignite, lambda: ignite_run(batches, epochs, null=True))),
        (
            "engine",
            "Ignite Engine, 10 no-op handlers",
            peer(ignite, lambda: ignite_run(batches, epochs, null=True, noop_handlers=10)),
        ),
        ("engine", "Lightning Trainer, extras off", peer(lightning, lambda: lightning_run(batches, epochs, null=True))),
        (
            "engine",
            "Lightning Trainer, extras off, 10 no-op callbacks",
            peer(lightning, lambda: lightning_run(batches, epochs, null=True, noop_handlers=10)),
        ),
        ("callbacks", "stepbus engine, 0 callbacks (the baseline here)", null(list)),
        ("callbacks", "stepbus engine + ProgressBar (terminal, 10 Hz)", null(progress)),
        ("callbacks", "stepbus engine + metric flow (a window read every 50 it)", null(_flow)),
        (
            "callbacks",
            "stepbus engine + TensorBoardLogger every 50 it",
            lambda: run_stepbus(batches, epochs, _tensorboard, run_dir=tmp, cls=NullStepTrainer),
        ),
        (
            "callbacks",
            "stepbus engine + WandbLogger every 50 it (offline)",
            lambda: run_stepbus(batches, epochs, _wandb, run_dir=tmp, cls=NullStepTrainer),
        ),
        *callback_rows.variants(batches, epochs, tmp),
        (
            "scheduled",
            "raw loop + LR decay, clip, finite check, prune hook, validation",
            lambda: raw_scheduled(batches, epochs),
        ),
        (
            "scheduled",
            "stepbus + LRDecay, GradientGuard, GridPruning, Validator, EarlyStopping",
            lambda: run_stepbus(batches, epochs, lambda: scheduled_callbacks(batches[0])),
        ),
        *step_options.variants(batches, epochs, ignite, lightning),
    ]


def run(iterations: int, repeats: int, batches_per_epoch: int = 1000) -> list[dict[str, Any]]:
    """Measure every variant ``repeats`` times, interleaved; return rows of µs/iteration statistics (``None``
    for a peer that is not installed)."""
    torch.set_num_threads(1)
    batches_per_epoch = min(batches_per_epoch, iterations)
    epochs = max(1, iterations // batches_per_epoch)
    total = epochs * batches_per_epoch
    batches = make_batches(batches_per_epoch)
    tmp = Path(tempfile.mkdtemp(prefix="stepbus-bench-"))
    rows_in = variants(batches, epochs, tmp)
    steady: dict[tuple[str, str], list[float]] = {(group, name): [] for group, name, _ in rows_in}
    fixed: dict[tuple[str, str], list[float]] = {(group, name): [] for group, name, _ in rows_in}
    gc_was_enabled = gc.isenabled()
    try:
        for _, _, fn in rows_in:  # warm-up: allocator, autograd graph caches, imports
            if fn is not None:
                fn()
        gc.disable()
        for _ in range(repeats):
            for group, name, fn in rows_in:
                if fn is None:
                    continue
                timing = fn()
                steady[(group, name)].append(timing.steady / total)
                fixed[(group, name)].append((timing.total - timing.steady) / 1e3)
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
        shutil.rmtree(tmp, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    baseline: dict[str, tuple[float, float, list[float]]] = {}
    for group, name, fn in rows_in:
        row: dict[str, Any] = {"group": group, "variant": name, "iterations": total}
        if fn is None:
            rows.append({**row, "missing": True})
            continue
        samples = steady[(group, name)]
        low, mid = min(samples), statistics.median(samples)
        base_low, base_mid, base_samples = baseline.setdefault(group, (low, mid, samples))
        rows.append(
            {
                **row,
                "missing": False,
                "samples": samples,
                "min_us": low,
                "median_us": mid,
                "overhead_min_us": low - base_low,
                "overhead_median_us": mid - base_mid,
                "ratio_min": low / base_low,
                "ratio_median": paired_ratio(samples, base_samples),
                "fixed_ms": statistics.median(fixed[(group, name)]),
            }
        )
    return rows


def paired_ratio(samples: Sequence[float], baseline: Sequence[float]) -> float:
    """The median, over the repeats, of each repeat's ratio of ``samples`` to ``baseline`` (measured in the same
    repeat, moments apart). The machine's speed drifts between repeats by more than the differences measured here;
    each repeat's ratio cancels that drift, which a ratio of the two medians does not."""
    return statistics.median(a / b for a, b in zip(samples, baseline, strict=True))


def _find(rows: Sequence[dict[str, Any]], group: str, variant: str) -> dict[str, Any] | None:
    for row in rows:
        if row["group"] == group and row["variant"] == variant and not row["missing"]:
            return row
    return None


def _at_least(need: float) -> Callable[[float], bool]:
    return lambda value: value >= need


def headline(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The targets next to what was measured: (claim, target, measured, verdict)."""
    found: list[tuple[str, str, str, str]] = []

    def add(claim: str, target: str, value: float | None, unit: str, ok: Callable[[float], bool]) -> None:
        if value is None:
            found.append((claim, target, "n/a (not measured: a peer is not installed)", ""))
        else:
            found.append((claim, target, f"{value:.2f}{unit}", "met" if ok(value) else "**missed**"))

    ten = _find(rows, "engine", "stepbus, 10 no-op callbacks")
    add(
        "stepbus engine with 10 no-op callbacks (median)",
        "≤ 3 µs/it",
        None if ten is None else ten["overhead_median_us"],
        " µs/it",
        lambda v: v <= 3.0,
    )
    full = _find(rows, "train", "stepbus, full default set")
    by_hand = _find(rows, "train", BY_HAND)
    add(
        "stepbus with the full default set vs the raw loop (paired median)",
        "≤ 1.10x",
        None if full is None else full["ratio_median"],
        "x",
        lambda v: v <= 1.10,
    )
    fair = None if full is None or by_hand is None else paired_ratio(full["samples"], by_hand["samples"])
    add("... vs the raw loop doing the same work by hand (paired median)", "≤ 1.05x", fair, "x", lambda v: v <= 1.05)
    pairs = [
        ("Ignite", 3.0, "bare", "Ignite Engine, bare", "stepbus, 0 callbacks"),
        ("Ignite", 3.0, "10 handlers", "Ignite Engine, 10 no-op handlers", "stepbus, 10 no-op callbacks"),
        ("Lightning", 40.0, "bare", "Lightning Trainer, extras off", "stepbus, 0 callbacks"),
        (
            "Lightning",
            40.0,
            "10 callbacks",
            "Lightning Trainer, extras off, 10 no-op callbacks",
            "stepbus, 10 no-op callbacks",
        ),
    ]
    for peer, need, label, theirs, mine in pairs:
        a, b = _find(rows, "engine", mine), _find(rows, "engine", theirs)
        ratio = None
        if a is not None and b is not None and a["overhead_median_us"] > 0:
            ratio = b["overhead_median_us"] / a["overhead_median_us"]
        add(f"{peer}'s engine overhead / stepbus's ({label}, median)", f"≥ {need:g}x", ratio, "x", _at_least(need))
    # what accumulating costs stepbus beyond what it costs by hand: the accumulating row's overhead less the plain
    # step's (both over their own raw loop, both minima: the least noisy figure for a fixed cost per iteration)
    accumulate = _find(rows, "accumulate", step_options.STEPBUS_ACCUMULATE)
    plain = _find(rows, "train", "stepbus, 0 callbacks")
    added = None if accumulate is None or plain is None else accumulate["overhead_min_us"] - plain["overhead_min_us"]
    add(
        f"what accumulate={step_options.ACCUMULATE} adds to stepbus's step beyond doing it by hand (min overhead of "
        "the accumulate row less the 0-callback train row's)",
        "≤ 5 µs/it",
        added,
        " µs/it",
        lambda v: v <= 5.0,
    )
    return found


def noise_floor(rows: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """How far apart one loop measures against itself in this run: the second by-hand row over the first, as a
    paired ratio and as a ratio of medians."""
    first, again = _find(rows, "train", BY_HAND), _find(rows, "train", BY_HAND_AGAIN)
    if first is None or again is None:
        return None
    return paired_ratio(again["samples"], first["samples"]), again["median_us"] / first["median_us"]


def table(rows: Sequence[dict[str, Any]], iterations: int, repeats: int) -> str:
    """The markdown report: machine and versions, the headline (targets), then one row per variant."""
    peers = versions()
    lines = [
        f"Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, torch threads 1; "
        f"Python {platform.python_version()}, torch {torch.__version__}, blinker {_version(blinker)}, "
        + ", ".join(f"{PEERS[name]} {version or 'not installed'}" for name, version in peers.items())
        + ".",
        f"{iterations} iterations per run, {repeats} interleaved repeats; microseconds per iteration in steady state "
        "(the framework's start-of-training event to its end-of-training event); fixed cost: the rest of the call "
        "(start-up, tear-down), median. Ratios are paired: each repeat's ratio to the baseline measured in the same "
        "repeat, then the median over the repeats (the machine's speed drifts between repeats).",
        "Each case's first row is its baseline (overhead and ratio are against it). `accumulate`: the optimizer "
        f"steps once every {step_options.ACCUMULATE} iterations, each loss divided by {step_options.ACCUMULATE}; "
        "`bf16`: the forward pass and the loss under `torch.autocast` on the CPU in bfloat16. Ignite's accumulating "
        "row is its stock `create_supervised_trainer`, whose update also calls `model.train()` and `loss.item()` "
        "every iteration; its bf16 row is the bare `Engine` with the autocast in its update function (its `amp_mode` "
        "autocasts for CUDA only).",
        "",
        "| claim | target | measured | |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {claim} | {target} | {measured} | {verdict} |" for claim, target, measured, verdict in headline(rows)]
    floor = noise_floor(rows)
    if floor is not None:
        paired, of_medians = floor
        lines += [
            "",
            f"Noise floor of this run: the same by-hand loop measured twice, moments apart, differs by a paired "
            f"ratio of {paired:.3f}x (a ratio of medians of {of_medians:.3f}x); a difference between two rows that "
            "is smaller than that is not resolved by this run.",
        ]
    lines += [
        "",
        "| case | variant | min µs/it | median µs/it | overhead (min) | overhead (median) | ratio (paired median) "
        "| fixed ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["missing"]:
            missing = "not installed (`pip install stepbus[bench]`)"
            lines.append(f"| {row['group']} | {row['variant']} | {missing} | | | | | |")
            continue
        ratio = "n/a" if row["group"] == "engine" else f"{row['ratio_median']:.3f}x"
        lines.append(
            f"| {row['group']} | {row['variant']} | {row['min_us']:.2f} | {row['median_us']:.2f} | "
            f"{row['overhead_min_us']:+.2f} | {row['overhead_median_us']:+.2f} | {ratio} | {row['fixed_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _version(module: Any) -> str:
    from importlib.metadata import version

    try:
        return version(module.__name__)
    except Exception:  # noqa: BLE001 - a missing version only affects the report's header
        return "unknown"


def report(iterations: int, repeats: int) -> str:
    """Run the case and return its markdown section."""
    rows = run(iterations, repeats)
    total = rows[0]["iterations"]
    return "## Case 1: engine overhead (benchmarks/overhead.py)\n\n" + table(rows, total, repeats)
