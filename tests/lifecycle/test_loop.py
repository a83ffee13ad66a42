"""The loop state machine, driven through a recording host: exact event slices per iterate() call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lifecycle import Bus, Event, Loop, Phase, State, Status

Hook = Callable[["RecordingHost"], None]


class RecordingHost:
    """Implements the loop's Host protocol; records event names and counters, and runs optional hooks.

    ``hooks[name]`` runs after ``name`` is recorded (``name`` is the event name: ``pre_training``, ``pre_epoch``,
    ``step``, ``post_epoch``, ``post_training``, ``exception``).
    """

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.state = loop.state
        self.events: list[str] = []
        self.counters: list[tuple[str, int, int, int]] = []
        self.resumed: list[tuple[str, bool]] = []
        self.errors: list[BaseException] = []
        self.hooks: dict[str, Hook] = {}

    def _record(self, label: str, hook: str) -> None:
        s = self.state
        self.events.append(label)
        self.counters.append((label, s.epoch, s.epoch_iteration, s.iteration))
        if hook in self.hooks:
            self.hooks[hook](self)

    def begin_training(self) -> None:
        self.resumed.append(("pre_training", self.loop.resumed))
        self._record("pre_training", "pre_training")

    def begin_epoch(self) -> None:
        self.resumed.append(("pre_epoch", self.loop.resumed))
        self._record("pre_epoch", "pre_epoch")

    def run_step(self) -> None:
        self._record("step", "step")

    def end_epoch(self) -> None:
        self._record("post_epoch", "post_epoch")

    def end_training(self, status: Status) -> None:
        assert isinstance(status, Status)
        self._record(f"post_training({status.value})", "post_training")

    def fail(self, error: BaseException) -> None:
        self.errors.append(error)
        self._record(f"exception({type(error).__name__})", "exception")

    def serve_requests(self) -> None:
        pass


def make(max_epochs: int = 2, iterations_per_epoch: int = 3) -> tuple[Loop, RecordingHost]:
    loop = Loop(State(max_epochs=max_epochs, iterations_per_epoch=iterations_per_epoch))
    return loop, RecordingHost(loop)


def step(loop: Loop, host: RecordingHost) -> tuple[list[str], bool]:
    """One iterate() call: the events it emitted and its return value."""
    before = len(host.events)
    result = loop.iterate(host)
    return host.events[before:], result


def run(loop: Loop, host: RecordingHost, limit: int = 100) -> list[tuple[list[str], bool]]:
    """Iterate until False; return each call's slice."""
    calls = []
    for _ in range(limit):
        calls.append(step(loop, host))
        if not calls[-1][1]:
            return calls
    raise AssertionError(f"the loop did not finish within {limit} iterate() calls")


def stop_when(event: str, iteration: int | None = None, epoch: int | None = None) -> Hook:
    def hook(host: RecordingHost) -> None:
        if iteration is not None and host.state.iteration != iteration:
            return
        if epoch is not None and host.state.epoch != epoch:
            return
        host.loop.stop(host)

    return hook


def raise_(error: BaseException, iteration: int | None = None) -> Hook:
    def hook(host: RecordingHost) -> None:
        if iteration is None or host.state.iteration == iteration:
            raise error

    return hook


def raise_on_status(error: BaseException, status: str) -> Hook:
    def hook(host: RecordingHost) -> None:
        if host.events[-1] == f"post_training({status})":
            raise error

    return hook


# ------------------------------------------------------------------------------------------------ normal runs


def test_two_epochs_of_three_steps_call_by_call() -> None:
    loop, host = make(2, 3)
    assert loop.started is False
    assert run(loop, host) == [
        (["pre_training", "pre_epoch", "step"], True),
        (["step"], True),
        (["step", "post_epoch"], True),
        (["pre_epoch", "step"], True),
        (["step"], True),
        (["step", "post_epoch", "post_training(completed)"], False),
    ]
    assert loop.status is Status.COMPLETED
    assert loop.phase is Phase.DONE
    assert loop.finished is True


def test_counters_during_a_run() -> None:
    loop, host = make(2, 3)
    run(loop, host)
    assert host.counters == [
        ("pre_training", 0, 0, 0),
        ("pre_epoch", 1, 0, 0),
        ("step", 1, 1, 1),
        ("step", 1, 2, 2),
        ("step", 1, 3, 3),
        ("post_epoch", 1, 3, 3),
        ("pre_epoch", 2, 0, 3),
        ("step", 2, 1, 4),
        ("step", 2, 2, 5),
        ("step", 2, 3, 6),
        ("post_epoch", 2, 3, 6),
        ("post_training(completed)", 2, 3, 6),
    ]
    assert loop.state.state_dict() == {
        "epoch": 2,
        "iteration": 6,
        "epoch_iteration": 3,
        "max_epochs": 2,
        "iterations_per_epoch": 3,
        "optimizer_step": 0,  # the loop counts iterations; the engine's step counts optimizer steps
    }


@pytest.mark.parametrize(("epochs", "steps"), [(1, 1), (1, 4), (3, 1), (4, 5)])
def test_every_step_is_taken_and_events_balance(epochs: int, steps: int) -> None:
    loop, host = make(epochs, steps)
    calls = run(loop, host)
    assert len(calls) == epochs * steps  # one step per call, the last batch included
    step_iterations = [it for label, _, _, it in host.counters if label == "step"]
    assert step_iterations == list(range(1, epochs * steps + 1))  # strictly +1 across epochs
    step_positions = [(ep, ei) for label, ep, ei, _ in host.counters if label == "step"]
    assert step_positions == [(e, i) for e in range(1, epochs + 1) for i in range(1, steps + 1)]
    expected = ["pre_training"]
    for _ in range(epochs):
        expected += ["pre_epoch"] + ["step"] * steps + ["post_epoch"]
    expected.append("post_training(completed)")
    assert host.events == expected


def test_single_epoch_takes_its_last_step() -> None:
    loop, host = make(1, 3)
    assert run(loop, host) == [
        (["pre_training", "pre_epoch", "step"], True),
        (["step"], True),
        (["step", "post_epoch", "post_training(completed)"], False),
    ]
    assert loop.state.iteration == 3


def test_single_step_run() -> None:
    loop, host = make(1, 1)
    assert step(loop, host) == (["pre_training", "pre_epoch", "step", "post_epoch", "post_training(completed)"], False)


def test_iterate_after_the_end_returns_false_and_emits_nothing() -> None:
    loop, host = make(1, 2)
    run(loop, host)
    events = list(host.events)
    for _ in range(3):
        assert loop.iterate(host) is False
    assert host.events == events
    assert loop.state.iteration == 2


# ---------------------------------------------------------------------------------------------------------- stop


def test_stop_at_begin_training() -> None:
    loop, host = make(2, 3)
    host.hooks["pre_training"] = stop_when("pre_training")
    assert step(loop, host) == (["pre_training", "post_training(stopped)"], False)
    assert loop.status is Status.STOPPED
    assert loop.state.iteration == 0
    assert loop.iterate(host) is False
    assert host.events == ["pre_training", "post_training(stopped)"]


def test_stop_at_begin_epoch_takes_no_step() -> None:
    loop, host = make(2, 3)
    host.hooks["pre_epoch"] = stop_when("pre_epoch")
    assert step(loop, host) == (["pre_training", "pre_epoch", "post_epoch", "post_training(stopped)"], False)
    assert loop.state.iteration == 0
    assert loop.status is Status.STOPPED


def test_stop_at_the_second_begin_epoch() -> None:
    loop, host = make(2, 3)
    host.hooks["pre_epoch"] = stop_when("pre_epoch", epoch=2)
    calls = run(loop, host)
    assert calls[-1] == (["pre_epoch", "post_epoch", "post_training(stopped)"], False)
    assert len(calls) == 4
    assert loop.state.iteration == 3


def test_stop_during_a_step_completes_the_step() -> None:
    loop, host = make(2, 3)
    host.hooks["step"] = stop_when("step", iteration=2)
    assert run(loop, host) == [
        (["pre_training", "pre_epoch", "step"], True),
        (["step", "post_epoch", "post_training(stopped)"], False),
    ]
    assert host.counters[-1] == ("post_training(stopped)", 1, 2, 2)
    assert loop.status is Status.STOPPED


def test_stop_during_the_last_step_of_an_epoch_emits_one_post_epoch() -> None:
    loop, host = make(2, 3)
    host.hooks["step"] = stop_when("step", iteration=3)
    calls = run(loop, host)
    assert calls[-1] == (["step", "post_epoch", "post_training(stopped)"], False)
    assert host.events.count("post_epoch") == 1
    assert loop.status is Status.STOPPED


def test_stop_during_a_non_final_end_epoch() -> None:
    loop, host = make(3, 2)
    host.hooks["post_epoch"] = stop_when("post_epoch", epoch=1)
    calls = run(loop, host)
    assert calls[-1] == (["step", "post_epoch", "post_training(stopped)"], False)
    assert host.events.count("post_epoch") == 1
    assert host.events.count("pre_epoch") == 1
    assert loop.status is Status.STOPPED


def test_stop_during_the_final_end_epoch_changes_nothing() -> None:
    loop, host = make(2, 2)
    host.hooks["post_epoch"] = stop_when("post_epoch", epoch=2)
    calls = run(loop, host)
    assert calls[-1] == (["step", "post_epoch", "post_training(completed)"], False)
    assert loop.status is Status.COMPLETED


def test_stop_from_outside_with_an_open_epoch_finishes_at_once() -> None:
    loop, host = make(2, 3)
    assert loop.iterate(host) is True
    assert loop.in_iterate is False
    before = len(host.events)
    loop.stop(host)
    assert host.events[before:] == ["post_epoch", "post_training(stopped)"]
    assert loop.status is Status.STOPPED
    assert loop.finished is True
    assert loop.iterate(host) is False
    assert len(host.events) == before + 2


def test_stop_from_outside_between_epochs() -> None:
    loop, host = make(2, 3)
    for _ in range(3):
        loop.iterate(host)
    assert host.events[-1] == "post_epoch"
    before = len(host.events)
    loop.stop(host)
    assert host.events[before:] == ["post_training(stopped)"]


def test_stop_before_the_first_iterate_emits_nothing() -> None:
    loop, host = make(2, 3)
    loop.stop(host)
    assert host.events == []
    assert loop.status is Status.STOPPED
    assert loop.iterate(host) is False
    assert loop.iterate(host) is False
    assert host.events == []


def test_stop_is_idempotent() -> None:
    loop, host = make(2, 3)
    loop.iterate(host)
    loop.stop(host)
    loop.stop(host)
    assert host.events.count("post_training(stopped)") == 1
    assert host.events.count("post_epoch") == 1


def test_stop_twice_inside_iterate() -> None:
    loop, host = make(2, 3)

    def double_stop(host: RecordingHost) -> None:
        host.loop.stop(host)
        host.loop.stop(host)

    host.hooks["step"] = double_stop
    assert step(loop, host) == (["pre_training", "pre_epoch", "step", "post_epoch", "post_training(stopped)"], False)


def test_stop_from_post_training_is_ignored() -> None:
    loop, host = make(1, 1)
    host.hooks["post_training"] = lambda h: h.loop.stop(h)
    assert step(loop, host) == (["pre_training", "pre_epoch", "step", "post_epoch", "post_training(completed)"], False)
    loop.stop(host)
    assert host.events.count("post_training(completed)") == 1
    assert loop.status is Status.COMPLETED


def test_stop_after_completion_changes_nothing() -> None:
    loop, host = make(1, 1)
    run(loop, host)
    loop.stop(host)
    assert host.events[-1] == "post_training(completed)"
    assert loop.status is Status.COMPLETED


# --------------------------------------------------------------------------------------------------------- pause


def test_pause_emits_nothing_and_resumes_where_it_was() -> None:
    loop, host = make(2, 2)
    loop.iterate(host)
    loop.paused = True
    for _ in range(3):
        assert step(loop, host) == ([], True)
    assert loop.state.iteration == 1
    loop.paused = False
    assert step(loop, host) == (["step", "post_epoch"], True)
    assert loop.state.iteration == 2


def test_pause_before_start() -> None:
    loop, host = make(1, 1)
    loop.paused = True
    assert step(loop, host) == ([], True)
    assert loop.started is False


# ---------------------------------------------------------------------------------------------------- failures


def test_exception_in_a_step() -> None:
    loop, host = make(2, 3)
    error = ValueError("loss is NaN")
    host.hooks["step"] = raise_(error, iteration=2)
    assert loop.iterate(host) is True
    with pytest.raises(ValueError, match="loss is NaN") as info:
        loop.iterate(host)
    assert info.value is error
    assert host.events[3:] == ["step", "exception(ValueError)", "post_training(failed)"]
    assert host.errors == [error]
    assert loop.status is Status.FAILED
    assert loop.finished is True
    before = list(host.events)
    assert loop.iterate(host) is False
    assert loop.iterate(host) is False
    loop.stop(host)
    assert host.events == before
    assert loop.status is Status.FAILED


def test_keyboard_interrupt_gives_status_interrupted() -> None:
    loop, host = make(2, 3)
    interrupt = KeyboardInterrupt()
    host.hooks["step"] = raise_(interrupt, iteration=4)
    with pytest.raises(KeyboardInterrupt) as info:
        run(loop, host)
    assert info.value is interrupt
    assert host.events[-3:] == ["step", "exception(KeyboardInterrupt)", "post_training(interrupted)"]
    assert loop.status is Status.INTERRUPTED


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        ("pre_training", ["pre_training", "exception(RuntimeError)", "post_training(failed)"]),
        ("pre_epoch", ["pre_training", "pre_epoch", "exception(RuntimeError)", "post_training(failed)"]),
    ],
)
def test_exception_before_the_first_step(hook: str, expected: list[str]) -> None:
    loop, host = make(2, 3)
    error = RuntimeError("no data")
    host.hooks[hook] = raise_(error)
    with pytest.raises(RuntimeError, match="no data") as info:
        loop.iterate(host)
    assert info.value is error
    assert host.events == expected
    assert loop.status is Status.FAILED


def test_exception_in_end_epoch() -> None:
    loop, host = make(2, 1)
    error = OSError("checkpoint dir gone")
    host.hooks["post_epoch"] = raise_(error)
    with pytest.raises(OSError, match="checkpoint dir gone"):
        loop.iterate(host)
    assert host.events == [
        "pre_training",
        "pre_epoch",
        "step",
        "post_epoch",
        "exception(OSError)",
        "post_training(failed)",
    ]


def test_exception_raised_by_end_training_is_not_followed_by_a_second_post_training() -> None:
    loop, host = make(1, 2)
    error = RuntimeError("upload failed")
    host.hooks["post_training"] = raise_on_status(error, "completed")
    loop.iterate(host)
    with pytest.raises(RuntimeError, match="upload failed") as info:
        loop.iterate(host)
    assert info.value is error
    assert host.events == [
        "pre_training",
        "pre_epoch",
        "step",
        "step",
        "post_epoch",
        "post_training(completed)",
        "exception(RuntimeError)",
    ]
    assert loop.status is Status.FAILED
    assert loop.iterate(host) is False
    assert host.events.count("post_training(completed)") == 1


def test_exception_raised_by_end_training_after_an_outside_stop() -> None:
    loop, host = make(2, 2)
    error = RuntimeError("flush failed")
    host.hooks["post_training"] = raise_on_status(error, "stopped")
    loop.iterate(host)
    with pytest.raises(RuntimeError, match="flush failed") as info:
        loop.stop(host)
    assert info.value is error
    assert host.events[-3:] == ["post_epoch", "post_training(stopped)", "exception(RuntimeError)"]
    assert loop.finished is True
    assert loop.in_iterate is False


def test_secondary_errors_are_notes_on_the_original() -> None:
    loop, host = make(2, 3)
    original = ValueError("step exploded")
    host.hooks["step"] = raise_(original)
    host.hooks["exception"] = raise_(RuntimeError("exception handler broke"))
    host.hooks["post_training"] = raise_on_status(OSError("teardown broke"), "failed")
    with pytest.raises(ValueError, match="step exploded") as info:
        loop.iterate(host)
    assert info.value is original
    assert host.events == ["pre_training", "pre_epoch", "step", "exception(ValueError)", "post_training(failed)"]
    notes = getattr(info.value, "__notes__", [])
    also_failed = [note for note in notes if "also failed" in note]
    assert len(also_failed) == 2
    assert "an 'exception' handler also failed: RuntimeError: exception handler broke" in also_failed[0]
    assert "a 'post_training' handler also failed: OSError: teardown broke" in also_failed[1]
    assert loop.status is Status.FAILED
    assert loop.finished is True


def test_reentrant_iterate_raises() -> None:
    loop, host = make(2, 3)
    caught: list[RuntimeError] = []

    def reenter(host: RecordingHost) -> None:
        try:
            host.loop.iterate(host)
        except RuntimeError as exc:
            caught.append(exc)

    host.hooks["step"] = reenter
    assert step(loop, host) == (["pre_training", "pre_epoch", "step"], True)
    assert len(caught) == 1
    assert "iterate() called re-entrantly" in str(caught[0])
    assert loop.state.iteration == 1
    assert loop.in_iterate is False
    del host.hooks["step"]
    assert step(loop, host) == (["step"], True)  # the loop is unharmed


def test_reentrant_iterate_error_propagating_fails_the_run() -> None:
    loop, host = make(2, 3)

    def reenter(host: RecordingHost) -> None:
        host.loop.iterate(host)

    host.hooks["pre_epoch"] = reenter
    with pytest.raises(RuntimeError, match="re-entrantly"):
        loop.iterate(host)
    assert host.events == ["pre_training", "pre_epoch", "exception(RuntimeError)", "post_training(failed)"]


# ------------------------------------------------------------------------------------------------------- restore


def restored(
    counters: dict[str, int], max_epochs: int = 2, iterations_per_epoch: int = 3
) -> tuple[Loop, RecordingHost]:
    loop, host = make(max_epochs, iterations_per_epoch)
    loop.state.load_state_dict({"max_epochs": max_epochs, "iterations_per_epoch": iterations_per_epoch, **counters})
    loop.restore()
    return loop, host


def test_restore_mid_epoch() -> None:
    loop, host = restored({"epoch": 2, "epoch_iteration": 1, "iteration": 4})
    assert loop.resumed is True
    assert run(loop, host) == [
        (["pre_training", "pre_epoch", "step"], True),
        (["step", "post_epoch", "post_training(completed)"], False),
    ]
    assert host.counters == [
        ("pre_training", 2, 1, 4),
        ("pre_epoch", 2, 1, 4),
        ("step", 2, 2, 5),
        ("step", 2, 3, 6),
        ("post_epoch", 2, 3, 6),
        ("post_training(completed)", 2, 3, 6),
    ]
    assert host.resumed == [("pre_training", True), ("pre_epoch", True)]


def test_restore_at_an_epoch_end() -> None:
    loop, host = restored({"epoch": 1, "epoch_iteration": 3, "iteration": 3})
    assert step(loop, host) == (["pre_training", "pre_epoch", "step"], True)
    assert host.counters == [("pre_training", 1, 3, 3), ("pre_epoch", 2, 0, 3), ("step", 2, 1, 4)]
    assert host.resumed == [("pre_training", True), ("pre_epoch", True)]


def test_restore_of_a_completed_run() -> None:
    loop, host = restored({"epoch": 2, "epoch_iteration": 3, "iteration": 6})
    assert loop.iterate(host) is False
    assert loop.iterate(host) is False
    assert host.events == []
    assert loop.status is Status.COMPLETED
    assert loop.finished is True


def test_restore_of_a_run_saved_before_its_post_training_emits_only_the_end() -> None:
    # saved at the final post_epoch, killed before post_training: the resumed run steps nothing but still ends
    loop, host = make(2, 3)
    loop.state.load_state_dict({"max_epochs": 2, "iterations_per_epoch": 3, "epoch": 2, "epoch_iteration": 3,
                                "iteration": 6})  # fmt: skip
    loop.restore(ended=False)
    assert loop.iterate(host) is False
    assert host.events == ["pre_training", "post_training(completed)"]
    assert host.resumed == [("pre_training", True)]
    assert loop.status is Status.COMPLETED
    assert loop.iterate(host) is False
    assert host.events == ["pre_training", "post_training(completed)"]


def test_restore_before_an_epochs_first_step_normalises_to_the_previous_epochs_end() -> None:
    loop, host = restored({"epoch": 2, "epoch_iteration": 0, "iteration": 3})
    assert (loop.state.epoch, loop.state.epoch_iteration, loop.state.iteration) == (1, 3, 3)
    assert step(loop, host) == (["pre_training", "pre_epoch", "step"], True)
    assert host.counters[1:] == [("pre_epoch", 2, 0, 3), ("step", 2, 1, 4)]
    assert run(loop, host)[-1] == (["step", "post_epoch", "post_training(completed)"], False)
    assert loop.state.iteration == 6


def test_restore_of_a_fresh_state_is_a_normal_start() -> None:
    loop, host = restored({"epoch": 0, "epoch_iteration": 0, "iteration": 0})
    assert loop.resumed is False
    assert step(loop, host) == (["pre_training", "pre_epoch", "step"], True)
    assert host.resumed == [("pre_training", False), ("pre_epoch", False)]


def test_restore_after_start_is_refused() -> None:
    loop, host = make(2, 3)
    loop.iterate(host)
    with pytest.raises(RuntimeError, match=r"cannot restore counters once training has started \(phase in_epoch\)"):
        loop.restore()


# --------------------------------------------------------------------------------------------- with a real bus


class BusHost:
    """A host that emits real lifecycle events on a Bus, as the trainer does."""

    def __init__(self, loop: Loop, bus: Bus) -> None:
        self.loop, self.bus = loop, bus

    def begin_training(self) -> None:
        self.bus.emit(Event.PRE_TRAINING, self, resumed=self.loop.resumed)

    def begin_epoch(self) -> None:
        self.bus.emit(Event.PRE_EPOCH, self)

    def run_step(self) -> None:
        self.bus.emit(Event.PRE_STEP, self, batch=self.loop.state.iteration)
        self.bus.emit(Event.STEP, self, loss=0.0, outputs=None)
        self.bus.emit(Event.POST_STEP, self, outputs=None)

    def end_epoch(self) -> None:
        self.bus.emit(Event.POST_EPOCH, self)

    def end_training(self, status: Status) -> None:
        self.bus.emit(Event.POST_TRAINING, self, status=status)

    def fail(self, error: BaseException) -> None:
        self.bus.emit(Event.EXCEPTION, self, error=error)

    def serve_requests(self) -> None:
        pass


def test_scheduled_handlers_over_a_real_loop() -> None:
    state = State(max_epochs=3, iterations_per_epoch=4)
    loop, bus = Loop(state), Bus(state)
    host = BusHost(loop, bus)
    fired: list[tuple[str, int, int]] = []

    def record(label: str) -> Callable[..., None]:
        def handler(sender: object, **payload: Any) -> None:
            fired.append((label, state.epoch, state.iteration))

        return handler

    bus.connect("post_step", record("every5"), every="5it")
    bus.connect("post_epoch", record("every2ep"), every="2ep")
    bus.connect("pre_step", record("at"), every={"at": [1, 12]})
    bus.connect("post_step", record("at10"), every={"at": [10]}, priority=1)
    statuses: list[Any] = []
    bus.signal("post_training").connect(lambda sender, **payload: statuses.append(payload["status"]))
    calls = 0
    while loop.iterate(host):
        calls += 1
    assert calls + 1 == 12
    assert fired == [
        ("at", 1, 1),
        ("every5", 2, 5),
        ("every2ep", 2, 8),
        ("at10", 3, 10),
        ("every5", 3, 10),
        ("at", 3, 12),
    ]
    assert statuses == [Status.COMPLETED]


def test_stop_from_a_bus_handler() -> None:
    state = State(max_epochs=3, iterations_per_epoch=4)
    loop, bus = Loop(state), Bus(state)
    host = BusHost(loop, bus)
    seen: list[str] = []
    bus.connect("post_step", lambda sender, **payload: loop.stop(sender), every={"at": [6]})
    bus.connect("post_epoch", lambda sender, **payload: seen.append(f"post_epoch {state.epoch}"))
    bus.connect("post_training", lambda sender, **payload: seen.append(f"post_training {payload['status']}"))
    while loop.iterate(host):
        pass
    assert state.iteration == 6
    assert seen == ["post_epoch 1", "post_epoch 2", "post_training stopped"]
