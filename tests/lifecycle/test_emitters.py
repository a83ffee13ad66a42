"""Fixed-payload emitters (``Channel.emitter``) dispatch exactly as ``Channel.emit``: the same handlers in the same
order with the same payload, schedules and their timetable, handlers connected later, blinker receivers, error
naming, every-handler events, and handler timing."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import Bus, CallbackError, Event, State

Log = list[Any]


def bus_with_state(iteration: int = 0) -> tuple[Bus, State]:
    state = State()
    state.max_epochs, state.iterations_per_epoch = 1, 1000
    state.epoch, state.iteration, state.epoch_iteration = 1, iteration, iteration
    return Bus(state), state


def record(log: Log, label: str) -> Any:
    def handler(sender: object, **payload: Any) -> None:
        log.append((label, sender, payload))

    return handler


def test_an_emitter_runs_what_emit_runs_with_the_same_payload() -> None:
    _, state = bus_with_state()
    emitted: Log = []
    via_emitter: Log = []
    for log, use_emitter in ((emitted, False), (via_emitter, True)):
        bus = Bus(state)
        bus.connect("step", record(log, "low"), priority=-5)
        bus.connect("step", record(log, "high"), priority=5)
        bus.connect("step", record(log, "every 3"), every="3it")
        bus.connect("step", record(log, "at 4"), every={"at": [4]})
        channel = bus.channel("step")
        emit = channel.emitter("loss", "outputs", "optimizer")
        for iteration in range(1, 8):
            state.iteration = iteration
            if use_emitter:
                emit("trainer", iteration * 1.0, {"i": iteration}, "default")
            else:
                channel.emit("trainer", loss=iteration * 1.0, outputs={"i": iteration}, optimizer="default")
    assert via_emitter == emitted
    labels = [label for label, _, _ in via_emitter]
    assert labels[:3] == ["high", "low", "high"]
    assert labels.count("every 3") == 2
    assert labels.count("at 4") == 1
    assert via_emitter[0] == ("high", "trainer", {"loss": 1.0, "outputs": {"i": 1}, "optimizer": "default"})


def test_an_emitter_sees_handlers_connected_toggled_and_removed_after_it_was_built() -> None:
    bus, _ = bus_with_state(1)
    log: Log = []
    emit = bus.channel("post_step").emitter("outputs")
    emit("t", {})
    assert log == []
    handle = bus.connect("post_step", record(log, "a"))
    emit("t", 1)
    handle.enabled = False
    emit("t", 2)
    handle.enabled = True
    bus.connect("post_step", record(log, "b"), priority=1)
    emit("t", 3)
    handle.remove()
    emit("t", 4)
    assert [(label, payload["outputs"]) for label, _, payload in log] == [("a", 1), ("b", 3), ("a", 3), ("b", 4)]


def test_an_emitter_is_built_once_per_key_set() -> None:
    bus, _ = bus_with_state()
    channel = bus.channel("step")
    assert channel.emitter("loss", "outputs") is channel.emitter("loss", "outputs")
    assert channel.emitter("outputs", "loss") is not channel.emitter("loss", "outputs")


def test_payload_keys_named_like_the_loops_own_variables_arrive_intact() -> None:
    bus, _ = bus_with_state(1)
    log: Log = []
    bus.connect("post_step", record(log, "a"), every="1it")
    names = ("plan", "fn", "due", "handle", "table", "state", "value", "channel", "exc", "emit")
    bus.channel("post_step").emitter(*names)("t", *range(len(names)))
    assert log == [("a", "t", dict(zip(names, range(len(names)), strict=True)))]


@pytest.mark.parametrize("names", [("not a name",), ("class",), ("batch", "batch"), ("1st",)])
def test_payload_names_that_cannot_be_keywords_are_refused(names: tuple[str, ...]) -> None:
    bus, _ = bus_with_state()
    with pytest.raises(ValueError, match=r"emitter for 'pre_step': payload names must be distinct Python identifiers"):
        bus.channel("pre_step").emitter(*names)


def test_a_failing_handler_is_named_with_the_event_and_iteration() -> None:
    bus, _ = bus_with_state(7)
    log: Log = []

    def broken(sender: object, **payload: Any) -> None:
        raise ZeroDivisionError("boom")

    bus.connect("pre_step", broken, name="broken")
    bus.connect("pre_step", record(log, "after"), priority=-1)
    with pytest.raises(CallbackError) as caught:
        bus.channel("pre_step").emitter("batch")("t", [1, 2])
    error = caught.value
    assert (error.handler, error.event, error.iteration) == ("broken", "pre_step", 7)
    assert "handler 'broken' (priority 0) failed during event 'pre_step' at iteration 7" in str(error)
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert log == []  # a step event stops at the first failure, as emit() does


def test_plain_blinker_receivers_get_the_emission_after_the_handlers() -> None:
    bus, _ = bus_with_state(1)
    log: Log = []
    bus.connect("post_step", record(log, "handler"))
    bus.signal("post_step").connect(lambda sender, **payload: log.append(("receiver", sender, payload)))
    bus.channel("post_step").emitter("outputs")("t", {"loss": 2})
    assert log == [("handler", "t", {"outputs": {"loss": 2}}), ("receiver", "t", {"outputs": {"loss": 2}})]


def test_an_every_handler_event_runs_every_handler_through_its_emitter() -> None:
    bus, _ = bus_with_state(3)
    log: Log = []

    def broken(sender: object, **payload: Any) -> None:
        raise RuntimeError("first")

    bus.connect("post_training", broken, priority=1, name="broken")
    bus.connect("post_training", record(log, "still runs"))
    with pytest.raises(CallbackError, match="handler 'broken'"):
        bus.channel(Event.POST_TRAINING).emitter("status")("t", "completed")
    assert log == [("still runs", "t", {"status": "completed"})]


def test_handler_timing_counts_calls_made_through_an_emitter() -> None:
    bus, _ = bus_with_state(1)
    log: Log = []
    bus.connect("step", record(log, "a"), name="a")
    emit = bus.channel("step").emitter("loss")
    with bus.time_handlers() as times:
        for _ in range(3):
            emit("t", 0.5)
    assert log == [("a", "t", {"loss": 0.5})] * 3
    assert [(h.name, h.calls) for h in times.handlers()] == [("a", 3)]
    assert [(d.event, d.calls) for d in times.events()] == [("step", 3)]
