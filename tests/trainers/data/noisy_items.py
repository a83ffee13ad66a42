"""Items with a random augmentation, and the batches a real training sees of them (not a test module): the worker-seed
tests of ``test_data.py`` and ``test_worker_seeds.py`` compare these across worker counts and resumes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tests.support import make_trainer


class NoisyItems(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``items`` items ``(index, draw)``: each carries a draw from the fetching process's (or worker's) torch RNG."""

    def __init__(self, items: int) -> None:
        self.items = items

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(index)]), torch.rand(1)


def noisy_batches(
    items: int, *, batch_size: int, seed: int, num_workers: int, counters: dict[str, Any] | None = None
) -> list[list[float]]:
    """Every batch of a 2-epoch run on :class:`NoisyItems`, flattened to ``[index, draw, index, draw, ...]``;
    ``counters``: the run is resumed from them (``load_state_dict``) first."""
    seen: list[list[float]] = []
    torch.manual_seed(0)
    trainer = make_trainer(
        batch_size=batch_size,
        max_epochs=2,
        model=nn.Linear(1, 1),
        dataset=NoisyItems(items),
        seed=seed,
        num_workers=num_workers,
    )
    trainer.on("pre_step")(lambda t, *, batch, **_: seen.append(torch.cat(batch, dim=1).view(-1).tolist()))
    if counters is not None:
        trainer.load_state_dict({"counters": counters, "seed": seed})
    try:
        trainer.train()
    finally:
        trainer.close()
    return seen
