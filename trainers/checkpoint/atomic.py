"""Replacing a file atomically: a temporary file in the same folder, then ``os.replace``.

A reader -- or a process started after a crash -- sees the old file or the new one, complete, never a mix. With
``durable=True`` the bytes are flushed and fsynced before the rename and the folder is fsynced after it, so the
rename itself survives a power loss (checkpoints); without it the write costs what a plain write costs (images).
Temporary names are ``.<name>.<pid>.<8 hex>.tmp``: hidden, unique, and recognisable as left over by a dead process.

A write that failed for lack of room always comes out as an ``OSError`` with its ``errno`` (``ENOSPC``, ``EDQUOT``,
``EFBIG``), even where a library wrapped it: ``torch.save``'s zip writer turns the failure of a ``write`` into a
``RuntimeError`` (``unexpected pos 64 vs 0``) that keeps the ``OSError`` only as its context. Such a wrapper is
replaced by an ``OSError`` naming the target, and a ``RuntimeError`` with no ``OSError`` behind it at all is taken as
``ENOSPC`` when the file system has no block left (asked while the temporary file still holds its bytes; see
:mod:`trainers.checkpoint.disk_space`). Every other failure propagates as it is.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from trainers.checkpoint.disk_space import full_disk_error, no_room_left
from trainers.checkpoint.run_lock import process_alive

__all__ = [
    "atomic_link",
    "atomic_write",
    "fsync_directory",
    "remove_checkpoint",
    "remove_dead_temporaries",
    "temporary_name",
]


def temporary_name(target: Path) -> Path:
    """A fresh temporary path beside ``target``."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_dead_temporaries(directory: Path, names: str) -> list[str]:
    """Delete the temporary files (and directories) in ``directory`` of the final names that match the regular
    expression ``names`` whose writer is gone (a process killed mid-write); a live process's, this one's included,
    are never touched.
    Returns the names removed. Call it only while holding the directory's lock (``run_lock``): no other writer of
    this host can then start a write under a pid that is not alive yet."""
    pattern = re.compile(rf"^\.(?:{names})\.(\d+)\.[0-9a-f]{{8}}\.tmp$")
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed: list[str] = []
    for name in entries:
        match = pattern.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not process_alive(pid):
            path = directory / name
            if path.is_dir() and not path.is_symlink():  # a sharded checkpoint's directory, written by several ranks
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[BinaryIO], object], *, durable: bool) -> None:
    """Replace ``target`` with what ``write(file)`` writes. On any failure the temporary file is removed, the
    error propagates (a lack of room as an ``OSError``: see the module docstring), and whatever was at ``target``
    is untouched. The folder must exist."""
    tmp = temporary_name(target)
    # os.open with 0o666 honours the umask like a plain write (mkstemp would force 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        full = _wrapped_full_disk(exc, tmp)  # asked before the temporary file gives its space back
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise OSError(full, os.strerror(full), str(target)) from exc
        raise
    if durable:
        fsync_directory(target.parent)


def _wrapped_full_disk(error: BaseException, tmp: Path) -> int | None:
    """The ``errno`` of a lack of room behind ``error`` when ``error`` is not itself an ``OSError`` (a library's
    wrapper), else ``None``. Only a ``RuntimeError`` -- how torch's writer reports a failed write -- is read as a
    full disk on the file system's word alone."""
    if isinstance(error, OSError) or not isinstance(error, Exception):
        return None
    found = full_disk_error(error)
    if found is not None and found.errno is not None:
        return found.errno
    return errno.ENOSPC if isinstance(error, RuntimeError) and no_room_left(tmp.parent) else None


def atomic_link(directory: Path, link: str, target: str) -> None:
    """Point ``directory/link`` at the file ``target`` of the same directory, atomically: a relative symlink, or a
    hard link where symlinks are unavailable (a hard link cannot dangle either). A link already pointing there is
    left alone. Raises ``OSError`` when neither can be made; the previous link is then intact."""
    path = directory / link
    try:
        if path.is_symlink() and os.readlink(path) == target:
            return
    except OSError:
        pass
    tmp = temporary_name(path)
    try:
        try:
            os.symlink(target, tmp)
        except (OSError, NotImplementedError):
            os.link(directory / target, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file, or a sharded checkpoint directory: that one is renamed to a temporary name first,
    so a kill halfway through leaves no half-deleted directory under a checkpoint's name."""
    if path.is_dir() and not path.is_symlink():
        doomed = temporary_name(path)
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    else:
        path.unlink(missing_ok=True)
