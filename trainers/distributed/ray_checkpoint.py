"""stepbus checkpoints as Ray Train checkpoints, and back: what a trainer on a Ray Train worker needs to hand its
checkpoints to Ray and to resume from the one Ray hands back.

A Ray Train checkpoint is a directory. :func:`staged` puts one stepbus checkpoint -- a file (``step-00000016.pt``)
or a directory (a sharded checkpoint) -- under its own name into a fresh temporary directory, hard-linked where the
file system allows it (the checkpoint is not copied twice: Ray copies the staged directory into its storage) and
copied otherwise; :func:`checkpoint_in` finds that entry again in a checkpoint Ray gives back, and
:func:`restore_from_ray` loads it into a trainer before training, on every rank. The restore is stepbus's:
rank 0 checks the checkpoint and every rank loads the file at rank 0's path. On a local or shared file system
that is where Ray stores it; from a remote store (``s3://``) Ray downloads it on each machine into a temporary
directory named after the checkpoint, the same path on every machine whose temporary directory is the same.

Ray is imported inside the functions that use it, never at module import: importing this module costs nothing and
needs no Ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["checkpoint_in", "restore_from_directory", "restore_from_ray", "staged"]


@contextmanager
def staged(checkpoint: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary directory holding ``checkpoint`` (a file or a directory) under its own name, removed on exit.

    Files are hard-linked (no bytes copied) and copied where a link is impossible (another file system, a file
    system without links). Use it around a synchronous ``ray.train.report``: Ray has copied the staged directory
    into its storage when the report returns, before anything in the run can write the checkpoint again."""
    source = Path(checkpoint)
    if not source.exists():
        raise FileNotFoundError(f"the checkpoint {source} to hand to Ray does not exist")
    with tempfile.TemporaryDirectory(prefix="stepbus-ray-") as folder:
        target = Path(folder) / source.name
        if source.is_dir():
            shutil.copytree(source, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(source), str(target))
        yield Path(folder)


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def checkpoint_in(directory: str | os.PathLike[str]) -> Path:
    """The stepbus checkpoint inside a Ray checkpoint's ``directory`` (as :func:`staged` put it there): its one
    entry, a file or a directory, hidden names (Ray's own ``.metadata.json``) left aside. A ``ValueError`` naming
    what the directory holds when that is not exactly one entry."""
    folder = Path(directory)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if len(entries) != 1:
        held = ", ".join(p.name for p in entries) or "nothing"
        raise ValueError(
            f"the Ray checkpoint {folder} should hold one stepbus checkpoint (a file such as step-00000016.pt or a "
            f"sharded checkpoint's directory), as RayReport reports them; it holds {held}"
        )
    return entries[0]


def restore_from_ray(trainer: BaseTrainer) -> Path | None:
    """Restore ``trainer`` from the checkpoint Ray Train hands this run (``ray.train.get_checkpoint()``: a retry
    after a failure, or a run continuing an earlier one's storage); returns the stepbus checkpoint loaded, ``None``
    when Ray has none. Call it on every worker before training (Ray hands every worker the same checkpoint, and the
    restore is collective: rank 0 checks the file, every rank loads it)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return restore_from_directory(trainer, directory)


def restore_from_directory(trainer: BaseTrainer, directory: str | os.PathLike[str]) -> Path | None:
    """Restore ``trainer`` from the stepbus checkpoint in a Ray checkpoint's local ``directory`` (checked with
    :func:`checkpoint_in`). The directory itself goes to ``trainer.restore``, which finds a checkpoint file and a
    sharded checkpoint's directory alike in it."""
    checkpoint_in(directory)
    return trainer.restore(directory)
