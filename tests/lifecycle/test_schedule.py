"""Schedules: every accepted form, its predicate over a simulated run, and the errors for everything else."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle import EPOCH_EVENTS, STEP_EVENTS, VALID_FORMS, Event, Schedule, State

Predicate = Callable[[], bool]


def bind(spec: Any = None, event: Event = Event.POST_STEP, state: State | None = None, **kwargs: Any) -> Predicate:
    """Parse ``spec`` and bind it to ``event``; the predicate must exist (the schedule filters something)."""
    schedule = Schedule.parse(spec, **kwargs)
    predicate = schedule.bind(state if state is not None else State(), event)
    assert predicate is not None
    return predicate


def firing_iterations(predicate: Predicate | None, state: State, iterations: Iterable[int]) -> list[int]:
    assert predicate is not None
    fired = []
    for i in iterations:
        state.iteration = i
        if predicate():
            fired.append(i)
    return fired


def firing_epochs(predicate: Predicate | None, state: State, epochs: Iterable[int]) -> list[int]:
    assert predicate is not None
    fired = []
    for e in epochs:
        state.epoch = e
        if predicate():
            fired.append(e)
    return fired


def simulate(
    schedules: dict[str, tuple[Any, Event]], *, epochs: int = 3, steps: int = 4, **kwargs: Any
) -> dict[str, list[tuple[str, int, int]]]:
    """Walk a run like the loop does (counters advanced before the event) and record, for each named schedule,
    ``(event, epoch, iteration)`` every time its predicate says the handler runs."""
    state = State(max_epochs=epochs, iterations_per_epoch=steps)
    bound = {}
    for name, (spec, event) in schedules.items():
        bound[name] = (Schedule.parse(spec, **kwargs.get(name, {})).bind(state, event), event)
    fired: dict[str, list[tuple[str, int, int]]] = {name: [] for name in schedules}

    def emit(event: Event) -> None:
        for name, (predicate, wanted) in bound.items():
            if wanted is event and (predicate is None or predicate()):
                fired[name].append((event.value, state.epoch, state.iteration))

    emit(Event.PRE_TRAINING)
    for _ in range(epochs):
        state.epoch += 1
        state.epoch_iteration = 0
        emit(Event.PRE_EPOCH)
        for _ in range(steps):
            state.iteration += 1
            state.epoch_iteration += 1
            emit(Event.PRE_STEP)
            emit(Event.STEP)
            emit(Event.POST_STEP)
        emit(Event.POST_EPOCH)
    emit(Event.POST_TRAINING)
    return fired


# ---------------------------------------------------------------------------------------------------------- forms


def test_none_is_always() -> None:
    schedule = Schedule.parse(None)
    assert schedule.always is True
    assert str(schedule) == "always"
    for event in Event:
        assert schedule.bind(State(), event) is None


@pytest.mark.parametrize("spec", [3, "3it", "3", " 3 it ", "3IT"])
def test_iteration_period_fires_at_multiples(spec: int | str) -> None:
    schedule = Schedule.parse(spec)
    assert (schedule.unit, schedule.period, str(schedule)) == ("it", 3.0, "3it")
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 13)) == [3, 6, 9, 12]


def test_iteration_period_one_fires_every_step() -> None:
    state = State()
    assert firing_iterations(bind("1it", state=state), state, range(1, 6)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("event", sorted(STEP_EVENTS))
def test_iteration_period_filters_every_step_event(event: Event) -> None:
    state = State()
    assert firing_iterations(bind(100, event, state), state, range(1, 301)) == [100, 200, 300]


@pytest.mark.parametrize("event", [Event.PRE_EPOCH, Event.POST_EPOCH])
def test_epoch_period_fires_on_multiples_of_the_epoch(event: Event) -> None:
    schedule = Schedule.parse("2ep")
    assert (schedule.unit, schedule.period, str(schedule)) == ("ep", 2.0, "2ep")
    state = State()
    assert firing_epochs(schedule.bind(state, event), state, range(1, 8)) == [2, 4, 6]


def test_epoch_period_ignores_the_iteration_counter() -> None:
    state = State()
    predicate = bind("3ep", Event.POST_EPOCH, state)
    state.epoch = 3
    for iteration in (0, 1, 7):
        state.iteration = iteration
        assert predicate() is True
    state.epoch = 4
    state.iteration = 3
    assert predicate() is False


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [("30s", 30.0), ("10min", 600.0), ("1h", 3600.0), ("0.5s", 0.5), ("2 MIN", 120.0), ("1.5h", 5400.0)],
)
def test_wall_time_units(spec: str, seconds: float) -> None:
    schedule = Schedule.parse(spec)
    assert schedule.unit == "s"
    assert schedule.period == seconds
    assert str(schedule) == f"{seconds:g}s"


class FakeClock:
    """A clock that returns the given readings one by one and fails if asked once too often."""

    def __init__(self, readings: Iterable[float]) -> None:
        self.readings = list(readings)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.readings.pop(0)


@pytest.mark.parametrize("spec", ["30s", "0.5min"])
def test_wall_time_anchors_on_first_check_then_fires_after_the_period_and_reanchors(spec: str) -> None:
    clock = FakeClock([100.0, 110.0, 129.9, 130.0, 145.0, 159.9, 160.0, 500.0, 529.0, 530.0])
    predicate = Schedule.parse(spec).bind(State(), Event.POST_STEP, clock=clock)
    assert predicate is not None
    results = [predicate() for _ in range(10)]
    # 100 anchors; 130 is 30 s later; re-anchored at 130, 160 fires; re-anchored at 160, 500 fires (late: fires once,
    # no catch-up); re-anchored at 500, 530 fires.
    assert results == [False, False, False, True, False, False, True, True, False, True]
    assert clock.calls == 10


@pytest.mark.parametrize(("spec", "period"), [("10min", 600.0), ("1h", 3600.0), ("0.5s", 0.5)])
def test_wall_time_period_boundary(spec: str, period: float) -> None:
    start = 1000.0
    clock = FakeClock([start, start + period * 0.999, start + period, start + period * 1.5, start + period * 2])
    predicate = Schedule.parse(spec).bind(State(), Event.POST_EPOCH, clock=clock)
    assert predicate is not None
    assert [predicate() for _ in range(5)] == [False, False, True, False, True]


def test_wall_time_with_once_fires_a_single_time() -> None:
    clock = FakeClock([0.0, 31.0, 62.0, 93.0])
    predicate = Schedule.parse("30s", once=True).bind(State(), Event.STEP, clock=clock)
    assert predicate is not None
    assert [predicate() for _ in range(4)] == [False, True, False, False]


def test_wall_time_bounds_are_checked_before_the_clock_anchors() -> None:
    state = State()
    clock = FakeClock([0.0, 5.0, 40.0])
    predicate = Schedule.parse("30s", start=3).bind(state, Event.POST_STEP, clock=clock)
    assert predicate is not None
    assert firing_iterations(predicate, state, [1, 2]) == []
    assert clock.calls == 0  # out of bounds: the clock is not even read
    assert firing_iterations(predicate, state, [3, 4, 5]) == [5]


def test_once_fires_the_first_time_only() -> None:
    schedule = Schedule.parse("once")
    assert schedule.once is True
    assert str(schedule) == "once"
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 10)) == [1]


def test_once_is_case_insensitive() -> None:
    assert Schedule.parse(" ONCE ") == Schedule.parse("once")


def test_each_bind_of_once_is_independent() -> None:
    schedule = Schedule.parse("once")
    state = State()
    first = schedule.bind(state, Event.POST_STEP)
    second = schedule.bind(state, Event.POST_STEP)
    assert first is not None
    assert second is not None
    state.iteration = 1
    assert first() is True
    assert first() is False
    state.iteration = 2
    assert second() is True  # the first predicate's memory does not leak into the second
    assert second() is False
    third = schedule.bind(state, Event.PRE_EPOCH)
    assert third is not None
    assert third() is True


def test_once_respects_start() -> None:
    state = State()
    assert firing_iterations(bind("once", start=5, state=state), state, range(1, 10)) == [5]
    state = State()
    assert firing_iterations(bind({"every": "once", "start": 3}, state=state), state, range(1, 10)) == [3]


def test_at_iterations() -> None:
    schedule = Schedule.parse(at=[250, 100])
    assert schedule.at == frozenset({100, 250})
    assert str(schedule) == "at=[100it, 250it]"
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 401)) == [100, 250]


def test_at_iterations_as_strings() -> None:
    state = State()
    assert firing_iterations(bind(at=["7it", 3], state=state), state, range(1, 10)) == [3, 7]


def test_at_epochs() -> None:
    schedule = Schedule.parse(at=["1ep", "3ep"])
    assert schedule.unit == "ep"
    assert str(schedule) == "at=[1ep, 3ep]"
    state = State()
    assert firing_epochs(schedule.bind(state, Event.POST_EPOCH), state, range(1, 6)) == [1, 3]


def test_start_and_end_are_inclusive_iteration_bounds() -> None:
    schedule = Schedule.parse("10it", start=20, end=50)
    assert str(schedule) == "10it, start=20it, end=50it"
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 101)) == [20, 30, 40, 50]


def test_start_bound_not_on_a_multiple() -> None:
    state = State()
    assert firing_iterations(bind("10it", start="25it", state=state), state, range(1, 61)) == [30, 40, 50, 60]


def test_epoch_bounds() -> None:
    state = State()
    predicate = bind("1ep", Event.POST_EPOCH, state, start="3ep", end="5ep")
    assert firing_epochs(predicate, state, range(1, 9)) == [3, 4, 5]


def test_bounds_alone_fire_every_time_inside_them() -> None:
    schedule = Schedule.parse(start=3, end=5)
    assert schedule.always is False
    assert str(schedule) == "start=3it, end=5it"
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 9)) == [3, 4, 5]


def test_at_with_bounds() -> None:
    state = State()
    assert firing_iterations(bind(at=[100, 250, 400], start=200, state=state), state, range(1, 501)) == [250, 400]


def test_once_modifier_on_a_period() -> None:
    schedule = Schedule.parse("10it", once=True)
    assert str(schedule) == "10it, once"
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 51)) == [10]
    state = State()
    assert firing_iterations(bind("10it", start=25, once=True, state=state), state, range(1, 51)) == [30]


def test_mapping_form() -> None:
    schedule = Schedule.parse({"every": "100it", "start": 200})
    assert schedule == Schedule.parse("100it", start=200)
    state = State()
    assert firing_iterations(schedule.bind(state, Event.POST_STEP), state, range(1, 501)) == [200, 300, 400, 500]


def test_mapping_form_with_every_key() -> None:
    assert Schedule.parse({"at": ["2ep"], "once": True}) == Schedule.parse(at=["2ep"], once=True)
    assert Schedule.parse({"every": "2ep", "end": "6ep"}) == Schedule.parse("2ep", end="6ep")
    assert Schedule.parse({}).always is True


def test_parse_returns_a_parsed_schedule_unchanged() -> None:
    schedule = Schedule.parse("5it", start=10)
    assert Schedule.parse(schedule) is schedule


def test_parsed_schedule_refuses_extra_arguments() -> None:
    with pytest.raises(ValueError, match="cannot take extra at=/start=/end=/once= arguments"):
        Schedule.parse(Schedule.parse("5it"), start=10)


def test_events_each_schedule_can_filter() -> None:
    assert Schedule.parse("5it").events() == STEP_EVENTS
    assert Schedule.parse("5ep").events() == EPOCH_EVENTS
    assert Schedule.parse("30s").events() == STEP_EVENTS | EPOCH_EVENTS
    assert Schedule.parse("once").events() == STEP_EVENTS | EPOCH_EVENTS
    assert Schedule.parse(None).events() == frozenset(Event)


# ------------------------------------------------------------------------------------------- over a simulated run


def test_predicates_across_a_simulated_run() -> None:
    fired = simulate(
        {
            "every3": ("3it", Event.POST_STEP),
            "every5_pre": (5, Event.PRE_STEP),
            "epochs2": ("2ep", Event.POST_EPOCH),
            "epoch_start": ("1ep", Event.PRE_EPOCH),
            "unscheduled": (None, Event.POST_STEP),
            "once": ("once", Event.STEP),
            "bounded": ("2it", Event.POST_STEP),
            "always_end": (None, Event.POST_TRAINING),
        },
    )
    assert [it for _, _, it in fired["every3"]] == [3, 6, 9, 12]
    assert fired["every5_pre"] == [("pre_step", 2, 5), ("pre_step", 3, 10)]
    assert fired["epochs2"] == [("post_epoch", 2, 8)]
    assert fired["epoch_start"] == [("pre_epoch", 1, 0), ("pre_epoch", 2, 4), ("pre_epoch", 3, 8)]
    assert fired["once"] == [("step", 1, 1)]
    assert [it for _, _, it in fired["bounded"]] == [2, 4, 6, 8, 10, 12]
    assert fired["always_end"] == [("post_training", 3, 12)]
    assert [it for _, _, it in fired["unscheduled"]] == list(range(1, 13))


def test_bounded_and_at_schedules_across_a_simulated_run() -> None:
    fired = simulate(
        {
            "at_its": (None, Event.POST_STEP),
            "at_eps": (None, Event.POST_EPOCH),
            "window": ("2it", Event.POST_STEP),
            "late_once": ("once", Event.POST_STEP),
            "epoch_window": ("1ep", Event.POST_EPOCH),
        },
        at_its={"at": [2, 7, 11]},
        at_eps={"at": ["1ep", "3ep"]},
        window={"start": 5, "end": 10},
        late_once={"start": "6it"},
        epoch_window={"start": "2ep", "end": "2ep"},
    )
    assert [it for _, _, it in fired["at_its"]] == [2, 7, 11]
    assert fired["at_eps"] == [("post_epoch", 1, 4), ("post_epoch", 3, 12)]
    assert [it for _, _, it in fired["window"]] == [6, 8, 10]
    assert fired["late_once"] == [("post_step", 2, 6)]
    assert fired["epoch_window"] == [("post_epoch", 2, 8)]


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=250), st.booleans())
def test_iteration_period_property(n: int, as_text: bool) -> None:
    state = State()
    predicate = bind(f"{n}it" if as_text else n, state=state)
    fired = firing_iterations(predicate, state, range(1, 201))
    assert fired == [i for i in range(1, 201) if i % n == 0]


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=40))
def test_bounded_period_property(n: int, start: int) -> None:
    state = State()
    predicate = bind(n, start=start, end=start + 50, state=state)
    fired = firing_iterations(predicate, state, range(1, 121))
    assert fired == [i for i in range(start, start + 51) if i % n == 0]


# ------------------------------------------------------------------------------------------------------- errors


def assert_invalid(exc: pytest.ExceptionInfo[ValueError], bad: object, *fragments: str) -> None:
    message = str(exc.value)
    assert f"invalid schedule {bad!r}" in message
    assert f"valid forms are {VALID_FORMS}" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (0, "must be > 0"),
        (-5, "must be > 0"),
        ("0it", "must be > 0"),
        ("0ep", "must be > 0"),
        ("0s", "must be > 0"),
        ("-3ep", "must be > 0; a negative period does not mean 'off' here: write 'never'"),
        ("1.5ep", "counts epochs and must be whole"),
        ("2.5it", "counts iterations and must be whole"),
        ("2.0it", "counts iterations and must be whole"),
        ("abc", "is not a number with an optional unit"),
        ("10 parsecs", "is not a number with an optional unit"),
        ("", "is not a number with an optional unit"),
        ("it", "is not a number with an optional unit"),
        (True, "must be an int or a string, not bool"),
        (False, "must be an int or a string, not bool"),
        (3.5, "must be an int or a string, not float"),
        (100.0, "must be an int or a string, not float"),
        ([100], "must be an int or a string, not list"),
    ],
)
def test_bad_periods_name_the_value_and_list_valid_forms(spec: object, why: str) -> None:
    with pytest.raises(ValueError, match="invalid schedule") as info:
        Schedule.parse(spec)  # type: ignore[arg-type]
    assert_invalid(info, spec, why)


@pytest.mark.parametrize(
    ("at", "bad", "why"),
    [
        ([], [], "at= must be a non-empty list of iterations or of epochs, not mixed"),
        ([100, "2ep"], [100, "2ep"], "not mixed"),
        (["1ep", "3it"], ["1ep", "3it"], "not mixed"),
        (["30s"], ["30s"], "not mixed"),
        ("100", "100", "at= must be a list such as [100, 250]"),
        (100, 100, "at= must be a list such as [100, 250]"),
        ([0, 10], 0, "each at= entry must be > 0"),
        (["1.5ep"], "1.5ep", "each at= entry counts epochs and must be whole"),
    ],
)
def test_bad_at_lists(at: object, bad: object, why: str) -> None:
    with pytest.raises(ValueError, match="invalid schedule") as info:
        Schedule.parse(at=at)  # type: ignore[arg-type]
    assert_invalid(info, bad, why)


def test_at_and_a_period_together_are_rejected() -> None:
    with pytest.raises(ValueError, match="give either a period or at=") as info:
        Schedule.parse("10it", at=[5])
    assert_invalid(info, "10it")


def test_start_after_end() -> None:
    with pytest.raises(ValueError, match="start is after end") as info:
        Schedule.parse("5it", start=50, end=10)
    assert_invalid(info, {"start": 50, "end": 10})
    with pytest.raises(ValueError, match="start is after end"):
        Schedule.parse("1ep", start="4ep", end="2ep")


def test_start_equal_to_end_is_fine() -> None:
    state = State()
    assert firing_iterations(bind("5it", start=10, end=10, state=state), state, range(1, 30)) == [10]


@pytest.mark.parametrize(
    ("spec", "kwargs", "bad", "why"),
    [
        ("100it", {"start": "3ep"}, "3ep", "start= must count iterations like the schedule does (e.g. '3it')"),
        ("100it", {"end": "3ep"}, "3ep", "end= must count iterations like the schedule does"),
        ("2ep", {"start": 3}, 3, "start= must count epochs like the schedule does (e.g. '3ep')"),
        ("2ep", {"end": "500it"}, "500it", "end= must count epochs like the schedule does"),
        (None, {"at": ["1ep"], "start": 100}, 100, "start= must count epochs"),
        ("5it", {"start": "30s"}, "30s", "start must count iterations or epochs ('500it', '3ep'), not wall time"),
        ("5it", {"start": 0}, 0, "start must be > 0"),
        ("5it", {"end": -1}, -1, "end must be > 0"),
        ("5it", {"start": True}, True, "start must be an int or a string, not bool"),
        ("5it", {"once": "yes"}, "yes", "once= must be True or False"),
    ],
)
def test_bad_bounds_and_modifiers(spec: Any, kwargs: dict[str, Any], bad: object, why: str) -> None:
    with pytest.raises(ValueError, match="invalid schedule") as info:
        Schedule.parse(spec, **kwargs)
    assert_invalid(info, bad, why)


def test_unknown_mapping_key() -> None:
    with pytest.raises(ValueError, match="invalid schedule") as info:
        Schedule.parse({"every": "100it", "strat": 200})
    assert_invalid(
        info,
        {"every": "100it", "strat": 200},
        "unknown keys ['strat']",
        "(valid keys: ['every', 'at', 'start', 'end', 'once'])",
    )


@pytest.mark.parametrize("once", ["yes", "false", "no"])
def test_mapping_once_must_be_a_bool_like_the_keyword(once: str) -> None:
    # Schedule.parse(once="yes") is a ValueError; the mapping form (YAML, --set overrides) must not silently coerce
    # "false" into True.
    with pytest.raises(ValueError, match="once= must be True or False") as info:
        Schedule.parse({"every": "10it", "once": once})
    assert_invalid(info, once)


def test_bad_values_inside_a_mapping() -> None:
    with pytest.raises(ValueError, match="invalid schedule") as info:
        Schedule.parse({"every": 0})
    assert_invalid(info, 0, "must be > 0")


# --------------------------------------------------------------------------------------------------- check_event


@pytest.mark.parametrize("event", [Event.POST_EPOCH, Event.PRE_EPOCH, Event.POST_TRAINING, Event.POST_VALIDATION])
def test_iteration_schedule_cannot_filter_non_step_events(event: Event) -> None:
    with pytest.raises(ValueError, match="counts iterations") as info:
        Schedule.parse("100it").check_event(event, "handler 'saver'")
    message = str(info.value)
    assert "schedule '100it' of handler 'saver'" in message
    assert "so it can filter post_step, pre_step, step" in message
    assert f"not {event.value!r}" in message
    assert "use '<N>ep' for epoch events" in message


@pytest.mark.parametrize("event", [Event.POST_STEP, Event.PRE_STEP, Event.STEP, Event.PRE_TRAINING])
def test_epoch_schedule_cannot_filter_non_epoch_events(event: Event) -> None:
    with pytest.raises(ValueError, match="counts epochs") as info:
        Schedule.parse("2ep").check_event(event)
    message = str(info.value)
    assert "so it can filter post_epoch, pre_epoch" in message
    assert f"not {event.value!r}" in message
    assert "'<N>it' for step events" in message


@pytest.mark.parametrize("spec", ["once", "30s", {"start": 5}])
@pytest.mark.parametrize(
    "event", [Event.POST_TRAINING, Event.PRE_TRAINING, Event.EXCEPTION, Event.PRE_VALIDATION, Event.POST_VALIDATION]
)
def test_time_once_and_bound_schedules_cannot_filter_non_step_non_epoch_events(spec: Any, event: Event) -> None:
    schedule = Schedule.parse(spec)
    with pytest.raises(ValueError, match="cannot filter") as info:
        schedule.check_event(event)
    assert f"cannot filter {event.value!r}: only step and epoch events are scheduled" in str(info.value)


@pytest.mark.parametrize("spec", ["once", "30s"])
@pytest.mark.parametrize("event", sorted(STEP_EVENTS | EPOCH_EVENTS))
def test_time_and_once_schedules_filter_step_and_epoch_events(spec: str, event: Event) -> None:
    Schedule.parse(spec).check_event(event)  # does not raise
    assert Schedule.parse(spec).bind(State(), event, clock=lambda: 0.0) is not None


def test_bind_checks_the_event() -> None:
    with pytest.raises(ValueError, match="counts iterations"):
        Schedule.parse("100it").bind(State(), Event.POST_EPOCH)
    with pytest.raises(ValueError, match="cannot filter 'post_training'"):
        Schedule.parse("once").bind(State(), Event.POST_TRAINING)


def test_unscheduled_handler_may_listen_to_any_event() -> None:
    for event in Event:
        Schedule.parse(None).check_event(event)


def test_mapping_takes_bounds_given_as_arguments() -> None:
    # a callback that accepts start= next to a schedule given as a mapping must not drop it
    assert Schedule.parse({"every": "5it"}, start=12) == Schedule.parse("5it", start=12)
    assert Schedule.parse({"every": "5it", "start": None}, end=20) == Schedule.parse("5it", end=20)
    assert Schedule.parse({"every": "1ep"}, once=True) == Schedule.parse("1ep", once=True)


def test_mapping_and_argument_giving_the_same_bound_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\['start'\] given both in the mapping and as arguments"):
        Schedule.parse({"every": "5it", "start": 10}, start=12)
