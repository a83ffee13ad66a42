"""A small, fast example training: an MLP fits a 2-D function, callbacks do the rest.

``demo_trainer`` is the factory behind ``trainer: {name: demo}`` in a config (``trainers/apps/configs/demo.yaml``; the
built-in default is the reference app, ``image_field.yaml``): a ``loss_fn`` instead of a training subclass,
``validate()`` on held-out points, and one app-specific callback, :class:`ReportProgress`, that reads the loss only
when it reports (one ``.item()`` per report, never per step). The config adds the built-in callbacks: LR decay,
validation, checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Literal

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import Callback
from lifecycle import Priority, ScheduleSpec, Status
from trainers.apps.threads import apply_threads
from trainers.engine.optimization import Precision, Strategy
from trainers.engine.trainer import BaseTrainer, OptimizerSpec

__all__ = ["ReportProgress", "demo_trainer"]


class ReportProgress(Callback):
    """Prints the running mean loss every ``every`` iterations and a line per epoch.

    The loss is summed on the device each step (no host sync) and converted once per report.
    """

    priority = Priority.PROGRESS
    scheduled = ("post_step",)  # accumulate at every step, report on the schedule

    def __init__(self, console: Console, *, every: ScheduleSpec = "100it") -> None:
        super().__init__(every=every)
        self.console = console
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._epoch_start = 0.0

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._epoch_start = time.perf_counter()

    def step(self, trainer: BaseTrainer, *, loss: torch.Tensor, **payload: Any) -> None:
        detached = loss.detach()
        self._sum = detached.clone() if self._sum is None else self._sum.add_(detached)
        self._count += 1

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._sum is None or not self._count:
            return
        mean = self._sum.item() / self._count
        self._sum, self._count = None, 0
        state = trainer.state
        self.console.print(
            f"epoch {state.epoch}/{state.max_epochs}  iteration {state.iteration:>5}/"
            f"{state.max_iterations}  loss {mean:.5f}"
        )

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        seconds = time.perf_counter() - self._epoch_start
        state = trainer.state
        rate = state.epoch_iteration / seconds if seconds > 0 else float("inf")
        ended = (
            "done"
            if state.epoch_finished
            else f"cut short at step {state.epoch_iteration}/{state.iterations_per_epoch}"
        )
        self.console.print(f"[bold]epoch {state.epoch} {ended}[/bold] in {seconds:.2f}s ({rate:,.0f} it/s)")

    def post_validation(self, trainer: BaseTrainer, *, metrics: dict[str, float], **payload: Any) -> None:
        best = {k: v for k, v in trainer.state.metrics.items() if k.startswith("best/")}
        shown = "  ".join(f"{k} {v:.5f}" for k, v in {**metrics, **best}.items())
        rate = trainer.state.metrics.get("lr")  # published by LRDecay, when the config has one
        lr = f"  lr {rate:.2e}" if isinstance(rate, float) else ""
        self.console.print(f"validation at iteration {trainer.state.iteration}: {shown}{lr}")

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        why = f" ({trainer.stop_reason})" if status is Status.STOPPED and trainer.stop_reason else ""
        self.console.print(f"training {status}: {trainer.state.iteration} iterations{why}")


def _target(xy: torch.Tensor) -> torch.Tensor:
    return torch.sin(xy[:, :1]) * torch.cos(xy[:, 1:]) + 0.1 * xy[:, :1] * xy[:, 1:]


def _mse(pipeline: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(pipeline(x), y)


def demo_trainer(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_epochs: int = 5,
    batch_size: int = 64,
    samples: int = 8192,
    optimizer: OptimizerSpec | None = None,
    report_every: ScheduleSpec = "128it",
    console: Console | None = None,
    precision: Precision = "32",
    accumulate: int = 1,
    compile: bool | dict[str, Any] = False,
    threads: int | Literal["auto"] | None = 1,
    strategy: Strategy = "ddp",
    fsdp: dict[str, Any] | None = None,
) -> BaseTrainer:
    """The demo: an MLP fits sin(x)cos(y) + 0.1xy on random points, with a progress report every ``report_every``.

    The trainer factory behind ``trainer: {name: demo}``; the config's callbacks are added by ``trainers.build()``.
    ``precision``, ``accumulate``, ``compile``, ``strategy`` and ``fsdp`` are ``BaseTrainer``'s. ``threads`` is
    torch's thread count (``auto``: see ``trainers.apps.threads``; ``None``: torch's setting, left alone); 1 by
    default: this small MLP steps no faster on more.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    apply_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(samples, 2, generator=generator) * 2 * math.pi - math.pi
    held_out = torch.rand(1024, 2, generator=generator) * 2 * math.pi - math.pi
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    return _DemoTrainer(
        model,
        TensorDataset(xy, _target(xy)),
        held_out=held_out,
        max_epochs=max_epochs,
        batch_size=batch_size,
        seed=seed,
        device="cpu",
        optimizer=optimizer or (lambda params: torch.optim.Adam(params, lr=1e-2)),
        loss_fn=_mse,
        callbacks=[ReportProgress(console or Console(), every=report_every)],
        run_dir=run_dir,
        precision=precision,
        accumulate=accumulate,
        compile=compile,
        strategy=strategy,
        fsdp=fsdp,
    )


class _DemoTrainer(BaseTrainer):
    """The demo's trainer: ``validate()`` is the mean squared error on 1024 held-out points."""

    def __init__(self, *args: Any, held_out: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_out, self._held_out_target = held_out, _target(held_out)

    def validate(self) -> dict[str, Any]:
        return {"mse": nn.functional.mse_loss(self.pipeline(self._held_out), self._held_out_target)}

    @torch.no_grad()
    def preview(self, size: int = 128) -> dict[str, Any]:
        """The fitted function and the target on a ``size`` x ``size`` grid over [-pi, pi]^2, as colour maps (for
        the GUI's :class:`~callbacks.Preview`), with their mean squared error."""
        axis = torch.linspace(-math.pi, math.pi, size)
        xy = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
        prediction, target = self.pipeline(xy.to(self.device)).cpu(), _target(xy)
        mse = float(nn.functional.mse_loss(prediction, target))
        return {"image": _colour(prediction, size), "target": _colour(target, size), "mse": mse}


def _colour(values: torch.Tensor, size: int) -> torch.Tensor:
    """Values in about [-2, 2] -> ``(size, size, 3)`` blue (low) - green - red (high)."""
    t = ((values.reshape(size, size) + 2.0) / 4.0).clamp(0.0, 1.0)
    return torch.stack([t, 1.0 - (2.0 * t - 1.0).abs(), 1.0 - t], -1)
