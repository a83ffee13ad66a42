"""``stepbus train --nproc N``: the same command again, under ``torchrun --standalone`` on N local processes."""

from __future__ import annotations

import signal
import sys

from rich.console import Console

from trainers.cli.invocation import COMMAND_ENV, command_words
from trainers.engine.signals import exit_code

__all__ = ["launch"]


def launch(nproc: int, argv: list[str], errors: Console) -> int:
    """``--nproc N``: run this very command under ``torchrun --standalone`` on N local processes. Ctrl-C and
    SIGTERM reach the ranks once (through torchrun, which runs in its own session), so each saves and exits."""
    import os
    import shlex
    import subprocess

    if nproc < 1:
        errors.print(f"[red]error:[/red] --nproc must be >= 1, got {nproc}")
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        errors.print("[red]error:[/red] --nproc inside a torchrun job: drop it (torchrun already started the ranks)")
        return 2
    rest = _without_nproc(argv)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "trainers", *rest]
    environ = {**os.environ, COMMAND_ENV: shlex.join(command_words())}  # the ranks' hints name this command
    process = subprocess.Popen(command, start_new_session=True, env=environ)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not received:
            process.send_signal(signum)  # torchrun passes it on to every rank
        received.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return exit_code(received[0])
    return code


def _without_nproc(argv: list[str]) -> list[str]:
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return rest
