"""Step outputs accumulated on the device, read back once per log point: the metric flow every logger shares.

``MetricFlow.of(trainer)`` (one per trainer, created on first use, so a run without loggers pays nothing) adds each
step's scalar outputs -- the ``"loss"`` and whatever else ``compute_loss`` returned as a one-element tensor or a number
-- to running totals that stay on the device, whatever the number of loggers, with no host synchronisation and no
tensor op per step: a step appends references, and every ``FOLD_EVERY`` (32) steps, or when a logger reads, one
``stack`` and one ``sum`` per key add them to the totals. A logger holds a :class:`Window` (``flow.window()``):
``window.take()`` returns the means since its previous ``take()`` with a single ``tolist()`` -- one device-to-host
copy per log point, never one per step. Windows are cursors over the shared totals, so loggers on different
schedules never disturb one another.

Names: a step output ``"loss"`` is ``"train/loss"`` in a window's result and ``"epoch/loss"`` in
:meth:`MetricFlow.epoch_means`; timing comes as ``"time/iter_ms"`` (wall time per step over the window) and
``"time/samples_per_s"`` (samples are counted from the first dimension of each batch's first tensor). The wall
time is the window's: validation or a checkpoint save that falls inside a window counts; the set-up before the run's
first step does not.

Why no op per step: code that runs between a step's kernels finds the caches cold, and there a ``detach`` or an
``add_`` costs several microseconds -- measured, an ``add_`` per step cost ~6 µs of a 330 µs CPU step against ~1 µs in
a tight loop. The kept values are the step's own tensors: the loss (its backward already freed its graph's buffers)
as it is, any other output that requires grad detached, so no activation outlives its step by more than 32 steps.
Sums are taken in float64 (float32 on devices without it), so a window's mean -- the difference of two totals
divided by the count -- keeps float32 precision after millions of steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from lifecycle import Event, Priority

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["MetricFlow", "Window"]

#: Runs after the state changers and validators, before every logger and progress display.
FLOW_PRIORITY = Priority.METRICS + 50


#: steps whose values are kept (as the step produced them) before one ``stack``-and-``sum`` folds them into the totals
FOLD_EVERY = 32


class MetricFlow:
    """The running totals of one trainer's step outputs (see the module docstring)."""

    @classmethod
    def of(cls, trainer: BaseTrainer) -> MetricFlow:
        """The trainer's metric flow, shared by every logger; created, and its handlers connected, on first use."""
        return trainer.extension(cls)

    def __init__(self, trainer: BaseTrainer) -> None:
        self._device = trainer.device
        self._dtype = torch.float32 if trainer.device.type == "mps" else torch.float64
        self.names: list[str] = []  #: output keys in total order
        self._index: dict[str, int] = {}
        # per key: the tensors of the steps since the last fold (no op on them yet), and the Python numbers' sum
        self._pending: list[list[torch.Tensor]] = []
        self._numbers: list[float] = []
        self._unfolded = 0  # steps since the last fold
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

    # ------------------------------------------------------------------ the per-step part (no host sync, no kernel)
    def _pre_step(self, trainer: BaseTrainer, *, batch: Any = None, **payload: Any) -> None:
        # the usual batch, a tuple or list led by a tensor, without the general walk
        first = batch[0] if type(batch) in (tuple, list) and batch else batch
        if type(first) is torch.Tensor:
            self._batch_samples = first.shape[0] if first.ndim else 1
        else:
            self._batch_samples = _batch_size(batch)
        if self._first_step_at is None:
            self._first_step_at = time.perf_counter()

    def _pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._first_step_at = None  # a new run (or a resumed one) in this process: timing restarts at its first step

    def _post_step(self, trainer: BaseTrainer, *, outputs: Mapping[str, Any], **payload: Any) -> None:
        # Code between a step's kernels runs with cold caches: every tensor op here (a detach, an add_) costs
        # microseconds, so a step only appends references; the arithmetic happens once per FOLD_EVERY steps.
        index_of, counts = self._index, self._counts
        for key, value in outputs.items():
            if type(value) is torch.Tensor or isinstance(value, torch.Tensor):
                if value.numel() != 1 or value.is_complex():
                    continue  # predictions, images ...: not a metric
                if key != "loss" and value.requires_grad:
                    # an output outside the backward pass would keep its graph (activations) alive until the fold;
                    # the loss itself had its backward, which freed its graph's buffers
                    value = value.detach()
                index = index_of.get(key)
                if index is None:
                    index = self._add_name(key)
                self._pending[index].append(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                index = index_of.get(key)
                if index is None:
                    index = self._add_name(key)
                self._numbers[index] += value
            else:
                continue
            counts[index] += 1
        self.steps += 1
        self.samples += self._batch_samples
        self._unfolded += 1
        if self._unfolded >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        """Add the kept step values into the totals: one ``stack`` and one ``sum`` per key, on the device."""
        self._unfolded = 0
        sums: list[torch.Tensor] = []
        indices: list[int] = []
        with torch.no_grad():
            for index, values in enumerate(self._pending):
                if not values:
                    continue
                try:
                    stacked = torch.stack(values)
                except RuntimeError:  # mixed shapes ([] and [1]) or devices: normalise each value first
                    stacked = torch.stack([v.reshape(()).to(self._device, torch.float32) for v in values])
                sums.append(stacked.sum(dtype=self._dtype).to(self._device))
                indices.append(index)
                values.clear()
            if len(sums) == 1:
                self._folded[indices[0]] += sums[0]
            elif sums:
                self._folded.index_add_(0, torch.tensor(indices, device=self._device), torch.stack(sums))

    def _pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._epoch_mark = self.window()

    def _add_name(self, key: str) -> int:
        index = len(self.names)
        self.names.append(key)
        self._index[key] = index
        self._counts.append(0)
        self._pending.append([])
        self._numbers.append(0.0)
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
        """The running totals (a new tensor, in the wide dtype), after folding what the last steps kept."""
        if self._unfolded:
            self._fold()
        numbers = self._numbers
        if any(numbers):
            return self._folded + torch.tensor(numbers, dtype=self._dtype, device=self._device)
        return self._folded.clone()

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
