"""Case 2, scaling: what the engine costs per iteration as callbacks are added, and as more or fewer of the
registered ones fire on a step; and what emitting an event nobody listens to costs.

All of it runs the engine alone (:class:`~benchmarks.workload.NullStepTrainer`: no model), so the figures are the
engine's, not the noise of a training step.

* ``registered``: n = 0, 1, 10, 100 no-op ``post_step`` callbacks, every one firing every step.
* ``firing``: 100 registered ``post_step`` callbacks on schedules, of which k = 0, 1, 10, 100 fire on every step
  (``every="1it"``) and the rest never during the run (``every="1000000it"``): a scheduled callback that is not due
  costs nothing, as the channel's timetable skips it (``lifecycle.timetable``).
* ``silent``: nanoseconds per emission of an event nobody listens to -- the trainer's hot-path guard (``if
  channel.active: channel.emit(...)``), ``Bus.emit``, and a bare blinker ``Signal.send`` -- next to an empty Python
  function call.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import blinker
import torch

from benchmarks.workload import NullStepTrainer, make_batches, run_stepbus
from callbacks import Callback
from lifecycle import Event, State
from lifecycle.bus import Bus
from trainers.engine.trainer import BaseTrainer

__all__ = ["report", "run"]


class _NoOp(Callback):
    """A ``post_step`` callback that does nothing, on an optional schedule."""

    def __init__(self, index: int, every: str | None = None) -> None:
        super().__init__(state_key=f"noop-{index}")
        self.every = every

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


def _registered(n: int) -> Callable[[], list[Callback]]:
    return lambda: [_NoOp(i) for i in range(n)]


def _firing(k: int, total: int = 100) -> Callable[[], list[Callback]]:
    return lambda: [_NoOp(i, "1it" if i < k else "1000000it") for i in range(total)]


def _per_call_ns(fn: Callable[[], None], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def _silent(calls: int) -> dict[str, float]:
    """Nanoseconds per call of each way to emit an event nobody listens to (minimum of 5 runs)."""
    bus = Bus(State(max_epochs=1))
    channel = bus.channel(Event.POST_STEP)
    signal = blinker.Signal()
    sender = object()

    def guard() -> None:
        if channel.active:
            channel.emit(sender, outputs=None)

    def bus_emit() -> None:
        bus.emit(Event.POST_STEP, sender, outputs=None)

    def blinker_send() -> None:
        signal.send(sender, outputs=None)

    def empty() -> None:
        pass

    ways = {
        "empty Python function call (the floor)": empty,
        "trainer hot path: if channel.active: channel.emit(...)": guard,
        "Bus.emit(event, sender, ...)": bus_emit,
        "blinker Signal.send(sender, ...) with no receivers": blinker_send,
    }
    return {name: min(_per_call_ns(fn, calls) for _ in range(5)) for name, fn in ways.items()}


def run(iterations: int, repeats: int) -> dict[str, Any]:
    """Per-iteration microseconds (min and median over ``repeats``) of every variant, and the silent-event costs."""
    torch.set_num_threads(1)
    per_epoch = min(iterations, 1000)
    epochs = max(1, iterations // per_epoch)
    total = epochs * per_epoch
    batches = make_batches(per_epoch)
    variants: list[tuple[str, int, Callable[[], list[Callback]]]] = [
        *(("registered", n, _registered(n)) for n in (0, 1, 10, 100)),
        *(("firing", k, _firing(k)) for k in (0, 1, 10, 100)),
    ]
    samples: dict[tuple[str, int], list[float]] = {(group, n): [] for group, n, _ in variants}
    gc_was_enabled = gc.isenabled()
    try:
        for _, _, callbacks in variants:  # warm-up
            run_stepbus(batches, epochs, callbacks, cls=NullStepTrainer)
        gc.disable()
        for _ in range(repeats):
            for group, n, callbacks in variants:
                samples[(group, n)].append(run_stepbus(batches, epochs, callbacks, cls=NullStepTrainer).steady / total)
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    rows = [
        {
            "group": group,
            "n": n,
            "min_us": min(samples[(group, n)]),
            "median_us": statistics.median(samples[(group, n)]),
        }
        for group, n, _ in variants
    ]
    return {"iterations": total, "repeats": repeats, "rows": rows, "silent": _silent(max(10_000, iterations * 100))}


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    empty = next(r["median_us"] for r in rows if r["group"] == "registered" and r["n"] == 0)
    idle = next(r["median_us"] for r in rows if r["group"] == "firing" and r["n"] == 0)
    lines = [
        f"Engine alone (no model), {result['iterations']} iterations per run, {result['repeats']} interleaved "
        "repeats; microseconds per iteration in steady state.",
        "",
        "| registered post_step callbacks | of which fire every step | min µs/it | median µs/it | marginal cost |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        n, median = row["n"], row["median_us"]
        if row["group"] == "registered":
            registered, firing = n, n
            cost = "" if n == 0 else f"{(median - empty) / n * 1000:.0f} ns per callback"
        else:
            registered, firing = 100, n
            if n == 0:
                cost = f"{(median - empty) / 100 * 1000:.0f} ns per callback not due (skipped by the timetable)"
            else:
                cost = f"{(median - idle) / n * 1000:.0f} ns per callback that fires"
        lines.append(f"| {registered} | {firing} | {row['min_us']:.2f} | {median:.2f} | {cost} |")
    lines += ["", "| emitting an event nobody listens to | ns per emission (min of 5) |", "|---|---:|"]
    lines += [f"| {name} | {ns:.0f} |" for name, ns in result["silent"].items()]
    return "\n".join(lines) + "\n"


def report(iterations: int, repeats: int) -> str:
    """Run the case and return its markdown section."""
    return "## Case 2: scaling with the number of callbacks (benchmarks/scaling.py)\n\n" + table(
        run(iterations, repeats)
    )
