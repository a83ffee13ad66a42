"""Datasets with ``__getitems__`` are fetched as torch's DataLoader fetches them, with and without workers: a list
of items is collated, a ready batch (a dict of tensors) goes to ``collate_fn`` as it is, and the default collate,
which cannot stack a ready batch (DataLoader fails with a bare ``KeyError: 0``), says what to do instead."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from lifecycle import Callback
from tests.support import make_trainer
from trainers import BaseTrainer


class ReadyBatches:
    """``__getitems__`` returns one dict of tensors for the whole batch (a Wisp-style batched dataset)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(index), 1.0]), "y": torch.tensor([2.0 * index])}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.tensor(indices, dtype=torch.float32)
        return {"x": torch.stack([rows, torch.ones_like(rows)], 1), "y": 2.0 * rows[:, None]}


class ItemLists(ReadyBatches):
    """``__getitems__`` returns a list of items, as torch's default fetcher would build."""

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:  # type: ignore[override]
        return [self[i] for i in indices]


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def _seen(dataset: Any, workers: int, collate_fn: Any) -> list[dict[str, torch.Tensor]]:
    batches: list[dict[str, torch.Tensor]] = []

    class Keep(Callback):
        def pre_step(self, trainer: BaseTrainer, *, batch: Any, **payload: Any) -> None:
            batches.append({k: v.clone() for k, v in batch.items()})

    trainer = make_trainer(
        model=torch.nn.Linear(2, 1),
        dataset=dataset,
        batch_size=4,
        max_epochs=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn,
        loss_fn=_loss,
        callbacks=[Keep()],
    )
    try:
        trainer.train()
    finally:
        trainer.close()
    return batches


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def _identity(batch: Any) -> Any:
    return batch


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("dataset", "collate"), [(ReadyBatches(), _identity), (ItemLists(), None)], ids=["ready", "items"]
)
def test_batches_are_the_dataloaders_own(dataset: Any, collate: Any, workers: int) -> None:
    loader = DataLoader(
        dataset, batch_size=4, shuffle=False, num_workers=workers, **({"collate_fn": collate} if collate else {})
    )
    expected = [dict(batch) for batch in loader]
    assert len(expected) == 3
    assert _same(_seen(dataset, workers, collate), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_ready_batch_with_the_default_collate_says_what_to_do(workers: int) -> None:
    with pytest.raises(KeyError):  # what torch's DataLoader does with it
        next(iter(DataLoader(ReadyBatches(), batch_size=4)))
    with pytest.raises(
        Exception, match=r"__getitems__ returned a dict, not a list of items.*collate_fn=lambda batch: batch"
    ):
        _seen(ReadyBatches(), workers, None)
