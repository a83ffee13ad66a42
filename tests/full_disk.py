"""A real full disk for the tests: a small tmpfs mounted under the test's folder, filled to the last byte by a
child process at the moment it chooses.

Where ``mount -t tmpfs`` is not allowed (no root, a container without the capability) the same tests run on a
file size limit instead: the child ignores ``SIGXFSZ`` and sets ``RLIMIT_FSIZE`` to 0 for itself and the processes
it started (W&B's service), so that every write into a file fails with ``EFBIG`` -- the error a full disk becomes
under a quota of file size -- until the child lifts it again. ``STEPBUS_FULL_DISK=rlimit`` picks that mode on a
machine that could mount.

Parent side: ``with full_disk(tmp_path) as disk:`` mounts (and unmounts in a ``finally``); ``disk.env()`` tells a
child where the disk is and how to fill it; ``disk.reason()`` is the plain words a failed write must be reported
with. Child side: :func:`fill` and :func:`unfill` (a no-op on tmpfs: files outside the disk were never affected).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Disk", "fill", "full_disk", "run_case", "unfill"]

ROOT = Path(__file__).resolve().parents[1]

_ROOT, _MODE = "STEPBUS_TEST_DISK", "STEPBUS_TEST_DISK_MODE"


@dataclass(frozen=True)
class Disk:
    """A disk a child can fill: ``root`` (where to write), ``mode`` (``"tmpfs"`` or ``"rlimit"``)."""

    root: Path
    mode: str

    def env(self) -> dict[str, str]:
        """The environment a child needs for :func:`fill`."""
        return {_ROOT: str(self.root), _MODE: self.mode}

    def reason(self) -> str:
        """The plain words of a write that failed on the filled disk."""
        if self.mode == "tmpfs":
            return f"no space left on device (0 bytes free on {self.root})"
        return "file too large (this process may not write more than 0 bytes into a file: ulimit -f)"

    def free(self) -> int:
        """Bytes free on the disk now."""
        stats = os.statvfs(self.root)
        return stats.f_bfree * stats.f_frsize


def run_case(disk: Disk, run_dir: Path, **case: Any) -> subprocess.CompletedProcess[str]:
    """Run ``tests/full_disk_run.py`` with ``case`` (its run directory ``run_dir``, off the disk) in a child that
    writes onto ``disk``; W&B, offline, keeps its own files in ``run_dir`` too."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir / "spec.json"
    spec.write_text(json.dumps({**case, "run_dir": str(run_dir), "disk": str(disk.root)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(disk.env(), PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(run_dir / "wandb-config"))
    env.update(WANDB_CACHE_DIR=str(run_dir / "wandb-cache"), WANDB_DATA_DIR=str(run_dir / "wandb-data"))
    return subprocess.run(
        [sys.executable, "-m", "tests.full_disk_run", str(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@contextlib.contextmanager
def full_disk(base: Path, size: str = "8m") -> Iterator[Disk]:
    """A tmpfs of ``size`` mounted at ``base/disk`` (unmounted on the way out), or the ``RLIMIT_FSIZE`` stand-in
    where it cannot be mounted (see the module docstring)."""
    root = base / "disk"
    root.mkdir()
    mounted = False
    if os.environ.get("STEPBUS_FULL_DISK") != "rlimit":
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(root)], capture_output=True
        )
        mounted = done.returncode == 0
    try:
        yield Disk(root, "tmpfs" if mounted else "rlimit")
    finally:
        if mounted and subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=True)  # a process still holds a file: detach


def _children() -> list[int]:
    """The processes this one started (W&B's service), from ``/proc``."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return found


def fill() -> None:
    """Child side: make every further write on the disk fail (see the module docstring)."""
    root, mode = Path(os.environ[_ROOT]), os.environ[_MODE]
    if mode == "tmpfs":
        fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        block = b"\0" * 65536
        try:
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        break
                    block = block[: len(block) // 2]  # the last blocks, to the last byte
        finally:
            os.close(fd)
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    for pid in _children():
        with contextlib.suppress(OSError):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))


def unfill() -> None:
    """Child side: let this process write files outside the disk again (the disk itself stays full)."""
    if os.environ[_MODE] == "rlimit":
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
