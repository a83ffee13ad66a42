"""Graceful SIGINT / SIGTERM during ``train()``.

The first signal only *asks*: the trainer finishes the current step, serves what the interrupt requested (the
Checkpointer saves), emits ``post_epoch`` and ``post_training(status="interrupted")`` and ``train()`` returns. A
second signal aborts at once by raising :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) from wherever the
main thread is. Nothing here calls ``sys.exit``: exit codes are the CLI's business, so a notebook or a GUI that
calls ``train()`` survives an interrupt.

Handlers are installed only for the duration of ``train()``, only on the main thread (Python delivers signals
there and nowhere else), never over a signal the process ignores (``nohup``, a parent's ``SIG_IGN``), and the
previous handlers are put back afterwards whatever happens.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["GRACEFUL_SIGNALS", "TrainingInterrupted", "exit_code", "graceful_signals"]

#: The signals that interrupt a run gracefully.
GRACEFUL_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by a second interrupting signal: the run is aborted without finishing the step."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received twice: training aborted at once")


def exit_code(signum: int) -> int:
    """The conventional exit code of a process ended by ``signum``: 128 + its number (130 for SIGINT)."""
    return 128 + int(signum)


@contextmanager
def graceful_signals(on_signal: Callable[[int], None]) -> Iterator[bool]:
    """Route SIGINT and SIGTERM to ``on_signal(signum)`` inside the block; yields whether handlers were
    installed (not on a thread other than the main one)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal(signum)

    previous: dict[signal.Signals, object] = {}
    try:
        for sig in GRACEFUL_SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue
            previous[sig] = current
            signal.signal(sig, handler)
        yield True
    finally:
        for sig, old in previous.items():
            # getsignal gives None for a handler installed outside Python; the default is the best restoration
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # type: ignore[arg-type]
