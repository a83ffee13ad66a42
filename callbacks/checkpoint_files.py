"""Which checkpoint files a ``Checkpointer`` keeps (not a callback): the record of one file it wrote, the ranking by
score and the retention split. Pure functions of the file list and the configuration; the checkpointer does the I/O."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from callbacks.metrics import Mode
from lifecycle import SavedCheckpoint

__all__ = ["Saved", "ranked", "retention"]


class Saved:
    """One checkpoint file a checkpointer wrote: name, iteration, score (``None``: not eligible as best), and why it
    was written (``"restored"`` for a file listed in the checkpoint this run was restored from)."""

    __slots__ = ("iteration", "name", "reason", "score")

    def __init__(self, name: str, iteration: int, score: float | None, reason: str) -> None:
        self.name, self.iteration, self.score, self.reason = name, iteration, score, reason

    def as_list(self) -> list[Any]:
        return [self.name, self.iteration, self.score]  # the reason is not kept: it only describes this process's saves

    def published(self, path: Path) -> SavedCheckpoint:
        return SavedCheckpoint(path, self.iteration, self.reason, self.score)


def ranked(files: list[Saved], mode: Mode | None) -> list[Saved]:
    """Scored files, best first; a tie goes to the earlier file (a later one must be strictly better)."""
    scored = [(i, saved) for i, saved in enumerate(files) if saved.score is not None]
    sign = -1.0 if mode == "max" else 1.0
    scored.sort(key=lambda pair: (sign * pair[1].score, pair[0]))  # type: ignore[operator]
    return [saved for _, saved in scored]


def retention(
    directory: Path, files: list[Saved], *, keep_last: int | None, keep_best: int, mode: Mode | None
) -> tuple[list[Saved], list[Saved]]:
    """Split ``files`` (write order, the newest last) into those kept -- the ``keep_last`` newest, the ``keep_best``
    best (or, without ``keep_best``, whatever a stale ``best.pt`` in ``directory`` names) -- and those to delete."""
    keep: set[str] = {files[-1].name}
    keep.update(saved.name for saved in (files if keep_last is None else files[-keep_last:]))
    if keep_best:
        keep.update(saved.name for saved in ranked(files, mode)[:keep_best])
    else:  # a best.pt left by an earlier configuration is not moved: keep what it names
        with contextlib.suppress(OSError):
            keep.add(os.readlink(directory / "best.pt"))
    kept = [saved for saved in files if saved.name in keep]
    return kept, [saved for saved in files if saved.name not in keep]
