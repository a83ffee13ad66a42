"""How many threads torch computes with in the apps: the ``threads`` key of a config's ``trainer:`` block.

``threads: auto`` (the reference app's default) is one thread less than the physical cores this process may run on,
at least 1 and at most :data:`MAX_AUTO_THREADS` (see :func:`auto_threads`); an integer is used as given; ``null``
leaves torch's setting as it is. The demo and the GAN default to 1: their layers are too small to step faster on more.

Why not torch's own default, all the machine's physical cores: it ignores the CPUs the process is confined to
(``taskset``, a container's cpuset) and a cgroup's CPU quota, and it leaves no core for anything else. Once another
process -- or the run's own TensorBoard writer, progress display or GUI -- wants a core, each of torch's parallel
sections waits for the thread that lost its core. Measured on a 2-core machine, the reference app stepped at 73 it/s
on 2 threads and 55 on 1 while nothing else ran, but at 10 and 46 it/s with about one core kept busy by other
processes, and at 2 and 18 it/s with a second busy process.

``auto`` follows the launcher where it has decided: ``OMP_NUM_THREADS`` (``torchrun`` sets 1 for several local ranks)
is used as it is, and the cores are shared among ``LOCAL_WORLD_SIZE`` ranks. The count depends on the machine, the
process's limits and the environment, never on the load of the moment, so two runs alike compute with the same
threads, as bit-identical reruns need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from trainers.apps.checks import check_threads

__all__ = ["MAX_AUTO_THREADS", "Threads", "apply_threads", "auto_threads", "cgroup_cpus", "cores_available"]

#: ``threads: auto`` uses at most this many threads
MAX_AUTO_THREADS = 8

#: a ``threads`` setting: an integer >= 1, ``"auto"``, or ``None`` (torch's setting, left as it is)
Threads = int | Literal["auto"] | None

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def apply_threads(threads: Threads) -> int:
    """Check ``threads`` (a ``ValueError`` that names what is valid) and set torch's thread count from it; returns
    the count torch computes with now."""
    import torch

    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(auto_threads() if threads == "auto" else threads)
    return torch.get_num_threads()


def auto_threads(environ: Mapping[str, str] = os.environ) -> int:
    """What ``threads: auto`` means here: ``OMP_NUM_THREADS`` when ``environ`` sets it, else this rank's share of
    :func:`cores_available` (among ``LOCAL_WORLD_SIZE`` ranks) less one core when there are several -- left to the
    rest of the machine and to the run's own other threads -- at least 1, at most :data:`MAX_AUTO_THREADS`."""
    chosen = _positive(environ.get("OMP_NUM_THREADS"))
    if chosen is not None:
        return chosen
    cores = cores_available() // (_positive(environ.get("LOCAL_WORLD_SIZE")) or 1)
    return 1 if cores <= 1 else min(MAX_AUTO_THREADS, cores - 1)


def _positive(text: str | None) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value if value >= 1 else None


def cores_available(sys_cpu: Path = _SYS_CPU, cgroup: Path = _CGROUP, proc_cgroup: Path = _PROC_CGROUP) -> int:
    """The physical cores this process may run on: the CPUs of its affinity mask, counting a core's hyper-threads
    once (``sys_cpu``'s topology), and no more than its cgroup's CPU quota (:func:`cgroup_cpus`)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = {_core_of(cpu, sys_cpu) for cpu in cpus}
    quota = cgroup_cpus(cgroup, proc_cgroup)
    return max(1, min(len(cores), quota if quota is not None else len(cores)))


def cgroup_cpus(cgroup: Path = _CGROUP, proc_cgroup: Path = _PROC_CGROUP) -> int | None:
    """The CPUs a cgroup v2 quota (``cpu.max``: ``quota period``, or ``max``) allows this process, rounded up: the
    smallest along its cgroup's path; ``None`` without one (or without cgroup v2)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None
    found: int | None = None
    folder = cgroup / own.strip().lstrip("/")
    while True:
        limit = _quota(folder / "cpu.max")
        if limit is not None:
            found = limit if found is None else min(found, limit)
        if folder == cgroup or cgroup not in folder.parents:
            return found
        folder = folder.parent


def _quota(path: Path) -> int | None:
    try:
        quota, period = path.read_text(encoding="utf-8").split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _core_of(cpu: int, sys_cpu: Path) -> tuple[str, str] | int:
    """The (package, core) a logical CPU belongs to; the CPU itself where the topology cannot be read."""
    topology = sys_cpu / f"cpu{cpu}" / "topology"
    try:
        package = (topology / "physical_package_id").read_text(encoding="utf-8").strip()
        return package, (topology / "core_id").read_text(encoding="utf-8").strip()
    except OSError:
        return cpu
