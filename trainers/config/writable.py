"""Whether a directory can be written, or created, decided from the file system as it is: nothing is created.

An existing directory must let this process create entries in it: write and search permission (``os.access``), on a
file system not mounted read-only. A missing one must have, as its nearest existing ancestor, such a directory.
Permissions do not bind root, so a kernel's pseudo file system (``/proc``, ``/sys``, cgroups ...), where nobody can
create a folder whatever the modes say, is recognised by its type in ``/proc/self/mounts``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["unwritable"]

#: file system types of the kernel's own trees: no file or folder can be created there
_PSEUDO = frozenset(
    {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "securityfs", "debugfs", "tracefs", "configfs", "pstore", "bpf"}
    | {"efivarfs", "binfmt_misc", "fusectl", "mqueue", "rpc_pipefs", "nsfs"}
)
_MOUNTS = Path("/proc/self/mounts")
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` (absolute) cannot be written or created, worded to follow its name in a sentence (``is a
    file, not a directory``; ``cannot be created: /x is not writable by this process``), or ``None`` when it can."""
    if folder.exists():
        if not folder.is_dir():
            return "is a file, not a directory"
        reason = _not_writable(folder)
        return None if reason is None else f"is {reason}"
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot be created: {ancestor} is a file, not a directory"
    reason = _not_writable(ancestor)
    return None if reason is None else f"cannot be created: {ancestor} is {reason}"


def _not_writable(directory: Path) -> str | None:
    """Why no entry can be created in the existing ``directory``, or ``None``."""
    kind = _pseudo_file_system(directory)
    if kind is not None:
        return f"on the kernel's {kind} file system, where nothing can be created"
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError as exc:
        return f"not readable as a file system ({exc.strerror or exc})"
    if read_only:
        return "on a read-only file system"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable by this process"
    return None


def _pseudo_file_system(directory: Path) -> str | None:
    """The type of the kernel pseudo file system ``directory`` lies on, or ``None`` (also where there is no
    ``/proc/self/mounts`` to read)."""
    try:
        lines = _MOUNTS.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    real = Path(os.path.realpath(directory))
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1]))
        if (real == point or real.is_relative_to(point)) and (best is None or len(point.parts) >= best[0]):
            best = (len(point.parts), fields[2])  # the deepest mount holding it; the last one mounted wins ties
    return best[1] if best is not None and best[1] in _PSEUDO else None
