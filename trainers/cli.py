"""The ``stepbus`` command line (also ``python -m trainers``).

Commands::

    stepbus train [--config FILE] [--set KEY=VALUE ...] [--resume PATH|auto] [--run-dir DIR] [--dry-run]
                  [--epochs N] [--seed S] [--nproc N] [--backend auto|gloo|nccl]
    stepbus gui [--config FILE ...] [--set ...] [--start] [--budget-ms MS]   # train in a window (trainers.gui)
    stepbus callbacks                       # every registered callback (built-in and plugins), its parameters
    stepbus config show [FILE] [--set ...]  # the resolved config (defaults filled in)
    stepbus config validate FILE [--set ...]

Without ``--config`` the built-in default runs: the reference app, ``trainers/apps/configs/image_field.yaml`` (the small
MLP demo is ``--config trainers/apps/configs/demo.yaml``). ``--epochs N`` and ``--seed S`` are short for
``--set trainer.max_epochs=N`` and ``--set run.seed=S``. ``--resume`` reuses the config saved in the
checkpoint (``--config``/``--set`` still override it).

Distributed: ``torchrun --nproc-per-node=N -m trainers train ...`` runs N ranks (multi-node through torchrun's
rendezvous); ``stepbus train --nproc N ...`` starts that ``torchrun --standalone`` itself. Rank 0 picks the run
directory and prints; the trainer does the rest (see ``trainers.engine.trainer.BaseTrainer``).

Exit codes: 0 when the run completed or was stopped by a callback (early stopping), 128 + the signal number when
SIGINT/SIGTERM interrupted it (130 for Ctrl-C; a checkpoint was saved first), 2 for a bad config, bad arguments or an
unusable checkpoint (nothing was trained), 1 when training failed (in a distributed run: on any rank).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from trainers.config.errors import ConfigError
from trainers.engine.signals import exit_code

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.registry import Registry
    from trainers.config.schema import RunConfig
    from trainers.engine.trainer import BaseTrainer

__all__ = ["main", "resolve_run_dir"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepbus", description="stepbus: a PyTorch training loop built on events.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    gui.add_argument("--start", action="store_true", help="start training when the window opens")
    gui.add_argument(
        "--budget-ms",
        type=float,
        default=15.0,
        help="training time per GUI tick in ms, shared by the running trainers (default 15)",
    )
    commands.add_parser("callbacks", help="list the registered callbacks (built-in and plugins) and their parameters")
    config = commands.add_parser("config", help="show or validate a config")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved config (defaults filled in)")
    show.add_argument("file", nargs="?", type=Path, default=None, help="a YAML config (default: the built-in one)")
    _config_options(show, file_flag=False)
    validate = actions.add_parser("validate", help="check a config; exit 0 when valid, 2 otherwise")
    validate.add_argument("file", type=Path, help="a YAML config")
    _config_options(validate, file_flag=False)
    return parser


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


def resolve_run_dir(
    run_dir: Path | None, resume: str | None, *, runs: Path = Path("runs"), name: str = "demo"
) -> tuple[Path, str | None]:
    """The run directory and what to resume from. A resumed checkpoint file's run is continued in place
    (``<run>/checkpoints/step-N.pt`` -> ``<run>``); ``auto`` without ``--run-dir`` picks the newest
    ``<runs>/<name>-*`` that has checkpoints (or starts a new run when there is none)."""
    if resume is not None and resume != "auto":
        source = Path(resume)
        if run_dir is None:
            folder = source if source.is_dir() else source.parent
            run_dir = folder.parent if folder.name == "checkpoints" else folder
        return run_dir, resume
    if run_dir is None and resume == "auto":
        previous = sorted(p for p in runs.glob(f"{name}-*") if (p / "checkpoints").is_dir())
        if previous:
            return previous[-1], "auto"
    if run_dir is None:
        run_dir = runs / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return run_dir, resume


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    errors = Console(stderr=True)
    try:
        if args.command == "train" and args.nproc is not None:
            return _launch(args.nproc, list(sys.argv[1:] if argv is None else argv), errors)
        if args.command == "train":
            return _train(args)
        if args.command == "gui":
            return _gui(args)
        if args.command == "callbacks":
            return _callbacks()
        return _config(args)
    except ConfigError as exc:
        _print_config_error(errors, exc)
        return 2
    except KeyboardInterrupt:  # a Ctrl-C outside train()'s graceful handling (setup, or after it returned)
        errors.print("[red]aborted[/red] by SIGINT")
        return exit_code(signal.SIGINT)


def _print_config_error(console: Console, error: ConfigError) -> None:
    where = f" in {error.source}" if error.source else ""
    console.print(f"[red]config error[/red]{escape(where)}:", highlight=False)
    for problem in error.problems:
        console.print(f"  {escape(str(problem))}", highlight=False, soft_wrap=True)


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"run.seed={args.seed}")
    return overrides


def _launch(nproc: int, argv: list[str], errors: Console) -> int:
    """``--nproc N``: run this very command under ``torchrun --standalone`` on N local processes. Ctrl-C and
    SIGTERM reach the ranks once (through torchrun, which runs in its own session), so each saves and exits."""
    import os
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
    process = subprocess.Popen(command, start_new_session=True)
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


def _train(args: argparse.Namespace) -> int:
    console = Console()
    errors = Console(stderr=True)
    if args.epochs is not None and args.epochs < 1:
        errors.print(f"[red]error:[/red] --epochs must be >= 1, got {args.epochs}")
        return 2
    if args.resume is not None and args.resume != "auto" and not Path(args.resume).exists():
        errors.print(f"[red]error:[/red] --resume {escape(args.resume)}: no such file or directory (or use 'auto')")
        return 2
    # torch is imported only when a command needs it
    from trainers.config.registry import Registry

    registry = Registry.default()
    config, run_dir, resume = _prepare(args.config, _overrides(args), args.run_dir, args.resume, registry)
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
    from trainers.checkpoint.format import CheckpointError
    from trainers.config.builder import build
    from trainers.distributed.peer_failure import PeerFailure
    from trainers.engine.signals import TrainingInterrupted

    if args.dry_run:
        trainer = build(config, run_dir=run_dir, registry=registry, objects={"console": console})
        try:
            _print_dry_run(console, config, trainer, run_dir)
        finally:
            trainer.close()
        return 0
    trainer = build(config, run_dir=run_dir, registry=registry, objects={"console": console})
    console.print(f"[bold]stepbus[/bold] {escape(config.trainer.name)} run in {escape(str(run_dir))}", highlight=False)
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
    except PeerFailure as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
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
        epochs = f"--epochs {trainer.state.max_epochs} "
        nproc = f"--nproc {trainer.world_size} " if trainer.world_size > 1 else ""
        if trainer.is_global_zero:  # rank 0 speaks for the job (the signal may have reached another rank)
            errors.print(
                f"interrupted by {signal.Signals(signum).name} at {trainer.state}; continue with: "
                f"stepbus train {nproc}{epochs}--resume auto --run-dir {escape(str(run_dir))}"
            )
        return exit_code(signum)
    return 0 if status in (Status.COMPLETED, Status.STOPPED) else 1


def _gui(args: argparse.Namespace) -> int:
    """``stepbus gui``: build each config's trainer (with a Preview), show them in one window, run Tk's loop."""
    console = Console()
    errors = Console(stderr=True)
    configs: list[Path | None] = list(args.config or [None])
    if len(configs) > 1 and (args.run_dir is not None or args.resume is not None):
        errors.print("[red]error:[/red] --run-dir and --resume take a single --config")
        return 2
    if not args.budget_ms > 0:
        errors.print(f"[red]error:[/red] --budget-ms must be > 0, got {args.budget_ms}")
        return 2
    if args.epochs is not None and args.epochs < 1:
        errors.print(f"[red]error:[/red] --epochs must be >= 1, got {args.epochs}")
        return 2
    import tkinter as tk

    from trainers.checkpoint.format import CheckpointError
    from trainers.config.builder import build
    from trainers.config.registry import Registry
    from trainers.gui import TrainingWindow

    registry = Registry.default()
    overrides = ["callbacks.preview.enabled=true", *_overrides(args)]  # a --set may still turn it off
    prepared = [_prepare(config, overrides, args.run_dir, args.resume, registry) for config in configs]
    run_dirs = _distinct([run_dir for _, run_dir, _ in prepared])
    try:
        root = tk.Tk(className="stepbus")
    except tk.TclError as exc:
        errors.print(
            f"[red]error:[/red] stepbus gui needs a display ({escape(str(exc))}); set DISPLAY, or run it on a "
            "virtual one: xvfb-run -a stepbus gui",
            soft_wrap=True,
        )
        return 2
    trainers: list[BaseTrainer] = []
    titles: list[str] = []
    window: TrainingWindow | None = None
    try:
        for (config, _, resume), run_dir in zip(prepared, run_dirs, strict=True):
            trainer = build(config, run_dir=run_dir, registry=registry, objects={"console": console})
            trainers.append(trainer)
            titles.append(f"{config.trainer.name}: {run_dir}")
            console.print(f"[bold]stepbus[/bold] {escape(titles[-1])}", highlight=False)
            if resume is not None:
                try:
                    loaded = trainer.resume(resume)
                except (CheckpointError, ValueError) as exc:
                    errors.print(f"[red]error:[/red] --resume {escape(resume)}: {escape(str(exc))}")
                    root.destroy()
                    return 2
                if loaded is not None:
                    console.print(f"resumed from {escape(str(loaded))} at {trainer.state}")
        window = TrainingWindow(trainers, titles=titles, start=args.start, budget=args.budget_ms / 1000, root=root)

        def close_on(signum: int, _frame: object) -> None:  # only a flag: the next tick closes the window
            window.close_requested = signum

        previous = {signum: signal.signal(signum, close_on) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            window.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except BaseException:
        if window is None or not window.closed:
            root.destroy()
        raise
    finally:
        for trainer in trainers:
            trainer.close()
    for title, panel in zip(titles, window.panels, strict=True):
        outcome = f"failed: {panel.error}" if panel.error is not None else panel.trainer.status or "not started"
        console.print(f"{escape(title)}: {escape(str(outcome))} at {panel.trainer.state}", highlight=False)
    console.print(window.clock.text(), highlight=False)
    if window.close_requested is not None:
        return exit_code(window.close_requested)
    return 1 if any(panel.error is not None for panel in window.panels) else 0


def _distinct(run_dirs: list[Path]) -> list[Path]:
    """Run directories made distinct: two configs with the same run name started in the same second get
    ``-1``, ``-2`` suffixes instead of writing into one directory."""
    if len(set(run_dirs)) == len(run_dirs):
        return run_dirs
    return [run_dir.with_name(f"{run_dir.name}-{index + 1}") for index, run_dir in enumerate(run_dirs)]


def _prepare(
    config_file: Path | None, overrides: list[str], run_dir: Path | None, resume: str | None, registry: Registry
) -> tuple[RunConfig, Path, str | None]:
    """The checked config, the run directory and what to resume from, for ``train`` and ``gui``."""
    from trainers.config.builder import load_config

    config = load_config(config_file, overrides=overrides, registry=registry)
    run_dir, resume = resolve_run_dir(run_dir, resume, runs=Path(config.run["dir"]), name=str(config.run["name"]))
    if resume is not None and config_file is None:
        saved = _checkpoint_config(resume, run_dir)
        if saved is not None:  # the resumed run's own config, with this command's --set on top
            data, source = saved
            config = _with_source(load_config(data, overrides=overrides, registry=registry), source)
    return config, run_dir, resume


def _checkpoint_config(resume: str, run_dir: Path) -> tuple[dict[str, Any], str] | None:
    """The config saved in the checkpoint ``--resume`` points at (newest first for a directory or ``auto``), or
    None when there is none to read (the resume itself then reports what is wrong)."""
    from trainers.checkpoint.format import CheckpointError, list_checkpoints, read_metadata

    source = Path(resume) if resume != "auto" else run_dir / "checkpoints"
    files = [source] if source.is_file() else [c.path for c in list_checkpoints(source)] if source.is_dir() else []
    for path in files:
        try:
            config = read_metadata(path).get("config")
        except (CheckpointError, OSError):
            continue
        return (config, f"the config saved in {path}") if isinstance(config, dict) else None
    return None


def _with_source(config: RunConfig, source: str) -> RunConfig:
    from dataclasses import replace

    return replace(config, source=source)


def _print_dry_run(console: Console, config: RunConfig, trainer: BaseTrainer, run_dir: Path) -> None:
    from rich.table import Table

    from lifecycle import Event

    console.print(f"# resolved config ({escape(config.source)}); run directory {escape(str(run_dir))}", highlight=False)
    _print_yaml(console, config.data)
    table = Table(title="handlers, in the order each event calls them", title_justify="left")
    for column in ("event", "handler", "priority", "schedule", "enabled"):
        table.add_column(column, overflow="fold")
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
    console.print(table)
    console.print("dry run: nothing was trained", highlight=False)


def _print_yaml(console: Console, data: dict[str, Any]) -> None:
    """YAML as is: never wrapped at the console's width, so ``stepbus config show > run.yaml`` is valid YAML."""
    from trainers.config.schema import dump_yaml

    console.file.write(dump_yaml(data))
    console.file.flush()


def _callbacks() -> int:
    from rich.table import Table

    from trainers.config.registry import Registry

    registry = Registry.default()
    console = Console()
    console.print(
        "Callbacks, by config name (callbacks.<name>: {key: value}); also every callback takes enabled, priority "
        "and state_key. Code-only parameters (callables, objects) are left out.",
        highlight=False,
    )
    for entry in registry.entries("callback"):
        cls = entry.load()
        console.print(
            f"\n[bold]{escape(entry.name)}[/bold]: {escape(cls.__name__)} ({escape(entry.source)}) "
            f"{escape(entry.summary())}",
            highlight=False,
        )
        table = Table(show_header=True, box=None, padding=(0, 2, 0, 2))
        for column in ("key", "default", "accepts"):
            table.add_column(column, overflow="fold")
        for param in entry.params().values():
            if param.code_only or param.name in ("priority", "state_key"):
                continue
            default = "(required)" if param.default is _required() else repr(param.default)
            table.add_row(param.name, default, param.expected)
        console.print(table)
    _print_trainers(console, registry)
    return 0


def _print_trainers(console: Console, registry: Registry) -> None:
    names = ", ".join(f"{e.name} ({e.source})" for e in registry.entries("trainer"))
    console.print(f"\nTrainers (config: trainer.name): {escape(names)}", highlight=False)


def _required() -> Any:
    from trainers.config.params import REQUIRED

    return REQUIRED


def _config(args: argparse.Namespace) -> int:
    from trainers.config.builder import load_config

    config = load_config(args.file, overrides=args.overrides)
    console = Console()
    if args.action == "show":
        _print_yaml(console, config.data)
        return 0
    enabled = [spec.key for spec in config.callbacks if spec.enabled]
    console.print(
        f"{escape(config.source)}: valid; trainer {escape(config.trainer.name)}, callbacks: "
        f"{escape(', '.join(enabled) or 'none')}",
        highlight=False,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
