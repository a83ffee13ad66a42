"""Worker-side randomness depends on (seed, epoch, batch) only: not on worker count, nor on where a run resumed."""

from __future__ import annotations

from typing import Any

import torch

from tests.trainers.data.noisy_items import noisy_batches


def _batches(num_workers: int, resume_at: int | None = None) -> list[list[float]]:
    """12 items in batches of 3 (4 steps an epoch), resumed at iteration ``resume_at`` when it is given."""
    counters: dict[str, Any] | None = None
    if resume_at is not None:
        epoch, step = divmod(resume_at, 4)
        counters = {
            "epoch": epoch + 1,
            "epoch_iteration": step,
            "iteration": resume_at,
            "max_epochs": 2,
            "iterations_per_epoch": 4,
        }
    return noisy_batches(12, batch_size=3, seed=5, num_workers=num_workers, counters=counters)


def test_worker_count_and_mid_epoch_resume_do_not_change_augmentations() -> None:
    two = _batches(2)
    assert len(two) == 8
    assert _batches(1) == two  # another worker count: the same draws, batch for batch
    assert _batches(2, resume_at=6) == two[6:]  # resumed mid-epoch 2: the remaining batches, draws included
    assert _batches(1, resume_at=2) == two[2:]  # mid-epoch 1, one worker
    assert two[0] != two[4]  # epochs differ in order and draws


def test_worker_startup_does_not_draw_from_the_global_torch_rng() -> None:
    """A DataLoader draws its workers' base seed from torch's global RNG when its first iterator is made -- in a
    resumed process at a different epoch than in the original run, which shifted every later dropout mask. With
    its own generator the main process's stream is untouched, at the first epoch and at every later one."""
    from torch.utils.data import TensorDataset

    from trainers.data.feeder import Feeder
    from trainers.data.plan import BatchPlan

    def feeder(num_workers: int) -> Feeder:
        plan = BatchPlan(12, 4, seed=3, shuffle=True, drop_last=False)
        data = TensorDataset(torch.arange(12.0).unsqueeze(1))
        return Feeder(data, plan, num_workers=num_workers, collate_fn=None, pin_memory=False)

    def values(batches: Any) -> list[list[float]]:
        return [batch[0].view(-1).tolist() for batch in batches]

    workers = feeder(2)
    try:
        torch.manual_seed(123)
        before = torch.get_rng_state()
        first = values(workers.epoch(2))  # the first iterator: the workers start
        later = values(workers.epoch(3))
        assert torch.equal(torch.get_rng_state(), before)
    finally:
        workers.close()
    in_process = feeder(0)
    assert first == values(in_process.epoch(2))
    assert later == values(in_process.epoch(3))
