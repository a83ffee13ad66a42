"""``stepbus train``: build the trainer from a config and train, in one process or as one rank of a torchrun job
(``--nproc`` itself is ``trainers.cli.launch``); ``--dry-run`` prints what would run instead."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from callbacks.console_width import console_for, print_whole
from trainers.cli.common import epochs_ok, print_yaml, restore_checkpoint
from trainers.cli.invocation import command_line
from trainers.cli.outcome import report
from trainers.cli.parser import overrides
from trainers.cli.prepare import prepare
from trainers.engine.signals import exit_code

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.registry import Registry
    from trainers.config.schema import RunConfig
    from trainers.engine.trainer import BaseTrainer

__all__ = ["train_command"]


def train_command(args: argparse.Namespace) -> int:
    """``stepbus train`` (without ``--nproc``); returns the exit code."""
    console = console_for()
    errors = console_for(stderr=True)
    if not epochs_ok(args.epochs, errors):
        return 2
    if args.resume is not None and args.resume != "auto" and not Path(args.resume).exists():
        errors.print(f"[red]error:[/red] --resume {escape(args.resume)}: no such file or directory (or use 'auto')")
        return 2
    # torch is imported only when a command needs it
    from trainers.config.registry import Registry

    registry = Registry.default()
    config, run_dir, resume = prepare(args.config, overrides(args), args.run_dir, args.resume, registry)
    started = _start_job(config, args.backend)
    if started:
        run_dir, resume = _agreed_run_dir(run_dir, resume)
        from trainers.distributed.environment import rank

        if rank() != 0:
            console = Console(quiet=True)  # rank 0 speaks for the job
    try:
        return _run(args, config, run_dir, resume, registry, console, errors)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _start_job(config: RunConfig, backend: str) -> bool:
    """In a torchrun job: start the process group now, so the ranks can agree on the run directory before the
    trainer is built (the trainer would start it itself otherwise). Returns whether this process started it."""
    import torch.distributed as dist

    from trainers.data.placement import resolve_device
    from trainers.distributed.environment import init_from_env, launched_world_size, local_device

    if launched_world_size() <= 1 or dist.is_initialized():
        return False
    device = config.data.get("trainer", {}).get("device")
    return init_from_env(local_device(resolve_device(device if isinstance(device, str) else None)), backend=backend)


def _agreed_run_dir(run_dir: Path, resume: str | None) -> tuple[Path, str | None]:
    """Rank 0's run directory (a timestamped name differs between ranks started a second apart) and resume path."""
    import torch.distributed as dist

    box: list[Any] = [(str(run_dir), resume)]
    dist.broadcast_object_list(box, src=0)
    chosen, agreed_resume = box[0]
    return Path(chosen), agreed_resume


def _run(
    args: argparse.Namespace,
    config: RunConfig,
    run_dir: Path,
    resume: str | None,
    registry: Registry,
    console: Console,
    errors: Console,
) -> int:
    from lifecycle import Status
    from trainers.config.builder import build
    from trainers.config.errors import ConfigError
    from trainers.distributed.environment import rank
    from trainers.distributed.peer_failure import PeerFailure
    from trainers.engine.signals import TrainingInterrupted

    if args.dry_run:
        from trainers.config.preflight import preflight_trainer

        with preflight_trainer(config, run_dir, registry, resume=resume, objects={"console": console}) as trainer:
            _print_dry_run(console, config, trainer, run_dir)
        return 0
    try:
        trainer = build(config, run_dir=run_dir, registry=registry, objects={"console": console})
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a run directory that cannot be written, or a bug: told by report()
        return report(errors, exc, state=None, began=False, run_dir=run_dir, speak=rank() == 0)
    console.print(f"[bold]stepbus[/bold] {escape(config.trainer.name)} run in {escape(str(run_dir))}", highlight=False)
    start = trainer.state.iteration
    try:
        if resume is not None and not restore_checkpoint(
            trainer, resume, console, errors, fresh_optimizer=args.fresh_optimizer
        ):
            return 2
        start = trainer.state.iteration  # a step began once the counter passes this
        status = trainer.train()
    except PeerFailure as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except TrainingInterrupted as exc:
        errors.print(f"[red]aborted:[/red] {escape(str(exc))}")
        return exit_code(exc.signum)
    except KeyboardInterrupt:
        errors.print("[red]aborted[/red] by KeyboardInterrupt")
        return exit_code(signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - a refusal (exit 2) or a failure (exit 1, its cause first)
        began = trainer.state.iteration > start
        return report(errors, exc, state=trainer.state, began=began, run_dir=run_dir, speak=trainer.is_global_zero)
    finally:
        trainer.close()
    if status is Status.INTERRUPTED:
        signum = trainer.interrupted_by or signal.SIGINT
        if trainer.is_global_zero:  # rank 0 speaks for the job (the signal may have reached another rank)
            nproc = ["--nproc", str(trainer.world_size)] if trainer.world_size > 1 else []
            epochs = ["--epochs", str(trainer.state.max_epochs)]
            again = command_line("train", *nproc, *epochs, "--resume", "auto", "--run-dir", run_dir)
            errors.print(
                f"interrupted by {signal.Signals(signum).name} at {trainer.state}; continue with: {again}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        return exit_code(signum)
    return 0 if status in (Status.COMPLETED, Status.STOPPED) else 1


def _print_dry_run(console: Console, config: RunConfig, trainer: BaseTrainer, run_dir: Path) -> None:
    from rich.table import Table

    from lifecycle import Event

    console.print(f"# resolved config ({escape(config.source)}); run directory {escape(str(run_dir))}", highlight=False)
    print_yaml(console, config.data)
    table = Table(title="handlers, in the order each event calls them", title_justify="left")
    for column in ("event", "handler", "priority", "schedule", "enabled"):
        table.add_column(column, overflow="fold")  # on a terminal narrower than the table: folded, never cut
    for event in Event:
        for handle in trainer.bus.handles(event):
            schedule = handle.schedule
            table.add_row(
                event.value,
                handle.name,
                str(int(handle.priority)),
                "every time" if schedule is None else str(schedule),
                "yes" if handle.enabled else "no",
            )
    print_whole(console, table)  # not on a terminal: each row on one line, whatever its length
    console.print("dry run: nothing was trained", highlight=False)
