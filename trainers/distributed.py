"""Where this process stands in a ``torch.distributed`` job: rank, world size, backend, and starting the default
process group from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).

Nothing here is stored: rank and world size are read from torch's own process group each time, so a trainer built
before or after ``init_process_group`` reports the truth, and a single process reports rank 0 of 1.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["default_backend", "init_from_env", "is_distributed", "rank", "world_size"]

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


def default_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices (when this torch has it), ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"


def init_from_env(device: torch.device, *, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Start the default process group when launched by ``torchrun`` with ``WORLD_SIZE`` > 1 (and it is not up yet);
    returns whether this is a distributed run. ``backend`` overrides :func:`default_backend`."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    chosen = backend or default_backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(chosen, timeout=timeout)
    return True
