"""The ``stepbus`` command line (also ``python -m trainers``).

Commands::

    stepbus train [--config FILE] [--set KEY=VALUE ...] [--resume PATH|auto [--fresh-optimizer]] [--run-dir DIR]
                  [--dry-run] [--epochs N] [--seed S] [--nproc N] [--backend auto|gloo|nccl]
    stepbus gui [--config FILE ...] [--set ...] [--start] [--budget-ms MS]   # train in a window (trainers.gui)
    stepbus tune lr [--config FILE] [--set ...] [--min-lr F] [--max-lr F] [--steps N] [--mode M] [--smooth S]
                    [--diverge D] [--optimizer NAME] [--run-dir DIR]
                                            # the learning-rate range test: lr_find.png, a suggested lr (trainers.tune)
    stepbus callbacks                       # every registered callback (built-in and plugins), its parameters
    stepbus export CHECKPOINT OUT           # the model of a checkpoint (file or sharded directory) as a state_dict
    stepbus config show [FILE] [--set ...]  # the resolved config (defaults filled in)
    stepbus config validate FILE [--set ...] [--run-dir DIR]   # every check train makes; writes nothing

Without ``--config`` the built-in default runs: the reference app, ``trainers/apps/configs/image_field.yaml`` (the small
MLP demo is ``--config trainers/apps/configs/demo.yaml``). ``--epochs N`` and ``--seed S`` are short for
``--set trainer.max_epochs=N`` and ``--set run.seed=S``. ``--resume`` reuses the config saved in the
checkpoint (``--config``/``--set`` still override it).

Distributed: ``torchrun --nproc-per-node=N -m trainers train ...`` runs N ranks (multi-node through torchrun's
rendezvous); ``stepbus train --nproc N ...`` starts that ``torchrun --standalone`` itself. Rank 0 picks the run
directory and prints; the trainer does the rest (see ``trainers.engine.trainer.BaseTrainer``).

Exit codes: 0 when the run completed or was stopped by a callback (early stopping), 128 + the signal number when
SIGINT/SIGTERM interrupted it (130 for Ctrl-C; a checkpoint was saved first), 2 when the input was refused and nothing
was trained -- a bad config or bad arguments, an unusable checkpoint, a run directory that holds another run's
checkpoints, is in use by another live process, or cannot be created or written -- with a message and no traceback;
1 when training failed (in a distributed run: on any rank), with a first line that says where and why (``error:
training failed at epoch 3, iteration 412 in Checkpointer.post_step: OSError: ...``), then the traceback, except for
a full disk, a used-up quota or a file size limit, where that line says it all (see ``trainers.cli.outcome``).

One module per command (``train``, ``launch`` for ``train --nproc``, ``gui``, ``tune``, ``callbacks``, ``config``,
``export``), the argument parser in ``parser``, the config and run directory of ``train`` and ``gui`` in ``prepare``,
how those two end on an error (exit 2 or 1, and what they print) in ``outcome``. ``main`` imports a command's module
only once the arguments name that command, and none of them imports torch at module level: ``stepbus --help`` and
argument errors answer with the parser alone, without torch.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainers.cli.parser import build_parser
from trainers.cli.prepare import resolve_run_dir

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from trainers.config.errors import ConfigError

__all__ = ["main", "resolve_run_dir"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (see the module docstring).

    The arguments are parsed before anything else is imported, and then only the command's own module: ``--help``
    and an argument error cost the parser alone, and no command pays for another's imports."""
    args = build_parser().parse_args(argv)
    from callbacks.console_width import console_for
    from trainers.config.errors import ConfigError
    from trainers.engine.signals import exit_code

    errors = console_for(stderr=True)  # never wrapped off a terminal: a config error's lines stay whole
    try:
        if args.command == "train" and args.nproc is not None:
            from trainers.cli.launch import launch

            return launch(args.nproc, list(sys.argv[1:] if argv is None else argv), errors)
        if args.command == "train":
            from trainers.cli.train import train_command

            return train_command(args)
        if args.command == "gui":
            from trainers.cli.gui import gui_command

            return gui_command(args)
        if args.command == "tune":
            from trainers.cli.tune import tune_command

            return tune_command(args)
        if args.command == "export":
            from trainers.cli.export import export_command

            return export_command(args)
        if args.command == "callbacks":
            from trainers.cli.callbacks import callbacks_command

            return callbacks_command()
        from trainers.cli.config import config_command

        return config_command(args)
    except ConfigError as exc:
        _print_config_error(errors, exc)
        return 2
    except KeyboardInterrupt:  # a Ctrl-C outside train()'s graceful handling (setup, or after it returned)
        errors.print("[red]aborted[/red] by SIGINT")
        return exit_code(signal.SIGINT)


def _print_config_error(console: Console, error: ConfigError) -> None:
    from rich.markup import escape

    where = f" in {error.source}" if error.source else ""
    console.print(f"[red]config error[/red]{escape(where)}:", highlight=False)
    for problem in error.problems:
        console.print(f"  {escape(str(problem))}", highlight=False, soft_wrap=True)
