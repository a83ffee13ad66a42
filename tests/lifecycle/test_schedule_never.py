"""``every="never"``: a schedule that never fires, while the callback's unscheduled handlers still run; ``-1`` (Wisp's
"off") and ``0`` refused with a message that says how to write "never" -- checked on the schedule itself, on the bus
and on callbacks in real training."""

from __future__ import annotations

from typing import Any

import pytest

from callbacks import Callback, Checkpointer, Validator
from lifecycle import EPOCH_EVENTS, STEP_EVENTS, VALID_FORMS, Event, Schedule, State, Status
from tests.support import make_trainer
from trainers import BaseTrainer


@pytest.mark.parametrize("spec", ["never", " Never ", "NEVER", {"every": "never"}])
def test_never_parses_to_a_schedule_that_never_fires(spec: Any) -> None:
    schedule = Schedule.parse(spec)
    assert schedule.never is True
    assert schedule.always is False
    assert str(schedule) == "never"
    assert schedule.events() == STEP_EVENTS | EPOCH_EVENTS
    state = State(max_epochs=3, iterations_per_epoch=4)
    for event in STEP_EVENTS | EPOCH_EVENTS:
        predicate = schedule.bind(state, event)
        assert predicate is not None
        fired = []
        for iteration in range(1, 13):
            state.iteration, state.epoch = iteration, (iteration - 1) // 4 + 1
            fired.append(predicate())
        assert not any(fired), event


def test_none_still_means_every_time() -> None:
    schedule = Schedule.parse(None)
    assert (schedule.always, schedule.never) == (True, False)
    assert schedule.bind(State(), Event.POST_STEP) is None


def test_never_with_bounds_is_still_never_but_the_bounds_are_checked() -> None:
    assert str(Schedule.parse({"every": "never", "start": "2ep"})) == "never"
    assert str(Schedule.parse("never", end=100, once=True)) == "never"
    with pytest.raises(ValueError, match=r"invalid schedule 0: start must be > 0"):
        Schedule.parse("never", start=0)
    with pytest.raises(ValueError, match=r"invalid schedule 'never': give either 'never' or at=\[\.\.\.\], not both"):
        Schedule.parse("never", at=[10])


def test_never_cannot_filter_an_event_no_schedule_filters() -> None:
    with pytest.raises(ValueError, match=r"schedule 'never' of handler 'h' cannot filter 'post_training'"):
        Schedule.parse("never").check_event(Event.POST_TRAINING, "handler 'h'")


@pytest.mark.parametrize("spec", [-1, "-1", "-1it", " - 2 ep", -100])
def test_negative_periods_are_refused_pointing_to_never_and_enabled_false(spec: Any) -> None:
    with pytest.raises(ValueError, match="the period must be > 0") as info:
        Schedule.parse(spec)
    message = str(info.value)
    assert message.startswith(f"invalid schedule {spec!r}: the period must be > 0; ")
    assert "a negative period does not mean 'off' here: write 'never' for a schedule that never fires" in message
    assert "'enabled: false' leaves the callback out altogether" in message
    assert message.endswith(f"valid forms are {VALID_FORMS}")


@pytest.mark.parametrize("spec", [0, "0", "0it", "0ep", "0 min"])
def test_zero_is_refused_pointing_to_never(spec: Any) -> None:
    with pytest.raises(ValueError, match="the period must be > 0") as info:
        Schedule.parse(spec)
    message = str(info.value)
    assert message.startswith(f"invalid schedule {spec!r}: the period must be > 0; write 'never' for a schedule")
    assert "enabled: false" not in message


def test_bounds_and_at_entries_keep_their_plain_message() -> None:
    with pytest.raises(ValueError, match=r"invalid schedule -1: end must be > 0; valid forms"):
        Schedule.parse("5it", end=-1)
    with pytest.raises(ValueError, match=r"invalid schedule 0: each at= entry must be > 0; valid forms"):
        Schedule.parse(at=[0])


def test_valid_forms_list_never() -> None:
    assert "'never'" in VALID_FORMS


def test_a_handler_connected_with_never_is_registered_and_never_runs() -> None:
    trainer = make_trainer(max_epochs=2)
    calls: list[int] = []
    handle = trainer.bus.connect(Event.POST_STEP, lambda t, **_: calls.append(t.state.iteration), every="never")
    assert str(handle.schedule) == "never"
    assert handle in trainer.bus.handles(Event.POST_STEP)
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 6
    assert calls == []


class Everything(Callback):
    """Records the step, epoch and end events it sees."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[str, int]] = []

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.seen.append(("pre_training", trainer.state.iteration))

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.seen.append(("post_step", trainer.state.iteration))

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.seen.append(("post_epoch", trainer.state.iteration))

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.seen.append(("post_training", trainer.state.iteration))


def test_a_callback_with_every_never_registers_and_only_its_unscheduled_handlers_run() -> None:
    callback = Everything(every="never")
    trainer = make_trainer(max_epochs=2, callbacks=[callback])
    handles = {h.event: h for h in trainer.handles_of(callback)}
    assert set(handles) == {Event.PRE_TRAINING, Event.POST_STEP, Event.POST_EPOCH, Event.POST_TRAINING}
    assert str(handles[Event.POST_STEP].schedule) == "never"
    assert trainer.train() is Status.COMPLETED
    assert callback.seen == [("pre_training", 0), ("post_training", 6)]


def test_a_validator_every_never_still_validates_at_the_end_and_on_request() -> None:
    iterations: list[int] = []

    def validate(trainer: BaseTrainer) -> dict[str, float]:
        iterations.append(trainer.state.iteration)
        return {"loss": 1.0}

    trainer = make_trainer(max_epochs=3, callbacks=[Validator(validate, every="never")])
    trainer.iterate()
    trainer.request_validation()  # between steps: at once
    assert trainer.train() is Status.COMPLETED
    assert iterations == [1, 9]  # the request and at_end; no epoch validation


def test_a_checkpointer_every_never_saves_only_at_the_end(tmp_path: Any) -> None:
    trainer = make_trainer(max_epochs=3, run_dir=tmp_path, callbacks=[Checkpointer(every="never")])
    assert trainer.train() is Status.COMPLETED
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")) == ["step-00000009.pt"]


@pytest.mark.parametrize("spec", [-1, 0, "0ep", "0it"])
def test_callbacks_refuse_off_values_at_construction_naming_themselves(spec: Any) -> None:
    with pytest.raises(ValueError, match=r"^callback Validator 'Validator': invalid schedule .*write 'never'"):
        Validator(lambda t: {"loss": 1.0}, every=spec)
    with pytest.raises(ValueError, match=r"^callback 'Everything' \(Everything\): invalid schedule .*write 'never'"):
        make_trainer(callbacks=[Everything(every=spec)])
