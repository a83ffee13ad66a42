"""``Preview``: the latest picture of a running trainer and the history of its loss, for a live display (the GUI).

A display must never make training pay per step, so the preview runs on a wall-time schedule (``every="0.5s"`` by
default: the first ``post_step`` at least half a second after the previous capture), plus once at ``post_training``.
A capture calls ``trainer.preview()`` (or ``fn(trainer)``), which returns a mapping::

    {"image": (H, W, C) tensor in [0, 1] or uint8,   # required when the trainer has a preview at all
     "target": (H, W, C) tensor,                      # optional: shown beside it (converted once)
     "psnr": 27.1, ...}                               # optional scalars: recorded in the history

and reads the training loss from the trainer's metric flow (one device read per capture: the mean over the steps
since the previous capture). Validation results (``val/*``) are recorded as they arrive. A trainer without a
``preview`` method still gets the loss and validation history.

A render never changes training: it runs inside ``trainer.inference()`` (eval mode, ``no_grad``; every module's
train flag and the RNG states restored afterwards, see ``trainers.engine.inference``). The picture shows the
weights the trainer is evaluated with: the render runs inside ``EvaluationWeights.of(trainer).applied("preview")``
(:mod:`callbacks.weights`), so with an ``EMA`` registered for
``"preview"`` (its default) it renders the average, and the training weights are back, bit for bit, before training
goes on -- also when the render raises. The picture is converted to bytes inside that block, so an image that views
the weights themselves still shows the average. Without such a provider the render uses the training weights.

The display reads :attr:`Preview.frame` (the latest :class:`Frame`, ``uint8`` pixels as bytes) and
:attr:`Preview.history` and compares :attr:`Preview.version` to see whether anything changed; nothing here knows
about the display, and the display keeps no training state of its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from callbacks.images import tensor_bytes, to_uint8_hwc
from callbacks.loggers.metric_flow import MetricFlow
from callbacks.weights import EvaluationWeights
from lifecycle import Callback, Priority, ScheduleSpec, Status

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.loggers.metric_flow import Window
    from trainers.engine.trainer import BaseTrainer

__all__ = ["Frame", "Preview"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One captured picture: ``pixels`` are ``height * width * channels`` bytes, row-major, channels last."""

    iteration: int
    epoch: int
    height: int
    width: int
    channels: int
    pixels: bytes

    @staticmethod
    def of(image: torch.Tensor, iteration: int, epoch: int, *, name: str) -> Frame:
        pixels = to_uint8_hwc(image, name=name)
        height, width, channels = pixels.shape
        return Frame(iteration, epoch, height, width, channels, tensor_bytes(pixels))


class Preview(Callback):
    """Capture the trainer's latest picture (``trainer.preview()``, or ``fn(trainer)``) and its loss on a wall-time
    schedule and at the end, for a live display such as ``stepbus gui``.

    It captures every ``every`` of wall time (``"0.5s"`` by default) and keeps at most ``history`` points per series:
    every capture until full, then every 2nd, 4th, ... capture (the stride doubles each time), plus the newest --
    evenly spread over the whole run. Renders use the evaluation weights for ``"preview"`` (an ``EMA``'s average when
    one serves it).

    Events: ``pre_training``, ``post_step`` (on the schedule), ``post_validation``, ``post_training``. Publishes
    nothing.
    """

    priority = Priority.LOGGING
    every: ScheduleSpec = "0.5s"
    scheduled = ("post_step",)

    def __init__(
        self,
        *,
        every: ScheduleSpec = "0.5s",
        fn: Callable[[BaseTrainer], Mapping[str, Any]] | None = None,
        history: int = 4096,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        if isinstance(history, bool) or not isinstance(history, int) or history < 2:
            raise ValueError(f"Preview: history must be an int >= 2 (points kept per series), got {history!r}")
        super().__init__(priority=priority, every=every, state_key=state_key)
        self.fn = fn
        self.capacity = history
        self.frame: Frame | None = None  #: the latest picture (None before the first capture or without a preview)
        self.target: Frame | None = None  #: the target picture, when the preview returns one
        self.history: dict[str, list[tuple[int, float]]] = {}  #: series name -> (iteration, value) points
        self.version = 0  #: incremented at every capture and validation: a display redraws when it changed
        self._grids: dict[str, _Grid] = {}
        self._source: Callable[[], Mapping[str, Any]] | None = None
        self._window: Window | None = None

    def setup(self, trainer: BaseTrainer) -> None:
        if self.fn is not None:
            fn = self.fn
            self._source = lambda: fn(trainer)
        else:
            method = getattr(trainer, "preview", None)
            self._source = method if callable(method) else None

    def teardown(self, trainer: BaseTrainer) -> None:
        self._source = self._window = None

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        """Open a window on the metric flow (created then, like the loggers', so a trainer that is built but never
        run keeps no flow handlers)."""
        if self._window is None:
            self._window = MetricFlow.of(trainer).window()

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.capture(trainer)

    def post_validation(self, trainer: BaseTrainer, *, metrics: Mapping[str, float], **payload: Any) -> None:
        iteration = trainer.state.iteration
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                self._add(key if "/" in key else f"val/{key}", iteration, number)
        self.version += 1

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        """The final picture. Not after a failure (the preview may be what failed), and an error here is logged,
        not raised: a display must never keep the handlers after it (checkpointer, loggers) from the run's end."""
        if trainer.state.iteration == 0 or status is Status.FAILED:
            return
        try:
            self.capture(trainer)
        except Exception:  # noqa: BLE001 - logged with its traceback; the run itself already ended
            _log.exception("Preview: the final capture at iteration %d failed", trainer.state.iteration)

    def capture(self, trainer: BaseTrainer) -> None:
        """Take a picture and the loss now (the schedule calls this; a display may call it between steps)."""
        state = trainer.state
        if self._window is not None:
            for key, value in self._window.take(timing=False).items():
                if math.isfinite(value):
                    self._add(key, state.iteration, value)
        if self._source is not None:
            # everything read from the render -- pixels and scalars -- is copied out before the training weights
            # return, since a returned tensor may view the weights themselves
            # in eval mode under no_grad, train flags and RNG states restored after: a render never changes training
            with trainer.inference(), EvaluationWeights.of(trainer).applied("preview"):
                self._show(self._source(), trainer)
        self.version += 1

    def _show(self, shown: object, trainer: BaseTrainer) -> None:
        """Check a render's result and keep its picture, target and scalars."""
        state = trainer.state
        if not isinstance(shown, Mapping) or "image" not in shown:
            got = sorted(shown) if isinstance(shown, Mapping) else type(shown).__name__
            source = "the preview function (fn)" if self.fn is not None else f"{type(trainer).__name__}.preview()"
            raise ValueError(
                f"Preview: {source} must return a mapping with an 'image' (H, W, C) tensor, plus an optional "
                f"'target' and scalars; got {got}"
            )
        self.frame = Frame.of(shown["image"], state.iteration, state.epoch, name="preview 'image'")
        if self.target is None and shown.get("target") is not None:
            self.target = Frame.of(shown["target"], 0, 0, name="preview 'target'")
        for key, value in shown.items():
            number = _number(value) if key not in ("image", "target") else None
            if number is not None:
                self._add(f"preview/{key}", state.iteration, number)

    def _add(self, key: str, iteration: int, value: float) -> None:
        points = self.history.setdefault(key, [])
        if points and points[-1][0] == iteration:  # the final capture at a scheduled one's iteration
            points[-1] = (iteration, value)
            return
        grid = self._grids.setdefault(key, _Grid())
        if grid.provisional:  # the previous newest point was off the grid: the new one replaces it
            points.pop()
        index, grid.seen = grid.seen, grid.seen + 1
        points.append((iteration, value))
        grid.provisional = index % grid.stride != 0
        if not grid.provisional and len(points) > self.capacity - 1:
            kept = points[::2]  # points hold captures 0, s, 2s, ...: keep 0, 2s, 4s, ...
            grid.stride *= 2
            if kept[-1] is not points[-1]:  # the newest always stays, off the new grid until replaced
                kept.append(points[-1])
                grid.provisional = True
            points[:] = kept


class _Grid:
    """Which captures of a series are kept: every ``stride``-th (doubling each time the series is full), plus the
    newest, so the points stay evenly spread over the whole run."""

    __slots__ = ("provisional", "seen", "stride")

    def __init__(self) -> None:
        self.seen = 0  # captures of this series so far
        self.stride = 1
        self.provisional = False  # the last point is the newest capture, not a grid point


def _number(value: object) -> float | None:
    """A finite float from a Python number or a one-element tensor (one host read), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None
