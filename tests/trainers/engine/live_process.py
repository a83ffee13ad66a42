"""A command run as a real subprocess whose output is read as it comes (shared by the CLI tests): wait for a line,
send it signals, collect its exit. It is killed on exit whatever happened."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["LiveProcess", "default_signals"]


def default_signals() -> None:
    """``preexec_fn``: a test runner started in the background may have SIGINT ignored, and children inherit that:
    the command must see a terminal's defaults."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class LiveProcess:
    """``python -m MODULE ARGS`` in ``cwd`` with ``env``."""

    def __init__(self, cwd: Path, module: str, *args: str, env: dict[str, str]) -> None:
        self.args = (module, *args)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
            preexec_fn=default_signals,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._changed = threading.Condition()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._changed:
                sink.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 90, *, stderr: bool = False) -> None:
        """Wait until ``pattern`` appears in the process's stdout (``stderr=True``: its stderr)."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        lines = self._err if stderr else self._out
        with self._changed:
            while regex.search("".join(lines)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    break
                self._changed.wait(min(left, 0.5))
            else:
                return
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"{pattern!r} never appeared in the output of {self.args}:\n{self.output()}")

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.args} still ran after {timeout} s:\n{self.output()}")
        for pump in self._pumps:
            pump.join(timeout=30)
        return code, "".join(self._out), "".join(self._err)

    def output(self) -> str:
        return "stdout:\n" + "".join(self._out) + "\nstderr:\n" + "".join(self._err)

    def __enter__(self) -> LiveProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
