"""Driving a window the way a user does: synthesized Tk pointer and key events, and Tk's own event processing."""

from __future__ import annotations

import time
import tkinter as tk
from collections.abc import Callable
from typing import Any

from callbacks import Callback
from lifecycle import Status
from trainers.base import BaseTrainer
from trainers.gui import TrainingWindow

__all__ = ["Recorder", "click", "press", "pump", "pump_until"]


def pump(window: TrainingWindow, seconds: float) -> None:
    """Let Tk run (ticks, redraws, events) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not window.closed:
        window.root.update()
        time.sleep(0.002)


def pump_until(window: TrainingWindow, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        window.root.update()
        time.sleep(0.002)


def click(window: TrainingWindow, widget: tk.Misc) -> None:
    """A left click inside ``widget``: pointer enters, button press, button release (what ttk buttons and
    checkbuttons react to), then Tk processes the events."""
    window.root.update()
    x, y = widget.winfo_width() // 2, widget.winfo_height() // 2
    widget.event_generate("<Enter>", x=x, y=y)
    widget.event_generate("<ButtonPress-1>", x=x, y=y)
    widget.event_generate("<ButtonRelease-1>", x=x, y=y)
    window.root.update()


def press(window: TrainingWindow, key: str) -> None:
    """A key event on the window (``"space"``, ``"s"``, ``"Control-q"``...)."""
    window.root.update()
    window.root.focus_force()
    window.root.event_generate(f"<{key}>")
    if not window.closed:
        window.root.update()


class Recorder(Callback):
    """Counts every lifecycle event it receives (``post_training`` with its status)."""

    def __init__(self, state_key: str = "Recorder") -> None:
        super().__init__(state_key=state_key)
        self.events: list[str] = []
        self.statuses: list[Status] = []

    def count(self, event: str) -> int:
        return self.events.count(event)

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.events.append("pre_training")

    def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.events.append("pre_step")

    def step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.events.append("step")

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.events.append("post_step")

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.events.append("post_epoch")

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self.events.append("post_training")
        self.statuses.append(status)
