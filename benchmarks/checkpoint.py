"""Checkpoint costs: stepbus's safe save and load side by side with a bare ``torch.save`` / ``torch.load``.

Cases, for a model of about 1 MB and one of about 64 MB (an MLP with Adam state, so the file is ~3x the weights):

* save: ``torch.save`` of the same state dicts to a path (no fsync, not atomic) vs ``trainer.save_checkpoint``
  (plain-type check, temp file, fsync, ``os.replace``, directory fsync, RNG capture, metadata);
* load: ``torch.load(weights_only=True)`` vs ``trainers.checkpoint.format.load_checkpoint`` (CRC-32 check of every
  record, then the same load) vs ``read_metadata`` (memory-mapped: no tensor data read);
* resume position: ``trainer.restore(file)`` plus the first ``iterate()``, for a checkpoint taken early in an epoch
  and one taken near its end: no batch is replayed, so both cost the same.

Run: ``python -m benchmarks.checkpoint`` (``--quick`` for a smoke run). Prints a markdown table and writes it to
``benchmarks/results-checkpoint.md`` unless ``--out`` says otherwise. Nothing here is a pass/fail test; the disk
is whatever ``--dir`` (default: a temporary directory) lives on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainers.checkpoint.format import load_checkpoint, read_metadata
from trainers.engine.trainer import BaseTrainer

__all__ = ["main"]

RESULTS = Path(__file__).with_name("results-checkpoint.md")


def _trainer(width: int, *, items: int = 4096, batch: int = 8, step: bool = True) -> BaseTrainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    x = torch.randn(items, width)
    trainer = BaseTrainer(
        model,
        TensorDataset(x, x.sum(1, keepdim=True)),
        max_epochs=2,
        batch_size=batch,
        device="cpu",
        loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
    )
    if step:
        trainer.iterate()  # Adam state exists
    return trainer


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples) * 1e3, statistics.median(samples) * 1e3


def run(*, repeats: int, widths: Sequence[int], folder: Path) -> list[tuple[str, str, str, float, float, str]]:
    rows: list[tuple[str, str, str, float, float, str]] = []
    for width in widths:
        trainer = _trainer(width)
        raw_path, ours_path = folder / f"raw-{width}.pt", folder / f"step-{width}.pt"
        state = {"model": trainer.pipeline.state_dict(), "optimizer": trainer.optimizer.state_dict()}
        raw_save = _time(lambda: torch.save(state, raw_path), repeats)  # noqa: B023 - called before the next loop
        ours_save = _time(lambda: trainer.save_checkpoint(ours_path), repeats)  # noqa: B023
        size = f"{os.path.getsize(ours_path) / 2**20:.1f} MiB"
        raw_load = _time(lambda: torch.load(raw_path, weights_only=True), repeats)  # noqa: B023
        ours_load = _time(lambda: load_checkpoint(ours_path), repeats)  # noqa: B023
        meta = _time(lambda: read_metadata(ours_path), repeats)  # noqa: B023
        rows += [
            ("save", size, "torch.save (no fsync, not atomic)", *raw_save, "1.00x"),
            (
                "save",
                size,
                "trainer.save_checkpoint (checked, atomic, fsynced)",
                *ours_save,
                _ratio(ours_save, raw_save),
            ),
            ("load", size, "torch.load(weights_only=True)", *raw_load, "1.00x"),
            ("load", size, "load_checkpoint (CRC-32 verified)", *ours_load, _ratio(ours_load, raw_load)),
            ("load", size, "read_metadata (memory-mapped)", *meta, _ratio(meta, raw_load)),
        ]
        trainer.close()
    # resume early vs late in a long epoch (25,000 steps): the same cost, since no batch is replayed. The two
    # positions alternate within each repeat (and swap order every other one), so drift hits both alike.
    source = _trainer(64, items=200_000)
    positions = {"early in the epoch (iteration 10)": 10, "late in the epoch (iteration 24990)": 24_990}
    paths: dict[str, Path] = {}
    for label, steps in positions.items():
        source.state.load_state_dict(
            {"epoch": 1, "iteration": steps, "epoch_iteration": steps, "max_epochs": 2, "iterations_per_epoch": 25_000}
        )
        paths[label] = source.save_checkpoint(folder / f"resume-{steps}.pt")
    samples: dict[str, list[float]] = {label: [] for label in positions}
    for repeat in range(max(repeats, 3)):
        for label in list(positions)[:: -1 if repeat % 2 else 1]:
            fresh = _trainer(64, items=200_000, step=False)
            start = time.perf_counter()
            fresh.restore(paths[label])
            fresh.iterate()
            samples[label].append(time.perf_counter() - start)
            fresh.close()
    timings = {label: (min(v) * 1e3, statistics.median(v) * 1e3) for label, v in samples.items()}
    early = timings["early in the epoch (iteration 10)"]
    for label, value in timings.items():
        rows.append(("resume + 1 step", "0.1 MiB", label, *value, _ratio(value, early)))
    source.close()
    return rows


def _ratio(value: tuple[float, float], base: tuple[float, float]) -> str:
    return f"{value[0] / base[0]:.2f}x" if base[0] > 0 else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    widths = (64,) if args.quick else (256, 2048)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = run(repeats=repeats, widths=widths, folder=Path(tmp))
    lines = [
        "# Checkpoint costs (benchmarks/checkpoint.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"torch {torch.__version__}. {repeats} repeats; milliseconds.",
        "",
        "| case | file | variant | min ms | median ms | ratio (min) |",
        "|---|---|---|---:|---:|---:|",
        *(f"| {c} | {s} | {v} | {lo:.2f} | {med:.2f} | {r} |" for c, s, v, lo, med, r in rows),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
