"""Data that changes between epochs (a Wisp SDF trainer resamples its points every epoch): a grown dataset is
planned anew and every new item visited, DataLoader workers see a resample after ``reload_data()``, a length that
changes inside an epoch is an error naming the iteration, and a run resumed inside a resampled epoch is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lifecycle import Callback, Status
from tests.support import params_of, same_params
from trainers import BaseTrainer


class Points:
    """A resampling dataset: ``resample(epoch)`` draws ``8 + 4 * epoch`` points from its own generator seeded by the
    epoch (so the same epoch always gets the same points); item ``i`` is ``(x, target, i)``."""

    def __init__(self, grow: bool = True) -> None:
        self.grow = grow
        self.resample(0)

    def resample(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(1000 + epoch)
        size = 8 + 4 * epoch if self.grow else 12
        self.x = torch.randn(size, 2, generator=generator)
        self.y = self.x.sum(dim=1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[index], self.y[index], index


class Resample(Callback):
    """Resamples in ``pre_epoch`` from the epoch, then asks for a reload: Wisp's per-epoch resample."""

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        trainer.dataset.resample(trainer.state.epoch)  # type: ignore[union-attr]
        trainer.reload_data()


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y, _ = batch
    return nn.functional.mse_loss(model(x), y)


def _trainer(dataset: Points | None = None, **kwargs: Any) -> BaseTrainer:
    torch.manual_seed(0)
    kwargs.setdefault("max_epochs", 3)
    return BaseTrainer(nn.Linear(2, 1), dataset or Points(), batch_size=4, loss_fn=_loss, device="cpu", **kwargs)


def _visits(trainer: BaseTrainer) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    trainer.on("pre_step")(lambda t, batch, **_: seen.setdefault(t.state.epoch, []).extend(batch[2].tolist()))
    return seen


def test_a_dataset_that_grows_between_epochs_is_planned_anew_and_every_item_visited() -> None:
    trainer = _trainer()
    visits = _visits(trainer)
    lengths: list[int] = []

    @trainer.on("post_epoch")
    def grow(t: BaseTrainer, **_: Any) -> None:
        t.dataset.resample(t.state.epoch)  # type: ignore[union-attr]  # no reload_data(): the length tells
        lengths.append(t.state.iterations_per_epoch)

    assert trainer.train() is Status.COMPLETED
    assert {epoch: sorted(indices) for epoch, indices in visits.items()} == {
        1: list(range(8)),
        2: list(range(12)),
        3: list(range(16)),
    }
    assert lengths == [2, 3, 4]
    assert trainer.state.iteration == 2 + 3 + 4


@pytest.mark.parametrize("reload", [True, False])
def test_workers_see_a_resample_after_reload_data(reload: bool) -> None:
    dataset = Points(grow=False)
    trainer = _trainer(dataset, num_workers=2, max_epochs=2)
    targets: dict[int, list[float]] = {}
    trainer.on("pre_step")(
        lambda t, batch, **_: targets.setdefault(t.state.epoch, []).extend(batch[1].flatten().tolist())
    )

    @trainer.on("post_epoch")
    def resample(t: BaseTrainer, **_: Any) -> None:
        dataset.resample(t.state.epoch)  # the same length: only the content changed
        if reload:
            t.reload_data()

    try:
        trainer.train()
    finally:
        trainer.close()
    fresh = Points(grow=False)
    fresh.resample(1)
    assert sorted(targets[1]) != sorted(targets[2]) if reload else sorted(targets[1]) == sorted(targets[2])
    if reload:
        assert sorted(targets[2]) == sorted(fresh.y.flatten().tolist())


def test_a_length_that_changes_inside_an_epoch_is_an_error_naming_the_iteration() -> None:
    trainer = _trainer()

    @trainer.on("post_step")
    def shrink(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 1:
            t.dataset.x = t.dataset.x[:5]  # type: ignore[union-attr]

    with pytest.raises(RuntimeError, match=r"changed from 8 to 5 during epoch 1 \(found after iteration 2\)"):
        trainer.train()


def test_a_run_resumed_inside_a_resampled_epoch_is_bit_identical(tmp_path: Path) -> None:
    straight = _trainer(callbacks=[Resample()])
    assert straight.train() is Status.COMPLETED
    assert straight.state.iteration == 3 + 4 + 5  # epochs of 12, 16 and 20 points

    first = _trainer(callbacks=[Resample()])
    while first.state.iteration < 5:  # epoch 2, step 2 of 4
        first.iterate()
    path = first.save_checkpoint(tmp_path / "mid.pt")
    resumed = _trainer(callbacks=[Resample()])  # a fresh dataset of 8 points: the checkpoint's epoch had 16
    resumed.restore(path)
    assert resumed.state.iterations_per_epoch == 4
    assert resumed.train() is Status.COMPLETED
    assert same_params(params_of(resumed.pipeline), params_of(straight.pipeline))

    careless = _trainer()  # resumes without the resample: its 8 points are not the epoch's 16
    careless.restore(path)
    with pytest.raises(RuntimeError, match=r"epoch 2 resumes after step 2 over a dataset of 16 items"):
        careless.iterate()
