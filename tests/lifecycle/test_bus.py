"""The bus: deterministic priority order, schedules, toggling, blinker interop, strong references, error naming."""

from __future__ import annotations

import gc
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blinker
import pytest

from lifecycle import Bus, CallbackError, Event, Handle, Priority, State, handler_name

ROOT = Path(__file__).resolve().parents[2]

Log = list[Any]


def recorder(log: Log, label: str) -> Callable[..., None]:
    def handler(sender: object, **payload: Any) -> None:
        log.append(label)

    return handler


def payload_recorder(log: Log, label: str) -> Callable[..., None]:
    def handler(sender: object, **payload: Any) -> None:
        log.append((label, sender, payload))

    return handler


def module_level_handler(sender: object, **payload: Any) -> None:
    """A plain function, for handler_name()."""


class Saver:
    def post_step(self, sender: object, **payload: Any) -> None:
        """A bound method, for handler_name()."""

    def __call__(self, sender: object, **payload: Any) -> None:
        """A callable instance."""


class SlottedReceiver:
    """Cannot be weakly referenced: blinker's default weak=True connect would raise TypeError on it."""

    __slots__ = ("log",)

    def __init__(self, log: Log) -> None:
        self.log = log

    def __call__(self, sender: object, **payload: Any) -> None:
        self.log.append("slotted")


# -------------------------------------------------------------------------------------------------------- order


def test_handlers_run_by_priority_then_registration_order() -> None:
    bus = Bus()
    log: Log = []
    bus.connect("post_step", recorder(log, "default-1"))
    bus.connect("post_step", recorder(log, "checkpoint"), priority=Priority.CHECKPOINT)
    bus.connect("post_step", recorder(log, "state"), priority=Priority.STATE)
    bus.connect("post_step", recorder(log, "default-2"), priority=0)
    bus.connect("post_step", recorder(log, "logging"), priority=Priority.LOGGING)
    bus.connect("post_step", recorder(log, "high-1"), priority=50)
    bus.connect("post_step", recorder(log, "default-3"))
    bus.connect("post_step", recorder(log, "high-2"), priority=50)
    bus.emit("post_step", None)
    assert log == ["state", "high-1", "high-2", "default-1", "default-2", "default-3", "logging", "checkpoint"]
    bus.emit(Event.POST_STEP, None)
    assert log[8:] == log[:8]


def test_payload_and_sender_reach_handlers() -> None:
    bus = Bus()
    log: Log = []
    sender = object()
    bus.connect(Event.STEP, payload_recorder(log, "h"))
    bus.emit(Event.STEP, sender, loss=0.5, outputs={"rgb": 1})
    assert log == [("h", sender, {"loss": 0.5, "outputs": {"rgb": 1}})]


def test_emit_only_reaches_its_event() -> None:
    bus = Bus()
    log: Log = []
    for event in Event:
        bus.connect(event, recorder(log, event.value))
    bus.emit("pre_epoch", None)
    bus.emit("post_training", None, status="completed")
    assert log == ["pre_epoch", "post_training"]


PRIORITIES = [0, 5, -3, 5, 100, 0, -1000, 300, 5, 0, -3, 7, 7, 0, 200, -100, 5, 0, 1, -200]

ORDER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lifecycle import Bus

    priorities = json.loads(sys.argv[1])
    bus = Bus()
    calls = []

    def make(label):
        def handler(sender, **payload):
            calls.append(label)
        return handler

    for i, priority in enumerate(priorities):
        bus.connect("post_step", make(f"handler-{i}"), priority=priority, name=f"name {i!r} " + "x" * i)
    for j in range(5):
        bus.signal("post_step").connect(make(f"raw-{j}"), weak=False)
    bus.emit("post_step", "trainer")
    bus.signal("post_step").send("trainer")
    print(json.dumps([calls, [h.name for h in bus.handles("post_step")]]))
    """
)


@pytest.mark.parametrize("hash_seed", ["0", "1", "4242"])
def test_order_is_reproducible_across_processes(hash_seed: str) -> None:
    expected_handlers = [f"handler-{i}" for i in sorted(range(20), key=lambda i: (-PRIORITIES[i], i))]
    expected = expected_handlers + [f"raw-{j}" for j in range(5)]
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    result = subprocess.run(
        [sys.executable, "-c", ORDER_SCRIPT, json.dumps(PRIORITIES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    calls, names = json.loads(result.stdout)
    assert calls == expected + expected  # emit and signal.send agree
    assert names == [f"name {int(h.split('-')[1])!r} " + "x" * int(h.split("-")[1]) for h in expected_handlers]


def test_handles_lists_in_run_order() -> None:
    bus = Bus()
    a = bus.connect("post_step", recorder([], "a"), name="a")
    b = bus.connect("post_step", recorder([], "b"), priority=10, name="b")
    c = bus.connect("pre_epoch", recorder([], "c"), name="c")
    d = bus.connect("post_step", recorder([], "d"), priority=10, name="d")
    e = bus.connect("pre_training", recorder([], "e"), priority=-5, name="e")
    a.enabled = False
    assert bus.handles("post_step") == (b, d, a)  # disabled ones are listed too
    assert bus.handles(Event.PRE_EPOCH) == (c,)
    assert bus.handles("post_training") == ()
    assert bus.handles() == (e, c, b, d, a)  # all events, in lifecycle order
    assert all(isinstance(h, Handle) for h in bus.handles())


def test_handle_attributes_and_repr() -> None:
    bus = Bus(State())
    handle = bus.connect("post_step", recorder([], "x"), priority=7, every="10it", name="x")
    assert handle.event is Event.POST_STEP
    assert (handle.priority, handle.name, str(handle.schedule)) == (7, "x", "10it")
    assert repr(handle) == "<Handle 'x' on 'post_step' priority=7 every=10it>"
    handle.enabled = False
    assert repr(handle) == "<Handle 'x' on 'post_step' priority=7 every=10it, disabled>"


# ----------------------------------------------------------------------------------------------------- schedules


def test_every_filters_on_the_bus_state() -> None:
    state = State(max_epochs=3, iterations_per_epoch=4)
    bus = Bus(state)
    log: Log = []

    def make(label: str) -> Callable[..., None]:
        return lambda sender, **payload: log.append((label, state.iteration))

    bus.connect("post_step", make("every2"), every="2it")
    bus.connect("post_step", make("every3"), every=3, priority=-1)
    bus.connect("post_step", make("once"), every="once", priority=-2)
    bus.connect("post_step", make("at"), every={"at": [5]}, priority=-3)
    for i in range(1, 7):
        state.iteration = i
        bus.emit("post_step", None)
    assert log == [
        ("once", 1),
        ("every2", 2),
        ("every3", 3),
        ("every2", 4),
        ("at", 5),
        ("every2", 6),
        ("every3", 6),
    ]


def test_every_epoch_filter_on_post_epoch() -> None:
    state = State(max_epochs=5)
    bus = Bus(state)
    log: Log = []
    bus.connect("post_epoch", lambda sender, **payload: log.append(state.epoch), every="2ep")
    for epoch in range(1, 6):
        state.epoch = epoch
        bus.emit("post_epoch", None)
    assert log == [2, 4]


def test_one_schedule_object_shared_by_two_handlers_keeps_separate_memory() -> None:
    from lifecycle import Schedule

    state = State()
    bus = Bus(state)
    log: Log = []
    once = Schedule.parse("once")
    bus.connect("post_step", recorder(log, "a"), every=once)
    state.iteration = 1
    bus.emit("post_step", None)
    bus.connect("post_step", recorder(log, "b"), every=once)
    state.iteration = 2
    bus.emit("post_step", None)
    bus.emit("post_step", None)
    assert log == ["a", "b"]


# --------------------------------------------------------------------------------------------- enable / remove


def test_disabled_handler_is_skipped_and_reenabled_at_its_original_position() -> None:
    bus = Bus()
    log: Log = []
    bus.connect("post_step", recorder(log, "first"), priority=1)
    middle = bus.connect("post_step", recorder(log, "middle"))
    bus.connect("post_step", recorder(log, "last"))
    middle.enabled = False
    assert middle.enabled is False
    bus.emit("post_step", None)
    assert log == ["first", "last"]
    bus.connect("post_step", recorder(log, "added-later"))
    middle.enabled = True
    log.clear()
    bus.emit("post_step", None)
    assert log == ["first", "middle", "last", "added-later"]


def test_disabling_every_handler_makes_the_channel_inactive() -> None:
    bus = Bus()
    handle = bus.connect("pre_step", recorder([], "x"))
    assert bus.has_receivers("pre_step") is True
    assert bus.channel("pre_step").active is True
    handle.enabled = False
    assert bus.has_receivers("pre_step") is False
    assert bus.channel("pre_step").plan == ()
    handle.enabled = True
    assert bus.has_receivers(Event.PRE_STEP) is True


def test_remove_unregisters_and_is_idempotent() -> None:
    bus = Bus()
    log: Log = []
    keep = bus.connect("post_step", recorder(log, "keep"))
    gone = bus.connect("post_step", recorder(log, "gone"), name="gone")
    gone.remove()
    assert gone.removed is True
    gone.remove()
    bus.emit("post_step", None)
    assert log == ["keep"]
    assert bus.handles("post_step") == (keep,)
    keep.remove()
    assert bus.has_receivers("post_step") is False
    with pytest.raises(RuntimeError, match="'gone' on 'post_step' was removed; connect it again"):
        gone.enabled = True


def test_has_receivers() -> None:
    bus = Bus()
    assert not any(bus.has_receivers(event) for event in Event)
    handle = bus.connect("post_epoch", recorder([], "x"))
    assert [e for e in Event if bus.has_receivers(e)] == [Event.POST_EPOCH]
    handle.remove()
    assert bus.has_receivers("post_epoch") is False

    def raw(sender: object, **payload: Any) -> None:
        pass

    bus.signal("post_training").connect(raw, weak=False)
    assert bus.has_receivers("post_training") is True
    bus.signal("post_training").disconnect(raw)
    assert bus.has_receivers("post_training") is False


# ------------------------------------------------------------------------------------------------ blinker interop


def test_plain_blinker_receivers_run_after_ordered_handlers_in_connection_order() -> None:
    bus = Bus()
    log: Log = []
    signal = bus.signal("post_step")
    signal.connect(payload_recorder(log, "raw-1"), weak=False)  # connected before any handler
    bus.connect("post_step", payload_recorder(log, "low"), priority=-10)
    signal.connect(payload_recorder(log, "raw-2"), weak=False)
    bus.connect("post_step", payload_recorder(log, "high"), priority=10)
    signal.connect(payload_recorder(log, "raw-3"), weak=False)
    assert bus.channel("post_step").raw is True
    sender = object()
    bus.emit("post_step", sender, outputs=3)
    assert log == [(label, sender, {"outputs": 3}) for label in ["high", "low", "raw-1", "raw-2", "raw-3"]]
    log.clear()
    bus.emit("post_step", "again")
    assert [label for label, _, _ in log] == ["high", "low", "raw-1", "raw-2", "raw-3"]


def test_signal_send_also_runs_the_ordered_handlers() -> None:
    state = State()
    bus = Bus(state)
    log: Log = []
    bus.connect("post_step", payload_recorder(log, "ordered"), priority=5)
    bus.connect("post_step", payload_recorder(log, "every2"), every="2it")
    state.iteration = 1
    bus.signal(Event.POST_STEP).send("trainer", outputs=1)
    state.iteration = 2
    bus.signal("post_step").send("trainer", outputs=2)
    assert log == [
        ("ordered", "trainer", {"outputs": 1}),
        ("ordered", "trainer", {"outputs": 2}),
        ("every2", "trainer", {"outputs": 2}),
    ]
    bus.signal("post_step").connect(payload_recorder(log, "raw"), weak=False)
    log.clear()
    state.iteration = 3
    bus.signal("post_step").send("t", outputs=3)
    assert log == [("ordered", "t", {"outputs": 3}), ("raw", "t", {"outputs": 3})]


def test_weak_connections_are_upgraded_to_strong() -> None:
    bus = Bus()
    log: Log = []
    signal = bus.signal("post_step")
    signal.connect(lambda sender, **payload: log.append(("lambda", payload)))  # blinker's default weak=True

    def register() -> None:
        @bus.signal("post_step").connect
        def decorated(sender: object, **payload: Any) -> None:
            log.append(("decorated", payload))

        signal.connect(Saver().post_step)  # bound method of an object nobody else holds
        signal.connect(recorder(log, "inner"), weak=True)

    register()
    signal.connect(SlottedReceiver(log))  # not weakly referenceable: would raise TypeError with weak=True
    gc.collect()
    assert len(signal.receivers) == 6  # the bus's own dispatcher + 5
    bus.emit("post_step", None, n=1)
    assert log == [("lambda", {"n": 1}), ("decorated", {"n": 1}), "inner", "slotted"]


def test_decorator_connect_returns_the_function() -> None:
    bus = Bus()

    @bus.signal("post_epoch").connect
    def handler(sender: object, **payload: Any) -> None:
        pass

    assert callable(handler)
    assert handler.__name__ == "handler"
    assert bus.channel("post_epoch").raw is True


def test_connecting_a_non_callable_to_a_signal_is_a_type_error() -> None:
    bus = Bus()
    with pytest.raises(TypeError, match="cannot connect 42 to signal 'post_step': it is not callable"):
        bus.signal("post_step").connect(42)  # type: ignore[type-var]
    assert bus.channel("post_step").raw is False


def test_disconnecting_the_last_raw_receiver_returns_to_the_fast_path() -> None:
    bus = Bus()
    log: Log = []
    bus.connect("step", recorder(log, "ordered"))
    raw_a, raw_b = recorder(log, "raw-a"), recorder(log, "raw-b")
    channel = bus.channel("step")
    assert channel.raw is False
    bus.signal("step").connect(raw_a, weak=False)
    bus.signal("step").connect(raw_b)
    assert channel.raw is True
    bus.signal("step").disconnect(raw_a)
    assert channel.raw is True
    bus.emit("step", None)
    assert log == ["ordered", "raw-b"]
    bus.signal("step").disconnect(raw_b)
    assert channel.raw is False
    assert channel.active is True
    log.clear()
    bus.emit("step", None)
    assert log == ["ordered"]


def test_blinker_connected_to_context_manager() -> None:
    bus = Bus()
    log: Log = []
    bus.connect("step", recorder(log, "ordered"))
    temporary = recorder(log, "temporary")
    with bus.signal("step").connected_to(temporary):
        assert bus.channel("step").raw is True
        bus.emit("step", None)
    assert bus.channel("step").raw is False
    bus.emit("step", None)
    assert log == ["ordered", "temporary", "ordered"]


def test_raw_receiver_for_one_sender() -> None:
    bus = Bus()
    log: Log = []
    mine, other = object(), object()
    bus.connect("post_step", payload_recorder(log, "ordered"))
    bus.signal("post_step").connect(payload_recorder(log, "raw-mine"), sender=mine, weak=False)
    bus.emit("post_step", mine)
    bus.emit("post_step", other)
    assert [(label, s is mine) for label, s, _ in log] == [("ordered", True), ("raw-mine", True), ("ordered", False)]


def test_each_bus_has_a_private_namespace() -> None:
    first, second = Bus(), Bus()
    assert first.signal("post_step") is not second.signal("post_step")
    assert first.signal("post_step") is first.signal(Event.POST_STEP)
    assert first.namespace["post_step"] is first.signal("post_step")
    assert sorted(first.namespace) == sorted(e.value for e in Event)
    assert isinstance(first.signal("post_step"), blinker.NamedSignal)
    assert first.signal("post_step").name == "post_step"
    assert blinker.signal("post_step") is not first.signal("post_step")

    log: Log = []
    first.connect("post_step", recorder(log, "first-handler"))
    first.signal("post_step").connect(recorder(log, "first-raw"), weak=False)
    second.connect("post_step", recorder(log, "second-handler"))

    def global_receiver(sender: object, **payload: Any) -> None:
        log.append("global")

    blinker.signal("post_step").connect(global_receiver)
    try:
        second.emit("post_step", None)
        assert log == ["second-handler"]
        log.clear()
        first.emit("post_step", None)
        assert log == ["first-handler", "first-raw"]
        log.clear()
        blinker.signal("post_step").send(None)
        assert log == ["global"]
    finally:
        blinker.signal("post_step").disconnect(global_receiver)


# ------------------------------------------------------------------------------------------------------ snapshot


def test_handlers_connected_during_an_emit_run_from_the_next_emit() -> None:
    bus = Bus()
    log: Log = []
    added: list[Handle] = []

    def connector(sender: object, **payload: Any) -> None:
        log.append("connector")
        if not added:
            added.append(bus.connect("post_step", recorder(log, "new-high"), priority=100))
            bus.signal("post_step").connect(recorder(log, "new-raw"), weak=False)

    bus.connect("post_step", connector)
    bus.emit("post_step", None)
    assert log == ["connector"]
    log.clear()
    bus.emit("post_step", None)
    assert log == ["new-high", "connector", "new-raw"]


def test_raw_receivers_connected_during_a_raw_emit_run_from_the_next_emit() -> None:
    bus = Bus()
    log: Log = []
    connected: list[bool] = []

    def connector(sender: object, **payload: Any) -> None:
        log.append("raw-connector")
        if not connected:
            connected.append(True)
            bus.signal("post_step").connect(recorder(log, "raw-new"), weak=False)

    bus.connect("post_step", recorder(log, "ordered"))
    bus.signal("post_step").connect(connector, weak=False)
    bus.emit("post_step", None)
    assert log == ["ordered", "raw-connector"]
    log.clear()
    bus.emit("post_step", None)
    assert log == ["ordered", "raw-connector", "raw-new"]


def test_handlers_toggled_during_an_emit_change_from_the_next_emit() -> None:
    bus = Bus()
    log: Log = []
    handles: dict[str, Handle] = {}

    def toggler(sender: object, **payload: Any) -> None:
        log.append("toggler")
        handles["victim"].enabled = not handles["victim"].enabled

    handles["toggler"] = bus.connect("post_step", toggler, priority=1)
    handles["victim"] = bus.connect("post_step", recorder(log, "victim"))
    bus.emit("post_step", None)  # victim disabled during this emit: still runs this time
    bus.emit("post_step", None)  # victim disabled now; re-enabled during this emit
    bus.emit("post_step", None)
    assert log == ["toggler", "victim", "toggler", "toggler", "victim"]


# -------------------------------------------------------------------------------------------------------- errors


def test_handler_exception_becomes_a_named_callback_error() -> None:
    state = State(max_epochs=2, iterations_per_epoch=5, epoch=2, iteration=7, epoch_iteration=2)
    bus = Bus(state)
    log: Log = []
    original = ZeroDivisionError("division by zero")

    def boom(sender: object, **payload: Any) -> None:
        log.append("boom")
        raise original

    bus.connect("post_step", recorder(log, "first"), priority=10)
    bus.connect("post_step", boom, name="Exploder.post_step", priority=3)
    bus.connect("post_step", recorder(log, "later"))
    bus.signal("post_step").connect(recorder(log, "raw"), weak=False)
    for send in (lambda: bus.emit("post_step", None), lambda: bus.signal("post_step").send(None)):
        log.clear()
        with pytest.raises(CallbackError) as info:
            send()
        error = info.value
        message = str(error)
        assert "handler 'Exploder.post_step' (priority 3)" in message
        assert "during event 'post_step'" in message
        assert "iteration 7" in message
        assert "(epoch 2/2, step 2/5)" in message
        assert message.endswith("ZeroDivisionError: division by zero")
        assert error.__cause__ is original
        assert error.handler == "Exploder.post_step"
        assert error.event == "post_step"
        assert error.iteration == 7
        assert isinstance(error, RuntimeError)
        assert log == ["first", "boom"]  # later handlers and raw receivers did not run


def test_callback_error_without_state() -> None:
    bus = Bus()
    empty: dict[str, int] = {}
    bus.connect("pre_training", lambda sender, **payload: empty["missing"], name="lookup")
    with pytest.raises(CallbackError, match="'lookup'") as info:
        bus.emit("pre_training", None)
    assert info.value.iteration is None
    assert "(no trainer state)" in str(info.value)
    assert "KeyError: 'missing'" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_derived_handler_names_in_errors() -> None:
    bus = Bus(State())

    def inner(sender: object, **payload: Any) -> None:
        raise ValueError("bad")

    bus.connect("step", inner)
    with pytest.raises(CallbackError) as info:
        bus.emit("step", None)
    handler = info.value.handler
    assert handler.startswith("test_derived_handler_names_in_errors.<locals>.inner at ")
    assert handler.endswith(f"{__file__}:{inner.__code__.co_firstlineno}")
    assert f"handler {handler!r}" in str(info.value)


def test_handler_name() -> None:
    assert handler_name(Saver().post_step) == "Saver.post_step"
    assert handler_name(Saver()) == "Saver"
    fn = lambda sender: None  # noqa: E731
    assert handler_name(fn) == f"test_handler_name.<locals>.<lambda> at {__file__}:{fn.__code__.co_firstlineno}"


def test_handler_name_of_a_module_function() -> None:
    # the docstring promises ``module.function`` for plain functions
    assert handler_name(module_level_handler) == f"{__name__}.module_level_handler"


def test_failing_raw_receiver_is_named() -> None:
    state = State(iteration=4)
    bus = Bus(state)
    log: Log = []

    def bad_receiver(sender: object, **payload: Any) -> None:
        raise OSError("disk full")

    bus.connect("post_epoch", recorder(log, "ordered"))
    bus.signal("post_epoch").connect(bad_receiver, weak=False)
    bus.signal("post_epoch").connect(recorder(log, "raw-after"), weak=False)
    with pytest.raises(CallbackError) as info:
        bus.emit("post_epoch", None)
    error = info.value
    name = f"test_failing_raw_receiver_is_named.<locals>.bad_receiver at {__file__}:"
    assert error.handler.startswith(name)
    assert error.event == "post_epoch"
    assert error.iteration == 4
    assert "connected directly to signal 'post_epoch'" in str(error)
    assert "iteration 4" in str(error)
    assert str(error).endswith("OSError: disk full")
    assert isinstance(error.__cause__, OSError)
    assert log == ["ordered"]


def test_base_exceptions_are_not_wrapped() -> None:
    bus = Bus()

    def interrupt(sender: object, **payload: Any) -> None:
        raise KeyboardInterrupt

    bus.connect("step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        bus.emit("step", None)


def test_nested_emit_error_is_not_wrapped_twice() -> None:
    state = State(iteration=3)
    bus = Bus(state)
    original = ValueError("metric is NaN")

    def validator(sender: object, **payload: Any) -> None:
        bus.emit("post_validation", sender, metrics={})

    def metric(sender: object, **payload: Any) -> None:
        raise original

    bus.connect("post_step", validator, name="validator")
    bus.connect("post_validation", metric, name="metric")
    for raw in (False, True):
        if raw:  # the same through blinker
            bus.signal("post_step").connect(recorder([], "raw"), weak=False)
            bus.signal("post_validation").connect(recorder([], "raw"), weak=False)
        with pytest.raises(CallbackError) as info:
            bus.emit("post_step", None)
        error = info.value
        assert (error.handler, error.event, error.iteration) == ("metric", "post_validation", 3)
        assert error.__cause__ is original
        assert "validator" not in str(error)


def test_callback_error_survives_pickling() -> None:
    bus = Bus(State(iteration=12))
    bus.connect("post_step", lambda sender, **payload: 1 / 0, name="divider")
    with pytest.raises(CallbackError) as info:
        bus.emit("post_step", None)
    restored = pickle.loads(pickle.dumps(info.value))
    assert type(restored) is CallbackError
    assert str(restored) == str(info.value)
    assert (restored.handler, restored.event, restored.iteration) == ("divider", "post_step", 12)
    plain = CallbackError("msg", handler="h", event="step", iteration=None)
    again = pickle.loads(pickle.dumps(plain))
    assert (str(again), again.handler, again.event, again.iteration) == ("msg", "h", "step", None)


# ----------------------------------------------------------------------------------------------- connect errors


def test_connect_rejects_non_callables() -> None:
    bus = Bus()
    with pytest.raises(TypeError, match="handler 'thing' for event 'post_step' is not callable: 42"):
        bus.connect("post_step", 42, name="thing")  # type: ignore[arg-type]
    assert bus.handles() == ()


@pytest.mark.parametrize("priority", [True, False, "high", 1.5, None])
def test_connect_rejects_non_int_priorities(priority: object) -> None:
    bus = Bus()
    with pytest.raises(TypeError, match="priority of handler 'h' must be an int") as info:
        bus.connect("post_step", recorder([], "h"), priority=priority, name="h")  # type: ignore[arg-type]
    assert f"got {priority!r}" in str(info.value)
    assert bus.handles() == ()


def test_connect_accepts_int_enum_priorities() -> None:
    bus = Bus()
    handle = bus.connect("post_step", recorder([], "h"), priority=Priority.METRICS)
    assert handle.priority == 100
    assert type(handle.priority) is int


@pytest.mark.parametrize(
    ("event", "every", "fragment"),
    [
        ("post_step", 0, "invalid schedule 0"),
        ("post_step", "1.5ep", "invalid schedule '1.5ep'"),
        ("post_step", "2ep", "counts epochs"),
        ("post_epoch", "100it", "counts iterations"),
        ("post_training", "once", "cannot filter 'post_training'"),
    ],
)
def test_connect_rejects_bad_schedules_naming_handler_and_event(event: str, every: object, fragment: str) -> None:
    bus = Bus(State())
    with pytest.raises(ValueError, match=r"invalid|counts|cannot filter") as info:
        bus.connect(event, recorder([], "h"), every=every, name="saver")  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"handler 'saver' on {event!r}: ")
    assert fragment in message
    assert bus.handles() == ()


def test_scheduled_handler_needs_a_state() -> None:
    bus = Bus()
    with pytest.raises(ValueError, match="handler 'saver': every=10it needs a bus created with a State"):
        bus.connect("post_step", recorder([], "h"), every="10it", name="saver")
    assert bus.handles() == ()
    bus.connect("post_step", recorder([], "h"), every=None)  # unscheduled is fine


def test_unknown_event_names() -> None:
    bus = Bus()
    with pytest.raises(ValueError, match="unknown event 'post_stepp'; valid events are: pre_training"):
        bus.connect("post_stepp", recorder([], "h"))
    with pytest.raises(ValueError, match="unknown event 'bogus'"):
        bus.emit("bogus", None)
    with pytest.raises(ValueError, match="unknown event 'bogus'"):
        bus.signal("bogus")
