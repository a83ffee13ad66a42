"""The two ends of a W&B run as the ``WandbLogger`` sees them (not a callback): before it, the check that
``mode="online"`` has credentials (``wandb.init`` would otherwise prompt for them on a terminal); after it, the exit
code that says how the training ended."""

from __future__ import annotations

import signal

from lifecycle import Status
from trainers.engine.signals import exit_code as signal_exit_code

__all__ = ["check_credentials", "exit_code_of"]


def exit_code_of(status: Status, signum: int | None) -> int:
    """The exit code a W&B run ends with: 0 completed or stopped, ``128 + signal`` interrupted, 1 failed."""
    if status in (Status.COMPLETED, Status.STOPPED):
        return 0
    if status is Status.INTERRUPTED:
        return signal_exit_code(signum if signum is not None else signal.SIGINT)  # no signal: a KeyboardInterrupt
    return 1


def check_credentials(owner: str) -> None:
    """Refuse ``mode="online"`` without W&B credentials: ``wandb.init`` would prompt for them on a terminal."""
    import wandb

    active = wandb.run
    if active is not None and not active.offline:
        return  # an online run in this process already authenticated
    if wandb.login(prompt=False, verify=False):
        return
    raise ValueError(
        f"{owner}: mode='online' needs W&B credentials and none were found (WANDB_API_KEY, ~/.netrc, wandb's "
        "settings; WANDB_MODE=offline in the environment also prevents the check). Run `wandb login` or set "
        "WANDB_API_KEY, or log with mode='offline' and upload later with `wandb sync <dir>/wandb/offline-run-*`. "
        "stepbus never shows W&B's login prompt."
    )
