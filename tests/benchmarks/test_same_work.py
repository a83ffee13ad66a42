"""The overhead benchmark's by-hand baseline does the default set's work: the same TensorBoard scalars at the same
iterations with the same values, read back from both runs' event files. Without this, the default set's ratio to it
could be a ratio to less work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.raw_loops import raw_default_work
from benchmarks.workload import default_set, make_batches, run_stepbus

#: the values both must agree on (timings differ by nature; hparam/iterations is the trainer's end-of-run summary)
SAME_VALUES = ("train/loss", "epoch/loss", "lr", "grad_norm")


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    (events,) = {path.parent for path in directory.rglob("events.out.tfevents*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_by_hand_writes_the_default_sets_scalars_with_the_same_values(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    (tmp_path / "stepbus").mkdir()
    (tmp_path / "hand").mkdir()
    batches = make_batches(120)  # 2 epochs of 120: a log point every 50, so windows span the epochs' ends
    run_stepbus(batches, 2, default_set, run_dir=tmp_path / "stepbus")
    raw_default_work(batches, 2, tmp_path / "hand")
    framework, hand = scalars(tmp_path / "stepbus"), scalars(tmp_path / "hand")
    assert sorted(hand) == sorted(set(framework) - {"hparam/iterations"})
    for tag in hand:
        assert [step for step, _ in hand[tag]] == [step for step, _ in framework[tag]], tag
    assert [step for step, _ in hand["train/loss"]] == [50, 100, 150, 200]
    assert [step for step, _ in hand["epoch/loss"]] == [120, 240]
    for tag in SAME_VALUES:
        assert [value for _, value in hand[tag]] == pytest.approx([value for _, value in framework[tag]], rel=1e-6), tag
