"""One writer per run directory: an advisory lock on ``<run_dir>/.stepbus.lock``.

A run that writes into a directory -- checkpoints, their temporary files, ``config.yaml``, TensorBoard and W&B
files, ``metrics.json`` -- must be the only one doing so: a second run started into the same directory would
otherwise remove the first one's temporary files, move its ``last.pt`` and delete its checkpoints by retention.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``.stepbus.lock`` in the directory. The kernel releases it when the
process ends, however it ends (``kill -9`` included), so a lock is never stale: a file left behind by a killed
process is simply locked again by the next run. While it holds the lock the holder keeps its pid, host and start time
in the file, so a refused run can say who holds it (:class:`RunDirectoryBusy`). On release the holder removes the
file, then unlocks it; a taker checks that the file it locked is still the one at the path (and tries again if it
was removed meanwhile), so two processes never both believe they hold it. Folders the taker created for the lock file
are removed on release when nothing else was written into them: a run that wrote nothing leaves nothing behind.

A ``flock`` lock belongs to the open file, which a process forked while the lock is held (a DataLoader worker)
would share: after a ``kill -9`` of the holder such a child would keep the directory locked until it exits. So a
forked child closes its copy of the lock file at once (``os.register_at_fork``; it never unlocks it, which would
unlock the parent's): the lock lives exactly as long as the process that took it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["LOCK_NAME", "Holder", "RunDirectoryBusy", "RunLock", "process_alive"]

#: the lock file's name inside the locked directory
LOCK_NAME = ".stepbus.lock"
_ATTEMPTS = 100  # opens of a lock file that a releasing holder removes under our hands, before giving up


@dataclass(frozen=True)
class Holder:
    """Who holds a directory's lock, as its holder wrote it into the lock file."""

    pid: int
    host: str
    started: str  # local time, ``YYYY-mm-dd HH:MM:SS``

    def describe(self) -> str:
        if self.pid == os.getpid() and self.host == socket.gethostname():
            return f"another trainer in this process (pid {self.pid} on host {self.host}, started {self.started})"
        return f"process {self.pid} on host {self.host} (started {self.started})"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory's lock; nothing in the directory was touched.

    ``directory`` and ``holder`` (``None`` when the holder had not yet written its details) say which directory and
    who; ``str(error)`` is the whole message, e.g. ``run directory runs/x is in use by process 1234 on host h
    (started 2026-12-07 01:02:03); wait for it to end or choose another --run-dir``."""

    def __init__(self, message: str, *, directory: Path | None = None, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.directory = directory
        self.holder = holder


class RunLock:
    """The lock of one directory: :meth:`acquire` takes it or raises :class:`RunDirectoryBusy`; :meth:`release`
    gives it back. Not re-entrant: a second ``RunLock`` on the same directory is refused, also in this process.

    Args:
        directory: the directory to lock (created when missing: the lock file lives in it).
        kind: what the directory is, for the message (``"run directory"``, ``"checkpoint directory"``).
        advice: what a refused run should do, ending the message.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        kind: str = "run directory",
        advice: str = "wait for it to end or choose another --run-dir",
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.kind, self.advice = kind, advice
        self._fd: int | None = None
        self._created: list[Path] = []  # folders made for the lock file, the deepest first
        self._fork_guard = False  # whether a forked child closes this lock's file (registered once per object)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (a no-op when this object holds it); :class:`RunDirectoryBusy` when another holds it."""
        if self._fd is not None:
            return
        for attempt in range(_ATTEMPTS):
            try:
                created = _make_folders(self.directory)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except FileNotFoundError as exc:
                if attempt + 1 < _ATTEMPTS:
                    continue  # a releasing holder removed the empty folder meanwhile: make it again
                raise OSError(exc.errno, f"cannot lock {self.kind} {self.directory}: {exc.strerror}") from None
            except OSError as exc:
                raise OSError(exc.errno, f"cannot lock {self.kind} {self.directory}: {exc.strerror}") from None
            self._created = created or self._created
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OSError(exc.errno, f"cannot lock {self.kind} {self.directory}: {exc.strerror}") from None
                self._created = []
                raise self._busy() from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
        else:
            raise OSError(errno.EAGAIN, f"cannot lock {self.kind} {self.directory}: its lock file keeps being replaced")
        holder = Holder(os.getpid(), socket.gethostname(), datetime.now().strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": holder.pid, "host": holder.host, "started": holder.started}).encode(), 0)
        self._fd = fd
        if not self._fork_guard:
            os.register_at_fork(after_in_child=_forget_in_child(weakref.ref(self)))
            self._fork_guard = True

    def release(self) -> None:
        """Give the lock back and remove the lock file (a no-op when this object does not hold it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)  # while still locked: nobody can have locked the path meanwhile
        except OSError:
            pass  # the file stays; the next taker locks it again
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        created, self._created = self._created, []
        for folder in created:
            try:
                folder.rmdir()  # only when empty: whatever the run wrote stays
            except OSError:
                break

    def __del__(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # a lock never outlives its owner (closing the file releases it)

    def holder(self) -> Holder | None:
        """Who holds the lock, from the lock file; ``None`` when it holds no details (yet)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Holder(int(data["pid"]), str(data["host"]), str(data["started"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _busy(self) -> RunDirectoryBusy:
        holder = self.holder()
        who = holder.describe() if holder is not None else "another process (it has not written its pid yet)"
        return RunDirectoryBusy(
            f"{self.kind} {self.directory} is in use by {who}; {self.advice}", directory=self.directory, holder=holder
        )


def _forget_in_child(ref: weakref.ReferenceType[RunLock]) -> Callable[[], None]:
    """The at-fork hook of one lock: in a forked child, close the inherited lock file without unlocking it (the
    lock is the parent's) and forget it, so the child neither keeps the directory locked nor releases it."""

    def forget() -> None:
        lock = ref()
        if lock is not None and lock._fd is not None:
            fd, lock._fd = lock._fd, None
            lock._created = []
            with contextlib.suppress(OSError):
                os.close(fd)

    return forget


def _make_folders(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; returns those it created, the deepest first."""
    missing: list[Path] = []
    folder = directory
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file now at ``path``."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host. A zombie (ended, not yet reaped) counts as ended, and so does a
    thread id (Linux answers ``kill`` for any task: a thread of some process may carry a dead writer's pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no /proc (macOS): kill found a process
    fields = dict(line.partition(":")[::2] for line in status.splitlines())
    return fields.get("Tgid", "").strip() == str(pid) and not fields.get("State", "").strip().startswith("Z")
