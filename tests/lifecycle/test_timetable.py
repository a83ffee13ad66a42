"""The channel timetable: counting schedules are skipped below their next due value, and every emission fires
exactly the handlers that asking each predicate would fire -- checked against the predicates themselves over
random schedules, several emissions per value, a counter that goes back (a restored state) and toggles."""

from __future__ import annotations

import random
from typing import Any

import pytest

from lifecycle import Bus, Event, Schedule, State
from lifecycle.timetable import NEVER


def _specs(rng: random.Random) -> list[dict[str, Any]]:
    """Random schedules of every counting form, and some that do not count (always, bounds alone)."""
    found: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 8)):
        form = rng.choice(["period", "at", "never", "always", "bounds"])
        spec: dict[str, Any] = {}
        if form == "period":
            spec["every"] = f"{rng.randint(1, 25)}it"  # below 10: asked every time; from 10: placed
        elif form == "at":
            spec["at"] = sorted(rng.sample(range(1, 60), rng.randint(1, 5)))
        elif form == "never":
            spec["every"] = "never"
        if form in ("period", "at", "bounds") and rng.random() < 0.5:
            spec["start"] = rng.randint(1, 30)
        if form in ("period", "at", "bounds") and rng.random() < 0.5:
            spec["end"] = spec.get("start", 1) + rng.randint(0, 30)
        if form in ("period", "at") and rng.random() < 0.3:
            spec["once"] = True
        found.append(spec)
    return found


def _schedule(spec: dict[str, Any]) -> Schedule:
    return Schedule.parse(spec.get("every"), at=spec.get("at"), start=spec.get("start"), end=spec.get("end"),
                          once=spec.get("once", False))  # fmt: skip


def _values(rng: random.Random) -> list[int]:
    """Counter values in emission order: mostly rising, some repeated, one jump back."""
    values = [v for v in range(0, 70) for _ in range(rng.choice([1, 1, 1, 2]))]
    back = rng.randint(10, 60)
    return values[:back] + list(range(rng.randint(0, 20), 40))


@pytest.mark.parametrize("seed", range(60))
def test_the_timetable_fires_what_the_predicates_fire(seed: int) -> None:
    rng = random.Random(seed)
    specs = _specs(rng)
    state = State(max_epochs=1, iterations_per_epoch=1000)
    bus = Bus(state)
    fired: list[tuple[int, int]] = []
    for index, spec in enumerate(specs):
        bus.connect(Event.POST_STEP, lambda _s, i=index: fired.append((state.iteration, i)), every=_schedule(spec))
    # the reference: each schedule's own predicate, asked at every emission
    predicates = [_schedule(spec).bind(state, Event.POST_STEP) for spec in specs]
    expected: list[tuple[int, int]] = []
    for value in _values(rng):
        state.iteration = value
        bus.emit(Event.POST_STEP, None)
        expected += [(value, i) for i, due in enumerate(predicates) if due is None or due()]
    assert fired == expected, specs


def test_idle_steps_skip_the_counting_schedules_and_ask_the_others() -> None:
    state = State(max_epochs=1, iterations_per_epoch=10_000)
    bus = Bus(state)
    calls: list[str] = []
    for n in range(100):
        bus.connect(Event.POST_STEP, lambda _s, n=n: calls.append(f"idle-{n}"), every="1000it", name=f"idle-{n}")
    bus.connect(Event.POST_STEP, lambda _s: calls.append("always"), name="always")
    bus.connect(Event.POST_STEP, lambda _s: calls.append("window"), every={"start": 3, "end": 4}, name="window")
    channel = bus.channel(Event.POST_STEP)
    table = channel._table
    assert table is not None
    assert [entry[2].name for entry in table.idle] == ["always", "window"]
    for value in range(1, 1002):
        state.iteration = value
        bus.emit(Event.POST_STEP, None)
    assert calls.count("always") == 1001
    assert calls.count("window") == 2
    assert [c for c in calls if c.startswith("idle-")] == [f"idle-{n}" for n in range(100)]  # all at 1000 only
    assert (table.since, table.wake) == (1001, 2000)


def test_the_wake_follows_at_bounds_once_and_never() -> None:
    state = State(max_epochs=1, iterations_per_epoch=1000)
    bus = Bus(state)
    bus.connect(Event.PRE_STEP, lambda _s: None, every=Schedule.parse(at=[5, 40]))
    bus.connect(Event.PRE_STEP, lambda _s: None, every=Schedule.parse("10it", start=25, once=True))
    bus.connect(Event.PRE_STEP, lambda _s: None, every="never")
    table = bus.channel(Event.PRE_STEP)._table
    assert table is not None
    wakes = []
    for value in (1, 5, 6, 30, 40, 41):
        state.iteration = value
        bus.emit(Event.PRE_STEP, None)
        wakes.append(table.wake)
    # after 1: at=5; after 5: 30 (the once schedule's first point); after 30 it fired: at=40; after 40: never
    assert wakes == [5, 30, 30, 40, NEVER, NEVER]


def test_epoch_channels_count_epochs_and_toggles_rebuild_the_timetable() -> None:
    state = State(max_epochs=40, iterations_per_epoch=5)
    bus = Bus(state)
    fired: list[int] = []
    handle = bus.connect(Event.POST_EPOCH, lambda _s: fired.append(state.epoch), every="12ep")
    table = bus.channel(Event.POST_EPOCH)._table
    assert table is not None
    for epoch in range(1, 25):
        state.epoch, state.iteration = epoch, epoch * 5
        bus.emit(Event.POST_EPOCH, None)
    assert fired == [12, 24]
    assert table.wake == 36  # epochs, not iterations (120)
    handle.enabled = False
    assert bus.channel(Event.POST_EPOCH)._table is None  # nothing counting left: the plan (empty) is run
    handle.enabled = True
    state.epoch = 36
    bus.emit(Event.POST_EPOCH, None)
    assert fired == [12, 24, 36]


def test_timing_handlers_runs_the_whole_plan() -> None:
    state = State(max_epochs=1, iterations_per_epoch=100)
    bus = Bus(state)
    fired: list[int] = []
    bus.connect(Event.POST_STEP, lambda _s: fired.append(state.iteration), every="40it")
    with bus.time_handlers() as times:
        assert bus.channel(Event.POST_STEP)._table is None
        for value in range(1, 81):
            state.iteration = value
            bus.emit(Event.POST_STEP, None)
    assert fired == [40, 80]
    assert bus.channel(Event.POST_STEP)._table is not None
    assert times is not None


def test_dense_schedules_are_asked_every_time_and_sparse_ones_placed() -> None:
    state = State(max_epochs=1, iterations_per_epoch=100)
    bus = Bus(state)
    bus.connect(Event.STEP, lambda _s, **_: None, every="9it", name="dense")
    assert bus.channel(Event.STEP)._table is None  # only a dense schedule: the plan is run as it is
    bus.connect(Event.STEP, lambda _s, **_: None, every="10it", name="sparse")
    table = bus.channel(Event.STEP)._table
    assert table is not None
    assert [entry[2].name for entry in table.idle] == ["dense"]
