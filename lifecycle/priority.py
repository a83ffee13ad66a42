"""Default priority bands: higher runs first, ties run in registration order.

The bands put the usual order right without thought: what changes training state (pruning, LR decay) runs
before what measures it (validators, metrics), which runs before what reports it (loggers, progress), and the
checkpointer runs last so that it saves everything the others published on the same step.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Priority"]


class Priority(IntEnum):
    """Named priority bands (plain ints work everywhere a priority is accepted)."""

    STATE = 300  #: state changers: grid pruning, LR decay, gradient guard
    VALIDATION = 200  #: validators
    METRICS = 100  #: metric trackers, early stopping: read what validators produced
    DEFAULT = 0  #: user handlers
    LOGGING = -100  #: TensorBoard, W&B
    PROGRESS = -200  #: progress bars, console
    CHECKPOINT = -1000  #: the checkpointer
    FINAL = -2000  #: after the checkpointer's final save: a summary or upload that names the last checkpoint
