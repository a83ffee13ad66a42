"""``trainer.request_validation()`` (``trainers.engine.requests``) on real training runs: served at once between
``iterate()`` calls, queued and served at the next safe point from a handler (after ``post_step``, after
``post_epoch``, before ``post_training``), coalescing, one validation per iteration per validator, servers added
and removed with their callbacks, and failures inside and outside ``iterate()``."""

from __future__ import annotations

from typing import Any

import pytest

from callbacks import Validator
from lifecycle import CallbackError, Status
from tests.support import Recorder, full_run, make_trainer
from trainers import BaseTrainer

STEPS = 3  # make_trainer: 6 items in batches of 2


class Script:
    def __init__(self) -> None:
        self.iterations: list[int] = []

    def __call__(self, trainer: BaseTrainer) -> dict[str, Any]:
        self.iterations.append(trainer.state.iteration)
        return {"loss": float(len(self.iterations))}


def validated(epoch: int, step: int, iteration: int) -> list[tuple[str, int, int, int, None]]:
    return [("pre_validation", epoch, step, iteration, None), ("post_validation", epoch, step, iteration, None)]


def reasons(rec: Recorder) -> list[tuple[str, str]]:
    return [(p["validator"], p["reason"]) for name, p in rec.payloads if name == "post_validation"]


def on_demand(**kwargs: Any) -> tuple[Validator, Script]:
    script = Script()
    kwargs.setdefault("every", None)
    kwargs.setdefault("at_end", False)
    return Validator(script, **kwargs), script


# ---------------------------------------------------------------------------------------------- when it is served


def test_a_request_between_iterate_calls_is_served_at_once() -> None:
    validator, script = on_demand()
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[validator, rec])
    trainer.request_validation()  # before the first step
    assert trainer.iterate()
    trainer.request_validation()
    assert script.iterations == [0, 1]
    assert trainer.iterate()
    trainer.train()
    run = full_run(1, STEPS)
    assert rec.log == [*validated(0, 0, 0), *run[:5], *validated(1, 1, 1), *run[5:]]
    assert reasons(rec) == [("Validator", "request")] * 2
    assert trainer.state.metrics["val/loss"] == 2.0


@pytest.mark.parametrize("iteration", [1, 2, 3, 5, 6])
def test_a_request_from_post_step_is_served_right_after_it(iteration: int) -> None:
    """... or, at an epoch's last step, right after that epoch's post_epoch (the resumable point there)."""
    validator, script = on_demand()
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[validator, rec])

    @trainer.on("post_step")
    def ask(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == iteration:
            t.request_validation()
            assert script.iterations == []  # queued, not run inside the step's events

    assert trainer.train() is Status.COMPLETED
    run = full_run(2, STEPS)
    at = next(i for i, row in enumerate(run) if row[0] == "post_step" and row[3] == iteration) + 1
    epoch, step = run[at - 1][1:3]
    if step == STEPS:
        assert run[at][0] == "post_epoch"
        at += 1
    assert rec.log == [*run[:at], *validated(epoch, step, iteration), *run[at:]]
    assert script.iterations == [iteration]


def test_a_request_from_a_step_handler_waits_for_post_step() -> None:
    validator, _ = on_demand()
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[validator, rec])
    trainer.on("step")(lambda t, **_: t.request_validation() if t.state.iteration == 1 else None)
    trainer.train()
    run = full_run(1, STEPS)
    assert rec.log == [*run[:5], *validated(1, 1, 1), *run[5:]]


def test_a_request_from_post_epoch_is_served_before_the_next_epoch() -> None:
    validator, _ = on_demand()
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[validator, rec])
    trainer.on("post_epoch")(lambda t, **_: t.request_validation() if t.state.epoch == 1 else None)
    trainer.train()
    run = full_run(2, STEPS)
    assert rec.log == [*run[:12], *validated(1, 3, 3), *run[12:]]
    assert run[11][0] == "post_epoch"


@pytest.mark.parametrize("event", ["post_step", "post_epoch"])
def test_a_request_in_the_final_step_is_served_before_post_training(event: str) -> None:
    validator, script = on_demand(at_end=True)  # the at_end validation then finds iteration 6 done
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[validator, rec])
    trainer.on(event)(lambda t, **_: t.request_validation() if t.state.iteration == 6 else None)
    assert trainer.train() is Status.COMPLETED
    run = full_run(2, STEPS)
    # from either event it is served after the final post_epoch (an epoch's last step defers it there)
    assert rec.log == [*run[:-1], *validated(2, 3, 6), *run[-1:]]
    assert rec.log[-1] == ("post_training", 2, 3, 6, Status.COMPLETED)
    assert script.iterations == [6]
    assert reasons(rec) == [("Validator", "request")]


def test_a_request_made_while_stopping_is_served_before_post_training() -> None:
    validator, _ = on_demand()
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[validator, rec])

    @trainer.on("post_epoch")
    def ask(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2:
            t.request_validation()

    @trainer.on("post_step")
    def stop(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2:
            t.stop()

    assert trainer.train() is Status.STOPPED
    assert rec.log[-5:] == [
        ("post_step", 1, 2, 2, None),
        ("post_epoch", 1, 2, 2, None),
        *validated(1, 2, 2),
        ("post_training", 1, 2, 2, Status.STOPPED),
    ]


# ---------------------------------------------------------------------------------------------- coalescing, dedupe


def test_requests_before_serving_coalesce() -> None:
    validator, script = on_demand()
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[validator, rec])

    @trainer.on("step")
    def once(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2:
            t.request_validation()

    @trainer.on("post_step")
    def twice(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2:
            t.request_validation()
            t.request_validation()

    trainer.train()
    assert script.iterations == [2]
    assert validator.count == 1
    run = full_run(1, STEPS)
    assert rec.log == [*run[:8], *validated(1, 2, 2), *run[8:]]


def test_one_validation_per_iteration_per_validator() -> None:
    script = Script()
    validator = Validator(script, every="1ep", at_end=True)
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[validator, rec])
    trainer.on("post_epoch")(lambda t, **_: t.request_validation())  # after the scheduled one: nothing to do
    for _ in range(STEPS):
        trainer.iterate()
    assert script.iterations == [3]
    trainer.request_validation()  # between steps, at the validated iteration: nothing
    assert script.iterations == [3]
    assert validator.run(trainer) is None
    assert validator.run(trainer, force=True) == {"val/loss": 2.0}
    assert script.iterations == [3, 3]
    assert validator.count == 2
    trainer.train()
    assert script.iterations == [3, 3, 6]
    assert reasons(rec) == [("Validator", "schedule"), ("Validator", "manual"), ("Validator", "schedule")]


def test_every_registered_validator_serves_a_request_in_order() -> None:
    first, first_script = on_demand()
    second, second_script = on_demand(prefix="test", state_key="test")
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[first, second, rec])
    assert trainer._requests.servers("validation") == ("Validator.validation", "test.validation")
    trainer.iterate()
    trainer.request_validation()
    assert (first_script.iterations, second_script.iterations) == ([1], [1])
    assert reasons(rec) == [("Validator", "request"), ("test", "request")]
    assert trainer.state.metrics == {"val/loss": 1.0, "best/loss": 1.0, "test/loss": 1.0, "best/test/loss": 1.0}


# ---------------------------------------------------------------------------------------------- servers


def test_no_validator_is_a_runtime_error() -> None:
    trainer = make_trainer()
    with pytest.raises(RuntimeError, match=r"^nothing on this trainer serves 'validation' requests;") as info:
        trainer.request_validation()
    assert "no requests" in str(info.value)
    assert trainer._requests.pending == {}


def test_a_request_from_a_handler_without_a_validator_fails_the_run() -> None:
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec])
    trainer.on("post_step")(lambda t, **_: t.request_validation())
    with pytest.raises(CallbackError, match="nothing on this trainer serves 'validation' requests"):
        trainer.train()
    assert rec.log[-1] == ("post_training", 1, 1, 1, Status.FAILED)


def test_a_removed_validator_stops_serving() -> None:
    keep, keep_script = on_demand()
    gone, gone_script = on_demand(prefix="test", state_key="test")
    trainer = make_trainer(max_epochs=1, callbacks=[keep, gone])
    trainer.remove_callback(gone)
    trainer.request_validation()
    assert (keep_script.iterations, gone_script.iterations) == ([0], [])
    trainer.remove_callback(keep)
    with pytest.raises(RuntimeError, match="nothing on this trainer serves 'validation' requests"):
        trainer.request_validation()
    assert keep_script.iterations == [0]
    trainer.add_callback(gone)  # added again: serves again
    trainer.iterate()
    trainer.request_validation()
    assert gone_script.iterations == [1]


# ---------------------------------------------------------------------------------------------- failures


def boom(trainer: BaseTrainer) -> dict[str, Any]:
    raise ZeroDivisionError("validation blew up")


def test_a_failing_request_outside_iterate_is_a_callback_error() -> None:
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[Validator(boom, every=None, at_end=False), rec])
    trainer.iterate()
    trainer.iterate()
    with pytest.raises(CallbackError) as info:
        trainer.request_validation()
    error = info.value
    assert (error.handler, error.event, error.iteration) == ("Validator.validation", "validation request", 2)
    assert str(error).startswith("'Validator.validation' failed serving a 'validation' request at iteration 2 (")
    assert str(error).endswith("ZeroDivisionError: validation blew up")
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert trainer.status is None  # outside iterate() the run itself goes on
    assert trainer.train() is Status.COMPLETED


def test_a_failing_request_inside_iterate_fails_the_run() -> None:
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[Validator(boom, every=None, at_end=True), rec])
    trainer.on("post_step")(lambda t, **_: t.request_validation() if t.state.iteration == 2 else None)
    with pytest.raises(CallbackError) as info:
        trainer.train()
    error = info.value
    assert (error.handler, error.event, error.iteration) == ("Validator.validation", "validation request", 2)
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert trainer.status is Status.FAILED
    run = full_run(2, STEPS)
    assert rec.log[:8] == run[:8]
    assert rec.log[8] == ("pre_validation", 1, 2, 2, None)
    assert rec.log[9][:4] == ("exception", 1, 2, 2)
    assert rec.log[9][4] is error
    assert rec.log[10:] == [("post_training", 1, 2, 2, Status.FAILED)]  # at_end skipped: the run failed
    assert trainer.iterate() is False
