"""A virtual X display (Xvfb) for running the GUI with no screen: tests, benchmarks, screenshots on a server."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["on_virtual_display", "virtual_display"]


@contextmanager
def virtual_display(width: int = 1280, height: int = 1024, *, timeout: float = 20.0) -> Iterator[str]:
    """Start ``Xvfb`` on a free display number and yield its name (``":N"``); stop it on exit.

    The display number is chosen by Xvfb itself (``-displayfd``), so parallel runs never collide. Raises
    ``RuntimeError`` naming what to install when ``Xvfb`` is missing, or with Xvfb's own output when it fails.
    """
    executable = shutil.which("Xvfb")
    if executable is None:
        raise RuntimeError(
            "Xvfb is not installed: the GUI needs an X display; install Debian's xvfb package "
            "(apt-get install xvfb), or run with DISPLAY set to a real display"
        )
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [executable, "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        os.close(write_end)
        try:
            display = _read_display(read_end, process, timeout)
            if display is None:
                log.seek(0)
                output = log.read().decode(errors="replace").strip()[-2000:]
                raise RuntimeError(f"Xvfb did not start within {timeout:.0f} s (exit code {process.poll()}): {output}")
            yield f":{display}"
        finally:
            os.close(read_end)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def on_virtual_display(width: int = 1280, height: int = 1024) -> Iterator[str]:
    """:func:`virtual_display` with ``DISPLAY`` pointing at it meanwhile (its previous value restored after), so
    Tk windows opened inside appear there."""
    previous = os.environ.get("DISPLAY")
    with virtual_display(width, height) as name:
        os.environ["DISPLAY"] = name
        try:
            yield name
        finally:
            if previous is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous


def _read_display(fd: int, process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The display number Xvfb writes to ``fd`` (followed by a newline) once it accepts connections."""
    deadline = time.monotonic() + timeout
    text = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                return None  # Xvfb exited
            text += chunk
            if text.endswith(b"\n"):
                return int(text.strip())
        elif process.poll() is not None:
            return None
    return None
