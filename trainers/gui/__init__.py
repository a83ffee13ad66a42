"""``stepbus gui``: train in a Tk window (standard library only) -- a thin display over one or more trainers.

The window owns no training state: counters, pause and the run's end are the trainer's own (``trainer.state``,
``trainer.is_paused``, ``trainer.phase``), pictures and curves come from the trainer's :class:`~callbacks.Preview`
callback, and callbacks are toggled through their bus handles. Training runs on Tk's event loop: a tick
(``root.after``) calls ``trainer.run_for(budget)`` for each running trainer, so no thread owns a trainer and the
window stays responsive between ticks. See :class:`TrainingWindow`.
"""

from __future__ import annotations

from trainers.gui.frames import FrameClock
from trainers.gui.panel import TrainerPanel
from trainers.gui.window import TrainingWindow
from trainers.gui.xvfb import on_virtual_display, virtual_display

__all__ = ["FrameClock", "TrainerPanel", "TrainingWindow", "on_virtual_display", "virtual_display"]
