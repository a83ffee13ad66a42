"""Reading TensorBoard event files back with tensorboard's own reader, for the tests that check what was written."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def events(directory: Path) -> EventAccumulator:
    """Every event under ``directory`` (no sampling: ``size_guidance`` 0 keeps all scalars, images and tensors)."""
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def series(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every point of a scalar ``tag``."""
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]
