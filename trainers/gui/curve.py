"""``Curve``: a Tk canvas plotting a :class:`~callbacks.Preview` history -- losses on a log axis (left), PSNR in dB
(right) -- against the iteration. The legend names each series in its colour; the left axis' labels are losses, the
right axis' are dB."""

from __future__ import annotations

import math
import tkinter as tk
from collections.abc import Mapping, Sequence

__all__ = ["Curve", "split_series"]

#: colours cycled over the plotted series
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 56, 48, 22, 22

_SMALL: tuple[str, int] = ("TkDefaultFont", 8)

Points = Sequence[tuple[int, float]]


def split_series(history: Mapping[str, Points]) -> tuple[dict[str, Points], dict[str, Points]]:
    """The series to plot: losses and MSEs (positive, log axis) and PSNRs (dB axis); others are left out."""
    losses = {k: v for k, v in history.items() if v and ("loss" in k or k.endswith("mse")) and "psnr" not in k}
    quality = {k: v for k, v in history.items() if v and k.endswith("psnr")}
    return losses, quality


class Curve:
    """Redraw with :meth:`draw` when the history changed; each series is thinned to at most one point per pixel."""

    def __init__(self, parent: tk.Misc, *, width: int = 520, height: int = 180) -> None:
        self.width, self.height = width, height
        self.canvas = tk.Canvas(parent, width=width, height=height, background="white", highlightthickness=0)
        self.drawn: dict[str, int] = {}  #: series name -> points drawn at the last draw

    def draw(self, history: Mapping[str, Points]) -> None:
        canvas = self.canvas
        canvas.delete("all")
        losses, quality = split_series(history)
        left, top = _MARGIN_LEFT, _MARGIN_TOP
        right, bottom = self.width - _MARGIN_RIGHT, self.height - _MARGIN_BOTTOM
        canvas.create_rectangle(left, top, right, bottom, outline="#999999")
        self.drawn = {}
        plotted = [*losses.values(), *quality.values()]
        if not plotted:
            canvas.create_text(self.width / 2, self.height / 2, text="no curve yet: press Start", fill="#777777")
            return
        last = max(max(i for i, _ in points) for points in plotted)
        first = min(min(i for i, _ in points) for points in plotted)
        span_x = max(last - first, 1)

        def x_of(iteration: int) -> float:
            return left + (iteration - first) / span_x * (right - left)

        canvas.create_text(left, bottom + 4, text=f"{first:,}", anchor="nw", font=_SMALL)
        canvas.create_text(right, bottom + 4, text=f"{last:,} it", anchor="ne", font=_SMALL)
        legend_x = left
        colours = iter(_COLOURS * 4)
        for axis, series in (("left", losses), ("right", quality)):
            if not series:
                continue
            log = axis == "left"
            values = [_y(v, log) for points in series.values() for _, v in points if not log or v > 0]
            if not values:
                continue
            low, high = min(values), max(values)
            if high - low < 1e-9:
                low, high = low - 0.5, high + 0.5
            pad = (high - low) * 0.05
            low, high = low - pad, high + pad
            self._axis_labels(axis, low, high, log, left, right, top, bottom)
            for name, points in series.items():
                colour = next(colours)
                coords: list[float] = []
                step = max(1, len(points) // max(1, right - left))
                for iteration, value in points[::step]:
                    if log and value <= 0:
                        continue
                    coords += [x_of(iteration), bottom - (_y(value, log) - low) / (high - low) * (bottom - top)]
                if len(coords) >= 4:
                    canvas.create_line(*coords, fill=colour, width=1.5)
                elif coords:
                    canvas.create_oval(coords[0] - 2, coords[1] - 2, coords[0] + 2, coords[1] + 2, fill=colour)
                self.drawn[name] = len(coords) // 2
                label = canvas.create_text(
                    legend_x, 4, text=name.removeprefix("train/"), anchor="nw", fill=colour, font=_SMALL
                )
                box = canvas.bbox(label)
                legend_x = (box[2] if box else legend_x) + 12

    def _axis_labels(
        self, axis: str, low: float, high: float, log: bool, left: int, right: int, top: int, bottom: int
    ) -> None:
        x = left - 4 if axis == "left" else right + 4
        for fraction in (0.0, 0.5, 1.0):
            value = low + (high - low) * fraction
            text = f"{10**value:.3g}" if log else f"{value:.1f}"
            y = bottom - fraction * (bottom - top)
            self.canvas.create_text(x, y, text=text, anchor="e" if axis == "left" else "w", font=_SMALL)


def _y(value: float, log: bool) -> float:
    return math.log10(value) if log else value
