"""Data parallelism for a trainer that orders its own updates (``optimization_step``): no DDP wrapper.

DDP expects one forward and one backward per step through its wrapper; a GAN's update runs several backward passes
over two models that share a graph, which DDP's reducer cannot follow. Such a trainer keeps its replicas equal the
plain way instead: rank 0's parameters and buffers are broadcast once when the trainer is built, and each
optimizer's gradients are averaged across the ranks just before it steps (one flat all-reduce per optimizer step;
the micro-batches of an accumulation window before its last do not communicate at all).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["average_gradients", "broadcast_module"]


def broadcast_module(module: nn.Module) -> None:
    """Every rank gets rank 0's parameters and buffers (what building a DDP wrapper does), on the default group."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Sequence[torch.Tensor], world_size: int) -> None:
    """Replace each gradient with its mean over the ranks, in one all-reduce of a flat buffer per device and dtype.

    A parameter that has no gradient on this rank counts as a zero gradient (another rank's may have one); it then
    gets the averaged gradient, so every rank steps the same parameters with the same values."""
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    for members in buckets.values():
        grads = [p.grad for p in members if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
