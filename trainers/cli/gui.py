"""``stepbus gui``: train one or more configs side by side in a Tk window (``trainers.gui``)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from callbacks.console_width import console_for
from trainers.cli.common import epochs_ok, restore_checkpoint
from trainers.cli.invocation import command_line
from trainers.cli.outcome import REFUSED, refusal, report
from trainers.cli.parser import overrides
from trainers.cli.prepare import prepare
from trainers.engine.signals import exit_code

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer
    from trainers.gui import TrainingWindow

__all__ = ["gui_command"]


def gui_command(args: argparse.Namespace) -> int:
    """``stepbus gui``: build each config's trainer (with a Preview), show them in one window, run Tk's loop."""
    console = console_for()
    errors = console_for(stderr=True)
    configs: list[Path | None] = list(args.config or [None])
    if len(configs) > 1 and (args.run_dir is not None or args.resume is not None):
        errors.print("[red]error:[/red] --run-dir and --resume take a single --config")
        return 2
    if not args.budget_ms > 0:
        errors.print(f"[red]error:[/red] --budget-ms must be > 0, got {args.budget_ms}")
        return 2
    if not epochs_ok(args.epochs, errors):
        return 2
    import tkinter as tk

    from trainers.config.builder import build
    from trainers.config.errors import ConfigError
    from trainers.config.registry import Registry
    from trainers.gui import TrainingWindow

    registry = Registry.default()
    extra = ["callbacks.preview.enabled=true", *overrides(args)]  # a --set may still turn it off
    prepared = [prepare(config, extra, args.run_dir, args.resume, registry) for config in configs]
    run_dirs = _distinct([run_dir for _, run_dir, _ in prepared])
    try:
        root = tk.Tk(className="stepbus")
    except tk.TclError as exc:
        errors.print(
            f"[red]error:[/red] stepbus gui needs a display ({escape(str(exc))}); set DISPLAY, or run it on a "
            f"virtual one: xvfb-run -a {escape(command_line('gui'))}",
            soft_wrap=True,
        )
        return 2
    trainers: list[BaseTrainer] = []
    titles: list[str] = []
    starts: list[int] = []  # each trainer's iteration before training: a step began once it passes it
    window: TrainingWindow | None = None
    try:
        for (config, _, resume), run_dir in zip(prepared, run_dirs, strict=True):
            try:
                trainer = build(config, run_dir=run_dir, registry=registry, objects={"console": console})
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a run directory that cannot be written, or a bug
                root.destroy()
                return report(errors, exc, state=None, began=False, run_dir=run_dir)
            trainers.append(trainer)
            titles.append(f"{config.trainer.name}: {run_dir}")
            console.print(f"[bold]stepbus[/bold] {escape(titles[-1])}", highlight=False)
            if resume is not None and not restore_checkpoint(
                trainer, resume, console, errors, fresh_optimizer=args.fresh_optimizer
            ):
                root.destroy()
                return 2
            starts.append(trainer.state.iteration)
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
    refused = False
    for panel, start, run_dir in zip(window.panels, starts, run_dirs, strict=True):
        began = panel.trainer.state.iteration > start
        message = None if panel.error is None else refusal(panel.error, began=began, run_dir=run_dir)
        if message is not None:  # nothing was trained in that window: say why, as `stepbus train` would
            errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            refused = True
    if refused:  # also when a signal closed the window afterwards: what matters is that nothing was trained
        return REFUSED
    if window.close_requested is not None:
        return exit_code(window.close_requested)
    return 1 if any(panel.error is not None for panel in window.panels) else 0


def _distinct(run_dirs: list[Path]) -> list[Path]:
    """Run directories made distinct: two configs with the same run name started in the same second get
    ``-1``, ``-2`` suffixes instead of writing into one directory."""
    if len(set(run_dirs)) == len(run_dirs):
        return run_dirs
    return [run_dir.with_name(f"{run_dir.name}-{index + 1}") for index, run_dir in enumerate(run_dirs)]
