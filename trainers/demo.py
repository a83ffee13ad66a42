"""A small example training (until the reference app lands): an MLP fits a 2-D function, callbacks do the rest.

It shows the whole surface in a few lines: a ``loss_fn`` instead of a subclass, built-in callbacks (Wisp's LR
decay, validation on held-out points every epoch), a callback on a schedule that reads the loss only when it
reports (one ``.item()`` per report, never per step), and ``trainer.train()``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import Callback, Checkpointer, LRDecay, Validator
from lifecycle import Priority, Status
from trainers.base import BaseTrainer

__all__ = ["ReportProgress", "make_demo_trainer", "run_demo"]


class ReportProgress(Callback):
    """Prints the running mean loss every ``every`` iterations and a line per epoch.

    The loss is summed on the device each step (no host sync) and converted once per report.
    """

    priority = Priority.PROGRESS
    scheduled = ("post_step",)  # accumulate at every step, report on the schedule

    def __init__(self, console: Console, *, every: str = "100it") -> None:
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
        rate = trainer.state.epoch_iteration / seconds if seconds > 0 else float("inf")
        self.console.print(f"[bold]epoch {trainer.state.epoch} done[/bold] in {seconds:.2f}s ({rate:,.0f} it/s)")

    def post_validation(self, trainer: BaseTrainer, *, metrics: dict[str, float], **payload: Any) -> None:
        best = {k: v for k, v in trainer.state.metrics.items() if k.startswith("best/")}
        shown = "  ".join(f"{k} {v:.5f}" for k, v in {**metrics, **best}.items())
        self.console.print(
            f"validation at iteration {trainer.state.iteration}: {shown}  lr {trainer.state.metrics['lr']:.2e}"
        )

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self.console.print(f"training {status}: {trainer.state.iteration} iterations")


def _target(xy: torch.Tensor) -> torch.Tensor:
    return torch.sin(xy[:, :1]) * torch.cos(xy[:, 1:]) + 0.1 * xy[:, :1] * xy[:, 1:]


def _mse(pipeline: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(pipeline(x), y)


def make_demo_trainer(
    *,
    max_epochs: int = 5,
    seed: int = 0,
    console: Console | None = None,
    samples: int = 8192,
    batch_size: int = 64,
    run_dir: str | os.PathLike[str] | None = None,
) -> BaseTrainer:
    """The demo's trainer: a 2-32-32-1 MLP regressing a smooth 2-D function on ``samples`` random points. With a
    ``run_dir`` it also checkpoints every epoch (the last 3 and the best by ``val/mse``) and on interrupt."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(samples, 2, generator=generator) * 2 * math.pi - math.pi
    dataset = TensorDataset(xy, _target(xy))
    held_out = torch.rand(1024, 2, generator=generator) * 2 * math.pi - math.pi
    held_out_target = _target(held_out)

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        return {"mse": nn.functional.mse_loss(trainer.pipeline(held_out), held_out_target)}

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    callbacks: list[Callback] = [LRDecay(), Validator(validate), ReportProgress(console or Console(), every="128it")]
    if run_dir is not None:
        callbacks.append(Checkpointer(every="1ep", keep_last=3, monitor="val/mse"))
    trainer = BaseTrainer(
        model,
        dataset,
        max_epochs=max_epochs,
        batch_size=batch_size,
        seed=seed,
        device="cpu",
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        loss_fn=_mse,
        callbacks=callbacks,
        run_dir=run_dir,
    )
    trainer.config = {"demo": {"max_epochs": max_epochs, "seed": seed, "samples": samples, "batch_size": batch_size}}
    return trainer


def run_demo(
    *,
    max_epochs: int = 5,
    seed: int = 0,
    console: Console | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> Status | None:
    """Train the demo and print its progress; returns the run's status."""
    console = console or Console()
    console.print("[bold]stepbus demo[/bold]: an MLP fits sin(x)cos(y) + 0.1xy with LR decay and validation")
    trainer = make_demo_trainer(max_epochs=max_epochs, seed=seed, console=console, run_dir=run_dir)
    try:
        return trainer.train()
    finally:
        trainer.close()
