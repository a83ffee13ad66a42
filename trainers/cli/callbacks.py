"""``stepbus callbacks``: every registered callback (built-in and plugins) with its config parameters, and the
registered trainers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.registry import Registry

__all__ = ["callbacks_command"]


def callbacks_command() -> int:
    """``stepbus callbacks``; returns the exit code."""
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
