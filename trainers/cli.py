"""The ``stepbus`` command line (also ``python -m trainers``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepbus", description="stepbus: a PyTorch training loop built on events.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="run a training (for now: the built-in demo)")
    train.add_argument("--epochs", type=int, default=5, help="number of epochs (default 5)")
    train.add_argument("--seed", type=int, default=0, help="seed for data order and initialisation (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 completed, 1 otherwise, 2 bad arguments)."""
    args = _parser().parse_args(argv)
    console = Console()
    if args.epochs < 1:
        Console(stderr=True).print(f"[red]error:[/red] --epochs must be >= 1, got {args.epochs}")
        return 2
    from trainers.demo import run_demo  # torch is imported only when a command needs it

    status = run_demo(max_epochs=args.epochs, seed=args.seed, console=console)
    return 0 if status == "completed" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
