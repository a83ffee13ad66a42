"""The progress display in a Jupyter notebook: one output of the running cell, replaced in place at each refresh.

rich draws a live display in a notebook through an ``ipywidgets.Output`` widget: that needs ipywidgets in the
kernel and the widget extension in the front end, and a saved notebook keeps only a reference to a widget that is
gone when the notebook is opened again. Jupyter's own display updates need neither: ``display(...,
display_id=True)`` shows an output and ``update`` replaces it where it is -- in JupyterLab, Notebook, VS Code and a
notebook executed by nbclient alike -- and the saved notebook keeps its last state. So the bars are rendered here as
rich renders any output for a notebook (HTML with inline styles, beside its plain text) and sent as display updates.

A display belongs to a cell. When a later cell steps the trainer (``iterate()``, ``run_for()``), that cell gets a
display of its own and the earlier one keeps the state it ended with. The owner is told when a cell starts and ends
(``on_cell``), so that a cell that steps shows its display at its first step and, when it ends, where its steps left
the run, whatever the refresh throttle said. (Used by the progress display; not a callback.)
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console, RenderableType
from rich.segment import Segment
from rich.terminal_theme import DEFAULT_TERMINAL_THEME

if TYPE_CHECKING:  # pragma: no cover
    from IPython.core.display_functions import DisplayHandle
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["CellMoment", "NotebookDisplay", "notebook_shell", "to_html"]

#: when a cell is at, for ``NotebookDisplay``'s ``on_cell``
CellMoment = Literal["start", "end"]

#: how rich wraps its output for a notebook (``rich.jupyter``): preformatted, scrolled sideways rather than wrapped
_PRE = (
    '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'
    "font-family:Menlo,'DejaVu Sans Mono',consolas,'Courier New',monospace\">{code}</pre>\n"
)


def notebook_shell(console: Console) -> InteractiveShell | None:
    """The IPython shell that ``console`` draws into when it is a notebook's (rich's ``console.is_jupyter``), else
    ``None`` -- also when IPython cannot be imported or runs no shell, where a display could not be shown."""
    if not console.is_jupyter:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell: InteractiveShell | None = get_ipython()
    return shell


def to_html(console: Console, renderable: RenderableType) -> tuple[str, str]:
    """``renderable`` as ``console`` lays it out: its plain text and its HTML (inline styles, rich's colours)."""
    text: list[str] = []
    code: list[str] = []
    for piece, style, control in Segment.simplify(console.render(renderable, console.options)):
        if control:
            continue
        text.append(piece)
        escaped = html.escape(piece, quote=False)
        rule = style.get_html_style(DEFAULT_TERMINAL_THEME) if style else ""
        code.append(f'<span style="{rule}">{escaped}</span>' if rule else escaped)
    return "".join(text), _PRE.format(code="".join(code))


class NotebookDisplay:
    """A live output in the cell that runs, replaced at each :meth:`show`; a new one when another cell runs.

    Args:
        console: lays the renderable out (its width and theme).
        shell: the kernel's IPython shell (:func:`notebook_shell`).
        on_cell: called with ``"start"`` before a cell runs and ``"end"`` after it, until :meth:`close`, when the
            cells run on the thread that created the display (a trainer stepping on another thread refreshes itself).
    """

    def __init__(self, console: Console, shell: InteractiveShell, on_cell: Callable[[CellMoment], None]) -> None:
        self.console = console
        self.shell = shell
        self._on_cell = on_cell
        self._thread = threading.get_ident()
        self._handle: DisplayHandle | None = None
        self._cell: int | None = None
        shell.events.register("pre_run_cell", self._cell_starts)
        shell.events.register("post_run_cell", self._cell_ended)

    def show(self, renderable: RenderableType) -> None:
        """Draw ``renderable`` in the running cell's display (opened by the first call in each cell)."""
        from IPython.display import display

        text, code = to_html(self.console, renderable)
        bundle = {"text/plain": text, "text/html": code}
        cell = self.shell.execution_count
        if self._handle is None or cell != self._cell:
            self._handle = display(bundle, raw=True, display_id=True)  # type: ignore[no-untyped-call]
            self._cell = cell
        else:
            self._handle.update(bundle, raw=True)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop following the cells: the display keeps what it shows last. Idempotent."""
        for event, callback in (("pre_run_cell", self._cell_starts), ("post_run_cell", self._cell_ended)):
            if callback in self.shell.events.callbacks[event]:
                self.shell.events.unregister(event, callback)

    def _cell_starts(self, info: Any = None) -> None:
        if threading.get_ident() == self._thread:
            self._on_cell("start")

    def _cell_ended(self, result: Any = None) -> None:
        if threading.get_ident() == self._thread:
            self._on_cell("end")
