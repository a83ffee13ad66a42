"""Driving a window the way a user does: synthesized Tk pointer and key events, and Tk's own event processing."""

from __future__ import annotations

import _tkinter
import time
import tkinter as tk
from collections.abc import Callable

from lifecycle import Status
from tests import support
from trainers.gui import TrainingWindow

__all__ = ["Recorder", "click", "press", "pump", "pump_until", "run_events"]


def run_events(window: TrainingWindow) -> None:
    """Process one pending Tk event (a tick, a redraw, input), as ``mainloop`` does, or sleep 1 ms when none is due.
    Not ``root.update()``: it processes events until none is pending, and a tick that reschedules itself 1 ms
    later while redraws take longer keeps it busy until the run ends."""
    if not window.root.tk.dooneevent(_tkinter.ALL_EVENTS | _tkinter.DONT_WAIT):
        time.sleep(0.001)


def pump(window: TrainingWindow, seconds: float) -> None:
    """Let Tk run (ticks, redraws, events) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not window.closed:
        run_events(window)


def pump_until(window: TrainingWindow, condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        run_events(window)


def shown(window: TrainingWindow) -> None:
    """Wait until the window is mapped on the screen (input reaches only a viewable window)."""
    if not window.root.winfo_viewable():
        window.root.wait_visibility()


def click(window: TrainingWindow, widget: tk.Misc) -> None:
    """A left click inside ``widget``: pointer enters, button press, button release (what ttk buttons and
    checkbuttons react to). ``event_generate`` handles each event at once; geometry is settled first."""
    shown(window)
    window.root.update_idletasks()
    x, y = widget.winfo_width() // 2, widget.winfo_height() // 2
    widget.event_generate("<Enter>", x=x, y=y)
    widget.event_generate("<ButtonPress-1>", x=x, y=y)
    widget.event_generate("<ButtonRelease-1>", x=x, y=y)
    if not window.closed:
        window.root.update_idletasks()


def press(window: TrainingWindow, key: str) -> None:
    """A key event on the window (``"space"``, ``"KeyPress-s"``, ``"Control-q"``...), handled at once. Key events
    go to the focus window, so the window takes the focus first (and Tk handles the FocusIn it causes)."""
    shown(window)
    window.root.focus_force()
    for _ in range(50):  # a bounded number of pending events: never livelocks on ticks
        if not window.root.tk.dooneevent(_tkinter.ALL_EVENTS | _tkinter.DONT_WAIT):
            break
    window.root.event_generate(f"<{key}>")
    if not window.closed:
        window.root.update_idletasks()


class Recorder(support.Recorder):
    """The shared recording callback (every event method), read as event names and ``post_training`` statuses."""

    def __init__(self, state_key: str = "Recorder") -> None:
        super().__init__(state_key=state_key)

    @property
    def events(self) -> list[str]:
        return self.names()

    @property
    def statuses(self) -> list[Status]:
        return [row[4] for row in self.log if row[0] == "post_training"]

    def count(self, event: str) -> int:
        return self.names().count(event)
