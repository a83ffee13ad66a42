"""``stepbus callbacks``: every registered callback (built-in and plugins) with its config keys, and the registered
trainers -- a reference rendered by :mod:`trainers.cli.callback_docs` from the callbacks' docstrings and signatures.

On a terminal it is drawn with rich (tables fit the window, long lines wrap at words); piped or redirected it is
plain text in which nothing is cut: each summary on one line, each table row at its natural width. Listing reads
the callbacks' sources instead of importing them where it can (:meth:`trainers.config.registry.Entry.describe`), so
it costs no torch import.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

__all__ = ["callbacks_command"]


def callbacks_command() -> int:
    """``stepbus callbacks``; returns the exit code."""
    from trainers.cli.callback_docs import collect, render_text
    from trainers.config.registry import Registry

    registry = Registry.default()
    docs = collect(registry)
    trainers = ", ".join(f"{e.name} ({e.source})" for e in registry.entries("trainer"))
    console = Console()
    if not console.is_terminal:
        sys.stdout.write(render_text(docs, trainers))
        return 0
    from rich.padding import Padding
    from rich.table import Table

    from trainers.cli.callback_docs import INTRO, title

    console.print(INTRO, highlight=False)
    for doc in docs:
        name, _, rest = title(doc).partition(":")
        console.print(f"\n[bold]{escape(name)}[/bold]:{escape(rest)}", highlight=False)
        table = Table(show_header=True, box=None, padding=(0, 2, 0, 0), pad_edge=False)
        for column in ("key", "default", "accepts"):
            table.add_column(column, overflow="fold")
        for key in doc.keys:
            table.add_row(key.name, key.default_text(), key.accepts)
        console.print(Padding(table, (0, 0, 0, 2)), highlight=False)
    console.print(f"\nTrainers (config: trainer.name): {escape(trainers)}", highlight=False)
    return 0
