"""Start the ranks of a real gloo job: under ``torchrun`` (:func:`torchrun`), or by hand (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) as on separate machines: no torchrun agent, so nothing cleans up
after a rank that dies or hangs -- what the tests of failures need. :func:`wait_ranks` collects those within one
time limit and kills what is left."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def torchrun(
    args: Sequence[str], cwd: Path, *, env: Mapping[str, str] | None = None, nproc: int = 2, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node=N <args>`` to the end (a local rendezvous on a free port: a fixed
    ``--master-port 0`` without ``--standalone`` waits forever); its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ranks(
    args: Sequence[str], cwd: Path, *, world: int = 2, env: Mapping[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """``python <args>`` as ranks 0..world-1 of one job (stdout and stderr together, as text)."""
    port = free_port()
    # a timeout left in the environment by the caller's shell would change what the ranks wait for
    inherited = {k: v for k, v in os.environ.items() if k != "STEPBUS_DIST_TIMEOUT"}
    base = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    processes = []
    for rank in range(world):
        job = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, *args],
                env={**base, **job},
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


def wait_ranks(processes: list[subprocess.Popen[str]], limit: float) -> tuple[list[str], float]:
    """Every rank's output, within ``limit`` seconds for all of them (then the rest are killed); and the time
    taken."""
    started = time.monotonic()
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=max(1.0, limit - (time.monotonic() - started)))
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outputs, time.monotonic() - started
