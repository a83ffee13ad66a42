"""Where this process stands in a ``torch.distributed`` job: rank, world size, backend, and starting the default
process group from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).

Nothing here is stored: rank and world size are read from torch's own process group each time, so a trainer built
before or after ``init_process_group`` reports the truth, and a single process reports rank 0 of 1.
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT",
    "collective_timeout",
    "default_backend",
    "init_from_env",
    "is_distributed",
    "launched_world_size",
    "local_device",
    "rank",
    "world_size",
]

#: how long a collective may wait for a peer before it fails (instead of hanging on a dead rank)
DEFAULT_TIMEOUT = timedelta(minutes=5)


def is_distributed() -> bool:
    """Whether a default process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` set it (1 when this process was not launched as part of a job)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise RuntimeError(f"WORLD_SIZE={value!r} in the environment is not an integer") from None
    if size < 1:
        raise RuntimeError(f"WORLD_SIZE={size} in the environment: it must be >= 1")
    return size


def local_device(device: torch.device) -> torch.device:
    """In a job, a CUDA device without an index becomes this process's own GPU, ``cuda:<LOCAL_RANK>``; anything
    else is returned as given."""
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def default_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices (when this torch has it), ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"


def init_from_env(
    device: torch.device, *, backend: str | None = None, timeout: timedelta | float | None = None
) -> bool:
    """Start the default process group when launched by ``torchrun`` with ``WORLD_SIZE`` > 1 (and it is not up yet);
    returns whether this is a distributed run.

    ``backend`` overrides :func:`default_backend` (``"gloo"``, ``"nccl"``, or ``"auto"``/``None``). ``timeout``
    (a ``timedelta`` or seconds; default 5 minutes, or ``STEPBUS_DIST_TIMEOUT`` seconds from the environment) bounds
    every collective: a rank never waits longer than that on a peer that died or hangs.

    A group started here is destroyed at interpreter exit (if nobody destroyed it before): left to the
    interpreter's own teardown, gloo's worker threads abort the process (``terminate called without an active
    exception``, exit -6) after all the work is done."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    size = launched_world_size()
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    chosen = default_backend(device) if backend in (None, "auto") else backend
    if chosen not in ("gloo", "nccl", "mpi", "ucc"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl' (or 'mpi', 'ucc'), got {backend!r}")
    if chosen == "nccl" and device.type != "cuda":
        raise ValueError(f"backend 'nccl' needs a CUDA device; this run is on {device} (use 'gloo' or 'auto')")
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(chosen, timeout=collective_timeout(timeout))
    atexit.unregister(_destroy_at_exit)  # once, however often a group was started in this process
    atexit.register(_destroy_at_exit)
    return True


def _destroy_at_exit() -> None:
    """Destroy every process group while the interpreter is still whole (see :func:`init_from_env`).

    A gloo worker thread drops its last reference to a finished collective, and with it the Python tensors, under
    the GIL; if that happens once finalization began, the thread is killed mid-destructor and the process aborts.
    Torch's ``destroy_process_group`` forgets the groups but their threads live on while any handle does (a DDP
    reducer, a trainer's side groups), so the garbage those handles sit in (a trainer is a reference cycle) is
    collected here, which joins the threads, and a last short pause lets the threads of groups still held by live
    objects finish what they were releasing."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
    time.sleep(0.05)


def collective_timeout(timeout: timedelta | float | None = None) -> timedelta:
    """``timeout`` as a ``timedelta``; ``None``: ``STEPBUS_DIST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT`."""
    if isinstance(timeout, timedelta):
        return timeout
    if timeout is None:
        value = os.environ.get("STEPBUS_DIST_TIMEOUT")
        if value is None:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(value)
        except ValueError:
            raise ValueError(f"STEPBUS_DIST_TIMEOUT={value!r} is not a number of seconds") from None
    if isinstance(timeout, bool) or not 0 < timeout < 10**9:  # inf would overflow timedelta
        raise ValueError(f"the collective timeout must be a positive number of seconds (below 1e9), got {timeout!r}")
    return timedelta(seconds=float(timeout))
