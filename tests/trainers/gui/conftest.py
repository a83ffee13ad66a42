"""The GUI tests run on a real X server: a private Xvfb started once per session (Debian's xvfb package, installed by
the setup that CI runs). ``DISPLAY`` points at it for the in-process windows and the ``stepbus gui`` subprocesses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trainers.gui import on_virtual_display


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    with on_virtual_display(1600, 1000) as name:
        yield name
