"""Writing a range test's result: ``lr_find.json`` (the data) and ``lr_find.png`` (the plot).

The JSON holds the suggestion, why the test stopped, the settings and one ``{"lr", "loss", "smoothed"}`` point per
step (a non-finite loss as ``null``). The plot needs Pillow (in the ``tensorboard``, ``wandb`` and ``dev`` extras);
without it the data is still written and :attr:`LRFindFiles.note` says how to install it. Each file is written
atomically: a crash leaves the previous file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.checkpoint.atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from trainers.tune.range_test import LRRangeResult

__all__ = ["NO_PILLOW", "LRFindFiles", "write_lr_find"]

#: what a missing Pillow costs, and the cure
NO_PILLOW = "the plot needs Pillow, which is not installed: pip install pillow (or stepbus[tensorboard])"


@dataclass(frozen=True)
class LRFindFiles:
    """The files written: ``data`` (JSON) and ``plot`` (PNG, ``None`` without Pillow, when ``note`` says why)."""

    data: Path
    plot: Path | None
    note: str | None = None


def write_lr_find(result: LRRangeResult, directory: Path, *, name: str = "lr_find") -> LRFindFiles:
    """Write ``<directory>/<name>.json`` and ``<name>.png`` (creating ``directory``); see the module docstring."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.json"
    text = (json.dumps(result.as_dict(), indent=1, allow_nan=False) + "\n").encode("utf-8")
    atomic_write(data, lambda f: f.write(text), durable=True)
    try:
        from trainers.tune.plot import draw_plot
    except ImportError as exc:
        if not (exc.name or "").startswith("PIL"):
            raise
        return LRFindFiles(data, None, NO_PILLOW)
    buffer = io.BytesIO()
    draw_plot(result).save(buffer, format="PNG", optimize=True)
    plot = directory / f"{name}.png"
    atomic_write(plot, lambda f: f.write(buffer.getvalue()), durable=True)
    return LRFindFiles(data, plot)
