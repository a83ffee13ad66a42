"""How wide the console output is: a terminal's width on a terminal, each line's own length anywhere else.

rich lays text out for a terminal: without one (a pipe, ``| tee``, a log file, CI) it assumes ``$COLUMNS`` or 80
columns and wraps, folds or cuts what is longer, so a checkpoint path ends in ``…`` and a printed command spans three
lines. Output that is not read on a terminal is read in a log, copied or searched, where a long line is no harm and a
broken one is. So, when the stream is not a terminal, :func:`console_for` gives a console on which nothing wraps and
tables take their natural width; on a terminal it is rich's own console, unchanged. :func:`print_whole` prints a
table at its natural width on any console that is not a terminal, also one made elsewhere with a narrower width.
(Shared by the progress display and the command line; not a callback.)
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.segment import SegmentLines

__all__ = ["PLAIN_WIDTH", "console_for", "print_whole"]

#: the width a console that is not a terminal lays out for: wider than any line a run prints, so nothing is cut
PLAIN_WIDTH = 1 << 20


def console_for(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): rich's own on a terminal; elsewhere one that never wraps a line
    (``soft_wrap``) and lays tables out at their natural width, whatever ``$COLUMNS`` says."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=PLAIN_WIDTH, soft_wrap=True)


def print_whole(console: Console, renderable: RenderableType) -> None:
    """Print ``renderable`` (a table) at its natural width when ``console`` is not a terminal, even if that is
    wider than the console; on a terminal, as ``console.print`` lays it out."""
    if console.is_terminal:
        console.print(renderable)
        return
    wide = console.options.update_width(PLAIN_WIDTH)
    width = Measurement.get(console, wide, renderable).maximum
    lines = console.render_lines(renderable, wide.update_width(max(width, 1)), pad=False)
    console.print(SegmentLines(lines, new_lines=True), soft_wrap=True, end="")
