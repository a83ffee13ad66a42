"""``TrainingWindow``: one Tk window over one or more trainers, training on Tk's own event loop.

A tick (``root.after``) gives each running trainer a share of the frame budget through ``trainer.run_for(seconds)``
(at least one step), refreshes the panels, and schedules the next tick 1 ms later -- Tk handles clicks and redraws in
between. So no thread owns a trainer, every button acts between two steps, and the window's latency is one tick.
:class:`~trainers.gui.FrameClock` measures it (shown in the status bar, and in :meth:`TrainingWindow.frame_stats`).

Keys: space starts/pauses every trainer, ``s`` (or Right) steps each once, Ctrl-S saves, Ctrl-Q or closing the window
ends every started run cleanly (``post_training`` once; the checkpointer saves) and destroys the window.
"""

from __future__ import annotations

import time
import tkinter as tk
from collections.abc import Callable, Sequence
from tkinter import ttk
from typing import TYPE_CHECKING

from trainers.gui.frames import FrameClock
from trainers.gui.panel import TrainerPanel

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["TrainingWindow"]

#: the tick interval while nothing trains (the window still refreshes)
_IDLE_MS = 50


class TrainingWindow:
    """A window with one :class:`TrainerPanel` per trainer, side by side.

    Args:
        trainers: the trainers to show (built and configured by the caller, who also closes them).
        titles: a heading per trainer (default: the trainer's class name).
        budget: seconds of training per tick, shared by the running trainers (a step longer than the budget still
            runs whole: the budget bounds how many steps a tick starts, not how long one takes).
        start: start training at once; otherwise every trainer waits, paused, for Start.
        image_size: the box each picture is fitted to, in pixels.
        root: an existing ``tk.Tk`` (default: a new one).
    """

    def __init__(
        self,
        trainers: Sequence[BaseTrainer],
        *,
        titles: Sequence[str] | None = None,
        budget: float = 0.015,
        start: bool = False,
        image_size: int = 256,
        root: tk.Tk | None = None,
    ) -> None:
        if not trainers:
            raise ValueError("TrainingWindow needs at least one trainer")
        if titles is not None and len(titles) != len(trainers):
            raise ValueError(f"TrainingWindow: {len(titles)} titles for {len(trainers)} trainers")
        if not budget > 0:
            raise ValueError(f"TrainingWindow: budget must be > 0 seconds, got {budget!r}")
        self.root = root if root is not None else tk.Tk(className="stepbus")
        self.root.title("stepbus")
        style = ttk.Style(self.root)
        if "clam" in style.theme_names():
            style.theme_use("clam")
        self.budget = budget
        self.clock = FrameClock()
        self.closed = False
        self.close_requested: int | None = None  #: set (to a signal number) by a signal handler; the tick closes
        body = ttk.Frame(self.root, padding=4)
        body.pack(fill="both", expand=True)
        self.panels: list[TrainerPanel] = []
        for index, trainer in enumerate(trainers):
            if not start and not trainer.is_finished:
                trainer.pause()
            title = titles[index] if titles is not None else type(trainer).__name__
            panel = TrainerPanel(body, trainer, title=title, image_size=image_size)
            panel.widget.grid(row=0, column=index, sticky="n", padx=4)
            self.panels.append(panel)
        self.status = ttk.Label(self.root, text=self.clock.text(), anchor="w", padding=(8, 2))
        self.status.pack(fill="x")
        self.root.bind("<space>", lambda _event: self._each(TrainerPanel.start_pause))
        self.root.bind("<KeyPress-s>", lambda _event: self._each(TrainerPanel.step))
        self.root.bind("<Right>", lambda _event: self._each(TrainerPanel.step))
        self.root.bind("<Control-s>", lambda _event: self._each(TrainerPanel.save))
        self.root.bind("<Control-q>", lambda _event: self.close())
        self.root.protocol("WM_DELETE_WINDOW", self.close)
        self._tick_id: str | None = self.root.after(0, self._tick)

    def _each(self, action: Callable[[TrainerPanel], None]) -> None:
        for panel in self.panels:
            action(panel)

    def _tick(self) -> None:
        self._tick_id = None
        if self.close_requested is not None:
            self.close()
            return
        start = time.perf_counter()
        running = [panel for panel in self.panels if panel.running]
        for panel in running:
            panel.advance(self.budget / len(running))
        for panel in self.panels:
            panel.refresh()
        if running:
            self.clock.record(start, time.perf_counter())
        else:
            self.clock.idle()
        self.status.configure(text=self.clock.text())
        if not self.closed:
            self._tick_id = self.root.after(1 if running else _IDLE_MS, self._tick)

    def frame_stats(self) -> dict[str, float]:
        """Frame periods and tick durations in milliseconds (median, p95, max); see :class:`FrameClock`."""
        return self.clock.summary()

    def close(self) -> None:
        """End every started, unfinished run (``post_epoch`` if an epoch is open, then ``post_training`` with
        status ``"stopped"``: once), then destroy the window. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._tick_id is not None:
            self.root.after_cancel(self._tick_id)
            self._tick_id = None
        for panel in self.panels:
            panel.finish()
        self.root.destroy()

    def run(self) -> None:
        """Tk's main loop, until the window is closed. (To drive the window from another loop, process one event at
        a time -- ``root.tk.dooneevent(_tkinter.DONT_WAIT)`` -- not ``root.update()``: it runs until no event is
        pending, and while training the next 1 ms tick is always due again, so it would not return before the end.)"""
        self.root.mainloop()
