"""Time to a target PSNR for the reference app: stepbus next to a hand-written PyTorch loop, in one run.

Both train the same ``ImageField`` (same initial weights) on the same target with the same batches (the engine's
``(seed, epoch)`` permutation of pixel positions, cut to the occupied share after pruning), the same Adam groups
(grid LR x10), the same LR decay (x0.333 at 50/75/90 % of the run), pruning every 100 iterations from 300, and a full
render + PSNR after every epoch. The clock stops at the first validation whose PSNR reaches the target.

Variants:

* ``hand-written loop``: all of the above written inline, no framework;
* ``stepbus, same work``: ``build()`` of the same config with ``lr_decay``, ``grid_pruning``, ``validator`` only;
* ``stepbus, the default app``: plus TensorBoard every 50 it, checkpoints every epoch (keep 3 and best),
  metrics.json -- what ``stepbus train`` runs (progress display left out: it draws on a terminal).

Run: ``python -m benchmarks.image_field`` (``--quick`` for a smoke run, ``--repeats N``, ``--target DB``). Prints a
markdown table and writes it to ``benchmarks/results-image-field.md`` unless ``--out`` says otherwise (``--quick``
writes only to ``--out``).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers.apps.image_field.field import ImageField
from trainers.apps.image_field.image import default_image
from trainers.config.builder import build
from trainers.data.plan import mix_seed

__all__ = ["main"]

RESULTS = Path(__file__).with_name("results-image-field.md")
SEED = 0


def _config(epochs: int, batches: int, batch_size: int, size: int, full: bool) -> dict[str, Any]:
    callbacks: dict[str, Any] = {
        "lr_decay": {"milestones": [0.5, 0.75, 0.9], "gamma": 0.333},
        "grid_pruning": {"every": "100it", "start": 300},
        "validator": {"every": "1ep", "save_images": full},
    }
    if full:
        callbacks.update(
            tensorboard={"every": "50it"},
            checkpointer={"every": "1ep", "keep_last": 3, "monitor": "val/psnr", "mode": "max"},
            metrics_file={},
        )
    trainer = {"name": "image_field", "size": size, "max_epochs": epochs, "batch_size": batch_size}
    trainer["threads"] = None  # the 2 threads main() sets, as the hand-written loop has (not the app's ``auto``)
    trainer.update(batches_per_epoch=batches, optimizer={"name": "adam", "lr": 0.01, "eps": 1e-15})
    return {"run": {"name": "bench", "seed": SEED}, "trainer": trainer, "callbacks": callbacks}


def _stepbus(target_db: float, epochs: int, batches: int, batch_size: int, size: int, full: bool, tmp: Path) -> float:
    trainer = build(_config(epochs, batches, batch_size, size, full), run_dir=Path(tempfile.mkdtemp(dir=tmp)))
    reached: list[float] = []
    start = time.perf_counter()

    @trainer.on("post_validation", priority=-5000)
    def check(t: Any, *, metrics: dict[str, float], **payload: Any) -> None:
        if not reached and metrics.get("val/psnr", 0.0) >= target_db:
            reached.append(time.perf_counter() - start)
            t.stop()

    trainer.train()
    trainer.close()
    return reached[0] if reached else math.inf


def _hand_written(target_db: float, epochs: int, batches: int, batch_size: int, size: int) -> float:
    """The same training, no framework."""
    image = default_image(size, seed=0)
    height, width = image.shape[1], image.shape[2]
    target = image.permute(1, 2, 0).reshape(-1, 3).contiguous()
    torch.manual_seed(SEED)
    field = ImageField(height, width)
    groups = [{"params": list(field.grid.parameters())}, {"params": list(field.decoder.parameters())}]
    optimizer = torch.optim.Adam(groups, lr=0.01, eps=1e-15)
    optimizer.param_groups[0]["lr"] *= 10.0
    total = epochs * batches
    milestones = [int(f * total) for f in (0.5, 0.75, 0.9)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.333)
    pixels = height * width
    positions = torch.arange(batches * batch_size, dtype=torch.int32) % pixels
    start = time.perf_counter()
    iteration = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(mix_seed(SEED, epoch)))
        field.train()
        for j in range(batches):
            batch = positions[order[j * batch_size : (j + 1) * batch_size]]
            occupied = field.occupancy.pixels()
            kept = len(occupied)
            if kept < pixels:
                batch = batch[: max(1, math.ceil(len(batch) * kept / pixels))]
                chosen = occupied[batch.long() % kept]
            else:
                chosen = batch.long()
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(field(field.coords(chosen)), target[chosen])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            iteration += 1
            if iteration >= 300 and iteration % 100 == 0:
                field.prune()
        field.eval()
        with torch.no_grad():
            mse = nn.functional.mse_loss(field.render().reshape(-1, 3), target)
        if -10.0 * math.log10(max(float(mse), 1e-12)) >= target_db:
            return time.perf_counter() - start
    return math.inf


def run(target_db: float, repeats: int, epochs: int, batches: int, batch_size: int, size: int) -> list[dict[str, Any]]:
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="stepbus-field-bench-"))
    variants: list[tuple[str, Callable[[], float]]] = [
        ("hand-written PyTorch loop", lambda: _hand_written(target_db, epochs, batches, batch_size, size)),
        (
            "stepbus, same work (LR decay, pruning, validation)",
            lambda: _stepbus(target_db, epochs, batches, batch_size, size, False, tmp),
        ),
        (
            "stepbus, the default app (+ TensorBoard, checkpoints, metrics.json, PNGs)",
            lambda: _stepbus(target_db, epochs, batches, batch_size, size, True, tmp),
        ),
    ]
    for _, fn in variants:  # warm-up: thread pools, allocator, lazy imports (tensorboard, PNG writer)
        fn()
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            samples[name].append(fn())
    base = min(samples[variants[0][0]])
    rows = []
    for name, _ in variants:
        values = samples[name]
        rows.append(
            {
                "variant": name,
                "min": min(values),
                "median": statistics.median(values),
                "ratio": min(values) / base if math.isfinite(base) and base > 0 else math.nan,
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]], target_db: float, repeats: int, batches: int, size: int) -> str:
    lines = [
        f"Machine: {platform.machine()}, torch threads {torch.get_num_threads()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        f"Seconds until the first per-epoch validation reaches {target_db:g} dB PSNR on the built-in {size}x{size} "
        f"image ({batches} batches per epoch); {repeats} interleaved repeats.",
        "",
        "| variant | min s | median s | ratio (min) |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['min']:.2f} | {row['median']:.2f} | {row['ratio']:.3f}x |")
    return "\n".join(lines) + "\n"


def report(*, quick: bool, target: float = 30.0, repeats: int = 3) -> str:
    """Run the case (``quick``: a 64x64 image to 12 dB, once) and return its markdown section."""
    if quick:
        target, repeats, epochs, batches, batch_size, size = 12.0, 1, 2, 10, 512, 64
    else:
        epochs, batches, batch_size, size = 10, 300, 16384, 512
    rows = run(target, repeats, epochs, batches, batch_size, size)
    title = "## Case 3: end to end, the reference app to a PSNR target (benchmarks/image_field.py)"
    return f"{title}\n\n{table(rows, target, repeats, batches, size)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.image_field", description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=30.0, help="PSNR to reach, dB (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (64x64 image, 1 repeat)")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the table (default {RESULTS.name})")
    args = parser.parse_args(argv)
    if args.quick:
        target, repeats, epochs, batches, batch_size, size = 12.0, 1, 2, 10, 512, 64
    else:
        target, repeats, epochs, batches, batch_size, size = args.target, args.repeats, 10, 300, 16384, 512
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    rows = run(target, repeats, epochs, batches, batch_size, size)
    report = table(rows, target, repeats, batches, size)
    print(report, end="")
    if args.out is not None or not args.quick:  # a smoke run leaves the real results alone
        (args.out or RESULTS).write_text(report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
