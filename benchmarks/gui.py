"""The GUI's cost and responsiveness: the reference app trained in ``stepbus gui``'s window next to the same app
trained headless, for the same wall time, in one run.

Both build the default app (``trainers/apps/configs/image_field.yaml``: LR decay, pruning, validation every epoch,
TensorBoard, checkpoints, metrics.json; no progress bar, which draws on a terminal) into temporary run directories.
The headless run calls ``trainer.run_for(seconds)``; the windowed one adds the ``Preview`` callback (every 0.5 s) and
runs :class:`~trainers.gui.TrainingWindow`'s ticks (``run_for(budget)`` each, then a refresh) for the same time.
Reported: iterations per second of each and their ratio, and the window's frame times -- the period between two
training ticks (what a click waits for at most) and how long each tick blocked the event loop (median, p95, max;
the max is a validation or a checkpoint save, which a step cannot interrupt).

Run: ``python -m benchmarks.gui`` (``--seconds S``, ``--budget-ms MS``, ``--screenshot PNG`` to save the window,
``--quick`` for a smoke run). Needs an X display: it starts Xvfb itself when ``DISPLAY`` is unset. Prints a markdown
table and writes it to ``benchmarks/results-gui.md`` unless ``--out`` says otherwise (``--quick`` writes only to
``--out``).
"""

from __future__ import annotations

import _tkinter
import argparse
import os
import platform
import tempfile
import time
import tkinter as tk
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from trainers.config.builder import build
from trainers.engine.trainer import BaseTrainer

__all__ = ["main"]

RESULTS = Path(__file__).with_name("results-gui.md")
APP = Path(__file__).resolve().parents[1] / "trainers" / "apps" / "configs" / "image_field.yaml"


def _trainer(run_dir: Path, *, preview: bool, quick: bool) -> BaseTrainer:
    overrides = ["callbacks.progress.enabled=false", f"callbacks.preview.enabled={str(preview).lower()}"]
    if quick:
        overrides += ["trainer.size=64", "trainer.batch_size=512", "trainer.batches_per_epoch=20"]
    return build(APP, overrides=overrides, run_dir=run_dir)


def _headless(seconds: float, quick: bool) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(Path(tmp), preview=False, quick=quick)
        start = time.perf_counter()
        trainer.run_for(seconds)
        elapsed = time.perf_counter() - start
        iterations = trainer.state.iteration
        trainer.stop()
        trainer.close()
    return iterations, elapsed


def _windowed(
    seconds: float, budget: float, quick: bool, screenshot: Path | None
) -> tuple[int, float, dict[str, float]]:
    from trainers.gui import TrainingWindow

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(Path(tmp), preview=True, quick=quick)
        window = TrainingWindow([trainer], titles=["image_field (default app)"], budget=budget, start=True)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and not trainer.is_finished:
            if not window.root.tk.dooneevent(_tkinter.ALL_EVENTS | _tkinter.DONT_WAIT):  # one event, as mainloop
                time.sleep(0.001)
        elapsed = time.perf_counter() - start
        iterations = trainer.state.iteration
        trainer.pause()
        window.root.update()  # nothing trains now: a full update draws the final state
        if screenshot is not None:
            _grab(window.root, screenshot)
        stats = window.frame_stats()
        window.close()
        trainer.close()
    return iterations, elapsed, stats


def _grab(root: tk.Misc, path: Path) -> None:
    """Save the window as PNG (Pillow's X11 grab of the window's rectangle)."""
    from PIL import ImageGrab

    x, y = root.winfo_rootx(), root.winfo_rooty()
    width, height = root.winfo_width(), root.winfo_height()
    path.parent.mkdir(parents=True, exist_ok=True)
    ImageGrab.grab(bbox=(x, y, x + width, y + height), xdisplay=os.environ["DISPLAY"]).save(path)
    print(f"screenshot: {path} ({width}x{height})")


def _display() -> AbstractContextManager[object]:
    """The display the window opens on: ``DISPLAY`` when set, else a private Xvfb."""
    if os.environ.get("DISPLAY"):
        return nullcontext()
    from trainers.gui import on_virtual_display

    return on_virtual_display(1400, 1000)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="wall time of each run (default 20)")
    parser.add_argument("--budget-ms", type=float, default=15.0, help="the window's training time per tick")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the window as this PNG at the end")
    parser.add_argument("--quick", action="store_true", help="a tiny image and 2 s runs (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help=f"write the table here (default {RESULTS.name})")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds
    with _display():
        headless, headless_s = _headless(seconds, args.quick)
        windowed, windowed_s, stats = _windowed(seconds, args.budget_ms / 1000, args.quick, args.screenshot)
    headless_rate, windowed_rate = headless / headless_s, windowed / windowed_s
    lines = [
        f"GUI cost, `{APP.name}` app, {seconds:.0f} s each, budget {args.budget_ms:.0f} ms per "
        f"tick ({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)",
        "",
        "| run | iterations | it/s | vs headless |",
        "|---|---:|---:|---:|",
        f"| headless `run_for` | {headless} | {headless_rate:.1f} | 1.00x |",
        f"| in the window (Preview every 0.5 s) | {windowed} | {windowed_rate:.1f} | "
        f"{windowed_rate / headless_rate:.2f}x |",
        "",
        "| window frame times (ms) | median | p95 | max |",
        "|---|---:|---:|---:|",
    ]
    if stats:
        for name, label in (("frame", "period between training ticks"), ("tick", "event loop blocked per tick")):
            lines.append(
                f"| {label} | {stats[f'{name}_p50_ms']:.1f} | {stats[f'{name}_p95_ms']:.1f} | "
                f"{stats[f'{name}_max_ms']:.1f} |"
            )
        lines.append(f"\n{stats['frames']:.0f} frames measured.")
    table = "\n".join(lines)
    print(table)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(table + "\n", encoding="utf-8")
    return table


if __name__ == "__main__":
    main()
