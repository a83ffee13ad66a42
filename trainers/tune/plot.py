"""The range test's plot, drawn with Pillow alone (``PIL.ImageDraw`` and its default font; no plotting library):
the loss against the learning rate on a log axis, the raw loss faint, the smoothed loss bold, the suggestion marked
in red, both axes ticked and labelled.

The vertical range is that of the smoothed loss (padded by 5%): the raw loss, much noisier and spiking as the run
diverges, is clipped to the frame rather than squashing the curve that matters. :class:`PlotAxes` maps a point to
its pixel, the same mapping the drawing uses (a test reads the pixels back through it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # pragma: no cover
    from trainers.tune.range_test import LRRangeResult

__all__ = ["BACKGROUND", "RAW", "SIZE", "SMOOTHED", "SUGGESTION", "PlotAxes", "draw_plot", "plot_axes"]

#: the image's size in pixels, (width, height)
SIZE = (640, 400)
BACKGROUND = (255, 255, 255)
FRAME = (70, 70, 70)
GRID = (228, 228, 228)
TEXT = (30, 30, 30)
RAW = (165, 190, 225)  #: the raw loss: faint
SMOOTHED = (25, 70, 160)  #: the smoothed loss: bold
SUGGESTION = (215, 40, 40)  #: the suggested learning rate

_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 24, 40, 52  # margins around the frame


@dataclass(frozen=True)
class PlotAxes:
    """The frame (``left``, ``top``, ``right``, ``bottom`` in pixels) and the data ranges it shows: ``log10(lr)`` from
    ``x_low`` to ``x_high``, the loss from ``y_low`` to ``y_high``."""

    left: int
    top: int
    right: int
    bottom: int
    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def x_of(self, lr: float) -> float:
        """The pixel column of learning rate ``lr``."""
        share = (math.log10(lr) - self.x_low) / (self.x_high - self.x_low)
        return self.left + share * (self.right - self.left)

    def y_of(self, loss: float) -> float:
        """The pixel row of ``loss``, clipped to the frame."""
        share = (loss - self.y_low) / (self.y_high - self.y_low)
        return min(max(self.bottom - share * (self.bottom - self.top), self.top), self.bottom)


def plot_axes(result: LRRangeResult, size: tuple[int, int] = SIZE) -> PlotAxes:
    """Where ``result``'s plot puts its frame and what ranges it shows."""
    width, height = size
    x_low, x_high = math.log10(result.lrs[0]), math.log10(result.lrs[-1])
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    finite = [v for v in result.smoothed if math.isfinite(v)] or [v for v in result.losses if math.isfinite(v)] or [0.0]
    low, high = min(finite), max(finite)
    pad = (high - low) * 0.05 or max(abs(high) * 0.05, 1e-3)
    return PlotAxes(_LEFT, _TOP, width - _RIGHT, height - _BOTTOM, x_low, x_high, low - pad, high + pad)


def draw_plot(result: LRRangeResult, size: tuple[int, int] = SIZE) -> Image.Image:
    """The plot of ``result`` as an RGB image of ``size`` (see the module docstring)."""
    axes = plot_axes(result, size)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _grid_and_ticks(draw, font, axes)
    _curve(draw, axes, result.lrs, result.losses, RAW, 1)
    _curve(draw, axes, result.lrs, result.smoothed, SMOOTHED, 3)
    if result.suggestion is not None and result.suggestion_index is not None:
        x = axes.x_of(result.suggestion)
        y = axes.y_of(result.smoothed[result.suggestion_index])
        draw.line([(x, axes.top), (x, axes.bottom)], fill=SUGGESTION, width=1)
        draw.ellipse([(x - 5, y - 5), (x + 5, y + 5)], fill=SUGGESTION)
        label = f"suggested lr {result.suggestion:.2e}"
        anchor = "la" if x < (axes.left + axes.right) / 2 else "ra"
        draw.text((x + 6 if anchor == "la" else x - 6, axes.top + 6), label, fill=SUGGESTION, font=font, anchor=anchor)
    draw.rectangle([(axes.left, axes.top), (axes.right, axes.bottom)], outline=FRAME, width=1)
    ended = "diverged" if result.diverged else "completed"
    title = f"LR range test of optimizer {result.optimizer!r}: {len(result.lrs)} steps, {ended}"
    draw.text((axes.left, 12), title, fill=TEXT, font=font)
    draw.text(
        ((axes.left + axes.right) / 2, size[1] - 8), "learning rate (log scale)", fill=TEXT, font=font, anchor="md"
    )
    draw.text((8, axes.top - 14), "loss", fill=TEXT, font=font)
    return image


def _grid_and_ticks(
    draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, axes: PlotAxes
) -> None:
    for value in _lr_ticks(axes.x_low, axes.x_high):
        x = axes.x_of(value)
        draw.line([(x, axes.top), (x, axes.bottom)], fill=GRID)
        draw.line([(x, axes.bottom), (x, axes.bottom + 4)], fill=FRAME)
        draw.text((x, axes.bottom + 7), f"{value:.0e}", fill=TEXT, font=font, anchor="ma")
    for value in _loss_ticks(axes.y_low, axes.y_high):
        y = axes.y_of(value)
        draw.line([(axes.left, y), (axes.right, y)], fill=GRID)
        draw.line([(axes.left - 4, y), (axes.left, y)], fill=FRAME)
        draw.text((axes.left - 7, y), f"{value:.3g}", fill=TEXT, font=font, anchor="rm")


def _curve(
    draw: ImageDraw.ImageDraw,
    axes: PlotAxes,
    lrs: Sequence[float],
    values: Sequence[float],
    colour: tuple[int, int, int],
    width: int,
) -> None:
    """A polyline through the finite points, broken where a value is not finite."""
    run: list[tuple[float, float]] = []
    for lr, value in zip(lrs, values, strict=True):
        if not math.isfinite(value):
            _polyline(draw, run, colour, width)
            run = []
            continue
        run.append((axes.x_of(lr), axes.y_of(value)))
    _polyline(draw, run, colour, width)


def _polyline(
    draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: tuple[int, int, int], width: int
) -> None:
    if len(points) > 1:
        draw.line(points, fill=colour, width=width, joint="curve")
    elif points:
        x, y = points[0]
        draw.ellipse([(x - width, y - width), (x + width, y + width)], fill=colour)


def _lr_ticks(low: float, high: float) -> list[float]:
    """Learning rates to tick between ``10**low`` and ``10**high``: the powers of ten, or 1-2-5 steps when fewer than
    two powers fall in the range."""
    decades = [10.0**k for k in range(math.ceil(low - 1e-9), math.floor(high + 1e-9) + 1)]
    if len(decades) >= 2:
        step = max(1, math.ceil(len(decades) / 10))  # at most about ten labels
        return decades[::step]
    found = []
    for k in range(math.floor(low) - 1, math.ceil(high) + 1):
        for m in (1.0, 2.0, 5.0):
            value = m * 10.0**k
            if low - 1e-9 <= math.log10(value) <= high + 1e-9:
                found.append(value)
    return found


def _loss_ticks(low: float, high: float) -> list[float]:
    """About five round values between ``low`` and ``high`` (steps of 1, 2 or 5 times a power of ten)."""
    raw = (high - low) / 5
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]
