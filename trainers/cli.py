"""The ``stepbus`` command line (also ``python -m trainers``).

Exit codes: 0 when the run completed or was stopped by a callback (early stopping), 128 + the signal number when
SIGINT/SIGTERM interrupted it (130 for Ctrl-C; a checkpoint was saved first), 2 for bad arguments or an unusable
checkpoint (nothing was trained), 1 when training failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from trainers.signals import exit_code

__all__ = ["main", "resolve_run_dir"]

DEMO_NAME = "demo"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepbus", description="stepbus: a PyTorch training loop built on events.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="run a training (for now: the built-in demo)")
    train.add_argument("--epochs", type=int, default=5, help="number of epochs (default 5)")
    train.add_argument("--seed", type=int, default=0, help="seed for data order and initialisation (default 0)")
    train.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where checkpoints and outputs go (default: runs/demo-<timestamp>, or the resumed run's directory)",
    )
    train.add_argument(
        "--resume",
        metavar="PATH|auto",
        default=None,
        help="continue from a checkpoint file, a checkpoints directory, or 'auto': the newest loadable checkpoint "
        "of --run-dir, or of the newest runs/demo-* run",
    )
    return parser


def resolve_run_dir(run_dir: Path | None, resume: str | None, *, runs: Path = Path("runs")) -> tuple[Path, str | None]:
    """The run directory and what to resume from. A resumed checkpoint file's run is continued in place
    (``<run>/checkpoints/step-N.pt`` -> ``<run>``); ``auto`` without ``--run-dir`` picks the newest
    ``runs/demo-*`` that has checkpoints (or starts a new run when there is none)."""
    if resume is not None and resume != "auto":
        source = Path(resume)
        if run_dir is None:
            folder = source if source.is_dir() else source.parent
            run_dir = folder.parent if folder.name == "checkpoints" else folder
        return run_dir, resume
    if run_dir is None and resume == "auto":
        previous = sorted(p for p in runs.glob(f"{DEMO_NAME}-*") if (p / "checkpoints").is_dir())
        if previous:
            return previous[-1], "auto"
    if run_dir is None:
        run_dir = runs / f"{DEMO_NAME}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return run_dir, resume


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        return _train(args)
    except KeyboardInterrupt:  # a Ctrl-C outside train()'s graceful handling (setup, or after it returned)
        Console(stderr=True).print("[red]aborted[/red] by SIGINT")
        return exit_code(signal.SIGINT)


def _train(args: argparse.Namespace) -> int:
    console = Console()
    errors = Console(stderr=True)
    if args.epochs < 1:
        errors.print(f"[red]error:[/red] --epochs must be >= 1, got {args.epochs}")
        return 2
    if args.resume is not None and args.resume != "auto" and not Path(args.resume).exists():
        errors.print(f"[red]error:[/red] --resume {escape(args.resume)}: no such file or directory (or use 'auto')")
        return 2
    # torch is imported only when a command needs it
    from lifecycle import Status
    from trainers.checkpoint import CheckpointError
    from trainers.demo import make_demo_trainer
    from trainers.signals import TrainingInterrupted

    run_dir, resume = resolve_run_dir(args.run_dir, args.resume)
    console.print(
        "[bold]stepbus demo[/bold]: an MLP fits sin(x)cos(y) + 0.1xy with LR decay, validation and checkpoints "
        f"in {escape(str(run_dir))}"
    )
    trainer = make_demo_trainer(max_epochs=args.epochs, seed=args.seed, console=console, run_dir=run_dir)
    try:
        if resume is not None:
            try:
                loaded = trainer.resume(resume)
            except (CheckpointError, ValueError) as exc:
                errors.print(f"[red]error:[/red] --resume {escape(resume)}: {escape(str(exc))}")
                return 2
            if loaded is not None:
                console.print(f"resumed from {escape(str(loaded))} at {trainer.state}")
        status = trainer.train()
    except TrainingInterrupted as exc:
        errors.print(f"[red]aborted:[/red] {escape(str(exc))}")
        return exit_code(exc.signum)
    except KeyboardInterrupt:
        errors.print("[red]aborted[/red] by KeyboardInterrupt")
        return exit_code(signal.SIGINT)
    finally:
        trainer.close()
    if status is Status.INTERRUPTED:
        signum = trainer.interrupted_by or signal.SIGINT
        errors.print(
            f"interrupted by {signal.Signals(signum).name} at {trainer.state}; continue with: "
            f"stepbus train --epochs {args.epochs} --resume auto --run-dir {escape(str(run_dir))}"
        )
        return exit_code(signum)
    return 0 if status in (Status.COMPLETED, Status.STOPPED) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
