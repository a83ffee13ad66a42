"""Small pieces more than one command shares: the ``--epochs`` check, loading ``--resume``, printing YAML."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["epochs_ok", "print_yaml", "restore_checkpoint"]


def epochs_ok(epochs: int | None, errors: Console) -> bool:
    """Whether ``--epochs`` is absent or positive; prints the error when it is not."""
    if epochs is not None and epochs < 1:
        errors.print(f"[red]error:[/red] --epochs must be >= 1, got {epochs}")
        return False
    return True


def restore_checkpoint(
    trainer: BaseTrainer, resume: str, console: Console, errors: Console, *, fresh_optimizer: bool = False
) -> bool:
    """Load ``--resume`` into ``trainer`` (with ``--fresh-optimizer``: all but the optimizer and GradScaler
    state); False (the error printed) when the checkpoint cannot be used, so the command exits 2 without training."""
    from trainers.checkpoint.format import CheckpointError

    try:
        loaded = trainer.restore(resume, fresh_optimizer=fresh_optimizer)
    except (CheckpointError, ValueError) as exc:
        errors.print(f"[red]error:[/red] --resume {escape(resume)}: {escape(str(exc))}", soft_wrap=True)
        return False
    if loaded is not None:
        fresh = ""
        if fresh_optimizer:
            names = ", ".join(type(optimizer).__name__ for optimizer in trainer.optimizers.values())
            fresh = f" with a fresh optimizer ({names}) and the configured hyper-parameters"
        console.print(f"resumed from {escape(str(loaded))} at {trainer.state}{escape(fresh)}", soft_wrap=True)
    return True


def print_yaml(console: Console, data: dict[str, Any]) -> None:
    """YAML as is: never wrapped at the console's width, so ``stepbus config show > run.yaml`` is valid YAML."""
    from trainers.config.schema import dump_yaml

    console.file.write(dump_yaml(data))
    console.file.flush()
