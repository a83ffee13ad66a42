"""The ``Callback`` base class on a real trainer: which methods get connected, priorities, schedules and their
scope, state keys, setup/teardown, runtime toggling and the state-dict defaults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from callbacks import Callback, HandlerSpec
from lifecycle import Event, Priority, Schedule
from tests.support import Recorder, full_run, make_trainer
from trainers import BaseTrainer


class Log(Callback):
    """Appends ``(state_key, event, iteration)`` for its post_step, step and post_epoch."""

    def __init__(self, log: list[tuple[str, str, int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log

    def step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.log.append((self.state_key, "step", trainer.state.iteration))

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.log.append((self.state_key, "post_step", trainer.state.iteration))

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.log.append((self.state_key, "post_epoch", trainer.state.epoch))


def events_of(trainer: BaseTrainer, callback: Callback) -> list[str]:
    return [h.event.value for h in trainer.handles_of(callback)]


# ---------------------------------------------------------------------------------------------- connection


def test_only_defined_event_methods_are_connected() -> None:
    class Two(Callback):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            pass

        def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
            pass

        def helper(self) -> None:  # not an event: never connected
            pass

    cb = Two()
    trainer = make_trainer(callbacks=[cb])
    assert events_of(trainer, cb) == ["pre_epoch", "post_step"]
    assert [h.name for h in trainer.handles_of(cb)] == ["Two.pre_epoch", "Two.post_step"]
    assert [h.name for h in trainer.bus.handles()] == ["Two.pre_epoch", "Two.post_step"]
    assert trainer.bus.has_receivers(Event.POST_STEP)
    assert not trainer.bus.has_receivers(Event.STEP)
    assert not trainer.bus.has_receivers(Event.PRE_TRAINING)


def test_a_recorder_connects_all_ten_events_and_a_bare_callback_none() -> None:
    rec, bare = Recorder(), Callback()
    trainer = make_trainer(callbacks=[rec, bare])
    assert events_of(trainer, rec) == [e.value for e in Event]
    assert trainer.handles_of(bare) == ()
    assert bare.state_key == "Callback"
    assert len(trainer.bus.handles()) == 10


def test_inherited_event_methods_are_connected_with_the_subclass_name() -> None:
    class Child(Log):
        pass

    log: list[tuple[str, str, int]] = []
    cb = Child(log)
    trainer = make_trainer(max_epochs=1, callbacks=[cb])
    assert events_of(trainer, cb) == ["step", "post_step", "post_epoch"]
    assert [h.name for h in trainer.handles_of(cb)] == ["Child.step", "Child.post_step", "Child.post_epoch"]
    trainer.train()
    assert log == [
        ("Child", "step", 1),
        ("Child", "post_step", 1),
        ("Child", "step", 2),
        ("Child", "post_step", 2),
        ("Child", "step", 3),
        ("Child", "post_step", 3),
        ("Child", "post_epoch", 1),
    ]


def test_a_non_callable_event_attribute_is_refused() -> None:
    class Odd(Callback):
        step = 5

    with pytest.raises(TypeError, match="callback 'Odd': attribute 'step' names an event but is not a method"):
        make_trainer(callbacks=[Odd()])


# ---------------------------------------------------------------------------------------------- priority / every


def test_class_level_priority_and_every_and_per_instance_overrides() -> None:
    class Ranked(Callback):
        priority = Priority.METRICS
        every = "3it"

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            pass

    default = Ranked()
    custom = Ranked(priority=-7, every="2it", state_key="custom")
    assert (default.priority, default.every, default.state_key) == (100, "3it", "Ranked")
    assert (custom.priority, custom.every, custom.state_key) == (-7, "2it", "custom")
    assert Ranked.priority == 100  # the override is per instance
    assert Ranked.every == "3it"

    trainer = make_trainer(callbacks=[custom, default])
    (h_default,) = trainer.handles_of(default)
    (h_custom,) = trainer.handles_of(custom)
    assert (h_default.priority, str(h_default.schedule), h_default.name) == (100, "3it", "Ranked.post_step")
    assert (h_custom.priority, str(h_custom.schedule), h_custom.name) == (-7, "2it", "custom.post_step")
    assert trainer.bus.handles(Event.POST_STEP) == (h_default, h_custom)  # higher priority first


def test_priority_order_and_ties_in_registration_order() -> None:
    log: list[tuple[str, str, int]] = []
    trainer = make_trainer(
        max_epochs=1,
        callbacks=[
            Log(log, state_key="late", priority=Priority.CHECKPOINT),
            Log(log, state_key="first0"),
            Log(log, state_key="state", priority=Priority.STATE),
            Log(log, state_key="second0"),
            Log(log, state_key="logger", priority=Priority.LOGGING),
        ],
    )
    trainer.iterate()
    order = ["state", "first0", "second0", "logger", "late"]
    assert log == [(k, "step", 1) for k in order] + [(k, "post_step", 1) for k in order]


def test_every_iterations_filters_step_events_only() -> None:
    class Every2(Recorder):
        every = "2it"

    rec = Every2()
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    schedules = {h.event.value: str(h.schedule) for h in trainer.handles_of(rec)}
    assert schedules == {
        "pre_training": "always",
        "pre_epoch": "always",
        "pre_step": "2it",
        "step": "2it",
        "post_step": "2it",
        "post_epoch": "always",
        "post_training": "always",
        "pre_validation": "always",
        "post_validation": "always",
        "exception": "always",
    }
    trainer.train()
    expected = [row for row in full_run(2, 3) if row[0] not in ("pre_step", "step", "post_step") or row[3] % 2 == 0]
    assert rec.log == expected
    assert [row[3] for row in rec.log if row[0] == "post_step"] == [2, 4, 6]
    assert rec.names().count("post_epoch") == 2
    assert rec.log[0][0] == "pre_training"
    assert rec.log[-1] == ("post_training", 2, 3, 6, "completed")


def test_every_epochs_filters_epoch_events_and_leaves_step_events() -> None:
    log: list[tuple[str, str, int]] = []
    one = Log(log, state_key="one", every="1ep")
    two = Log(log, state_key="two", every="2ep")
    trainer = make_trainer(max_epochs=3, callbacks=[one, two])
    assert {h.event.value: str(h.schedule) for h in trainer.handles_of(one)} == {
        "step": "always",
        "post_step": "always",
        "post_epoch": "1ep",
    }
    assert {h.event.value: str(h.schedule) for h in trainer.handles_of(two)}["post_epoch"] == "2ep"
    trainer.train()
    assert [row[2] for row in log if row[:2] == ("one", "post_step")] == list(range(1, 10))
    assert [row[2] for row in log if row[:2] == ("two", "post_step")] == list(range(1, 10))
    assert [row[2] for row in log if row[:2] == ("one", "post_epoch")] == [1, 2, 3]
    assert [row[2] for row in log if row[:2] == ("two", "post_epoch")] == [2]


def test_scheduled_restricts_the_filter_to_the_named_events() -> None:
    class Accumulate(Log):
        every = "2it"
        scheduled = ("post_step",)

    log: list[tuple[str, str, int]] = []
    cb = Accumulate(log)
    trainer = make_trainer(max_epochs=1, items=8, callbacks=[cb])
    assert {h.event.value: str(h.schedule) for h in trainer.handles_of(cb)} == {
        "step": "always",
        "post_step": "2it",
        "post_epoch": "always",
    }
    trainer.train()
    assert log == [
        ("Accumulate", "step", 1),
        ("Accumulate", "step", 2),
        ("Accumulate", "post_step", 2),
        ("Accumulate", "step", 3),
        ("Accumulate", "step", 4),
        ("Accumulate", "post_step", 4),
        ("Accumulate", "post_epoch", 1),
    ]


def test_scheduled_with_a_time_schedule_can_name_epoch_and_step_events() -> None:
    class Timed(Log):
        every = "1h"
        scheduled = ("post_step", "post_epoch")

    cb = Timed([])
    trainer = make_trainer(callbacks=[cb])
    assert {h.event.value: str(h.schedule) for h in trainer.handles_of(cb)} == {
        "step": "always",
        "post_step": "3600s",
        "post_epoch": "3600s",
    }


@pytest.mark.parametrize(
    ("every", "fragment"),
    [
        ("0it", "invalid schedule '0it'"),
        (0, "invalid schedule 0"),
        (-5, "must be > 0"),
        ("1.5ep", "must be whole"),
        ("10 parsecs", "is not a number with an optional unit"),
        (True, "must be an int or a string"),
    ],
)
def test_a_bad_schedule_fails_at_trainer_construction_naming_the_callback(every: Any, fragment: str) -> None:
    class Bad(Log):
        pass

    with pytest.raises(ValueError, match="callback 'Bad' \\(Bad\\)") as info:
        make_trainer(callbacks=[Bad([], every=every)])
    assert fragment in str(info.value)

    trainer = make_trainer()
    with pytest.raises(ValueError, match="callback 'named' \\(Bad\\)"):
        trainer.add_callback(Bad([], every=every, state_key="named"))
    assert trainer.callbacks == ()
    assert trainer.bus.handles() == ()


def test_bad_scheduled_names_fail_at_construction() -> None:
    class Wrong(Log):
        every = "2it"
        scheduled = ("post_stpe", "pre_epoch")

    with pytest.raises(ValueError, match="callback 'Wrong': scheduled names \\['post_stpe', 'pre_epoch'\\]") as info:
        make_trainer(callbacks=[Wrong([])])
    assert "valid: ['step', 'post_step', 'post_epoch']" in str(info.value)

    class Unfit(Log):
        every = "2it"
        scheduled = ("post_epoch",)

    with pytest.raises(ValueError, match="callback 'Unfit': schedule 2it cannot filter \\['post_epoch'\\]"):
        make_trainer(callbacks=[Unfit([])])


# ---------------------------------------------------------------------------------------------- state_key


def test_default_state_key_is_the_class_name_and_can_be_overridden() -> None:
    assert Log([]).state_key == "Log"
    assert Log([], state_key="mine").state_key == "mine"
    cb = Log([])
    cb.state_key = "renamed"
    assert cb.state_key == "renamed"
    assert Log([]).state_key == "Log"
    assert repr(Log([], priority=3, every="2it")) == "<Log state_key='Log' priority=3 every='2it'>"


@pytest.mark.parametrize("bad", ["", "   ", 3])
def test_state_key_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(ValueError, match="state_key of Log must be a non-empty string"):
        Log([], state_key=bad)


def test_state_key_collision_is_an_error_naming_the_key() -> None:
    trainer = make_trainer(callbacks=[Log([], state_key="shared")])

    class Other(Callback):
        def step(self, trainer: BaseTrainer, **payload: Any) -> None:
            pass

    with pytest.raises(ValueError, match="two callbacks share state_key 'shared' \\(Log and Other\\)") as info:
        trainer.add_callback(Other(state_key="shared"))
    assert "Other(..., state_key='shared_2')" in str(info.value)
    assert [cb.state_key for cb in trainer.callbacks] == ["shared"]
    assert [h.name for h in trainer.bus.handles(Event.STEP)] == ["shared.step"]


# ---------------------------------------------------------------------------------------------- setup / teardown


def test_setup_runs_before_connection_and_can_refuse() -> None:
    calls: list[tuple[str, int]] = []

    class Picky(Log):
        def setup(self, trainer: BaseTrainer) -> None:
            calls.append(("setup", len(trainer.bus.handles())))
            if trainer.state.max_epochs > 1:
                raise RuntimeError("Picky serves single-epoch runs only")

    with pytest.raises(RuntimeError, match="single-epoch runs only"):
        make_trainer(max_epochs=2, callbacks=[Picky([])])

    trainer = make_trainer(max_epochs=2)
    with pytest.raises(RuntimeError, match="single-epoch runs only"):
        trainer.add_callback(Picky([]))
    assert trainer.bus.handles() == ()
    assert trainer.callbacks == ()
    assert not trainer.bus.has_receivers(Event.STEP)

    ok = make_trainer(max_epochs=1)
    calls.clear()
    cb = ok.add_callback(Picky([]))
    assert calls == [("setup", 0)]  # nothing of Picky was connected when setup ran
    assert ok.callbacks == (cb,)
    assert len(ok.bus.handles()) == 3


def test_a_connection_failure_rolls_back_every_handler() -> None:
    cb = Log([], priority="high")  # type: ignore[arg-type]  # checked by the bus when connecting
    trainer = make_trainer()
    with pytest.raises(TypeError, match=r"priority of handler 'Log\.step' must be an int, got 'high'"):
        trainer.add_callback(cb)
    assert trainer.bus.handles() == ()
    assert trainer.callbacks == ()


def test_a_failure_on_a_later_handler_rolls_back_the_earlier_ones() -> None:
    class Unusual(Log):
        def handlers(self) -> Iterator[HandlerSpec]:  # the documented escape hatch for unusual schedules
            yield Event.STEP, self.step, None
            yield Event.POST_STEP, self.post_step, Schedule.parse("2it")
            yield Event.POST_EPOCH, self.post_epoch, Schedule.parse("2it")  # cannot filter an epoch event

    trainer = make_trainer()
    with pytest.raises(ValueError, match=r"handler 'Unusual\.post_epoch' on 'post_epoch'") as info:
        trainer.add_callback(Unusual([]))
    assert "counts iterations" in str(info.value)
    assert trainer.bus.handles() == ()
    assert trainer.callbacks == ()
    assert not trainer.bus.has_receivers(Event.STEP)


def test_remove_callback_stops_its_handlers_and_calls_teardown() -> None:
    log: list[tuple[str, str, int]] = []
    torn: list[tuple[str, int]] = []

    class Tidy(Log):
        def teardown(self, trainer: BaseTrainer) -> None:
            torn.append((self.state_key, len(trainer.handles_of(self)) if self in trainer.callbacks else -1))

    keep = Log(log, state_key="keep")
    gone = Tidy(log, state_key="gone")
    trainer = make_trainer(max_epochs=1, callbacks=[keep, gone])
    handles = trainer.handles_of(gone)
    trainer.iterate()
    trainer.remove_callback(gone)
    assert torn == [("gone", -1)]  # teardown runs after it was unregistered
    assert all(h.removed for h in handles)
    assert trainer.callbacks == (keep,)
    assert [h.name for h in trainer.bus.handles()] == ["keep.step", "keep.post_step", "keep.post_epoch"]
    trainer.train()
    assert log == [
        ("keep", "step", 1),
        ("gone", "step", 1),
        ("keep", "post_step", 1),
        ("gone", "post_step", 1),
        ("keep", "step", 2),
        ("keep", "post_step", 2),
        ("keep", "step", 3),
        ("keep", "post_step", 3),
        ("keep", "post_epoch", 1),
    ]
    with pytest.raises(ValueError, match="is not registered on this trainer"):
        trainer.remove_callback(gone)
    with pytest.raises(ValueError, match="is not registered on this trainer"):
        trainer.handles_of(gone)
    assert torn == [("gone", -1)]


def test_a_removed_callback_can_be_added_again() -> None:
    log: list[tuple[str, str, int]] = []
    cb = Log(log)
    trainer = make_trainer(max_epochs=1, callbacks=[cb])
    trainer.remove_callback(cb)
    trainer.iterate()
    trainer.add_callback(cb)
    trainer.train()
    assert log == [
        ("Log", "step", 2),
        ("Log", "post_step", 2),
        ("Log", "step", 3),
        ("Log", "post_step", 3),
        ("Log", "post_epoch", 1),
    ]


def test_removing_a_callback_from_its_own_handler_takes_effect_next_emission() -> None:
    log: list[tuple[str, str, int]] = []

    class Once(Log):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            super().post_step(trainer, **payload)
            trainer.remove_callback(self)

    after = Log(log, state_key="after")
    trainer = make_trainer(max_epochs=1, callbacks=[Once(log), after])
    trainer.train()
    assert [row for row in log if row[0] == "Once"] == [("Once", "step", 1), ("Once", "post_step", 1)]
    assert [row[2] for row in log if row[:2] == ("after", "post_step")] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- runtime toggling


def test_handles_can_be_disabled_and_re_enabled_at_runtime() -> None:
    log: list[tuple[str, str, int]] = []
    cb = Log(log)
    trainer = make_trainer(max_epochs=2, callbacks=[cb])
    step_handle, post_step_handle, _ = trainer.handles_of(cb)
    assert (step_handle.event, post_step_handle.event) == (Event.STEP, Event.POST_STEP)
    trainer.iterate()
    post_step_handle.enabled = False
    assert not post_step_handle.enabled
    trainer.iterate()
    trainer.iterate()
    post_step_handle.enabled = True
    trainer.iterate()
    assert [row for row in log if row[1] == "post_step"] == [("Log", "post_step", 1), ("Log", "post_step", 4)]
    assert [row[2] for row in log if row[1] == "step"] == [1, 2, 3, 4]
    assert post_step_handle in trainer.bus.handles(Event.POST_STEP)  # disabled handles stay listed


def test_disabling_every_handler_of_an_event_makes_it_inactive() -> None:
    cb = Log([])
    trainer = make_trainer(callbacks=[cb])
    for handle in trainer.handles_of(cb):
        handle.enabled = False
    assert not trainer.bus.has_receivers(Event.POST_STEP)
    trainer.train()
    assert cb.log == []
    removed = trainer.handles_of(cb)[0]
    trainer.remove_callback(cb)
    with pytest.raises(RuntimeError, match="was removed; connect it again"):
        removed.enabled = True


# ---------------------------------------------------------------------------------------------- state dicts


def test_state_dict_defaults() -> None:
    cb = Callback()
    assert cb.state_dict() == {}
    assert cb.load_state_dict({"anything": 1}) is None
    assert cb.state_dict() == {}
    assert (cb.priority, cb.every, cb.scheduled) == (Priority.DEFAULT, None, None)


def test_callback_state_round_trip_by_state_key() -> None:
    class Counter(Callback):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.steps = 0

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            self.steps += 1

        def state_dict(self) -> dict[str, Any]:
            return {"steps": self.steps}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.steps = state["steps"]

    first = make_trainer(max_epochs=2, callbacks=[Counter(), Counter(state_key="second")])
    for _ in range(4):
        first.iterate()
    saved = {cb.state_key: cb.state_dict() for cb in first.callbacks}
    assert saved == {"Counter": {"steps": 4}, "second": {"steps": 4}}

    resumed = make_trainer(max_epochs=2, callbacks=[Counter(), Counter(state_key="second")])
    for cb in resumed.callbacks:
        cb.load_state_dict(saved[cb.state_key])
    resumed.load_state_dict(first.state_dict())
    resumed.train()
    assert [cb.state_dict() for cb in resumed.callbacks] == [{"steps": 6}, {"steps": 6}]


def test_schedule_objects_are_accepted() -> None:
    log: list[tuple[str, str, int]] = []
    trainer = make_trainer(max_epochs=2, callbacks=[Log(log, every=Schedule.parse(at=[2, 5]))])
    trainer.train()
    assert [row[2] for row in log if row[1] == "post_step"] == [2, 5]
    assert [row[2] for row in log if row[1] == "step"] == [2, 5]
    assert [row[2] for row in log if row[1] == "post_epoch"] == [1, 2]
