"""Case 4, memory: does a long run grow? RSS and ``tracemalloc`` sampled over 10^5 iterations of the tiny model
with the full default set of callbacks (progress, TensorBoard every 50 it, LR decay, a checkpoint per epoch of 1000
iterations, the gradient guard), and with that set and every other logger on too (W&B offline, MLflow, CSV, each
every 50 it; the three with a thread write through their background writers), next to the raw PyTorch loop over the
same batches.

Growth is the least-squares slope of the samples after the first tenth of the run (warm-up: allocator pools,
autograd caches, the first TensorBoard flushes), reported per 10^4 iterations. A leak -- something kept per step or
per save -- shows as a steady slope; a flat run stays within allocator noise. ``tracemalloc`` counts Python
allocations (and torch's CPU tensors, which it sees through Python's allocator only in part); RSS counts everything.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.workload import Batch, default_set, make_batches, make_model, run_stepbus
from callbacks import Callback
from trainers.engine.trainer import BaseTrainer

__all__ = ["report", "run", "slope"]

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The resident set size now (Linux ``/proc``); elsewhere the peak so far (``ru_maxrss``), which is labelled."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE
    except OSError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of ``(iteration, bytes)`` in bytes per iteration (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return 0.0 if var == 0 else sum((x - mean_x) * (y - mean_y) for x, y in points) / var


Sample = tuple[int, int, int]  # iteration, RSS bytes, traced bytes (0 when not tracing)


class _Recorder:
    """Takes the samples; when tracing, also a snapshot at the end of the warm-up tenth, to name what grew."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.samples: list[Sample] = []
        self.baseline: tracemalloc.Snapshot | None = None

    def __call__(self, iteration: int) -> None:
        tracing = tracemalloc.is_tracing()
        self.samples.append((iteration, rss_bytes(), tracemalloc.get_traced_memory()[0] if tracing else 0))
        if tracing and self.baseline is None and iteration > self.total // 10:
            self.baseline = tracemalloc.take_snapshot()


class _Sampler(Callback):
    """Every ``every`` iterations: a sample."""

    def __init__(self, every: int, record: _Recorder) -> None:
        super().__init__(state_key="MemorySampler")
        self.every = f"{every}it"
        self.record = record

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.record(trainer.state.iteration)


def _raw(batches: list[Batch], epochs: int, every: int, record: _Recorder, tmp: Path) -> None:
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    iteration = 0
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            iteration += 1
            if iteration % every == 0:
                record(iteration)


def _where(filename: str) -> str:
    """A file as a reader knows it: ``rich/cells.py``, ``callbacks/loggers/metric_flow.py``."""
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    root = Path(__file__).resolve().parents[1]
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return "/".join(parts[-2:])


def _measure(go: Callable[[_Recorder], None], total: int, *, trace: bool) -> dict[str, Any]:
    record = _Recorder(total)
    gc.collect()
    grew: list[tuple[str, int]] = []
    if trace:
        tracemalloc.start()
    try:
        go(record)
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
            if record.baseline is not None:
                diff = tracemalloc.take_snapshot().compare_to(record.baseline, "filename")
                grew = [(_where(str(d.traceback[0].filename)), d.size_diff) for d in diff[:3] if d.size_diff > 0]
        else:
            peak = 0
    finally:
        if trace:
            tracemalloc.stop()
    samples = record.samples
    settled = [s for s in samples if s[0] > total // 10] or samples
    column = 2 if trace else 1
    return {
        "iterations": total,
        "start": settled[0][column],
        "end": settled[-1][column],
        "growth": slope([(s[0], s[column]) for s in settled]) * 10_000,
        "peak": peak,
        "grew": grew,
    }


def run(iterations: int, traced_iterations: int, per_epoch: int = 1000) -> dict[str, Any]:
    """Each variant twice: RSS over ``iterations``, then tracemalloc over ``traced_iterations`` (tracing slows
    torch's Python side several times over); 100 samples each, after a short warm-up run (lazy imports, caches)."""
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="stepbus-memory-"))
    rows: list[dict[str, Any]] = []
    try:
        variants = (
            ("raw PyTorch loop", _raw),
            ("stepbus, full default set", _stepbus),
            ("stepbus, full default set + W&B, MLflow and CSV loggers", _every_logger),
        )
        for name, variant in variants:
            row: dict[str, Any] = {"variant": name}
            variant(make_batches(min(per_epoch, 200)), 1, 10**9, _Recorder(1), tmp)  # warm-up
            for key, count, trace in (("rss", iterations, False), ("traced", traced_iterations, True)):
                size = min(per_epoch, count)
                epochs = max(1, count // size)
                batches = make_batches(size)
                every = max(1, epochs * size // 100)
                row[key] = _measure(partial(variant, batches, epochs, every, tmp=tmp), epochs * size, trace=trace)
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows}


def _stepbus(batches: list[Batch], epochs: int, every: int, record: _Recorder, tmp: Path) -> None:
    run_stepbus(batches, epochs, lambda: [*default_set(), _Sampler(every, record)], run_dir=tmp)


def _loggers() -> list[Callback]:
    from callbacks import CSVLogger, MLflowLogger, WandbLogger

    wandb = WandbLogger(every="50it", mode="offline", settings={"x_disable_stats": True})
    return [wandb, MLflowLogger(every="50it"), CSVLogger(every="50it")]


def _every_logger(batches: list[Batch], epochs: int, every: int, record: _Recorder, tmp: Path) -> None:
    run_stepbus(batches, epochs, lambda: [*default_set(), *_loggers(), _Sampler(every, record)], run_dir=tmp)


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def _kib(value: float) -> str:
    return f"{value / 2**10:+.1f}"


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    rss, traced = rows[0]["rss"]["iterations"], rows[0]["traced"]["iterations"]
    lines = [
        f"RSS over {rss} iterations, tracemalloc over {traced} (a separate run); 100 samples each; growth is the "
        "least-squares slope after the first tenth of the run, per 10^4 iterations.",
        "",
        "| variant | RSS MiB (start → end) | RSS growth KiB / 10^4 it | traced MiB (start → end) | "
        "traced growth KiB / 10^4 it | traced peak MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, t = row["rss"], row["traced"]
        lines.append(
            f"| {row['variant']} | {_mib(r['start'])} → {_mib(r['end'])} | {_kib(r['growth'])} | "
            f"{_mib(t['start'])} → {_mib(t['end'])} | {_kib(t['growth'])} | {_mib(t['peak'])} |"
        )
    lines += ["", "Where the traced memory grew after the warm-up (the three largest, by file):", ""]
    for row in rows:
        sites = ", ".join(f"`{where}` {_kib(size)} KiB" for where, size in row["traced"]["grew"])
        lines.append(f"- {row['variant']}: {sites or 'nowhere'}")
    return "\n".join(lines) + "\n"


def report(iterations: int, traced_iterations: int) -> str:
    """Run the case in a fresh interpreter (the other cases' imports and freed memory would skew its RSS) and
    return its markdown section."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", str(iterations), str(traced_iterations)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the memory benchmark failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    title = "## Case 4: memory over a long run (benchmarks/memory.py)"
    return f"{title}\n\n{result.stdout}"


if __name__ == "__main__":
    print(table(run(int(sys.argv[1]), int(sys.argv[2]))), end="")
