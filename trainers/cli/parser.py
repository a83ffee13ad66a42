"""The ``stepbus`` argument parser, and the ``--set`` overrides a parsed command line amounts to."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "overrides"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; building it imports nothing heavy, so ``--help`` stays fast."""
    parser = argparse.ArgumentParser(prog="stepbus", description="stepbus: a PyTorch training loop built on events.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    train = commands.add_parser(
        "train", help="train from a config (default: the reference app, trainers/apps/configs/image_field.yaml)"
    )
    _config_options(train, file_flag=True)
    train.add_argument("--epochs", type=int, default=None, help="short for --set trainer.max_epochs=N")
    train.add_argument("--seed", type=int, default=None, help="short for --set run.seed=S")
    train.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where checkpoints and outputs go (default: <run.dir>/<run.name>-<timestamp>, or the resumed run's)",
    )
    train.add_argument(
        "--resume",
        metavar="PATH|auto",
        default=None,
        help="continue from a checkpoint file, a checkpoints directory, or 'auto': the newest loadable checkpoint "
        "of --run-dir, or of the newest <run.dir>/<run.name>-* run",
    )
    train.add_argument(
        "--fresh-optimizer",
        action="store_true",
        help="with --resume: continue the saved run (model, iteration and epoch counters, data position, callbacks, "
        "RNG) but start the optimizer and the GradScaler anew from the config's optimizer and hyper-parameters; for "
        "a run resumed with another optimizer or precision",
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train on N processes of this machine: runs torchrun --standalone --nproc-per-node=N -m trainers train",
    )
    train.add_argument(
        "--backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="the torch.distributed backend of a distributed run (auto: nccl on CUDA, gloo otherwise)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and the callbacks with their events, priorities and schedules; do not train",
    )
    gui = commands.add_parser(
        "gui", help="train in a window: live preview and curves, Start/Pause/Step/Stop/Save, callback toggles"
    )
    gui.add_argument(
        "--config",
        type=Path,
        action="append",
        default=None,
        help="a YAML config (default: the built-in one); repeat it to train several runs side by side",
    )
    _config_options(gui, file_flag=False)
    gui.add_argument("--epochs", type=int, default=None, help="short for --set trainer.max_epochs=N")
    gui.add_argument("--seed", type=int, default=None, help="short for --set run.seed=S")
    gui.add_argument("--run-dir", type=Path, default=None, help="as for train (one --config only)")
    gui.add_argument("--resume", metavar="PATH|auto", default=None, help="as for train (one --config only)")
    gui.add_argument("--fresh-optimizer", action="store_true", help="as for train (with --resume)")
    gui.add_argument("--start", action="store_true", help="start training when the window opens")
    gui.add_argument(
        "--budget-ms",
        type=float,
        default=15.0,
        help="training time per GUI tick in ms, shared by the running trainers (default 15)",
    )
    _tune_parser(commands)
    commands.add_parser("callbacks", help="list the registered callbacks (built-in and plugins) and their parameters")
    export = commands.add_parser(
        "export", help="write the model of a checkpoint (a file or a sharded directory) as a plain state_dict file"
    )
    export.add_argument("checkpoint", type=Path, help="a checkpoint file or sharded directory, or a checkpoint folder")
    export.add_argument("out", type=Path, help="the state_dict file to write (torch.load(OUT, weights_only=True))")
    config = commands.add_parser("config", help="show or validate a config")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved config (defaults filled in)")
    show.add_argument("file", nargs="?", type=Path, default=None, help="a YAML config (default: the built-in one)")
    _config_options(show, file_flag=False)
    validate = actions.add_parser("validate", help="check a config; exit 0 when valid, 2 otherwise")
    validate.add_argument("file", type=Path, help="a YAML config")
    _config_options(validate, file_flag=False)
    validate.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="check against this run directory, as `train --run-dir DIR` would use it (default: a new one)",
    )
    return parser


def _tune_parser(commands: argparse._SubParsersAction[_CommandParser]) -> None:
    tune = commands.add_parser("tune", help="tune before a run: `tune lr` finds a learning rate (a range test)")
    what = tune.add_subparsers(dest="tune", required=True, metavar="WHAT")
    lr = what.add_parser(
        "lr",
        help="the learning-rate range test: sweep the learning rate on a copy of the run, plot the loss, suggest one",
    )
    _config_options(lr, file_flag=True)
    lr.add_argument("--min-lr", type=float, default=1e-7, help="the first learning rate (default 1e-7)")
    lr.add_argument("--max-lr", type=float, default=10.0, help="the last learning rate (default 10)")
    lr.add_argument("--steps", type=int, default=100, help="optimizer steps at most, one rate each (default 100)")
    lr.add_argument(
        "--mode",
        choices=("exponential", "linear"),
        default="exponential",
        help="how the rate grows (default exponential)",
    )
    lr.add_argument(
        "--smooth", type=float, default=0.9, help="the loss's moving-average weight, 0 <= S < 1 (default 0.9)"
    )
    lr.add_argument(
        "--diverge",
        type=float,
        default=4.0,
        help="stop once the smoothed loss exceeds this many times its best (default 4)",
    )
    lr.add_argument("--optimizer", default=None, metavar="NAME", help="with named optimizers: the one to sweep")
    lr.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where lr_find.png and lr_find.json go (default: <run.dir>/<run.name>-lr-find-<timestamp>)",
    )


class _CommandParser(argparse.ArgumentParser):
    """A command's parser, which also refuses options that need another one (exit 2 with the usage)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        if getattr(parsed, "fresh_optimizer", False) and getattr(parsed, "resume", None) is None:
            self.error("--fresh-optimizer needs --resume PATH|auto: it changes how a checkpoint is loaded")
        return parsed, rest


def _config_options(parser: argparse.ArgumentParser, *, file_flag: bool) -> None:
    if file_flag:
        parser.add_argument("--config", type=Path, default=None, help="a YAML config (default: the built-in one)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable), e.g. --set trainer.max_epochs=5 --set "
        "callbacks.wandb.enabled=true; values are YAML scalars",
    )


def overrides(args: argparse.Namespace) -> list[str]:
    """The command's ``--set`` values, then ``--epochs`` and ``--seed`` as the overrides they stand for."""
    result = list(args.overrides)
    if getattr(args, "epochs", None) is not None:
        result.append(f"trainer.max_epochs={args.epochs}")
    if getattr(args, "seed", None) is not None:
        result.append(f"run.seed={args.seed}")
    return result
