"""The GUI tests run on a real X server: a private Xvfb started once per session (Debian's xvfb package, installed by
the setup that CI runs). ``DISPLAY`` points at it for the in-process windows and the ``stepbus gui`` subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trainers.gui import virtual_display


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    previous = os.environ.get("DISPLAY")
    with virtual_display(1600, 1000) as name:
        os.environ["DISPLAY"] = name
        try:
            yield name
        finally:
            if previous is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous
