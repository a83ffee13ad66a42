"""State: the run's counters, their checkpoint form and the validation of a loaded checkpoint."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import State

COUNTERS = ["epoch", "iteration", "epoch_iteration", "max_epochs", "iterations_per_epoch"]


def valid_dict(**overrides: Any) -> dict[str, Any]:
    """A consistent mid-run checkpoint: epoch 2 of 3, step 1 of 4, iteration 5."""
    base: dict[str, Any] = {
        "epoch": 2,
        "iteration": 5,
        "epoch_iteration": 1,
        "max_epochs": 3,
        "iterations_per_epoch": 4,
    }
    base.update(overrides)
    return base


def test_defaults() -> None:
    state = State()
    assert state.max_epochs == 1
    assert state.iterations_per_epoch == 1
    assert state.epoch == 0
    assert state.iteration == 0
    assert state.epoch_iteration == 0
    assert state.metrics == {}
    assert state.max_iterations == 1
    assert state.epoch_finished is False


def test_metrics_are_not_shared_between_states() -> None:
    first, second = State(), State()
    first.metrics["val/psnr"] = 30.5
    assert second.metrics == {}


def test_max_iterations_is_epochs_times_steps() -> None:
    assert State(max_epochs=3, iterations_per_epoch=4).max_iterations == 12
    assert State(max_epochs=7, iterations_per_epoch=1).max_iterations == 7


def test_epoch_finished_tracks_the_last_step() -> None:
    state = State(max_epochs=2, iterations_per_epoch=3, epoch=1, iteration=2, epoch_iteration=2)
    assert state.epoch_finished is False
    state.epoch_iteration = 3
    assert state.epoch_finished is True


def test_str_describes_the_position() -> None:
    state = State(max_epochs=3, iterations_per_epoch=4, epoch=2, iteration=7, epoch_iteration=3)
    assert str(state) == "epoch 2/3, step 3/4, iteration 7"


def test_state_dict_holds_exactly_the_counters() -> None:
    state = State(max_epochs=3, iterations_per_epoch=4, epoch=2, iteration=5, epoch_iteration=1)
    state.metrics["loss"] = 0.25
    saved = state.state_dict()
    assert saved == valid_dict(optimizer_step=0)
    assert sorted(saved) == sorted([*COUNTERS, "optimizer_step"])
    assert all(type(value) is int for value in saved.values())


def test_state_dict_round_trip_into_a_fresh_state() -> None:
    source = State(max_epochs=5, iterations_per_epoch=10, epoch=4, iteration=37, epoch_iteration=7)
    target = State()
    target.metrics["kept"] = 1
    target.load_state_dict(source.state_dict())
    assert (target.epoch, target.iteration, target.epoch_iteration) == (4, 37, 7)
    assert (target.max_epochs, target.iterations_per_epoch) == (5, 10)
    assert target.state_dict() == source.state_dict()
    assert target.metrics == {"kept": 1}  # metrics are not part of the resumable state


def test_load_accepts_the_boundaries() -> None:
    state = State()
    # without "optimizer_step" (written before accumulation existed): one optimizer step per iteration
    state.load_state_dict(valid_dict(epoch=3, epoch_iteration=4, iteration=12))  # the very end of the run
    assert state.state_dict() == valid_dict(epoch=3, epoch_iteration=4, iteration=12, optimizer_step=12)
    state.load_state_dict(valid_dict(epoch=0, epoch_iteration=0, iteration=0))  # before training
    assert state.state_dict() == valid_dict(epoch=0, epoch_iteration=0, iteration=0, optimizer_step=0)
    state.load_state_dict(valid_dict(optimizer_step=2))
    assert state.optimizer_step == 2


@pytest.mark.parametrize("bad", [-1, 6, 2.0, True, "3"])
def test_load_rejects_an_impossible_optimizer_step(bad: object) -> None:
    state = State()
    with pytest.raises(ValueError, match="optimizer_step"):
        state.load_state_dict(valid_dict(optimizer_step=bad))  # 5 iterations: 0..5 optimizer steps
    assert state.state_dict() == State().state_dict()  # nothing changed


def test_accumulation_windows_never_cross_an_epoch() -> None:
    state = State(max_epochs=2, iterations_per_epoch=10, accumulate=4)
    assert (state.optimizer_steps_per_epoch, state.max_optimizer_steps) == (3, 6)  # windows of 4, 4 and 2
    open_after = []
    for step in range(0, 11):
        state.epoch_iteration = step
        if state.mid_window:
            open_after.append(step)
    assert open_after == [1, 2, 3, 5, 6, 7, 9]
    assert State(iterations_per_epoch=10).mid_window is False


@pytest.mark.parametrize("missing", COUNTERS)
def test_load_rejects_a_missing_counter(missing: str) -> None:
    saved = valid_dict()
    del saved[missing]
    state = State()
    with pytest.raises(ValueError, match="missing counters") as info:
        state.load_state_dict(saved)
    assert repr([missing]) in str(info.value)
    assert state.state_dict() == State().state_dict()  # nothing was half-loaded


def test_load_names_every_missing_counter() -> None:
    with pytest.raises(ValueError, match=r"missing counters \['epoch', 'iteration'\]"):
        State().load_state_dict({"epoch_iteration": 0, "max_epochs": 1, "iterations_per_epoch": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epoch", -1),
        ("iteration", -5),
        ("epoch_iteration", True),
        ("iteration", False),
        ("max_epochs", 2.0),
        ("iteration", "5"),
        ("epoch", None),
    ],
)
def test_load_rejects_negative_bool_and_non_int_values(key: str, value: object) -> None:
    state = State(max_epochs=9, iterations_per_epoch=9, epoch=1, iteration=1, epoch_iteration=1)
    before = state.state_dict()
    with pytest.raises(ValueError, match="must be a non-negative int") as info:
        state.load_state_dict(valid_dict(**{key: value}))
    assert f"state counter {key!r}" in str(info.value)
    assert f"got {value!r}" in str(info.value)
    assert state.state_dict() == before  # validation happens before anything is assigned


@pytest.mark.parametrize("key", ["max_epochs", "iterations_per_epoch"])
def test_load_rejects_an_empty_run(key: str) -> None:
    with pytest.raises(ValueError, match="max_epochs and iterations_per_epoch must be >= 1"):
        State().load_state_dict(valid_dict(**{key: 0}))


@pytest.mark.parametrize(
    "overrides",
    [
        {"epoch_iteration": 5},  # step 5 of a 4-step epoch
        {"epoch": 4},  # epoch 4 of 3
    ],
)
def test_load_rejects_positions_beyond_the_run(overrides: dict[str, int]) -> None:
    state = State()
    with pytest.raises(ValueError, match="inconsistent counters") as info:
        state.load_state_dict(valid_dict(**overrides))
    assert "beyond the run's length" in str(info.value)
    assert state.state_dict() == State().state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        {"epoch": 0, "epoch_iteration": 2, "iteration": 2},  # a step inside an epoch, before training started
        {"epoch": 1, "epoch_iteration": 3, "iteration": 1},  # step 3 of the epoch, but only 1 step ever started
    ],
)
def test_load_rejects_impossible_positions(overrides: dict[str, int]) -> None:
    # State's docstring: epoch is 0 before training starts, epoch_iteration is the step inside the current epoch and
    # iteration counts every step started, so it can never be smaller than epoch_iteration.
    state = State()
    with pytest.raises(ValueError, match="inconsistent counters"):
        state.load_state_dict(valid_dict(**overrides))
