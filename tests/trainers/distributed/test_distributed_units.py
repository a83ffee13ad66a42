"""Unit tests of the distributed pieces: batch shares, share checks, environment parsing, backend error reasons, the
stop vote, the side-channel collectives and the DDP wrapper (the last three in two real gloo processes), and the bus
clock."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import namedtuple
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, TensorDataset

from lifecycle.bus import Bus
from lifecycle.events import Event
from lifecycle.state import State
from tests.trainers.distributed.ranks import start_ranks, wait_ranks
from trainers.data.feeder import Feeder, SeededBatch, _PlanSampler, shard_batch
from trainers.data.plan import BatchPlan, check_shares, mix_seed
from trainers.distributed.collective import backend_reason
from trainers.distributed.environment import (
    DEFAULT_TIMEOUT,
    collective_timeout,
    default_backend,
    init_from_env,
    launched_world_size,
    local_device,
)
from trainers.distributed.peer_failure import PeerFailure, is_collective_failure

ROOT = Path(__file__).resolve().parents[3]


def exactly(message: str) -> str:
    """A ``pytest.raises(match=)`` pattern for exactly ``message``."""
    return f"^{re.escape(message)}$"


# ---------------------------------------------------------------------------------------------- BatchPlan shares


def plan_of(size: int, batch_size: int | None, *, drop_last: bool, rank: int = 0, world: int = 1) -> BatchPlan:
    return BatchPlan(size, batch_size, seed=11, shuffle=True, drop_last=drop_last, rank=rank, world_size=world)


def share_length(total: int, rank: int, world: int) -> int:
    """What ``tensor_split`` gives rank ``rank``: the first ``total % world`` ranks get one item more."""
    return total // world + (1 if rank < total % world else 0)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize(
    ("size", "batch_size", "drop_last", "iterations", "sizes"),
    [
        (23, 6, False, 4, (6, 5)),
        (23, 6, True, 3, (6, 6)),
        (23, 7, False, 4, (7, 2)),
        (23, 7, True, 3, (7, 7)),
        (24, 6, False, 4, (6, 6)),
        (24, 6, True, 4, (6, 6)),
        (24, 7, False, 4, (7, 3)),
        (24, 7, True, 3, (7, 7)),
    ],
)
def test_rank_shares_concatenate_to_the_single_process_batches(
    world: int, size: int, batch_size: int, drop_last: bool, iterations: int, sizes: tuple[int, int]
) -> None:
    single = plan_of(size, batch_size, drop_last=drop_last)
    ranks = [plan_of(size, batch_size, drop_last=drop_last, rank=r, world=world) for r in range(world)]
    assert single.iterations_per_epoch == iterations
    assert [p.iterations_per_epoch for p in ranks] == [iterations] * world
    assert single.batch_sizes() == sizes
    assert [p.batch_sizes() for p in ranks] == [sizes] * world  # global sizes, the same on every rank
    for epoch in (1, 2):
        whole = list(single.index_batches(epoch))
        assert len(whole) == iterations
        assert [len(b) for b in whole] == [sizes[0]] * (iterations - 1) + [sizes[1]]
        if not drop_last:
            assert sorted(torch.cat(whole).tolist()) == list(range(size))
        shares = [list(p.index_batches(epoch)) for p in ranks]
        assert [len(s) for s in shares] == [iterations] * world
        for j, batch in enumerate(whole):
            pieces = [shares[r][j] for r in range(world)]
            assert [len(piece) for piece in pieces] == [share_length(len(batch), r, world) for r in range(world)]
            offset = 0
            for r, piece in enumerate(pieces):  # contiguous slices of the global batch, in rank order
                assert piece.tolist() == batch[offset : offset + len(piece)].tolist()
                assert piece.tolist() == batch.tensor_split(world)[r].tolist()
                offset += len(piece)
            assert torch.cat(pieces).tolist() == batch.tolist()
        for r, plan in enumerate(ranks):
            for start in range(iterations + 1):
                tail = [b.tolist() for b in plan.index_batches(epoch, start)]
                assert tail == [b.tolist() for b in shares[r][start:]]
                assert list(plan.batches(epoch, start)) == tail


def test_pre_built_batches_are_not_split_by_the_plan() -> None:
    single = plan_of(5, None, drop_last=False)
    ranks = [plan_of(5, None, drop_last=False, rank=r, world=2) for r in range(2)]
    assert [p.iterations_per_epoch for p in ranks] == [5, 5]
    assert [p.batch_sizes() for p in ranks] == [(1, 1), (1, 1)]
    expected = list(single.batches(1))
    assert [len(b) for b in expected] == [1] * 5
    assert sorted(b[0] for b in expected) == [0, 1, 2, 3, 4]
    assert [list(p.batches(1)) for p in ranks] == [expected, expected]


# ---------------------------------------------------------------------------------------------- shard_batch

Pair = namedtuple("Pair", ["x", "y"])


def test_shard_batch_splits_a_tensor_like_tensor_split() -> None:
    rows = torch.arange(7)
    assert [shard_batch(rows, r, 3).tolist() for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [shard_batch(rows, r, 2).tolist() for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert shard_batch(rows, 0, 1).tolist() == list(range(7))
    grid = torch.arange(12).reshape(3, 4)
    assert [shard_batch(grid, r, 3).tolist() for r in range(3)] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9, 10, 11]]]


def test_shard_batch_walks_nested_containers_and_keeps_other_leaves() -> None:
    meta = Path("data/shard-3")
    name = "batch-7"
    batch: dict[str, Any] = {
        "x": torch.arange(10).reshape(5, 2),
        "parts": [torch.arange(5), (torch.arange(5) * 10, 3.5)],
        "pair": Pair(torch.arange(5) + 100, name),
        "meta": meta,
        "info": {"source": "disk"},
        "name": name,
        "count": 5,
    }
    share = shard_batch(batch, 1, 2)
    assert type(share) is dict
    assert list(share) == ["x", "parts", "pair", "meta", "info", "name", "count"]
    assert share["x"].tolist() == [[6, 7], [8, 9]]
    assert type(share["parts"]) is list
    assert share["parts"][0].tolist() == [3, 4]
    assert type(share["parts"][1]) is tuple
    assert share["parts"][1][0].tolist() == [30, 40]
    assert share["parts"][1][1] == 3.5
    assert type(share["pair"]) is Pair
    assert share["pair"].x.tolist() == [103, 104]
    assert share["pair"].y is name
    assert share["meta"] is meta
    assert share["info"] == {"source": "disk"}
    assert share["name"] is name
    assert share["count"] == 5
    first = shard_batch(batch, 0, 2)
    assert first["x"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert first["pair"].x.tolist() == [100, 101, 102]
    assert batch["x"].shape == (5, 2)  # the batch itself is left as it was


def test_shard_batch_rejects_a_tensor_with_fewer_rows_than_ranks() -> None:
    with pytest.raises(ValueError, match=r"shape \(1, 3\): 1 rows cannot be split among 2 ranks") as caught:
        shard_batch(torch.zeros(1, 3), 0, 2)
    assert str(caught.value) == (
        "a pre-built batch holds a tensor of shape (1, 3): 1 rows cannot be split among 2 ranks (each needs at "
        "least one row); build batches of >= 2 rows"
    )
    with pytest.raises(ValueError, match=r"shape \(2,\): 2 rows cannot be split among 3 ranks"):
        shard_batch({"ok": torch.zeros(6), "short": [torch.zeros(2)]}, 2, 3)  # found deep inside the batch
    with pytest.raises(ValueError, match=r"shape \(\): a 0-d tensor cannot be split among 2 ranks"):
        shard_batch((torch.zeros(4), torch.tensor(4)), 1, 2)


# ---------------------------------------------------------------------------------------------- Feeder


class Rows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A map-style dataset without ``__getitems__``: item ``i`` is ``(i, [1.5 * i])``."""

    def __len__(self) -> int:
        return 11

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(index), torch.tensor([1.5 * index])


def prebuilt() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pre-built batches of 4, 3, 2 and 5 rows; x holds 10 * batch + row."""
    batches = []
    for b, rows in enumerate((4, 3, 2, 5)):
        x = (torch.arange(rows) + 10 * b).reshape(rows, 1).float()
        batches.append((x, x.flatten() * 2))
    return batches


def feed(dataset: Any, plan: BatchPlan, num_workers: int, epochs: tuple[int, ...] = (1, 2)) -> list[list[Any]]:
    feeder = Feeder(dataset, plan, num_workers=num_workers, collate_fn=None, pin_memory=False)
    try:
        return [list(feeder.epoch(e)) for e in epochs]
    finally:
        feeder.close()


def as_lists(epochs: list[list[Any]]) -> list[list[tuple[str, list[Any]]]]:
    return [[(type(batch).__name__, [t.tolist() for t in batch]) for batch in batches] for batches in epochs]


def test_in_process_feeder_gives_each_rank_its_share_of_a_tensor_dataset() -> None:
    x = torch.arange(10) * 1.0 + 0.5
    data = TensorDataset(torch.arange(10), x)
    single = BatchPlan(10, 4, seed=3, shuffle=True, drop_last=False)
    for rank in (0, 1):
        plan = BatchPlan(10, 4, seed=3, shuffle=True, drop_last=False, rank=rank, world_size=2)
        got = feed(data, plan, num_workers=0)
        for epoch, batches in zip((1, 2), got, strict=True):
            expected = [indices.tensor_split(2)[rank] for indices in single.index_batches(epoch)]
            assert [len(b[0]) for b in batches] == [2, 2, 1]
            assert [b[0].tolist() for b in batches] == [e.tolist() for e in expected]
            assert [b[1].tolist() for b in batches] == [(e * 1.0 + 0.5).tolist() for e in expected]


def test_feeder_shares_of_map_style_data_are_the_same_with_a_worker() -> None:
    data = Rows()
    single = BatchPlan(11, 4, seed=5, shuffle=True, drop_last=False)
    for rank in (0, 1):
        plan = BatchPlan(11, 4, seed=5, shuffle=True, drop_last=False, rank=rank, world_size=2)
        in_process = feed(data, plan, num_workers=0)
        worker = feed(data, plan, num_workers=1)
        assert as_lists(worker) == as_lists(in_process)
        for epoch, batches in zip((1, 2), in_process, strict=True):
            expected = [indices.tensor_split(2)[rank].tolist() for indices in single.index_batches(epoch)]
            assert [len(e) for e in expected] == ([2, 2, 2] if rank == 0 else [2, 2, 1])  # of 4, 4, 3
            assert [b[0].tolist() for b in batches] == expected
            assert [b[1].tolist() for b in batches] == [[[1.5 * i] for i in e] for e in expected]


def test_feeder_shares_of_pre_built_batches_in_process_and_with_a_worker() -> None:
    data = prebuilt()
    single = BatchPlan(4, None, seed=7, shuffle=True, drop_last=False)
    for rank in (0, 1):
        plan = BatchPlan(4, None, seed=7, shuffle=True, drop_last=False, rank=rank, world_size=2)
        in_process = feed(data, plan, num_workers=0)
        worker = feed(data, plan, num_workers=1)
        assert as_lists(worker) == as_lists(in_process)
        for epoch, batches in zip((1, 2), in_process, strict=True):
            order = [indices[0] for indices in single.batches(epoch)]
            assert sorted(order) == [0, 1, 2, 3]
            assert [type(b) for b in batches] == [tuple] * 4
            for batch, index in zip(batches, order, strict=True):
                x, y = data[index]
                assert batch[0].tolist() == x.tensor_split(2)[rank].tolist()
                assert batch[1].tolist() == y.tensor_split(2)[rank].tolist()
    # 4, 3, 2 and 5 rows: rank 0 gets 2, 2, 1, 3 of them, rank 1 gets 2, 1, 1, 2
    plan = BatchPlan(4, None, seed=7, shuffle=False, drop_last=False, rank=1, world_size=2)
    assert [len(b[0]) for b in feed(data, plan, num_workers=0, epochs=(1,))[0]] == [2, 1, 1, 2]
    plan = BatchPlan(4, None, seed=7, shuffle=False, drop_last=False, rank=0, world_size=2)
    assert [b[0].flatten().tolist() for b in feed(data, plan, num_workers=0, epochs=(1,))[0]] == [
        [0.0, 1.0],
        [10.0, 11.0],
        [20.0],
        [30.0, 31.0, 32.0],
    ]


def test_feeder_rejects_a_pre_built_batch_too_small_to_split() -> None:
    data = [(torch.zeros(2, 1), torch.zeros(2)), (torch.zeros(1, 1), torch.zeros(1))]
    plan = BatchPlan(2, None, seed=0, shuffle=False, drop_last=False, rank=0, world_size=2)
    feeder = Feeder(data, plan, num_workers=0, collate_fn=None, pin_memory=False)
    batches = feeder.epoch(1)
    assert next(batches)[0].tolist() == [[0.0]]
    with pytest.raises(ValueError, match=r"shape \(1, 1\): 1 rows cannot be split among 2 ranks"):
        next(batches)


def sampler_batches(plan: BatchPlan, epoch: int, start: int = 0) -> list[SeededBatch]:
    sampler = _PlanSampler(plan)
    sampler.epoch, sampler.start = epoch, start
    assert len(sampler) == plan.iterations_per_epoch - start
    return list(sampler)


def test_sampler_seeds_are_mix_seed_of_seed_epoch_batch_in_a_single_process() -> None:
    plan = BatchPlan(10, 3, seed=42, shuffle=True, drop_last=False)
    for epoch in (1, 3):
        batches = sampler_batches(plan, epoch)
        assert [b.seed for b in batches] == [mix_seed(42, epoch, j) for j in range(4)]
        assert [list(b) for b in batches] == list(plan.batches(epoch))
        tail = sampler_batches(plan, epoch, start=2)
        assert [(list(b), b.seed) for b in tail] == [(list(b), b.seed) for b in batches[2:]]


def test_sampler_seeds_differ_per_rank_in_a_job() -> None:
    single = [b.seed for b in sampler_batches(BatchPlan(12, 4, seed=42, shuffle=True, drop_last=False), 2)]
    per_rank = []
    for rank in (0, 1):
        plan = BatchPlan(12, 4, seed=42, shuffle=True, drop_last=False, rank=rank, world_size=2)
        batches = sampler_batches(plan, 2)
        assert [list(b) for b in batches] == list(plan.batches(2))
        assert [b.seed for b in sampler_batches(plan, 2, start=1)] == [b.seed for b in batches[1:]]
        per_rank.append([b.seed for b in batches])
    assert len(per_rank[0]) == len(per_rank[1]) == len(single) == 3
    for j in range(3):
        assert len({per_rank[0][j], per_rank[1][j], single[j]}) == 3
    assert len(set(per_rank[0])) == 3  # and from batch to batch


# ----------------------------------------------------------------------------------------------- check_shares


def test_check_shares_rejects_a_last_batch_smaller_than_the_world() -> None:
    plan = BatchPlan(10, 4, seed=0, shuffle=True, drop_last=False)  # batches of 4, 4, 2
    with pytest.raises(
        ValueError,
        match=exactly(
            "the last batch of each epoch (2 items) must have at least one item per rank: batch_size=4 over 3 "
            "ranks leaves a rank with nothing; use a batch_size >= 3 and drop_last=True, or a dataset size that "
            "divides evenly"
        ),
    ):
        check_shares(plan, 3, False)


def test_check_shares_rejects_batches_smaller_than_the_world() -> None:
    plan = BatchPlan(10, 2, seed=0, shuffle=True, drop_last=False)
    with pytest.raises(
        ValueError,
        match=exactly(
            "every batch must have at least one item per rank: batch_size=2 over 3 ranks leaves a rank with nothing; "
            "use a batch_size >= 3"
        ),
    ):
        check_shares(plan, 3, False)


def _warning(full: int, last: int, world: int, tail: str) -> str:
    return (
        f"batch_size={full} (last batch {last}) does not divide among {world} ranks: the shares differ by one item, "
        "and DDP's gradient (the mean over ranks of each rank's mean) weighs items of smaller shares more than a "
        f"single process would; use a batch_size divisible by {world}{tail} for the same result"
    )


@pytest.mark.parametrize(
    ("size", "batch_size", "drop_last", "world", "message"),
    [
        (10, 4, True, 3, _warning(4, 4, 3, "")),  # drop_last drops the short last batch: no error
        (11, 4, False, 2, _warning(4, 3, 2, " and drop_last=True")),
        (10, 5, False, 2, _warning(5, 5, 2, "")),
        (12, 4, False, 2, None),
        (10, 4, False, 2, None),
        (9, 3, False, 3, None),
        (5, None, False, 2, None),
    ],
)
def test_check_shares_warns_when_the_shares_are_uneven(
    caplog: pytest.LogCaptureFixture,
    size: int,
    batch_size: int | None,
    drop_last: bool,
    world: int,
    message: str | None,
) -> None:
    plan = BatchPlan(size, batch_size, seed=0, shuffle=True, drop_last=drop_last)
    with caplog.at_level(logging.DEBUG, logger="stepbus"):
        check_shares(plan, world, drop_last)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == ([] if message is None else [("stepbus", logging.WARNING, message)])


# ---------------------------------------------------------------------------------------------- environment


def test_collective_timeout_passes_a_timedelta_through_and_converts_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPBUS_DIST_TIMEOUT", "99")  # only read when no timeout is given
    given = timedelta(minutes=2)
    assert collective_timeout(given) is given
    assert collective_timeout(2.5) == timedelta(seconds=2.5)
    assert collective_timeout(3) == timedelta(seconds=3)
    assert collective_timeout(0.001) == timedelta(milliseconds=1)


def test_collective_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPBUS_DIST_TIMEOUT", raising=False)
    assert collective_timeout() == DEFAULT_TIMEOUT == timedelta(minutes=5)
    assert collective_timeout(None) == timedelta(seconds=300)
    monkeypatch.setenv("STEPBUS_DIST_TIMEOUT", "7.5")
    assert collective_timeout() == timedelta(seconds=7.5)
    monkeypatch.setenv("STEPBUS_DIST_TIMEOUT", " 42 ")
    assert collective_timeout() == timedelta(seconds=42)


@pytest.mark.parametrize("value", ["abc", "", "10s", "1,5"])
def test_collective_timeout_rejects_a_non_number_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("STEPBUS_DIST_TIMEOUT", value)
    with pytest.raises(ValueError, match=exactly(f"STEPBUS_DIST_TIMEOUT={value!r} is not a number of seconds")):
        collective_timeout()


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_collective_timeout_rejects_a_non_positive_environment_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("STEPBUS_DIST_TIMEOUT", value)
    with pytest.raises(
        ValueError,
        match=exactly(f"the collective timeout must be a positive number of seconds (below 1e9), got {float(value)!r}"),
    ):
        collective_timeout()


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, True, False, math.nan])
def test_collective_timeout_rejects_bad_values(value: float) -> None:
    with pytest.raises(
        ValueError,
        match=exactly(f"the collective timeout must be a positive number of seconds (below 1e9), got {value!r}"),
    ):
        collective_timeout(value)


def test_collective_timeout_rejects_infinity_with_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # "no timeout" is a natural thing to ask for; it must be the function's own ValueError, not a crash in timedelta
    with pytest.raises(ValueError, match="inf"):
        collective_timeout(math.inf)
    monkeypatch.setenv("STEPBUS_DIST_TIMEOUT", "inf")
    with pytest.raises(ValueError, match="inf"):
        collective_timeout()


def test_launched_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    for text, size in (("1", 1), ("2", 2), ("16", 16), (" 3 ", 3)):
        monkeypatch.setenv("WORLD_SIZE", text)
        assert launched_world_size() == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("two", "WORLD_SIZE='two' in the environment is not an integer"),
        ("2.0", "WORLD_SIZE='2.0' in the environment is not an integer"),
        ("", "WORLD_SIZE='' in the environment is not an integer"),
        ("0", "WORLD_SIZE=0 in the environment: it must be >= 1"),
        ("-3", "WORLD_SIZE=-3 in the environment: it must be >= 1"),
    ],
)
def test_launched_world_size_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(RuntimeError) as caught:
        launched_world_size()
    assert str(caught.value) == message


def test_local_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    cpu, cuda, cuda1 = torch.device("cpu"), torch.device("cuda"), torch.device("cuda", 1)
    assert local_device(cpu) is cpu
    assert local_device(cuda) is cuda  # a single process keeps torch's current device
    assert local_device(cuda1) is cuda1
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device(cuda) == torch.device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert local_device(cuda) == torch.device("cuda", 3)
    assert local_device(cuda1) is cuda1  # an explicit index is kept
    assert local_device(cpu) is cpu
    monkeypatch.delenv("LOCAL_RANK")
    assert local_device(cuda) == torch.device("cuda", 0)


def test_default_backend() -> None:
    assert default_backend(torch.device("cpu")) == "gloo"
    assert default_backend(torch.device("meta")) == "gloo"
    expected = "nccl" if dist.is_nccl_available() else "gloo"
    assert default_backend(torch.device("cuda")) == expected
    assert default_backend(torch.device("cuda", 1)) == expected


def test_init_from_env_outside_a_job_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not dist.is_initialized()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env(torch.device("cpu")) is False
    assert init_from_env(torch.device("cpu"), backend="gloo", timeout=5.0) is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env(torch.device("cpu")) is False
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("nccl", "backend 'nccl' needs a CUDA device; this run is on cpu (use 'gloo' or 'auto')"),
        ("tcp", "backend must be 'auto', 'gloo' or 'nccl' (or 'mpi', 'ucc'), got 'tcp'"),
        ("Gloo", "backend must be 'auto', 'gloo' or 'nccl' (or 'mpi', 'ucc'), got 'Gloo'"),
    ],
)
def test_init_from_env_rejects_a_bad_backend_before_starting_a_group(
    monkeypatch: pytest.MonkeyPatch, backend: str, message: str
) -> None:
    # both checks come before init_process_group (see trainers/distributed/environment.py), so no rendezvous is
    # attempted
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=exactly(message)):
        init_from_env(torch.device("cpu"), backend=backend, timeout=1.0)
    assert not dist.is_initialized()


def test_init_from_env_rejects_a_bad_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "many")
    with pytest.raises(RuntimeError, match=r"^WORLD_SIZE='many' in the environment is not an integer$"):
        init_from_env(torch.device("cpu"))


# ---------------------------------------------------------------------------------------- backend reasons, peers

GLOO_CLOSED = (
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:6043. This is "
    "typically caused by a peer process crashing or being killed"
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError(GLOO_CLOSED), "Connection closed by peer [127.0.0.1]:6043"),
        (
            RuntimeError(
                "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
                "5000ms for recv operation to complete"
            ),
            "Timed out waiting 5000ms for recv operation to complete",
        ),
        (
            RuntimeError(GLOO_CLOSED + "\nException raised from recvFromRank at ..."),
            "Connection closed by peer [127.0.0.1]:6043",
        ),
        (RuntimeError("boom"), "boom"),
        (ValueError("a [bracketed] message"), "a [bracketed] message"),
        (RuntimeError("first line\nsecond line"), "first line"),
        (RuntimeError(""), "RuntimeError"),
        (KeyError("key"), "'key'"),
    ],
)
def test_backend_reason(error: BaseException, expected: str) -> None:
    assert backend_reason(error) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError(GLOO_CLOSED), True),
        (RuntimeError("Connection closed by peer [127.0.0.1]:6043"), True),
        (RuntimeError("Timed out waiting 30000ms for recv operation to complete"), True),
        (RuntimeError("Connection reset by peer"), True),
        (dist.DistNetworkError("anything"), True),
        (ValueError("Connection closed by peer"), False),
        (RuntimeError("boom"), False),
        (PeerFailure("rank 0: lost rank 1 (Connection closed by peer) ...", ranks=(1,)), False),
        (KeyError("timed out"), False),
    ],
)
def test_is_collective_failure(error: BaseException, expected: bool) -> None:
    assert is_collective_failure(error) is expected


def test_peer_failure_after_probe_names_the_lost_ranks() -> None:
    error = RuntimeError(GLOO_CLOSED)
    failed = {2: "Connection closed by peer [127.0.0.1]:6050", 1: "Timed out waiting 2500ms"}
    found = PeerFailure.after_probe(0, failed, "at iteration 17 (epoch 2, step 5)", error, timedelta(seconds=2.5))
    assert isinstance(found, PeerFailure)
    assert found.ranks == (1, 2)
    assert str(found) == (
        "rank 0: lost rank 1 (Timed out waiting 2500ms), rank 2 (Connection closed by peer [127.0.0.1]:6050) at "
        "iteration 17 (epoch 2, step 5); a rank that dies, hangs or fails ends the whole run (its own log says why; "
        "a peer that did not answer within 2.5 s may also be stuck). Original error: Connection closed by peer "
        "[127.0.0.1]:6043"
    )
    assert is_collective_failure(found) is False


def test_peer_failure_after_probe_when_every_peer_still_answers() -> None:
    error = RuntimeError("Timed out waiting 100ms")
    found = PeerFailure.after_probe(3, {}, "in post_epoch at iteration 40", error, DEFAULT_TIMEOUT)
    assert found.ranks == ()
    assert str(found) == (
        "rank 3: a collective failed in post_epoch at iteration 40, but every peer still answers: Timed out waiting "
        "100ms"
    )


# ---------------------------------------------------------------------------------------------- two gloo ranks

WORKER = r"""
import json, os, sys, time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from trainers.distributed import environment as distributed
from trainers.distributed.collective import Collective
from trainers.distributed.ddp import LossModule, wrap
from trainers.distributed.stop_vote import StopVote

out = sys.argv[1]
report = {}
report["init"] = distributed.init_from_env(torch.device("cpu"), backend="gloo", timeout=60.0)
report["init_again"] = distributed.init_from_env(torch.device("cpu"), backend="gloo", timeout=60.0)
rank = distributed.rank()
report["env"] = [rank, distributed.world_size(), distributed.is_distributed(), dist.get_backend()]

c = Collective(timedelta(seconds=60))
report["collective"] = {
    "rank_size": [c.rank, c.size],
    "broadcast0": c.broadcast({"from": rank, "items": [rank, "x"]}),
    "broadcast1": c.broadcast(f"rank {rank}", src=1),
    "all_gather": c.all_gather({"rank": rank, "square": rank * rank + 1}),
    "gather0": c.gather(["g", rank]),
    "gather1": c.gather(rank + 10, dst=1),
    "barrier": c.barrier(),
    "probe": c.probe(timedelta(seconds=30)),
}


def check(values):
    # a plain all-reduce after each scenario: a collective left unmatched by the vote would spoil (or hang) it
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, group=c.group)
    return tensor.tolist()


votes = {}
v = StopVote(c.group)
results = [v.settle(wait=True)]
if rank == 1:
    v.want(1)
results.append(v.settle(wait=True))
after = [v.settle(wait=True) for _ in range(3 if rank == 0 else 1)]  # unequal counts: no collective any more
votes["sync"] = {"results": results, "after": after, "agreed": v.agreed, "closed": v.closed, "wish": v.wish,
                 "check": check([rank + 1, 10 * rank])}

v = StopVote(c.group)
results = [v.settle(wait=False)]
if rank == 1:
    v.want(1)
results.append(v.settle(wait=False))
results.append(v.settle(wait=False))
results += [v.settle(wait=False) for _ in range(2 if rank == 0 else 1)]
votes["async"] = {"results": results[:4], "extra": results[4:], "agreed": v.agreed, "closed": v.closed,
                  "check": check([rank + 2, 3])}

v = StopVote(c.group)
v.want(1 if rank == 0 else 2)
v.want(1)
wish = v.wish
votes["outrank"] = {"wish": wish, "result": v.settle(wait=True), "agreed": v.agreed, "check": check([5, rank])}

v = StopVote(c.group)
first = v.settle(wait=False)
if rank == 0:
    v.want(2)  # after the round in flight started: finish() waits for that round and asks nothing more
v.finish()
votes["finish"] = {"first": first, "closed": v.closed, "agreed": v.agreed, "later": v.settle(wait=True),
                   "check": check([rank, 1])}

v = StopVote(c.group)
before = [v.clock, v.now()]
if rank == 1:
    time.sleep(0.3)
code = v.settle(wait=True)
votes["clock"] = {"before": before, "code": code, "clock": v.clock, "now": v.now(), "check": check([1, 1])}
report["votes"] = votes

torch.manual_seed(100 + rank)
pipeline = nn.Linear(3, 1)
before = [p.detach().flatten().tolist() for p in pipeline.parameters()]
seen = []


def compute_loss(batch):
    seen.append(batch.tolist())
    return pipeline(batch).sum()


errors = {}
for bad in ({"device_ids": [0]}, {"module": pipeline}, {"output_device": 0}, {"bogus_option": 1}):
    try:
        wrap(pipeline, compute_loss, torch.device("cpu"), bad)
    except (ValueError, TypeError) as exc:
        errors[next(iter(bad))] = [type(exc).__name__, str(exc)]
ddp = wrap(pipeline, compute_loss, torch.device("cpu"), {"bucket_cap_mb": 1})
after = [p.detach().flatten().tolist() for p in pipeline.parameters()]
batch = torch.full((2, 3), float(rank + 1))
loss = ddp(batch)
loss.backward()
with torch.no_grad():
    direct = pipeline(batch).sum().item()
report["ddp"] = {
    "errors": errors,
    "before": before,
    "after": after,
    "wrapped": [type(ddp).__name__, type(ddp.module) is LossModule, ddp.module.pipeline is pipeline],
    "seen": seen,
    "loss": [loss.item(), direct],
    "grads": [p.grad.flatten().tolist() for p in pipeline.parameters()],
}
with open(f"{out}/rank-{rank}.json", "w", encoding="utf-8") as f:
    json.dump(report, f)
# no destroy_process_group and no os._exit: init_from_env's exit hook tears the groups down (the vote, the side
# groups and DDP still hold them here) so that gloo's threads are gone before the interpreter is
"""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run :data:`WORKER` as ranks 0 and 1 of a real gloo job; their reports."""
    out = tmp_path_factory.mktemp("ranks")
    procs = start_ranks(["-c", WORKER, str(out)], out)
    outputs, _ = wait_ranks(procs, 120)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    return [json.loads((out / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


def test_init_from_env_starts_the_group_of_the_job(ranks: list[dict[str, Any]]) -> None:
    for rank, report in enumerate(ranks):
        assert report["init"] is True
        assert report["init_again"] is True  # already up: nothing started twice
        assert report["env"] == [rank, 2, True, "gloo"]


def test_collective_object_collectives(ranks: list[dict[str, Any]]) -> None:
    for rank, report in enumerate(ranks):
        found = report["collective"]
        assert found["rank_size"] == [rank, 2]
        assert found["broadcast0"] == {"from": 0, "items": [0, "x"]}
        assert found["broadcast1"] == "rank 1"
        assert found["all_gather"] == [{"rank": 0, "square": 1}, {"rank": 1, "square": 2}]
        assert found["gather0"] == ([["g", 0], ["g", 1]] if rank == 0 else None)
        assert found["gather1"] == ([10, 11] if rank == 1 else None)
        assert found["barrier"] is None
        assert found["probe"] == {}


def test_stop_vote_a_wish_on_one_rank_stops_both_when_waiting(ranks: list[dict[str, Any]]) -> None:
    sync = [report["votes"]["sync"] for report in ranks]
    assert [s["results"] for s in sync] == [[0, 1], [0, 1]]
    assert [s["agreed"] for s in sync] == [1, 1]
    assert [s["closed"] for s in sync] == [True, True]
    assert [s["wish"] for s in sync] == [0, 1]
    assert [s["after"] for s in sync] == [[0, 0, 0], [0]]
    assert [s["check"] for s in sync] == [[3, 10], [3, 10]]  # the settles after agreement made no collective


def test_stop_vote_without_waiting_agrees_one_round_later(ranks: list[dict[str, Any]]) -> None:
    votes = [report["votes"]["async"] for report in ranks]
    # round 0 started; round 1 started with rank 1's wish, round 0 read (nothing); round 1 read: stop; closed
    assert [v["results"] for v in votes] == [[0, 0, 1, 0], [0, 0, 1, 0]]
    assert [v["extra"] for v in votes] == [[0], []]
    assert [(v["agreed"], v["closed"]) for v in votes] == [(1, True), (1, True)]
    assert [v["check"] for v in votes] == [[5, 6], [5, 6]]


def test_stop_vote_an_interrupt_outranks_a_stop(ranks: list[dict[str, Any]]) -> None:
    votes = [report["votes"]["outrank"] for report in ranks]
    assert [v["wish"] for v in votes] == [1, 2]
    assert [(v["result"], v["agreed"]) for v in votes] == [(2, 2), (2, 2)]
    assert [v["check"] for v in votes] == [[10, 1], [10, 1]]


def test_stop_vote_finish_waits_for_the_round_in_flight_and_closes(ranks: list[dict[str, Any]]) -> None:
    votes = [report["votes"]["finish"] for report in ranks]
    assert [(v["first"], v["closed"], v["agreed"], v["later"]) for v in votes] == [(0, True, 0, 0)] * 2
    assert [v["check"] for v in votes] == [[1, 2], [1, 2]]


def test_stop_vote_clock_is_the_largest_of_the_ranks_clocks(ranks: list[dict[str, Any]]) -> None:
    votes = [report["votes"]["clock"] for report in ranks]
    assert [v["before"] for v in votes] == [[0.0, 0.0], [0.0, 0.0]]
    assert [v["code"] for v in votes] == [0, 0]
    assert votes[0]["clock"] == votes[1]["clock"]  # the same value on every rank
    assert [v["now"] for v in votes] == [votes[0]["clock"]] * 2
    # rank 1 slept 0.3 s before its round, rank 0 did not: rank 0 reads rank 1's clock
    assert votes[0]["clock"] >= 0.3
    assert (votes[0]["clock"] * 1000.0) == pytest.approx(round(votes[0]["clock"] * 1000.0), abs=1e-6)  # whole ms
    assert [v["check"] for v in votes] == [[2, 2], [2, 2]]


def test_ddp_wrap_rejects_options_the_trainer_sets(ranks: list[dict[str, Any]]) -> None:
    for report in ranks:
        errors = report["ddp"]["errors"]
        assert list(errors) == ["device_ids", "module", "output_device", "bogus_option"]
        for name in ("device_ids", "module", "output_device"):
            assert errors[name] == [
                "ValueError",
                f"ddp options: {name!r} is set by the trainer (from its device); remove it",
            ]
        kind, message = errors["bogus_option"]
        assert kind == "TypeError"
        assert message.startswith("ddp options ['bogus_option']: ")
        assert "unexpected keyword argument 'bogus_option'" in message


def test_ddp_wrap_syncs_rank_zeros_parameters_and_runs_compute_loss(ranks: list[dict[str, Any]]) -> None:
    zero, one = (report["ddp"] for report in ranks)
    assert zero["before"] != one["before"]  # initialised differently
    assert zero["after"] == zero["before"]
    assert one["after"] == zero["before"]
    for rank, found in enumerate((zero, one)):
        assert found["wrapped"] == ["DistributedDataParallel", True, True]
        assert found["seen"] == [[[float(rank + 1)] * 3] * 2]  # forward(batch) is compute_loss(batch)
        assert found["loss"][0] == found["loss"][1]
        # d(sum of outputs)/dW is the sum of the rows: 2 * 1 on rank 0, 2 * 2 on rank 1; DDP averages them
        assert found["grads"] == [[3.0, 3.0, 3.0], [2.0]]
    weight, bias = zero["before"]
    assert zero["loss"][0] == pytest.approx(2 * (sum(weight) + bias[0]), rel=1e-6)
    assert one["loss"][0] == pytest.approx(2 * (2 * sum(weight) + bias[0]), rel=1e-6)


# ---------------------------------------------------------------------------------------------- Bus clock


def test_bus_wall_time_schedule_reads_the_injected_clock() -> None:
    now = [0.0]
    state = State(max_epochs=1, iterations_per_epoch=100)
    bus = Bus(state, clock=lambda: now[0])
    fired: list[tuple[str, float, int]] = []

    def every_10(sender: object, **payload: Any) -> None:
        fired.append(("10s", now[0], state.iteration))

    def every_30(sender: object, **payload: Any) -> None:
        fired.append(("30s", now[0], state.iteration))

    bus.connect(Event.STEP, every_10, every="10s")
    bus.connect("step", every_30, every="0.5min")
    for iteration, t in enumerate((0.0, 5.0, 9.999, 10.0, 15.0, 19.999, 20.0, 31.0, 45.0, 45.5), start=1):
        now[0], state.iteration = t, iteration
        bus.emit(Event.STEP, None)
    # the first check anchors each schedule; a handler fires once the clock is at least its period past the
    # last firing (or the anchor)
    assert fired == [("10s", 10.0, 4), ("10s", 20.0, 7), ("10s", 31.0, 8), ("30s", 31.0, 8), ("10s", 45.0, 9)]


def test_bus_clock_defaults_to_monotonic_time() -> None:
    assert Bus(State()).clock is time.monotonic
    assert Bus(State(), clock=None).clock is time.monotonic
    assert Bus().clock is time.monotonic

    def clock() -> float:
        return 12.0

    assert Bus(State(), clock=clock).clock is clock


def test_bus_without_wall_time_handlers_never_reads_the_clock() -> None:
    reads: list[int] = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    state = State(max_epochs=1, iterations_per_epoch=10)
    bus = Bus(state, clock=clock)
    calls: list[int] = []
    bus.connect(Event.STEP, lambda sender, **payload: calls.append(state.iteration), every="2it")
    for i in range(1, 5):
        state.iteration = i
        bus.emit(Event.STEP, None)
    assert calls == [2, 4]
    assert reads == []
