"""``stepbus tune lr``: the learning-rate range test on the trainer a config builds, exactly as ``stepbus train``
would build it (``trainers.config.builder.build``).

It writes ``<run_dir>/lr_find.png`` and ``lr_find.json`` and nothing else -- no ``config.yaml``, checkpoint or
logger file: the test emits no event, so no callback writes -- and prints the suggested learning rate with the
``stepbus train`` command line that uses it. The run directory is locked while the test runs (``.stepbus.lock``,
removed afterwards): a directory that another live run holds is refused. Exit codes: 0 when the test ran (with or
without a suggestion), 2 when the input was refused (bad settings, a bad config, an unknown optimizer, a busy
or unwritable run directory) with one message and no traceback, 1 when the test itself failed (its cause first,
then the traceback).
"""

from __future__ import annotations

import argparse
import traceback
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from callbacks.console_width import console_for
from trainers.cli.invocation import command_line

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.registry import Registry
    from trainers.config.schema import RunConfig
    from trainers.tune.range_test import LRRangeResult

__all__ = ["lr_setting", "tune_command"]


def tune_command(args: argparse.Namespace) -> int:
    """``stepbus tune lr``; returns the exit code."""
    console = console_for()
    errors = console_for(stderr=True)
    from trainers.tune.curve import Settings

    try:
        Settings(
            min_lr=args.min_lr,
            max_lr=args.max_lr,
            steps=args.steps,
            mode=args.mode,
            smooth=args.smooth,
            diverge=args.diverge,
        )
    except ValueError as exc:
        return _refuse(errors, str(exc))
    # torch is imported only now, once the arguments are known to be usable
    from trainers.checkpoint.run_lock import RunDirectoryBusy, RunLock
    from trainers.config.builder import load_config
    from trainers.config.registry import Registry

    registry = Registry.default()
    config = load_config(args.config, overrides=list(args.overrides), registry=registry)
    run_dir = args.run_dir
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(config.run["dir"]) / f"{config.run['name']}-lr-find-{stamp}"
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunDirectoryBusy as exc:
        return _refuse(errors, str(exc))
    except OSError as exc:
        return _refuse(errors, f"{exc.strerror or exc}: choose another --run-dir, or fix the permissions")
    try:
        return _run(args, config, run_dir, registry, console, errors)
    finally:
        lock.release()


def _run(
    args: argparse.Namespace, config: RunConfig, run_dir: Path, registry: Registry, console: Console, errors: Console
) -> int:
    from trainers.config.builder import build
    from trainers.tune.range_test import chosen_optimizer, lr_range_test

    trainer = build(config, run_dir=run_dir, registry=registry, objects={"console": console})
    try:
        try:
            name = chosen_optimizer(trainer, args.optimizer)
        except ValueError as exc:
            return _refuse(errors, str(exc))
        console.print(
            f"[bold]stepbus[/bold] LR range test of {escape(config.trainer.name)}, optimizer {name!r}: up to "
            f"{args.steps} steps from {args.min_lr:g} to {args.max_lr:g} ({args.mode})",
            highlight=False,
        )
        try:
            result = lr_range_test(
                trainer,
                min_lr=args.min_lr,
                max_lr=args.max_lr,
                steps=args.steps,
                mode=args.mode,
                smooth=args.smooth,
                diverge=args.diverge,
                optimizer=name,
            )
        except Exception as exc:  # noqa: BLE001 - the step itself failed: its cause first, then the traceback
            errors.print(
                f"[red]error:[/red] the LR range test failed: {escape(type(exc).__name__)}: {escape(str(exc))}",
                highlight=False,
                soft_wrap=True,
            )
            errors.file.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            errors.file.flush()
            return 1
    finally:
        trainer.close()
    try:
        files = result.save(run_dir)
    except OSError as exc:
        return _refuse(errors, f"could not write the results into {run_dir}: {exc}")
    _print_result(console, args, config, result)
    written = [files.data] if files.plot is None else [files.plot, files.data]
    console.print(f"wrote {' and '.join(escape(str(p)) for p in written)}", highlight=False, soft_wrap=True)
    if files.note is not None:
        errors.print(f"[yellow]note:[/yellow] {escape(files.note)}", highlight=False, soft_wrap=True)
    return 0


def _print_result(console: Console, args: argparse.Namespace, config: RunConfig, result: LRRangeResult) -> None:
    console.print(f"{len(result.lrs)} steps; {escape(result.stopped)}", highlight=False, soft_wrap=True)
    if result.suggestion is None:
        console.print(f"no suggestion: {escape(result.reason)}", highlight=False, soft_wrap=True)
        return
    console.print(f"suggested lr: {result.suggestion!r}; {escape(result.reason)}", highlight=False, soft_wrap=True)
    key = lr_setting(config.data, result.optimizer)
    if key is None:
        console.print(
            f"the config has no optimizer block to set it in: give optimizer {result.optimizer!r} lr="
            f"{result.suggestion:.3g} where the trainer builds it",
            highlight=False,
            soft_wrap=True,
        )
        return
    kept = [o for o in args.overrides if not o.startswith(f"{key}=")]
    words: list[str | Path] = ["train"]
    if args.config is not None:
        words += ["--config", args.config]
    for override in [*kept, f"{key}={result.suggestion:.3g}"]:
        words += ["--set", override]
    console.print(f"train with it: {command_line(*words)}", markup=False, highlight=False, soft_wrap=True)


def lr_setting(data: Mapping[str, Any], optimizer: str) -> str | None:
    """The config key of ``optimizer``'s learning rate: ``trainer.optimizer.lr``, ``trainer.optimizers.<name>.lr``,
    or ``None`` when the config has no optimizer block for it."""
    trainer = data.get("trainer")
    if not isinstance(trainer, Mapping):
        return None
    named = trainer.get("optimizers")
    if isinstance(named, Mapping) and isinstance(named.get(optimizer), Mapping):
        return f"trainer.optimizers.{optimizer}.lr"
    if isinstance(trainer.get("optimizer"), Mapping):
        return "trainer.optimizer.lr"
    return None


def _refuse(errors: Console, message: str) -> int:
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return 2
