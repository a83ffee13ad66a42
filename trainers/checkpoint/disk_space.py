"""A write that failed for lack of room, recognised and told in plain words (torch-free; checkpoints, loggers and
``metrics.json`` share it).

Three errors mean "the bytes did not fit": ``ENOSPC`` (the file system is full), ``EDQUOT`` (the user's quota is used
up) and ``EFBIG`` (the file outgrew a size limit: the process's ``RLIMIT_FSIZE``, ``ulimit -f``, or the file
system's largest file). They rarely arrive as they are: ``torch.save``'s zip writer reports a failed write as a
``RuntimeError`` (``[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0``) that keeps the ``OSError``
only as its ``__context__``, and a writer in another process (W&B's service) only logs it. So:

* :func:`full_disk_error` finds the ``OSError`` in an exception's ``__cause__``/``__context__`` chain;
* :func:`no_room_left` tells whether the file system holding a path has no byte left for this user, the test for an
  error that wraps no ``OSError`` at all (made while the failed file still occupies its space);
* :func:`describe_full_disk` words it: ``no space left on device (0 bytes free on /mnt)``, ``disk quota exceeded on
  /home``, ``file too large (this process may not write more than 19.5 KiB into a file: ulimit -f)``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = [
    "FULL_ERRNOS",
    "describe_full_disk",
    "file_size_limit",
    "free_bytes",
    "full_disk_error",
    "human_size",
    "mount_point",
    "no_room_left",
    "words_for_errno",
]

#: the errors of a write that did not fit
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def full_disk_error(error: BaseException | None) -> OSError | None:
    """The ``OSError`` with a :data:`FULL_ERRNOS` code that is ``error`` or lies behind it (its ``__cause__`` or
    ``__context__``, transitively), else ``None``."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return current
        pending.extend((current.__context__, current.__cause__))
    return None


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a file that was never created, a folder removed since)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point of the file system that holds ``path``."""
    current = _existing(Path(path))
    while not os.path.ismount(current) and current.parent != current:
        current = current.parent
    return current


def _room(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(bytes this process may still write, block size) on the file system holding ``path``, or ``None`` where
    that cannot be asked (no ``statvfs``, or it fails). Root may use the blocks reserved for it."""
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:  # pragma: no cover - Windows
        return None
    try:
        stats = statvfs(_existing(Path(path)))
    except OSError:
        return None
    blocks = stats.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else stats.f_bavail
    return int(blocks) * int(stats.f_frsize), int(stats.f_frsize)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write on the file system holding ``path``, or ``None`` where unknown."""
    room = _room(path)
    return None if room is None else room[0]


def no_room_left(path: str | os.PathLike[str]) -> bool:
    """True when the file system holding ``path`` has less than one block left for this process."""
    room = _room(path)
    return room is not None and room[0] < max(room[1], 1)


def human_size(count: int) -> str:
    """``0 bytes``, ``512 bytes``, ``19.5 KiB``, ``3.2 GiB``."""
    if count < 1024:
        return f"{count} byte{'' if count == 1 else 's'}"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def file_size_limit() -> int | None:
    """The process's ``RLIMIT_FSIZE`` in bytes, or ``None`` when there is none (or no ``resource`` module)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def words_for_errno(code: int, path: str | os.PathLike[str]) -> str:
    """The plain words for a :data:`FULL_ERRNOS` ``code`` met writing ``path`` (a file or the folder it is in)."""
    mount = mount_point(path)
    if code == errno.ENOSPC:
        free = free_bytes(path)
        room = f"{human_size(free)} free" if free is not None else "free space unknown"
        return f"no space left on device ({room} on {mount})"
    if code == errno.EDQUOT:
        return f"disk quota exceeded on {mount}"
    limit = file_size_limit()
    if limit is not None:
        return f"file too large (this process may not write more than {human_size(limit)} into a file: ulimit -f)"
    return f"file too large (larger than the file system on {mount} allows)"


def describe_full_disk(error: BaseException | None, path: str | os.PathLike[str]) -> str | None:
    """Plain words for a write of ``path`` that failed with ``error`` for lack of room (see the module docstring),
    or ``None`` when ``error`` is not such a failure. The free space is the file system's at the time of the call."""
    found = full_disk_error(error)
    if found is None or found.errno is None:
        return None
    return words_for_errno(found.errno, path)
