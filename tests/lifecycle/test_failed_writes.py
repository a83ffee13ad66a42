"""State.failed_writes: writes that failed while the run went on, counted per writer, saved with the counters
(``failed_writes/<writer>``, only when there are any) and checked when loaded."""

from __future__ import annotations

import re
from typing import Any

import pytest

from lifecycle import State


def position(**extra: Any) -> dict[str, Any]:
    """Epoch 1 of 2, step 2 of 3, iteration 2, plus ``extra``."""
    return {"epoch": 1, "iteration": 2, "epoch_iteration": 2, "max_epochs": 2, "iterations_per_epoch": 3, **extra}


def test_each_failed_write_is_counted_under_its_writer() -> None:
    state = State()
    assert state.failed_writes == {}
    assert state.count_failed_write("Checkpointer") == 1
    assert state.count_failed_write("Checkpointer") == 2
    assert state.count_failed_write("tb/main") == 1  # any state_key, a slash included
    assert state.failed_writes == {"Checkpointer": 2, "tb/main": 1}
    assert State().failed_writes == {}  # not shared


@pytest.mark.parametrize("writer", ["", None, 3])
def test_a_failed_write_needs_the_writers_name(writer: Any) -> None:
    with pytest.raises(
        ValueError, match=rf"a failed write needs the writer's name \(a non-empty string\), got {writer!r}"
    ):
        State().count_failed_write(writer)


def test_the_counts_travel_with_the_counters_and_come_back() -> None:
    source = State(max_epochs=2, iterations_per_epoch=3, epoch=1, iteration=2, epoch_iteration=2, optimizer_step=2)
    assert "failed_writes/Checkpointer" not in source.state_dict()  # none: nothing added
    source.count_failed_write("Checkpointer")
    source.count_failed_write("Checkpointer")
    source.count_failed_write("tb/main")
    saved = source.state_dict()
    assert saved == position(optimizer_step=2, **{"failed_writes/Checkpointer": 2, "failed_writes/tb/main": 1})
    target = State(max_epochs=2, iterations_per_epoch=3)
    target.load_state_dict(saved)
    assert target.failed_writes == {"Checkpointer": 2, "tb/main": 1}
    target.load_state_dict(position())  # a checkpoint without failures: none
    assert target.failed_writes == {}


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        ("failed_writes/Checkpointer", -1),
        ("failed_writes/Checkpointer", True),
        ("failed_writes/x", 1.5),
        ("failed_writes/", 2),
    ],
)
def test_a_bad_count_is_refused_and_nothing_is_loaded(entry: str, value: Any) -> None:
    state = State(max_epochs=2, iterations_per_epoch=3)
    state.count_failed_write("kept")
    message = f"state entry {entry!r} must name a writer and count its failed writes (an int >= 0), got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        state.load_state_dict(position(**{entry: value}))
    assert (state.failed_writes, state.iteration) == ({"kept": 1}, 0)  # checked before anything is assigned
