"""``with trainer.inference():`` -- run the pipeline between training steps without changing the training.

A GUI renders between ticks, a validator evaluates between steps. Each can change what the next step does in ways
that are easy to miss: a forward pass in train mode draws dropout masks from the global RNG (so the next training
step draws other ones), a renderer that calls ``pipeline.eval()`` and never restores it trains the rest of the epoch
in eval mode, and a forward pass with gradients enabled builds a graph for nothing. Inside the block the pipeline
is in eval mode under ``torch.no_grad()``; when the block ends (also by an exception) every module's own train flag
and the RNG states (torch CPU and CUDA, ``random``, numpy) are put back as they were, so a render between every
step leaves the run bit-identical to one without renders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from trainers.checkpoint.rng import capture_rng, restore_rng

__all__ = ["inference"]


@contextmanager
def inference(pipeline: nn.Module) -> Iterator[None]:
    """``pipeline`` in eval mode under ``no_grad`` inside the block; train flags and RNG states restored after it."""
    modes = [(module, module.training) for module in pipeline.modules()]
    rng = capture_rng()
    pipeline.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training  # each module's own flag: one left in eval on purpose stays so
        restore_rng(rng)
