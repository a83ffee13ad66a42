"""``bus.time_handlers()``: exact call counts under schedules, a sleeping handler's time, dispatch and step times,
errors that still name the original handler, later connections timed, and the plain plans given back exactly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from callbacks import Callback
from lifecycle import Bus, CallbackError, Event, HandlerTime, HandlerTimes, State, Status
from tests.support import make_trainer

Log = list[Any]


def noop(sender: object, **payload: Any) -> None:
    """A handler that does nothing."""


def steps(bus: Bus, state: State, iterations: range) -> None:
    """What the engine emits per iteration, with the counters it keeps."""
    for iteration in iterations:
        state.iteration = state.epoch_iteration = iteration
        bus.emit(Event.PRE_STEP, None, batch=iteration)
        bus.emit(Event.STEP, None, loss=None, outputs={})
        bus.emit(Event.POST_STEP, None, outputs={})


def row(times: HandlerTimes, name: str) -> HandlerTime:
    (found,) = [r for r in times.handlers() if r.name == name]
    return found


def plan_ids(bus: Bus) -> dict[Event, list[tuple[int, int, int]]]:
    return {e: [(id(fn), id(due), id(h)) for fn, due, h in bus.channel(e).plan] for e in Event}


def test_exact_call_counts_under_schedules_and_toggles() -> None:
    state = State(max_epochs=1, iterations_per_epoch=10)
    bus = Bus(state)
    bus.connect(Event.PRE_STEP, noop, name="every")
    bus.connect(Event.POST_STEP, noop, every="3it", name="third")
    bus.connect(Event.POST_STEP, noop, every="once", name="once")
    off = bus.connect(Event.STEP, noop, name="disabled")
    off.enabled = False
    with bus.time_handlers() as times:
        steps(bus, state, range(1, 11))
    counts = {(r.name, r.event): r.calls for r in times.handlers()}
    # a handler whose schedule is not due is not called, and not counted; a disabled one is not in any plan
    assert counts == {("every", "pre_step"): 10, ("third", "post_step"): 3, ("once", "post_step"): 1}
    assert [(d.event, d.calls) for d in times.events()] == [("pre_step", 10), ("post_step", 10)]
    assert times.steps.count == 10
    assert times.steps.total_ns >= sum(d.total_ns for d in times.events())
    assert not times.active


def test_a_sleeping_handler_shows_at_least_its_sleep() -> None:
    state = State(max_epochs=1, iterations_per_epoch=3)
    bus = Bus(state)

    def sleepy(sender: object, **payload: Any) -> None:
        time.sleep(0.02)

    bus.connect(Event.POST_STEP, sleepy, name="sleepy")
    bus.connect(Event.PRE_STEP, noop, name="quick")
    times = bus.time_handlers()
    steps(bus, state, range(1, 4))
    times.stop()
    sleeper = row(times, "sleepy")
    assert sleeper.calls == 3
    assert sleeper.total_ns >= 3 * 20_000_000
    assert sleeper.max_ns >= 20_000_000
    assert sleeper.mean_us >= 20_000.0
    assert sleeper.total_ms == sleeper.total_ns / 1e6
    (post,) = [d for d in times.events() if d.event == "post_step"]
    assert post.total_ns >= sleeper.total_ns  # the dispatch contains the handler
    assert times.steps.total_ns >= sleeper.total_ns


def test_stop_gives_back_the_plain_plan_objects_exactly() -> None:
    state = State(max_epochs=1, iterations_per_epoch=5)
    bus = Bus(state)
    bus.connect(Event.PRE_STEP, noop, name="a")
    bus.connect(Event.POST_STEP, noop, every="2it", name="b", priority=5)
    bus.connect(Event.POST_TRAINING, noop, name="c")
    before = plan_ids(bus)
    plans = {e: bus.channel(e).plan for e in Event}
    times = bus.time_handlers()
    timed = bus.channel(Event.POST_STEP).plan
    assert len(timed) == 3  # the dispatch markers around the timed handler
    assert timed[1][0] is not plans[Event.POST_STEP][0][0]  # wrapped ...
    assert timed[1][1:] == plans[Event.POST_STEP][0][1:]  # ... the same schedule check and handle
    assert bus.channel(Event.STEP).plan == ()  # nothing to time: an idle channel stays idle
    assert not bus.has_receivers(Event.STEP)
    assert bus.has_receivers(Event.POST_STEP)
    times.stop()
    assert plan_ids(bus) == before
    for event, plan in plans.items():
        assert bus.channel(event).plan == plan
    times.stop()  # idempotent
    assert plan_ids(bus) == before


def test_handlers_connected_toggled_or_removed_while_timing() -> None:
    state = State(max_epochs=1, iterations_per_epoch=6)
    bus = Bus(state)
    first = bus.connect(Event.POST_STEP, noop, name="first")
    times = bus.time_handlers()
    steps(bus, state, range(1, 3))
    late = bus.connect(Event.POST_STEP, noop, name="late")
    steps(bus, state, range(3, 5))
    first.enabled = False
    steps(bus, state, range(5, 6))
    first.enabled = True
    late.remove()
    steps(bus, state, range(6, 7))
    times.stop()
    assert [(r.name, r.calls) for r in times.handlers()] == [("first", 5), ("late", 3)]
    assert row(times, "first").calls == 5
    steps(bus, state, range(7, 8))  # timing is off: nothing counted any more
    assert row(times, "first").calls == 5
    assert bus.channel(Event.POST_STEP).plan == ((first.fn, first.due, first),)


def test_errors_still_name_the_original_handler() -> None:
    state = State(max_epochs=1, iterations_per_epoch=3)
    bus = Bus(state)

    def broken(sender: object, **payload: Any) -> None:
        raise ZeroDivisionError("boom")

    bus.connect(Event.POST_STEP, broken, name="my-logger.post_step")
    with bus.time_handlers() as times:
        state.iteration = 2
        with pytest.raises(CallbackError) as caught:
            bus.emit(Event.POST_STEP, None, outputs={})
    assert caught.value.handler == "my-logger.post_step"
    assert "handler 'my-logger.post_step' (priority 0) failed during event 'post_step' at iteration 2" in str(
        caught.value
    )
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert row(times, "my-logger.post_step").calls == 1  # a raised call is counted
    assert times.events() == []  # the dispatch it cut short is not


def test_every_handler_events_run_all_timed_handlers_and_name_each_failure() -> None:
    bus = Bus()
    log: Log = []

    def first(sender: object, **payload: Any) -> None:
        log.append("first")
        raise RuntimeError("first failed")

    def second(sender: object, **payload: Any) -> None:
        log.append("second")
        raise ValueError("second failed")

    def third(sender: object, **payload: Any) -> None:
        log.append("third")

    bus.connect(Event.POST_TRAINING, first, name="first", priority=3)
    bus.connect(Event.POST_TRAINING, second, name="second", priority=2)
    bus.connect(Event.POST_TRAINING, third, name="third", priority=1)
    with bus.time_handlers() as times, pytest.raises(CallbackError) as caught:
        bus.emit(Event.POST_TRAINING, None, status=Status.FAILED)
    assert log == ["first", "second", "third"]
    assert caught.value.handler == "first"
    assert [e.handler for e in caught.value.also_failed] == ["second"]
    assert [(r.name, r.calls) for r in times.handlers()] == [("first", 1), ("second", 1), ("third", 1)]
    assert [r.function.split(" at ")[0] for r in times.handlers()] == [
        "test_every_handler_events_run_all_timed_handlers_and_name_each_failure.<locals>.first",
        "test_every_handler_events_run_all_timed_handlers_and_name_each_failure.<locals>.second",
        "test_every_handler_events_run_all_timed_handlers_and_name_each_failure.<locals>.third",
    ]
    assert [(d.event, d.calls) for d in times.events()] == [("post_training", 1)]  # every handler ran: counted


def test_plain_blinker_receivers_still_receive_while_handlers_are_timed() -> None:
    bus = Bus()
    received: Log = []
    bus.connect(Event.PRE_EPOCH, noop, name="ordered")
    bus.signal(Event.PRE_EPOCH).connect(lambda sender, **payload: received.append(sender))
    with bus.time_handlers() as times:
        bus.emit(Event.PRE_EPOCH, "t")
        bus.signal(Event.PRE_EPOCH).send("u")
    assert received == ["t", "u"]
    assert row(times, "ordered").calls == 2


def test_steps_are_timed_also_when_the_step_events_have_no_handlers() -> None:
    state = State(max_epochs=1, iterations_per_epoch=4)
    bus = Bus(state)
    bus.connect(Event.STEP, noop, name="only-step")
    assert not bus.has_receivers(Event.PRE_STEP)
    with bus.time_handlers() as times:
        assert bus.has_receivers(Event.PRE_STEP)
        assert bus.has_receivers(Event.POST_STEP)
        assert bus.handles(Event.PRE_STEP) == ()  # the markers are no registered handler
        steps(bus, state, range(1, 5))
    assert times.steps.count == 4
    assert [(d.event, d.calls) for d in times.events()] == [("pre_step", 4), ("step", 4), ("post_step", 4)]
    assert [(r.name, r.calls) for r in times.handlers()] == [("only-step", 4)]
    assert not bus.has_receivers(Event.PRE_STEP)
    assert bus.channel(Event.PRE_STEP).plan == ()


def test_one_timer_per_bus_reset_and_a_new_one_after_stop() -> None:
    state = State(max_epochs=1, iterations_per_epoch=4)
    bus = Bus(state)
    bus.connect(Event.PRE_STEP, noop, name="a")
    bus.connect(Event.POST_STEP, noop, name="b")
    times = bus.time_handlers()
    with pytest.raises(RuntimeError, match="handler timing is already on for this bus"):
        bus.time_handlers()
    steps(bus, state, range(1, 3))
    times.reset()
    steps(bus, state, range(3, 4))
    assert [(r.name, r.calls) for r in times.handlers()] == [("a", 1), ("b", 1)]
    assert times.steps.count == 1
    times.stop()
    with bus.time_handlers() as again:
        steps(bus, state, range(4, 5))
    assert [(r.name, r.calls) for r in again.handlers()] == [("a", 1), ("b", 1)]
    assert "stopped, 2 handlers" in repr(again)


class _Counting(Callback):
    every = "3it"
    scheduled = ("post_step",)

    def pre_step(self, trainer: Any, **payload: Any) -> None:
        pass

    def post_step(self, trainer: Any, **payload: Any) -> None:
        pass

    def post_epoch(self, trainer: Any, **payload: Any) -> None:
        pass


def test_a_real_training_run_counts_every_handler_exactly() -> None:
    trainer = make_trainer(items=14, batch_size=2, max_epochs=2, callbacks=[_Counting()])  # 7 steps an epoch
    times = trainer.bus.time_handlers()
    assert trainer.train() == Status.COMPLETED
    times.stop()
    calls: Callable[[str], int] = lambda name: row(times, f"_Counting.{name}").calls  # noqa: E731
    assert (calls("pre_step"), calls("post_step"), calls("post_epoch")) == (14, 14 // 3, 2)
    assert times.steps.count == 14
