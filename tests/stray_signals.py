"""A guard for tests that send SIGINT/SIGTERM: the handlers installed before ``train()`` raise :class:`StraySignal`,
so a signal the trainer fails to catch fails that test instead of ending pytest. A test module uses it with
``from tests.stray_signals import outer_handlers`` (an autouse fixture)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

__all__ = ["SIGNALS", "StraySignal", "outer_handlers", "stray"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StraySignal(Exception):
    """A SIGINT/SIGTERM that reached the handler installed before ``train()``."""


def stray(signum: int, frame: FrameType | None) -> None:
    raise StraySignal(f"{signal.Signals(signum).name} reached the handler that was installed before train()")


@pytest.fixture(autouse=True)
def outer_handlers() -> Iterator[None]:
    """A signal the trainer fails to catch fails the test instead of ending pytest."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, stray)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
