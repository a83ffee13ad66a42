"""``restore`` puts the published numbers and strings back in ``state.metrics``: a logger's step row right after a
resume reads ``grad_norm`` (published every 2 iterations) as the uninterrupted run does, not a gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from callbacks import Checkpointer, GradientGuard
from lifecycle import Event, Status
from tests.support import make_trainer
from trainers import BaseTrainer
from trainers.checkpoint.format import read_metadata


def _trainer(run_dir: Path, seen: dict[int, Any]) -> BaseTrainer:
    trainer = make_trainer(
        12,
        batch_size=2,
        max_epochs=2,
        run_dir=run_dir,
        seed=0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        callbacks=[GradientGuard(every="2it"), Checkpointer(every="4it", keep_last=10)],
    )

    @trainer.on(Event.POST_STEP, priority=-10_000)
    def note(t: BaseTrainer, **_: Any) -> None:
        seen[t.state.iteration] = t.state.metrics.get("grad_norm")

    trainer.state.metrics["note"] = "published by hand"
    return trainer


def test_a_resumed_run_sees_the_published_values_of_its_checkpoint(tmp_path: Path) -> None:
    reference: dict[int, Any] = {}
    assert _trainer(tmp_path / "reference", reference).train() is Status.COMPLETED

    resumed: dict[int, Any] = {}
    first = _trainer(tmp_path / "resumed", {})
    for _ in range(4):
        first.iterate()
    first.close()
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step-00000004.pt"
    saved = read_metadata(checkpoint)["metrics"]
    assert saved["grad_norm"] == reference[4]  # published at iteration 4
    second = make_trainer(
        12,
        batch_size=2,
        max_epochs=2,
        run_dir=tmp_path / "resumed",
        seed=0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        callbacks=[GradientGuard(every="2it"), Checkpointer(every="4it", keep_last=10)],
    )
    assert second.restore(checkpoint) == checkpoint
    assert second.state.metrics == saved  # before the first step: what the checkpoint held
    assert saved["note"] == "published by hand"

    @second.on(Event.POST_STEP, priority=-10_000)
    def note(t: BaseTrainer, **_: Any) -> None:
        resumed[t.state.iteration] = t.state.metrics.get("grad_norm")

    assert second.train() is Status.COMPLETED
    assert resumed[5] == reference[5] == reference[4]  # iteration 5 publishes nothing: 4's value, from the checkpoint
    assert resumed == {i: v for i, v in reference.items() if i > 4}
