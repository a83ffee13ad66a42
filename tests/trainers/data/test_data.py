"""Data order is a pure function of (seed, epoch); every dataset kind yields the batches the plan says."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from callbacks import Callback
from tests.support import make_model, make_trainer
from tests.trainers.data.noisy_items import noisy_batches
from trainers import BaseTrainer, BatchPlan, mix_seed

ITEMS = 10


def indexed_dataset(items: int = ITEMS) -> TensorDataset:
    """Rows ``(index, x, y)``: the first tensor says which items a batch holds."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(items, 3, generator=generator)
    return TensorDataset(torch.arange(items), x, x.sum(dim=1, keepdim=True))


def indexed_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch[1]), batch[2])


class Batches(Callback):
    """Keeps every ``pre_step`` batch with the epoch it belongs to."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, Any]] = []

    def pre_step(self, trainer: BaseTrainer, *, batch: Any, **payload: Any) -> None:
        self.seen.append((trainer.state.epoch, batch))

    def indices(self, epoch: int | None = None) -> list[list[int]]:
        return [b[0].tolist() for e, b in self.seen if epoch is None or e == epoch]


def run_indexed(
    *, seed: int = 0, max_epochs: int = 2, batch_size: int | None = 3, dataset: Any = None, **kwargs: Any
) -> Batches:
    batches = Batches()
    trainer = make_trainer(
        batch_size=batch_size,
        max_epochs=max_epochs,
        dataset=indexed_dataset() if dataset is None else dataset,
        seed=seed,
        loss_fn=kwargs.pop("loss_fn", indexed_loss),
        callbacks=[batches],
        **kwargs,
    )
    try:
        assert trainer.train() == "completed"
    finally:
        trainer.close()
    return batches


def assert_same_batches(a: list[tuple[int, Any]], b: list[tuple[int, Any]]) -> None:
    assert len(a) == len(b)
    for (epoch_a, batch_a), (epoch_b, batch_b) in zip(a, b, strict=True):
        assert epoch_a == epoch_b
        assert type(batch_a) is type(batch_b)
        assert len(batch_a) == len(batch_b)
        for ta, tb in zip(batch_a, batch_b, strict=True):
            assert ta.dtype == tb.dtype
            assert torch.equal(ta, tb)


# ---------------------------------------------------------------------------------------------- order


def test_same_seed_gives_identical_batches() -> None:
    a = run_indexed(seed=5)
    b = run_indexed(seed=5)
    assert_same_batches(a.seen, b.seen)
    assert a.indices() == b.indices()
    assert [len(i) for i in a.indices()] == [3, 3, 3, 1] * 2


def test_each_epoch_is_a_permutation_and_epochs_differ() -> None:
    seen = run_indexed(seed=5, max_epochs=3)
    epochs = [list(itertools.chain.from_iterable(seen.indices(e))) for e in (1, 2, 3)]
    for order in epochs:
        assert sorted(order) == list(range(ITEMS))
    assert epochs[0] != epochs[1]
    assert epochs[1] != epochs[2]
    assert epochs[0] != list(range(ITEMS))


def test_different_seeds_give_different_orders() -> None:
    assert run_indexed(seed=1).indices() != run_indexed(seed=2).indices()


def test_order_is_the_plans_and_the_plans_is_a_function_of_seed_and_epoch() -> None:
    seen = run_indexed(seed=3, max_epochs=2)
    plan = BatchPlan(ITEMS, 3, seed=3, shuffle=True, drop_last=False)
    assert seen.indices(1) == list(plan.batches(1))
    assert seen.indices(2) == list(plan.batches(2))
    expected = torch.randperm(ITEMS, generator=torch.Generator().manual_seed(mix_seed(3, 2)))
    assert torch.equal(plan.order(2), expected)
    again = BatchPlan(ITEMS, 3, seed=3, shuffle=True, drop_last=False)
    assert torch.equal(again.order(7), plan.order(7))  # no hidden state: order(7) without visiting 1..6


def test_shuffle_false_visits_in_index_order() -> None:
    seen = run_indexed(shuffle=False)
    expected = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert seen.indices(1) == expected
    assert seen.indices(2) == expected


def test_drop_last_plan() -> None:
    plan = BatchPlan(ITEMS, 3, seed=0, shuffle=False, drop_last=True)
    assert plan.iterations_per_epoch == 3
    assert list(plan.batches(1)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    seen = run_indexed(drop_last=True, shuffle=False)
    assert seen.indices(1) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("start", [0, 1, 2, 3, 4])
def test_batches_from_start_equal_the_full_epochs_tail(start: int) -> None:
    plan = BatchPlan(ITEMS, 3, seed=11, shuffle=True, drop_last=False)
    for epoch in (1, 2):
        full = list(plan.batches(epoch))
        assert list(plan.batches(epoch, start=start)) == full[start:]
        tails = [t.tolist() for t in plan.index_batches(epoch, start)]
        assert tails == full[start:]


def test_mix_seed_is_stable() -> None:
    assert mix_seed(3, 2) == mix_seed(3, 2)
    assert mix_seed(3, 2) != mix_seed(2, 3)
    assert 0 <= mix_seed(-1, 2**70) < 2**63


def test_torch_global_rng_does_not_change_the_data_order() -> None:
    reference = run_indexed(seed=4, max_epochs=2).indices()

    class Noise(Callback):
        def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
            torch.manual_seed(1234 + trainer.state.epoch)
            torch.rand(17)

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            torch.randperm(50)

    batches = Batches()
    trainer = make_trainer(  # init_seed=999: the global RNG in another state than the reference run's
        batch_size=3,
        init_seed=999,
        dataset=indexed_dataset(),
        seed=4,
        loss_fn=indexed_loss,
        callbacks=[Noise(), batches],
    )
    trainer.train()
    assert batches.indices() == reference


def test_the_trainer_never_touches_the_global_rng() -> None:
    model = make_model()
    torch.manual_seed(5)
    trainer = make_trainer(batch_size=3, model=model, dataset=indexed_dataset(), loss_fn=indexed_loss)
    trainer.train()
    after = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))


# ---------------------------------------------------------------------------------------------- dataset kinds


def test_tensor_dataset_fast_path_equals_default_collate() -> None:
    dataset = indexed_dataset()
    fast = run_indexed(seed=2, dataset=dataset)
    # a collate_fn other than default_collate itself takes the item-by-item path
    slow = run_indexed(seed=2, dataset=dataset, collate_fn=lambda items: default_collate(items))
    assert_same_batches(fast.seen, slow.seen)
    plan = BatchPlan(ITEMS, 3, seed=2, shuffle=True, drop_last=False)
    expected = [(e, default_collate([dataset[i] for i in idx])) for e in (1, 2) for idx in plan.batches(e)]
    assert_same_batches(fast.seen, expected)
    assert isinstance(fast.seen[0][1], list)
    assert fast.seen[0][1][0].dtype == torch.int64


class CountingDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """A plain map-style dataset that counts its ``__getitem__`` calls."""

    def __init__(self) -> None:
        self.inner = indexed_dataset()
        self.getitem_calls: list[int] = []

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.getitem_calls.append(int(index))
        return self.inner[index]  # type: ignore[no-any-return]


class BulkDataset(CountingDataset):
    """Adds ``__getitems__``: the trainer must fetch a whole batch in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.getitems_calls: list[list[int]] = []

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self.getitems_calls.append(list(indices))
        return [self.inner[i] for i in indices]


def test_dataset_with_getitems_is_called_once_per_batch() -> None:
    dataset = BulkDataset()
    seen = run_indexed(seed=6, dataset=dataset, max_epochs=2)
    plan = BatchPlan(ITEMS, 3, seed=6, shuffle=True, drop_last=False)
    expected = list(plan.batches(1)) + list(plan.batches(2))
    assert dataset.getitems_calls == expected
    assert dataset.getitem_calls == []
    assert seen.indices() == expected
    assert_same_batches(seen.seen, run_indexed(seed=6, max_epochs=2).seen)


def test_plain_dataset_subclass_is_read_item_by_item() -> None:
    dataset = CountingDataset()
    seen = run_indexed(seed=6, dataset=dataset, max_epochs=2)
    plan = BatchPlan(ITEMS, 3, seed=6, shuffle=True, drop_last=False)
    expected = list(plan.batches(1)) + list(plan.batches(2))
    assert dataset.getitem_calls == list(itertools.chain.from_iterable(expected))
    assert seen.indices() == expected
    assert_same_batches(seen.seen, run_indexed(seed=6, max_epochs=2).seen)


def test_custom_collate_fn_gets_the_items() -> None:
    received: list[int] = []

    def collate(items: list[Any]) -> Any:
        received.append(len(items))
        return default_collate(items)

    run_indexed(dataset=CountingDataset(), collate_fn=collate, max_epochs=1)
    assert received == [3, 3, 3, 1]


def prebuilt_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for rows in (2, 3, 1, 4):
        x = torch.randn(rows, 3, generator=generator)
        out.append((x, x.sum(dim=1, keepdim=True)))
    return out


def run_prebuilt(
    data: list[tuple[torch.Tensor, torch.Tensor]], **kwargs: Any
) -> tuple[BaseTrainer, list[tuple[int, Any]]]:
    seen: list[tuple[int, Any]] = []
    trainer = make_trainer(batch_size=None, dataset=data, **kwargs)
    trainer.on("pre_step")(lambda t, *, batch, **kw: seen.append((t.state.epoch, batch)))
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer, seen


def test_batch_size_none_with_prebuilt_batches_in_order() -> None:
    data = prebuilt_batches()
    trainer, seen = run_prebuilt(data, shuffle=False)
    assert trainer.state.iterations_per_epoch == 4
    assert len(seen) == 8
    assert [e for e, _ in seen] == [1] * 4 + [2] * 4
    for (_, batch), original in zip(seen, data + data, strict=True):
        assert batch is original  # used as given on the CPU, not re-collated


def test_batch_size_none_shuffled_follows_the_plan() -> None:
    data = prebuilt_batches()
    _, seen = run_prebuilt(data, seed=8)
    plan = BatchPlan(4, None, seed=8, shuffle=True, drop_last=False)
    expected = [data[idx[0]] for e in (1, 2) for idx in plan.batches(e)]
    assert all(batch is want for (_, batch), want in zip(seen, expected, strict=True))
    assert sorted(len(b[0]) for _, b in seen[:4]) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- workers


def _as_lists(seen: list[tuple[int, Any]]) -> list[tuple[int, list[list[float]]]]:
    return [(e, [t.tolist() for t in batch]) for e, batch in seen]


@pytest.mark.parametrize(
    "run",
    [
        lambda **kw: run_indexed(seed=9, max_epochs=2, **kw).seen,
        lambda **kw: run_prebuilt(prebuilt_batches(), seed=9, **kw)[1],
    ],
    ids=["batch_size=3", "batch_size=None"],
)
def test_two_workers_yield_exactly_the_in_process_batches(run: Callable[..., list[tuple[int, Any]]]) -> None:
    in_process = run(num_workers=0)
    workers = run(num_workers=2)
    assert len(workers) == len(in_process) > 0
    for (epoch_w, batch_w), (epoch_p, batch_p) in zip(workers, in_process, strict=True):
        assert epoch_w == epoch_p
        assert len(batch_w) == len(batch_p)
        assert all(torch.equal(w, p) for w, p in zip(batch_w, batch_p, strict=True))
    assert _as_lists(workers) == _as_lists(in_process)


def test_two_workers_hand_over_prebuilt_batches_as_the_dataset_gives_them() -> None:
    # batch_size=None: "batches are used as the dataset gives them" -- a tuple stays a tuple with workers too
    _, in_process = run_prebuilt(prebuilt_batches(), seed=9, num_workers=0)
    _, workers = run_prebuilt(prebuilt_batches(), seed=9, num_workers=2)
    assert [type(batch).__name__ for _, batch in in_process] == ["tuple"] * 8
    assert [type(batch).__name__ for _, batch in workers] == ["tuple"] * 8


def test_worker_rng_at_an_epoch_start_does_not_depend_on_earlier_epochs() -> None:
    # Feeder: "its worker seeds come from mix(seed, epoch, start)" -- so epoch 2 draws the same augmentations
    # whether the run went through epoch 1 in the same process or was resumed at the epoch boundary
    straight = noisy_batches(8, batch_size=2, seed=3, num_workers=2)
    # what trainer.state_dict() says after epoch 1 (4 steps of 2 items)
    counters = {"epoch": 1, "iteration": 4, "epoch_iteration": 4, "max_epochs": 2, "iterations_per_epoch": 4}
    boundary = noisy_batches(8, batch_size=2, seed=3, num_workers=2, counters=counters)
    assert len(boundary) == 4
    assert [row[0::2] for row in boundary] == [row[0::2] for row in straight[4:]]  # same items: order is right
    assert boundary == straight[4:]  # ...and the same augmentations
