"""Step outputs accumulated on the device, read back once per log point: the metric flow every logger shares.

``trainer.metric_flow`` (created on first use, so a run without loggers pays nothing) adds each step's scalar outputs
-- the ``"loss"`` and whatever else ``compute_loss`` returned as a one-element tensor or a number -- to running
totals that stay on the device: one in-place ``add_`` per step (plus a ``stack`` when there are several metrics),
whatever the number of loggers, and no host synchronisation. A logger holds a :class:`Window` (``flow.window()``):
``window.take()`` returns the means since its previous ``take()`` with a single ``tolist()`` -- one device-to-host
copy per log point, never one per step. Windows are cursors over the shared totals, so loggers on different
schedules never disturb one another.

Names: a step output ``"loss"`` is ``"train/loss"`` in a window's result and ``"epoch/loss"`` in
:meth:`MetricFlow.epoch_means`; timing comes as ``"time/iter_ms"`` (wall time per step over the window) and
``"time/samples_per_s"`` (samples are counted from the first dimension of each batch's first tensor). The wall
time is the window's: validation or a checkpoint save that falls inside a window counts; the set-up before the run's
first step does not.

A step adds into a float32 vector (one ``add_`` when the loss is the only output); every 1024 steps that vector is
folded into float64 totals (float32 on devices without float64), so a window's mean -- the difference of two totals
divided by the count -- keeps float32 precision after millions of steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from lifecycle import Event, Priority

if TYPE_CHECKING:  # pragma: no cover
    from trainers.base import BaseTrainer

__all__ = ["MetricFlow", "Window"]

#: Runs after the state changers and validators, before every logger and progress display.
FLOW_PRIORITY = Priority.METRICS + 50


#: steps summed in float32 before they are folded into the wider totals (bounds the float32 rounding)
FOLD_EVERY = 1024


class MetricFlow:
    """The running totals of one trainer's step outputs (see the module docstring)."""

    def __init__(self, trainer: BaseTrainer) -> None:
        self._device = trainer.device
        self._dtype = torch.float32 if trainer.device.type == "mps" else torch.float64
        self.names: list[str] = []  #: output keys in total order
        self._index: dict[str, int] = {}
        self._all: list[int] = []  # [0, 1, ..., len(names) - 1]
        # a step adds into a float32 vector (one cheap op); every FOLD_EVERY steps it is folded into the float64 one
        self._recent = torch.zeros(0, dtype=torch.float32, device=self._device)
        self._folded = torch.zeros(0, dtype=self._dtype, device=self._device)
        self._counts: list[int] = []  # steps in which each key was present
        self.steps = 0  #: steps accumulated
        self.samples = 0  #: samples counted from the batches
        self._batch_samples = 0
        self._epoch_mark: Window | None = None
        # when the run's first step began: a window opened in pre_training times steps from here, so the set-up
        # that follows it (a W&B run starting, event files opening ...) is not charged to the first row's time/iter_ms
        self._first_step_at: float | None = None
        bus = trainer.bus
        bus.connect(Event.PRE_STEP, self._pre_step, priority=FLOW_PRIORITY, name="metric_flow.pre_step")
        bus.connect(Event.POST_STEP, self._post_step, priority=FLOW_PRIORITY, name="metric_flow.post_step")
        bus.connect(Event.PRE_EPOCH, self._pre_epoch, priority=FLOW_PRIORITY, name="metric_flow.pre_epoch")
        bus.connect(Event.PRE_TRAINING, self._pre_training, priority=FLOW_PRIORITY, name="metric_flow.pre_training")

    # ------------------------------------------------------------------ the per-step part (no host sync)
    def _pre_step(self, trainer: BaseTrainer, *, batch: Any = None, **payload: Any) -> None:
        self._batch_samples = _batch_size(batch)
        if self._first_step_at is None:
            self._first_step_at = time.perf_counter()

    def _pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._first_step_at = None  # a new run (or a resumed one) in this process: timing restarts at its first step

    def _post_step(self, trainer: BaseTrainer, *, outputs: Mapping[str, Any], **payload: Any) -> None:
        values: list[torch.Tensor] = []
        present: list[int] = []
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1 or value.is_complex():
                    continue  # predictions, images ...: not a metric
                value = value.detach()
                if value.dim():
                    value = value.reshape(())
                if value.device != self._device:
                    value = value.to(self._device, non_blocking=True)
                if value.dtype != torch.float32:
                    value = value.float()
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = torch.tensor(float(value), dtype=torch.float32, device=self._device)
            else:
                continue
            index = self._index.get(key)
            if index is None:
                index = self._add_name(key)
            values.append(value)
            present.append(index)
        if len(values) == 1 and len(self._all) == 1:
            self._recent.add_(values[0])  # the usual case, a loss alone: one op
        elif values:
            stacked = torch.stack(values)
            if present == self._all:
                self._recent.add_(stacked)
            else:
                self._recent.index_add_(0, torch.tensor(present, device=self._device), stacked)
        for index in present:
            self._counts[index] += 1
        self.steps += 1
        self.samples += self._batch_samples
        if self.steps % FOLD_EVERY == 0:
            self._folded.add_(self._recent)
            self._recent.zero_()

    def _pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._epoch_mark = self.window()

    def _add_name(self, key: str) -> int:
        index = len(self.names)
        self.names.append(key)
        self._index[key] = index
        self._all.append(index)
        self._counts.append(0)
        self._recent = torch.cat([self._recent, self._recent.new_zeros(1)])
        self._folded = torch.cat([self._folded, self._folded.new_zeros(1)])
        return index

    # ------------------------------------------------------------------ reading (one host copy per call)
    def window(self) -> Window:
        """A cursor starting now: ``take()`` returns the means of what is accumulated after this point."""
        return Window(self)

    def epoch_means(self) -> dict[str, float]:
        """Means over the current epoch so far, as ``epoch/<key>`` (``{}`` before the first epoch)."""
        if self._epoch_mark is None:
            return {}
        return self._epoch_mark.peek(prefix="epoch/", timing=False)

    def _totals(self) -> torch.Tensor:
        """The running totals (a new tensor, in the wide dtype)."""
        return self._folded + self._recent

    def _snapshot(self) -> tuple[torch.Tensor, list[int], int, int, float]:
        return self._totals(), list(self._counts), self.steps, self.samples, time.perf_counter()


class Window:
    """A cursor over a :class:`MetricFlow`'s totals (create with ``flow.window()``)."""

    __slots__ = ("_counts", "_flow", "_samples", "_steps", "_time", "_totals")

    def __init__(self, flow: MetricFlow) -> None:
        self._flow = flow
        self._totals, self._counts, self._steps, self._samples, self._time = flow._snapshot()

    def take(self, *, prefix: str = "train/", timing: bool = True) -> dict[str, float]:
        """The means since the previous ``take()`` (or the window's creation), then restart from now. Keys are
        ``<prefix><output>`` plus, with ``timing``, ``time/iter_ms`` and ``time/samples_per_s``; ``{}`` when no
        step happened."""
        means = self.peek(prefix=prefix, timing=timing)
        self._totals, self._counts, self._steps, self._samples, self._time = self._flow._snapshot()
        return means

    def peek(self, *, prefix: str = "train/", timing: bool = True) -> dict[str, float]:
        """:meth:`take` without restarting."""
        flow = self._flow
        steps = flow.steps - self._steps
        if steps <= 0:
            return {}
        started = flow._first_step_at
        seconds = time.perf_counter() - (self._time if started is None or started < self._time else started)
        old = self._totals
        totals = flow._totals()
        if old.numel() < totals.numel():
            old = torch.cat([old, torch.zeros(totals.numel() - old.numel(), dtype=old.dtype, device=old.device)])
        sums = (totals - old).tolist()  # the one device-to-host copy
        means: dict[str, float] = {}
        for index, name in enumerate(flow.names):
            seen = flow._counts[index] - (self._counts[index] if index < len(self._counts) else 0)
            if seen > 0:
                means[prefix + name] = sums[index] / seen
        if not timing:
            return means
        means["time/iter_ms"] = seconds * 1000.0 / steps
        if seconds > 0 and flow.samples > self._samples:
            means["time/samples_per_s"] = (flow.samples - self._samples) / seconds
        return means


def _batch_size(batch: Any) -> int:
    """The first dimension of the first tensor in ``batch`` (nested tuples, lists, dicts), or 0."""
    while True:
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0]) if batch.dim() > 0 else 1
        if isinstance(batch, Mapping):
            batch = next(iter(batch.values()), None)
        elif isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        else:
            return 0
