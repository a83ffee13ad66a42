"""``DistributedDataParallel`` around the trainer's loss, not around the bare pipeline.

DDP synchronises gradients only for a forward pass that goes through the DDP wrapper, and the wrapper hides the
module's own attributes (``pipeline.occupancy`` becomes ``ddp.module.occupancy``). So the wrapped module is
:class:`LossModule`, whose ``forward(batch)`` is the trainer's ``compute_loss(batch)``: an app keeps calling
``self.pipeline(...)`` and reading its attributes, ``trainer.pipeline`` stays the plain module (its ``state_dict``
has no ``module.`` prefix, so checkpoints move freely between single-process and distributed runs), and every
forward pass inside ``compute_loss`` is seen by DDP's reducer. (Lightning wraps its ``LightningModule`` the same way
for its ``training_step``.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["LossModule", "wrap"]


class LossModule(nn.Module):
    """``pipeline`` (a registered submodule, so DDP sees its parameters and buffers) and the loss to compute."""

    def __init__(self, pipeline: nn.Module, compute_loss: Callable[[Any], Any]) -> None:
        super().__init__()
        self.pipeline = pipeline
        self._compute_loss = compute_loss

    def forward(self, batch: Any) -> Any:
        return self._compute_loss(batch)


def wrap(
    pipeline: nn.Module, compute_loss: Callable[[Any], Any], device: torch.device, options: Mapping[str, Any] | None
) -> DistributedDataParallel:
    """The DDP wrapper (which broadcasts rank 0's parameters and buffers to every rank as it is built).
    ``options`` are ``DistributedDataParallel`` keyword arguments (``find_unused_parameters``, ``static_graph``,
    ``bucket_cap_mb``, ``gradient_as_bucket_view``...)."""
    settings = dict(options or {})
    for fixed in ("module", "device_ids", "output_device"):
        if fixed in settings:
            raise ValueError(f"ddp options: {fixed!r} is set by the trainer (from its device); remove it")
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    try:
        return DistributedDataParallel(LossModule(pipeline, compute_loss), device_ids=device_ids, **settings)
    except TypeError as exc:
        raise TypeError(f"ddp options {sorted(settings)}: {exc}") from None
