"""The benchmarks' shared workload: a 16-32-1 MLP, batches of 32 pre-built once, and how a stepbus run of it is
timed (steady state, from the end of ``pre_training`` to the start of ``post_training``, plus the whole call); the
callback sets the runs use (ten no-op callbacks, a progress bar, the full default set).

The peers (:mod:`benchmarks.peers`) build the same model from the same seed and read the same batches."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from callbacks import Callback, Checkpointer, GradientGuard, LRDecay, ProgressBar, TensorBoardLogger
from lifecycle import Event, Status
from trainers.engine.trainer import BaseTrainer

__all__ = [
    "Batch",
    "NullStepTrainer",
    "SteadyState",
    "Timing",
    "make_batches",
    "make_model",
    "mse",
    "run_stepbus",
    "ten_noop_callbacks",
    "timed",
]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Timing:
    """Microseconds: ``steady`` from the framework's start-of-training event to its end-of-training event,
    ``total`` the whole call (their difference is the fixed start-up and tear-down cost)."""

    steady: float
    total: float


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def make_batches(count: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 16, generator=generator), torch.randn(32, 1, generator=generator)) for _ in range(count)]


def mse(pipeline: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.mse_loss(pipeline(batch[0]), batch[1])


def timed(fn: Callable[[], None]) -> Timing:
    """A loop with no start-up of its own: steady state is the whole call."""
    start = time.perf_counter_ns()
    fn()
    elapsed = (time.perf_counter_ns() - start) / 1e3
    return Timing(elapsed, elapsed)


class SteadyState(Callback):
    """Times a run from the end of ``pre_training`` to the start of ``post_training``: the one-off start and
    finish (a W&B run's ~0.5 s, the final checkpoint) are left out of the per-iteration figure."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.ended = 0

    def priority_of(self, event: Event) -> int:
        return -10_000 if event is Event.PRE_TRAINING else 10_000

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.started = time.perf_counter_ns()

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.ended = time.perf_counter_ns()


class NullStepTrainer(BaseTrainer):
    """The engine alone: no forward, backward or optimizer step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._emit_null_step = self._step.emitter("loss", "outputs")  # as the trainer's own step emits

    def step(self, batch: Any) -> dict[str, Any]:
        outputs: dict[str, Any] = {"loss": None}
        if self._step.active:
            self._emit_null_step(self, None, outputs)
        return outputs


# ---------------------------------------------------------------- no-op callbacks on mixed events and schedules
class _PreStep(Callback):
    def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Step(Callback):
    def step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _PostStep(Callback):
    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Every50(Callback):
    every = "50it"

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _EveryMinute(Callback):
    every = "1min"

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Epochs(Callback):
    every = "1ep"

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


class _Training(Callback):
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


def ten_noop_callbacks() -> list[Callback]:
    """10 callbacks: 6 run every step (2 pre_step, 2 step, 2 post_step), 2 on schedules checked every step
    (50it, 1min), 1 per epoch, 1 per run."""
    return [
        _PreStep(state_key="pre_step_a"),
        _PreStep(state_key="pre_step_b"),
        _Step(state_key="step_a"),
        _Step(state_key="step_b"),
        _PostStep(state_key="post_step_a"),
        _PostStep(state_key="post_step_b"),
        _Every50(),
        _EveryMinute(),
        _Epochs(),
        _Training(),
    ]


class Discard(io.StringIO):
    """A text sink that drops what it is given: a terminal for progress displays that neither prints nor grows (an
    ``io.StringIO`` would keep every frame, and show up in the memory benchmark as a leak)."""

    def write(self, text: str) -> int:
        return len(text)


def progress() -> list[Callback]:
    """A ProgressBar drawing on a terminal (into :class:`Discard`, so benchmarks print only their tables)."""
    console = Console(file=Discard(), force_terminal=True, width=120, color_system=None)
    return [ProgressBar(console=console)]


def default_set() -> list[Callback]:
    """The full default set: progress (a terminal, into a buffer), TensorBoard every 50 it, LR decay
    (Wisp's milestones), a checkpoint per epoch (keep 3), the gradient guard (its defaults: a non-finite check of the
    loss and gradients every step, the gradient norm published every 50 it)."""
    return [
        *progress(),
        TensorBoardLogger(every="50it"),
        LRDecay(),
        Checkpointer(every="1ep", keep_last=3),
        GradientGuard(),
    ]


def run_stepbus(
    batches: list[Batch],
    epochs: int,
    callbacks: Callable[[], list[Callback]],
    run_dir: Path | None = None,
    *,
    cls: type[BaseTrainer] = BaseTrainer,
    fused: bool = False,
    **options: Any,
) -> Timing:
    """Train :func:`make_model` on ``batches`` (in order) for ``epochs`` with ``callbacks()``; a fresh directory
    under ``run_dir`` when given (for loggers and checkpoints); ``options`` go to the trainer (e.g. ``accumulate=4``,
    ``precision="bf16-mixed"``, ``device="cuda"``: the CPU by default); ``fused``: Adam's fused kernel (with it the
    default ``GradientGuard`` decides a skip on an accelerator itself, with no host read)."""
    net = make_model(0)
    trainer = cls(
        net,
        batches,
        max_epochs=epochs,
        batch_size=None,
        shuffle=False,
        device=options.pop("device", "cpu"),
        loss_fn=mse,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused or None),
        callbacks=callbacks(),
        run_dir=None if run_dir is None else Path(tempfile.mkdtemp(dir=run_dir)),
        **options,
    )
    watch = SteadyState()
    trainer.add_callback(watch)
    start = time.perf_counter_ns()
    status = trainer.train()
    total = (time.perf_counter_ns() - start) / 1e3
    trainer.close()
    if status is not Status.COMPLETED:
        raise RuntimeError(f"the benchmark run ended {status}, not completed")
    return Timing((watch.ended - watch.started) / 1e3, total)
