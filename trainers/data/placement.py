"""Moving batches to the trainer's device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["resolve_device", "to_device"]


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``None`` picks CUDA when available, else the CPU; anything else must be a valid torch device."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1'): {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False here")
    return resolved


def to_device(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    """Move every tensor in ``batch`` (nested tuples, lists, dicts, named tuples) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
