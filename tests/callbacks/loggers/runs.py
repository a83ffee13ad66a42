"""The run the logger tests log (not a test module): a real regression built on the shared factory, with a validator
every epoch, recording what it computed so that the tests can compare what a logger wrote with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from callbacks import Validator
from lifecycle import Event
from tests.support import make_dataset, make_trainer
from trainers import BaseTrainer

ITEMS, BATCH = 10, 2  # 5 steps per epoch


@dataclass
class Recorded:
    """What the run computed, kept as it happened: each step's loss (a tensor, converted after training), each
    validation's returned image and what the validator published at that iteration."""

    losses: list[torch.Tensor] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    validated: dict[int, dict[str, float]] = field(default_factory=dict)

    def loss(self, first: int, last: int) -> float:
        """The mean loss of iterations ``first..last`` (1-based, inclusive)."""
        values = [float(v) for v in self.losses[first - 1 : last]]
        return sum(values) / len(values)


def logged_run(
    run_dir: Path, *callbacks: Any, max_epochs: int = 2, images: bool = True, fail_at: int | None = None
) -> tuple[BaseTrainer, Recorded]:
    """``nn.Linear(3, 1)`` regressing ``x.sum()`` on ``ITEMS`` rows in batches of ``BATCH`` with SGD (lr 0.05), a
    validator every epoch (and a 6x5 RGB image unless ``images=False``) before ``callbacks``; ``fail_at``: the loss
    function raises at that iteration."""
    dataset = make_dataset(ITEMS, offset=0.0)
    x, y = dataset.tensors
    recorded = Recorded()

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        if fail_at is not None and len(recorded.losses) + 1 == fail_at:
            raise RuntimeError(f"loss failed at iteration {fail_at}")
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        recorded.losses.append(loss.detach().clone())
        return loss

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        result: dict[str, Any] = {"mse": nn.functional.mse_loss(trainer.pipeline(x), y)}
        if images:
            image = torch.rand(6, 5, 3)
            recorded.images.append(image)
            result["images"] = {"field": image}
        return result

    trainer = make_trainer(
        batch_size=BATCH,
        max_epochs=max_epochs,
        dataset=dataset,
        run_dir=run_dir,
        loss_fn=loss_fn,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        callbacks=[Validator(validate, every="1ep"), *callbacks],
    )

    @trainer.on(Event.POST_VALIDATION, priority=-50)
    def note(t: BaseTrainer, **_: Any) -> None:
        recorded.validated[t.state.iteration] = {k: t.state.metrics[k] for k in ("val/mse", "best/mse")}

    return trainer, recorded
