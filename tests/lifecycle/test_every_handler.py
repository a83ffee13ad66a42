"""``exception`` and ``post_training`` run every handler even when one raises: the first error is raised once all
ran, the later ones attached (``also_failed``, PEP 678 notes, the log). Other events still stop at the first."""

from __future__ import annotations

import logging
import pickle
import sys
from collections.abc import Callable
from typing import Any

import pytest

from lifecycle import Bus, CallbackError, Event, Loop, State, Status
from lifecycle.bus import EVERY_HANDLER

Log = list[str]
Handler = Callable[..., None]


def ran(log: Log, label: str, error: BaseException | None = None) -> Handler:
    """A handler that records ``label``, then raises ``error`` (if given)."""

    def handler(sender: object, **payload: Any) -> None:
        log.append(label)
        if error is not None:
            raise error

    return handler


def notes(error: BaseException) -> list[str]:
    """``error``'s PEP 678 notes."""
    return list(getattr(error, "__notes__", []))


def noted(expected: list[str]) -> list[str]:
    """The notes to expect: ``expected`` where Python has notes (>= 3.11), none on 3.10 (the log says it there)."""
    return expected if sys.version_info >= (3, 11) else []


def where(iteration: int) -> str:
    return f"at iteration {iteration} (epoch 1/2, step {iteration}/4)"


@pytest.mark.parametrize(("event", "payload"), [("exception", {"error": ValueError("x")}), ("post_training", {})])
def test_every_handler_runs_and_the_first_error_carries_the_later_ones(
    event: str, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    bus = Bus(State(max_epochs=2, iterations_per_epoch=4, epoch=1, iteration=3, epoch_iteration=3))
    log: Log = []
    first, second = OSError("disk full"), KeyError("missing")
    bus.connect(event, ran(log, "first", first), name="First.handler", priority=20)
    bus.connect(event, ran(log, "second", second), name="Second.handler", priority=10)
    bus.connect(event, ran(log, "third"), name="Third.handler")
    with caplog.at_level(logging.ERROR, logger="lifecycle.bus"), pytest.raises(CallbackError) as info:
        bus.emit(event, None, **payload)
    assert log == ["first", "second", "third"]
    error = info.value
    assert str(error) == (
        f"handler 'First.handler' (priority 20) failed during event {event!r} {where(3)}: OSError: disk full"
    )
    assert (error.handler, error.event, error.iteration) == ("First.handler", event, 3)
    assert error.__cause__ is first
    (later,) = error.also_failed
    assert str(later) == (
        f"handler 'Second.handler' (priority 10) failed during event {event!r} {where(3)}: KeyError: 'missing'"
    )
    assert later.__cause__ is second
    assert later.also_failed == ()
    assert notes(error) == noted([f"a later handler also failed: {later}"])
    assert [record.getMessage() for record in caplog.records] == [
        f"{later} (after 'First.handler' failed in the same dispatch; every handler runs, then the first failure is "
        "raised)"
    ]


@pytest.mark.parametrize("event", ["exception", "post_training"])
def test_blinker_receivers_run_too_and_their_failures_are_attached(event: str) -> None:
    bus = Bus(State(iteration=5))
    log: Log = []

    def raw_failing(sender: object, **payload: Any) -> None:
        log.append("raw-failing")
        raise RuntimeError("raw broke")

    bus.connect(event, ran(log, "ordered-1", ValueError("one")), name="one")
    bus.connect(event, ran(log, "ordered-2", ValueError("two")), name="two")
    bus.signal(event).connect(raw_failing)
    bus.signal(event).connect(ran(log, "raw-last"))
    for send in (lambda: bus.emit(event, None), lambda: bus.signal(event).send(None)):
        log.clear()
        with pytest.raises(CallbackError) as info:
            send()
        assert log == ["ordered-1", "ordered-2", "raw-failing", "raw-last"]
        error = info.value
        assert error.handler == "one"
        assert [e.handler for e in error.also_failed] == [
            "two",
            f"{raw_failing.__qualname__} at {__file__}:{raw_failing.__code__.co_firstlineno}",
        ]
        assert str(error.also_failed[1]).startswith(
            f"blinker receiver {error.also_failed[1].handler!r} (connected directly to signal {event!r}) failed "
            f"during event {event!r} at iteration 5"
        )
        assert str(error.also_failed[1]).endswith("RuntimeError: raw broke")
        assert notes(error) == noted([f"a later handler also failed: {e}" for e in error.also_failed])


def test_a_clean_emission_returns_blinker_results() -> None:
    bus = Bus()
    bus.signal("post_training").connect(lambda sender, **payload: payload["status"])
    results = bus.signal("post_training").send("me", status="completed")
    assert [value for _, value in results] == [None, "completed"]  # the bus's own receiver, then the direct one


@pytest.mark.parametrize("event", [e.value for e in Event if e not in EVERY_HANDLER])
def test_other_events_still_stop_at_the_first_raising_handler(event: str) -> None:
    bus = Bus()
    log: Log = []
    bus.connect(event, ran(log, "first", ValueError("first")), name="first")
    bus.connect(event, ran(log, "second", ValueError("second")), name="second")
    with pytest.raises(CallbackError) as info:
        bus.emit(event, None)
    assert log == ["first"]
    assert info.value.also_failed == ()
    assert notes(info.value) == []


def test_every_handler_events_are_exactly_exception_and_post_training() -> None:
    assert {Event.EXCEPTION, Event.POST_TRAINING} == EVERY_HANDLER


def test_a_keyboard_interrupt_cuts_the_emission_short_and_names_the_earlier_failure() -> None:
    bus = Bus(State(iteration=2))
    log: Log = []
    bus.connect("exception", ran(log, "broken", OSError("gone")), name="broken", priority=2)
    bus.connect("exception", ran(log, "interrupt", KeyboardInterrupt()), name="interrupt", priority=1)
    bus.connect("exception", ran(log, "never"), name="never")
    with pytest.raises(KeyboardInterrupt) as info:
        bus.emit("exception", None, error=ValueError("x"))
    assert log == ["broken", "interrupt"]
    assert notes(info.value) == noted(
        [
            "before this, a handler had failed: handler 'broken' (priority 2) failed during event 'exception' "
            "at iteration 2 (epoch 0/1, step 0/1): OSError: gone"
        ]
    )


def test_a_nested_emission_error_is_not_wrapped_twice() -> None:
    bus = Bus(State(iteration=1))
    log: Log = []
    original = ValueError("nested")

    def outer(sender: object, **payload: Any) -> None:
        log.append("outer")
        bus.emit("post_validation", sender, metrics={})

    bus.connect("post_training", outer, name="outer")
    bus.connect("post_training", ran(log, "after"), name="after")
    bus.connect("post_validation", ran(log, "metric", original), name="metric")
    with pytest.raises(CallbackError) as info:
        bus.emit("post_training", None, status="completed")
    assert log == ["outer", "metric", "after"]
    assert (info.value.handler, info.value.event, info.value.__cause__) == ("metric", "post_validation", original)


def test_also_failed_survives_pickling() -> None:
    bus = Bus(State(iteration=9))
    bus.connect("post_training", ran([], "a", ValueError("a")), name="a")
    bus.connect("post_training", ran([], "b", ValueError("b")), name="b")
    with pytest.raises(CallbackError) as info:
        bus.emit("post_training", None)
    restored = pickle.loads(pickle.dumps(info.value))
    assert (restored.handler, restored.iteration, str(restored)) == ("a", 9, str(info.value))
    assert [(e.handler, str(e)) for e in restored.also_failed] == [("b", str(info.value.also_failed[0]))]


# ------------------------------------------------------------------------------------ the loop, through a real bus


class BusDriver:
    """A loop driver whose every phase emits on a real :class:`Bus`, as the trainer's does."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def begin_training(self) -> None:
        self.bus.emit("pre_training", self, resumed=False)

    def begin_epoch(self) -> None:
        self.bus.emit("pre_epoch", self)

    def run_step(self) -> None:
        self.bus.emit("pre_step", self, batch=None)
        self.bus.emit("post_step", self, outputs={})

    def end_epoch(self) -> None:
        self.bus.emit("post_epoch", self)

    def end_training(self, status: Status) -> None:
        self.bus.emit("post_training", self, status=status)

    def fail(self, error: BaseException) -> None:
        self.bus.emit("exception", self, error=error)

    def serve_requests(self) -> None:
        pass


def test_a_failed_run_runs_every_exception_and_post_training_handler() -> None:
    state = State(max_epochs=2, iterations_per_epoch=4)
    bus, loop = Bus(state), Loop(state)
    log: Log = []
    original = ValueError("step exploded")

    def step_fails(sender: object, **payload: Any) -> None:
        if state.iteration == 3:
            raise original

    bus.connect("post_step", step_fails, name="Model.post_step")
    bus.connect("exception", ran(log, "exc-1", RuntimeError("report broke")), name="Report.exception", priority=3)
    bus.connect("exception", ran(log, "exc-2", OSError("upload broke")), name="Upload.exception", priority=2)
    bus.connect("exception", ran(log, "crash-dump"), name="Checkpointer.exception", priority=1)
    bus.connect("post_training", ran(log, "end-1", OSError("flush broke")), name="Logger.post_training", priority=2)
    bus.connect("post_training", ran(log, "metrics-file"), name="MetricsFile.post_training", priority=1)
    driver = BusDriver(bus)
    assert loop.iterate(driver)
    assert loop.iterate(driver)
    with pytest.raises(CallbackError) as info:
        loop.iterate(driver)
    assert log == ["exc-1", "exc-2", "crash-dump", "end-1", "metrics-file"]
    error = info.value
    assert (error.handler, error.event, error.__cause__) == ("Model.post_step", "post_step", original)
    assert loop.status is Status.FAILED
    assert loop.finished
    also = "while handling this error, {} handler also failed: CallbackError: handler {!r} (priority {}) failed during "
    where = "at iteration 3 (epoch 1/2, step 3/4)"
    expected = [
        f"stepbus: raised at iteration 3 ({state})",
        also.format("an 'exception'", "Report.exception", 3) + f"event 'exception' {where}: RuntimeError: report broke",
        also.format("an 'exception'", "Upload.exception", 2) + f"event 'exception' {where}: OSError: upload broke",
        also.format("a 'post_training'", "Logger.post_training", 2)
        + f"event 'post_training' {where}: OSError: flush broke",
    ]
    assert notes(error) == noted(expected)


def test_a_completed_run_whose_post_training_handler_raises_still_runs_the_rest() -> None:
    state = State(max_epochs=1, iterations_per_epoch=2)
    bus, loop = Bus(state), Loop(state)
    log: Log = []
    bus.connect("post_training", ran(log, "logger", OSError("flush broke")), name="Logger.post_training", priority=2)
    bus.connect("post_training", ran(log, "metrics-file"), name="MetricsFile.post_training", priority=1)
    bus.connect("exception", ran(log, "exception"), name="Watcher.exception")
    driver = BusDriver(bus)
    assert loop.iterate(driver)
    with pytest.raises(CallbackError) as info:
        loop.iterate(driver)
    assert info.value.handler == "Logger.post_training"
    assert log == ["logger", "metrics-file", "exception"]  # post_training is not emitted a second time
    assert loop.status is Status.FAILED  # the run failed in its end; its handlers were told "completed"
