"""Events, statuses and priorities: the names every other layer (blinker signals, Callback methods, YAML) relies on."""

from __future__ import annotations

import pytest

from lifecycle import EPOCH_EVENTS, STEP_EVENTS, Event, Priority, Status, as_event
from tests.support import EVENT_METHODS

LIFECYCLE_ORDER = list(EVENT_METHODS)  # the tests' one copy of the order (tests/support.py)


def test_event_values_are_the_lowercase_names_in_lifecycle_order() -> None:
    assert [e.value for e in Event] == LIFECYCLE_ORDER
    for member in Event:
        assert member.value == member.name.lower()


def test_event_is_a_str_enum() -> None:
    assert issubclass(Event, str)
    assert isinstance(Event.POST_STEP, str)
    assert Event.POST_STEP == "post_step"  # type: ignore[comparison-overlap]
    assert str(Event.POST_STEP) == "post_step"
    assert f"{Event.PRE_EPOCH}" == "pre_epoch"
    assert Event("post_validation") is Event.POST_VALIDATION
    assert {"post_step": 1}[Event.POST_STEP] == 1  # hashes like its value


@pytest.mark.parametrize("name", LIFECYCLE_ORDER)
def test_as_event_accepts_every_value(name: str) -> None:
    event = as_event(name)
    assert isinstance(event, Event)
    assert event.value == name


def test_as_event_returns_members_unchanged() -> None:
    assert as_event("post_step") is Event.POST_STEP
    assert as_event(Event.STEP) is Event.STEP


@pytest.mark.parametrize("bad", ["bogus", "POST_STEP", "post-step", "", " post_step"])
def test_as_event_rejects_unknown_names_listing_the_valid_ones(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown event") as info:
        as_event(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "valid events are: " + ", ".join(LIFECYCLE_ORDER) in message


def test_status_values() -> None:
    assert [s.value for s in Status] == ["completed", "stopped", "interrupted", "failed"]
    assert issubclass(Status, str)
    assert Status.FAILED == "failed"  # type: ignore[comparison-overlap]
    assert str(Status.STOPPED) == "stopped"
    assert f"{Status.COMPLETED}" == "completed"
    assert Status("interrupted") is Status.INTERRUPTED


def test_step_and_epoch_event_groups() -> None:
    assert frozenset({Event.PRE_STEP, Event.STEP, Event.POST_STEP}) == STEP_EVENTS
    assert frozenset({Event.PRE_EPOCH, Event.POST_EPOCH}) == EPOCH_EVENTS
    assert not STEP_EVENTS & EPOCH_EVENTS


def test_priority_bands_order_state_changers_first_and_checkpointer_last() -> None:
    bands = [Priority.STATE, Priority.VALIDATION, Priority.METRICS, Priority.DEFAULT]
    bands += [Priority.LOGGING, Priority.PROGRESS, Priority.CHECKPOINT, Priority.FINAL]
    assert [int(b) for b in bands] == [300, 200, 100, 0, -100, -200, -1000, -2000]
    assert sorted(Priority, reverse=True) == bands
    assert Priority.DEFAULT == 0  # type: ignore[comparison-overlap]
