"""The lifecycle contract on a real ``BaseTrainer``: exact event sequences and counters, ``iterate()`` slices,
stop and failure paths, subclass overrides, raw blinker receivers and handler order."""

from __future__ import annotations

import gc
import itertools
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import Callback
from lifecycle import CallbackError, Event, Phase, Status
from tests.support import (
    Recorder,
    full_run,
    make_trainer,
    mse,
    params_of,
    same_params,
)
from trainers import BaseTrainer

# ---------------------------------------------------------------------------------------------- full sequences


def test_two_epochs_of_three_batches_exact_sequence_and_counters() -> None:
    rec = Recorder()
    trainer = make_trainer(items=6, batch_size=2, max_epochs=2, callbacks=[rec])
    result = trainer.train()
    assert result is Status.COMPLETED
    assert rec.log == [
        ("pre_training", 0, 0, 0, False),
        ("pre_epoch", 1, 0, 0, None),
        ("pre_step", 1, 1, 1, 2),
        ("step", 1, 1, 1, None),
        ("post_step", 1, 1, 1, None),
        ("pre_step", 1, 2, 2, 2),
        ("step", 1, 2, 2, None),
        ("post_step", 1, 2, 2, None),
        ("pre_step", 1, 3, 3, 2),
        ("step", 1, 3, 3, None),
        ("post_step", 1, 3, 3, None),
        ("post_epoch", 1, 3, 3, None),
        ("pre_epoch", 2, 0, 3, None),
        ("pre_step", 2, 1, 4, 2),
        ("step", 2, 1, 4, None),
        ("post_step", 2, 1, 4, None),
        ("pre_step", 2, 2, 5, 2),
        ("step", 2, 2, 5, None),
        ("post_step", 2, 2, 5, None),
        ("pre_step", 2, 3, 6, 2),
        ("step", 2, 3, 6, None),
        ("post_step", 2, 3, 6, None),
        ("post_epoch", 2, 3, 6, None),
        ("post_training", 2, 3, 6, "completed"),
    ]
    status = rec.log[-1][4]
    assert isinstance(status, Status)
    assert status is Status.COMPLETED
    assert trainer.status is Status.COMPLETED
    assert trainer.is_finished
    assert trainer.phase is Phase.DONE
    assert (trainer.state.epoch, trainer.state.epoch_iteration, trainer.state.iteration) == (2, 3, 6)
    assert trainer.state.max_iterations == 6


def test_payload_keys_of_each_event() -> None:
    rec = Recorder()
    make_trainer(max_epochs=1, callbacks=[rec]).train()
    keys = [(event, sorted(payload)) for event, payload in rec.payloads]
    assert keys == [
        ("pre_training", ["resumed"]),
        ("pre_epoch", []),
        *[("pre_step", ["batch"]), ("step", ["loss", "optimizer", "outputs"]), ("post_step", ["outputs"])] * 3,
        ("post_epoch", []),
        ("post_training", ["status"]),
    ]
    # step and post_step of one iteration carry the very same outputs dict, whose loss is the step's loss
    step_payload, post_payload = rec.payloads[3][1], rec.payloads[4][1]
    assert step_payload["optimizer"] == "optimizer"  # a lone optimizer's name
    assert step_payload["outputs"] is post_payload["outputs"]
    assert step_payload["loss"] is step_payload["outputs"]["loss"]
    assert step_payload["loss"].dim() == 0


def test_max_epochs_one_steps_the_last_batch_and_post_training_once() -> None:
    rec = Recorder()
    trainer = make_trainer(items=6, batch_size=2, max_epochs=1, callbacks=[rec])
    assert trainer.train() is Status.COMPLETED
    assert rec.log == full_run(1, 3)
    assert rec.names().count("pre_step") == 3
    assert rec.names().count("post_step") == 3
    assert rec.names().count("post_training") == 1
    assert rec.log[-2:] == [("post_epoch", 1, 3, 3, None), ("post_training", 1, 3, 3, "completed")]


def test_partial_last_batch_is_stepped() -> None:
    rec = Recorder()
    trainer = make_trainer(items=7, batch_size=3, max_epochs=2, callbacks=[rec])
    assert trainer.state.iterations_per_epoch == 3
    trainer.train()
    assert rec.log == full_run(2, 3, [3, 3, 1])
    sizes = [row[4] for row in rec.log if row[0] == "pre_step"]
    assert sizes == [3, 3, 1, 3, 3, 1]


def test_drop_last_drops_the_partial_batch() -> None:
    rec = Recorder()
    trainer = make_trainer(items=7, batch_size=3, max_epochs=2, drop_last=True, callbacks=[rec])
    assert trainer.state.iterations_per_epoch == 2
    trainer.train()
    assert rec.log == full_run(2, 2, [3, 3])


def test_single_batch_epochs() -> None:
    rec = Recorder()
    make_trainer(items=2, batch_size=8, max_epochs=3, callbacks=[rec]).train()
    assert rec.log == full_run(3, 1, [2])


def test_validation_events_are_connected_but_not_emitted_by_a_plain_run() -> None:
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec])
    events = {h.event for h in trainer.handles_of(rec)}
    assert Event.PRE_VALIDATION in events
    assert Event.POST_VALIDATION in events
    trainer.train()
    assert "pre_validation" not in rec.names()
    assert "post_validation" not in rec.names()


# ---------------------------------------------------------------------------------------------- iterate()


def test_iterate_manually_returns_true_until_the_last_call() -> None:
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec])
    results: list[bool] = []
    slices: list[list[str]] = []
    for _ in range(6):
        before = len(rec.log)
        results.append(trainer.iterate())
        slices.append(rec.names()[before:])
    assert results == [True, True, True, True, True, False]
    assert slices == [
        ["pre_training", "pre_epoch", "pre_step", "step", "post_step"],
        ["pre_step", "step", "post_step"],
        ["pre_step", "step", "post_step", "post_epoch"],
        ["pre_epoch", "pre_step", "step", "post_step"],
        ["pre_step", "step", "post_step"],
        ["pre_step", "step", "post_step", "post_epoch", "post_training"],
    ]
    assert rec.log == full_run(2, 3)


def test_iterate_after_the_end_returns_false_and_emits_nothing() -> None:
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec])
    assert trainer.train() is Status.COMPLETED
    total = len(rec.log)
    weights = params_of(trainer.pipeline)
    for _ in range(5):
        assert trainer.iterate() is False
    assert trainer.train() is Status.COMPLETED
    assert trainer.run_for(0.0) is False
    trainer.stop()  # a finished run is never re-finished
    assert len(rec.log) == total
    assert trainer.status is Status.COMPLETED
    assert trainer.state.iteration == 6
    assert same_params(weights, params_of(trainer.pipeline))


def test_phase_while_iterating() -> None:
    trainer = make_trainer()
    assert trainer.phase is Phase.IDLE
    assert trainer.status is None
    phases = []
    for _ in range(6):
        trainer.iterate()
        phases.append(trainer.phase)
    assert phases == [
        Phase.IN_EPOCH,
        Phase.IN_EPOCH,
        Phase.BETWEEN_EPOCHS,
        Phase.IN_EPOCH,
        Phase.IN_EPOCH,
        Phase.DONE,
    ]


# ---------------------------------------------------------------------------------------------- counters


@pytest.mark.parametrize(("items", "epochs", "steps"), [(6, 2, 3), (8, 3, 4)])
def test_iteration_strictly_increasing_by_one_across_epochs(items: int, epochs: int, steps: int) -> None:
    seen: list[tuple[int, int, int]] = []
    trainer = make_trainer(items=items, batch_size=2, max_epochs=epochs)

    @trainer.on(Event.POST_STEP)
    def record(t: BaseTrainer, **payload: Any) -> None:
        seen.append((t.state.epoch, t.state.epoch_iteration, t.state.iteration))

    assert trainer.state.iterations_per_epoch == steps
    trainer.train()
    iterations = [it for _, _, it in seen]
    assert iterations == list(range(1, epochs * steps + 1))
    assert all(b - a == 1 for a, b in itertools.pairwise(iterations))
    assert seen == [(e, s, (e - 1) * steps + s) for e in range(1, epochs + 1) for s in range(1, steps + 1)]


def test_step_event_sees_gradients_before_the_optimizer_step() -> None:
    snapshots: list[tuple[str, list[torch.Tensor], bool]] = []

    class Watch(Callback):
        def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            snapshots.append(("pre_step", params_of(trainer.pipeline), trainer.pipeline.weight.grad is not None))

        def step(self, trainer: BaseTrainer, **payload: Any) -> None:
            snapshots.append(("step", params_of(trainer.pipeline), trainer.pipeline.weight.grad is not None))

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            snapshots.append(("post_step", params_of(trainer.pipeline), trainer.pipeline.weight.grad is not None))

    trainer = make_trainer(max_epochs=1, callbacks=[Watch()])
    trainer.iterate()
    trainer.iterate()
    (pre1, p_pre1, _), (st1, p_st1, g_st1), (post1, p_post1, _) = snapshots[:3]
    (pre2, p_pre2, g_pre2), (st2, p_st2, g_st2), (post2, p_post2, _) = snapshots[3:]
    assert [pre1, st1, post1, pre2, st2, post2] == ["pre_step", "step", "post_step"] * 2
    assert g_st1
    assert g_st2
    assert g_pre2  # gradients are zeroed (set to None) inside step(), after pre_step
    assert same_params(p_pre1, p_st1)  # optimizer has not stepped at `step`
    assert not same_params(p_st1, p_post1)  # ...and has at `post_step`
    assert same_params(p_post1, p_pre2)
    assert same_params(p_pre2, p_st2)
    assert not same_params(p_st2, p_post2)


def test_pre_epoch_sees_the_pipeline_in_train_mode() -> None:
    modes: list[tuple[str, bool]] = []

    class EvalAfterEpoch(Callback):
        def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
            modes.append(("pre_epoch", trainer.pipeline.training))

        def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
            trainer.pipeline.eval()  # what a validator would do
            modes.append(("post_epoch", trainer.pipeline.training))

    make_trainer(max_epochs=2, callbacks=[EvalAfterEpoch()]).train()
    assert modes == [("pre_epoch", True), ("post_epoch", False), ("pre_epoch", True), ("post_epoch", False)]


# ---------------------------------------------------------------------------------------------- stop()


class StopAt(Recorder):
    """Records like Recorder, then calls trainer.stop() right after recording ``event`` at ``iteration``."""

    def __init__(self, event: str, iteration: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_event, self.stop_iteration = event, iteration
        self.weights: list[list[torch.Tensor]] = []

    def _add(self, trainer: BaseTrainer, event: str, payload: dict[str, Any], selected: Any = None) -> None:
        super()._add(trainer, event, payload, selected)
        if event == "post_step":
            self.weights.append(params_of(trainer.pipeline))
        if event == self.stop_event and trainer.state.iteration == self.stop_iteration:
            trainer.stop()


@pytest.mark.parametrize("event", ["pre_step", "step", "post_step"])
def test_stop_inside_a_step_completes_the_step_then_closes_once(event: str) -> None:
    rec = StopAt(event, 2)
    trainer = make_trainer(max_epochs=3, callbacks=[rec])
    before = params_of(trainer.pipeline)
    assert trainer.train() is Status.STOPPED
    assert rec.log == [
        *full_run(1, 3)[:8],  # pre_training, pre_epoch, step 1 (3 rows), step 2 (3 rows)
        ("post_epoch", 1, 2, 2, None),
        ("post_training", 1, 2, 2, "stopped"),
    ]
    assert rec.log[-3] == ("post_step", 1, 2, 2, None)
    # the stopped step was applied: parameters moved at iteration 1 and again at iteration 2
    assert len(rec.weights) == 2
    assert not same_params(before, rec.weights[0])
    assert not same_params(rec.weights[0], rec.weights[1])
    assert same_params(rec.weights[1], params_of(trainer.pipeline))
    assert trainer.status is Status.STOPPED
    assert trainer.is_finished
    assert trainer.iterate() is False
    assert trainer.train() is Status.STOPPED
    assert len(rec.log) == 10


def test_stop_at_the_last_step_of_an_epoch_emits_post_epoch_once() -> None:
    rec = StopAt("post_step", 3)
    trainer = make_trainer(max_epochs=3, callbacks=[rec])
    assert trainer.train() is Status.STOPPED
    assert rec.log == [*full_run(1, 3)[:-1], ("post_training", 1, 3, 3, "stopped")]
    assert rec.names().count("post_epoch") == 1


def test_stop_at_post_epoch_of_epoch_one_of_three() -> None:
    rec = StopAt("post_epoch", 3)
    trainer = make_trainer(max_epochs=3, callbacks=[rec])
    assert trainer.train() is Status.STOPPED
    assert rec.log == [*full_run(1, 3)[:-1], ("post_training", 1, 3, 3, "stopped")]
    assert rec.names().count("post_epoch") == 1
    assert trainer.iterate() is False
    assert len(rec.log) == 13


def test_stop_at_pre_epoch_takes_no_step_of_that_epoch() -> None:
    rec = StopAt("pre_epoch", 3)  # iteration is still 3 at epoch 2's pre_epoch
    trainer = make_trainer(max_epochs=3, callbacks=[rec])
    assert trainer.train() is Status.STOPPED
    assert rec.log == [
        *full_run(1, 3)[:-1],
        ("pre_epoch", 2, 0, 3, None),
        ("post_epoch", 2, 0, 3, None),
        ("post_training", 2, 0, 3, "stopped"),
    ]
    assert rec.names().count("pre_step") == 3


def test_stop_at_pre_training_emits_only_post_training() -> None:
    rec = StopAt("pre_training", 0)
    trainer = make_trainer(callbacks=[rec])
    weights = params_of(trainer.pipeline)
    assert trainer.iterate() is False
    assert rec.log == [("pre_training", 0, 0, 0, False), ("post_training", 0, 0, 0, "stopped")]
    assert same_params(weights, params_of(trainer.pipeline))


def test_stop_during_the_final_step_still_completes() -> None:
    rec = StopAt("post_step", 6)
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.train() is Status.COMPLETED
    assert rec.log == full_run(2, 3)


def test_stop_during_the_final_post_epoch_changes_nothing() -> None:
    rec = StopAt("post_epoch", 6)
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.train() is Status.COMPLETED
    assert rec.log == full_run(2, 3)


def test_stop_twice_from_a_handler_is_idempotent() -> None:
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[rec])

    @trainer.on("post_step")
    def stop_twice(t: BaseTrainer, **payload: Any) -> None:
        if t.state.iteration == 1:
            t.stop()
            t.stop()

    assert trainer.train() is Status.STOPPED
    assert rec.names()[-2:] == ["post_epoch", "post_training"]
    assert rec.names().count("post_training") == 1


def test_stop_from_outside_mid_epoch_finishes_at_once() -> None:
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.iterate() is True
    assert trainer.status is None
    assert len(rec.log) == 5
    trainer.stop()
    assert rec.log[5:] == [("post_epoch", 1, 1, 1, None), ("post_training", 1, 1, 1, "stopped")]
    assert trainer.status is Status.STOPPED
    assert trainer.phase is Phase.DONE
    trainer.stop()
    assert trainer.iterate() is False
    assert trainer.train() is Status.STOPPED
    assert len(rec.log) == 7


def test_stop_from_outside_between_epochs_emits_no_extra_post_epoch() -> None:
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    for _ in range(3):
        trainer.iterate()
    assert rec.log[-1] == ("post_epoch", 1, 3, 3, None)
    trainer.stop()
    assert rec.log == [*full_run(1, 3)[:-1], ("post_training", 1, 3, 3, "stopped")]
    assert trainer.status is Status.STOPPED


def test_stop_before_training_emits_nothing() -> None:
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec])
    weights = params_of(trainer.pipeline)
    trainer.stop()
    assert trainer.status is Status.STOPPED
    assert trainer.is_finished
    assert trainer.iterate() is False
    assert trainer.iterate() is False
    assert trainer.train() is Status.STOPPED
    assert rec.log == []
    assert trainer.state.iteration == 0
    assert same_params(weights, params_of(trainer.pipeline))


# ---------------------------------------------------------------------------------------------- exceptions


def test_exception_in_compute_loss() -> None:
    calls = []
    failure = ZeroDivisionError("bad batch")

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:
            raise failure
        return mse(model, batch)

    rec = Recorder()
    trainer = make_trainer(max_epochs=2, loss_fn=loss, callbacks=[rec])
    with pytest.raises(ZeroDivisionError, match="bad batch") as info:
        trainer.train()
    assert info.value is failure
    assert rec.log == [
        *full_run(2, 3)[:13],  # through epoch 2's pre_epoch
        ("pre_step", 2, 1, 4, 2),
        ("exception", 2, 1, 4, failure),
        ("post_training", 2, 1, 4, "failed"),
    ]
    assert rec.log[-2][4] is failure
    assert rec.names().count("post_step") == 3
    notes = getattr(failure, "__notes__", [])
    assert any("iteration 4" in note for note in notes), notes
    assert trainer.status is Status.FAILED
    assert trainer.is_finished
    total = len(rec.log)
    for _ in range(3):
        assert trainer.iterate() is False
    assert trainer.train() is Status.FAILED
    trainer.stop()
    assert len(rec.log) == total


def test_keyboard_interrupt_reports_interrupted() -> None:
    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        raise KeyboardInterrupt

    rec = Recorder()
    trainer = make_trainer(loss_fn=loss, callbacks=[rec])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert rec.names() == ["pre_training", "pre_epoch", "pre_step", "exception", "post_training"]
    assert rec.log[-1] == ("post_training", 1, 1, 1, "interrupted")
    assert trainer.status is Status.INTERRUPTED


class Boom(Callback):
    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.state.iteration == 2:
            raise ValueError("no good")


def test_exception_in_a_callback_handler_names_it() -> None:
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, callbacks=[Boom(), rec])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    error = info.value
    message = str(error)
    assert "'Boom.post_step'" in message
    assert "'post_step'" in message
    assert "iteration 2" in message
    assert "ValueError: no good" in message
    assert (error.handler, error.event, error.iteration) == ("Boom.post_step", "post_step", 2)
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "no good"
    # Boom (registered first, same priority) raised before the recorder's post_step of iteration 2 ran
    assert rec.log == [
        *full_run(1, 3)[:5],
        ("pre_step", 1, 2, 2, 2),
        ("step", 1, 2, 2, None),
        ("exception", 1, 2, 2, error),
        ("post_training", 1, 2, 2, "failed"),
    ]
    assert rec.log[-2][4] is error
    assert trainer.status is Status.FAILED
    assert trainer.iterate() is False
    assert len(rec.log) == 9


def test_exception_in_a_named_callback_uses_its_state_key() -> None:
    trainer = make_trainer(callbacks=[Boom(state_key="kaboom")])
    with pytest.raises(CallbackError, match=r"handler 'kaboom\.post_step'") as info:
        trainer.train()
    assert info.value.handler == "kaboom.post_step"


def test_failing_exception_handler_is_attached_to_the_original() -> None:
    class BadExceptionHandler(Callback):
        def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
            raise RuntimeError("handler broke too")

    rec = Recorder()
    trainer = make_trainer(callbacks=[Boom(), BadExceptionHandler(), rec])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert info.value.event == "post_step"  # the original error wins
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "an 'exception' handler also failed" in notes
    assert "handler broke too" in notes
    # every exception handler runs, also after one raised: the recorder (registered after it) still gets the event
    assert rec.names()[-3:] == ["step", "exception", "post_training"]
    assert rec.log[-1] == ("post_training", 1, 2, 2, "failed")
    assert trainer.status is Status.FAILED


def test_failure_in_post_training_does_not_re_emit_post_training() -> None:
    class BadEnd(Callback):
        priority = 10

        def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
            raise RuntimeError("cannot finish")

    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[BadEnd(), rec])
    with pytest.raises(CallbackError, match="cannot finish") as info:
        trainer.train()
    assert info.value.event == "post_training"
    # BadEnd runs first; every post_training handler runs all the same, once, and then the exception event
    assert rec.names()[-2:] == ["post_training", "exception"]
    assert rec.names().count("post_training") == 1
    assert rec.log[-2][4] is Status.COMPLETED
    assert rec.log[-1][4] is info.value
    assert trainer.iterate() is False


def test_iterate_from_a_handler_is_refused() -> None:
    trainer = make_trainer()

    @trainer.on("post_step")
    def reenter(t: BaseTrainer, **payload: Any) -> None:
        t.iterate()

    with pytest.raises(CallbackError) as info:
        trainer.iterate()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "re-entrantly" in str(info.value.__cause__)
    assert trainer.state.iteration == 1
    assert trainer.status is Status.FAILED


# ---------------------------------------------------------------------------------------------- subclasses


def test_subclass_overriding_lifecycle_methods_with_super() -> None:
    rec = Recorder()
    log = rec.log

    class Mine(BaseTrainer):
        def pre_epoch(self) -> None:
            log.append(
                ("mine:pre_epoch:before", self.state.epoch, self.state.epoch_iteration, self.state.iteration, None)
            )
            super().pre_epoch()
            log.append(
                ("mine:pre_epoch:after", self.state.epoch, self.state.epoch_iteration, self.state.iteration, None)
            )

        def post_step(self, outputs: dict[str, Any]) -> None:
            super().post_step(outputs)
            log.append(("mine:post_step", self.state.epoch, self.state.epoch_iteration, self.state.iteration, None))

        def compute_loss(self, batch: Any) -> torch.Tensor:
            return mse(self.pipeline, batch)

    trainer = make_trainer(max_epochs=1, cls=Mine, callbacks=[rec])
    assert trainer.train() is Status.COMPLETED
    assert rec.names() == [
        "pre_training",
        "mine:pre_epoch:before",
        "pre_epoch",
        "mine:pre_epoch:after",
        *["pre_step", "step", "post_step", "mine:post_step"] * 3,
        "post_epoch",
        "post_training",
    ]
    assert log[1] == ("mine:pre_epoch:before", 1, 0, 0, None)
    assert [row[3] for row in log if row[0] == "mine:post_step"] == [1, 2, 3]


def test_subclass_compute_loss_returning_a_dict_becomes_outputs() -> None:
    produced: list[dict[str, Any]] = []

    class WithExtras(BaseTrainer):
        def compute_loss(self, batch: Any) -> dict[str, Any]:
            out = {"loss": mse(self.pipeline, batch), "rows": len(batch[0])}
            produced.append(out)
            return out

    rec = Recorder()
    make_trainer(max_epochs=1, cls=WithExtras, callbacks=[rec]).train()
    post_outputs = [payload["outputs"] for event, payload in rec.payloads if event == "post_step"]
    step_losses = [payload["loss"] for event, payload in rec.payloads if event == "step"]
    assert len(post_outputs) == 3
    assert all(a is b for a, b in zip(post_outputs, produced, strict=True))
    assert all(loss is out["loss"] for loss, out in zip(step_losses, produced, strict=True))
    assert [out["rows"] for out in post_outputs] == [2, 2, 2]


def test_override_without_super_loses_the_signal_but_not_the_data_position() -> None:
    class Silent(BaseTrainer):
        def pre_step(self, batch: Any) -> None:  # forgets super(): no pre_step event
            pass

        def compute_loss(self, batch: Any) -> torch.Tensor:
            return mse(self.pipeline, batch)

    rec = Recorder()
    silent = make_trainer(max_epochs=2, cls=Silent, callbacks=[rec])
    silent.train()
    reference = make_trainer(max_epochs=2)
    reference.train()
    assert "pre_step" not in rec.names()
    assert rec.names().count("post_step") == 6
    assert same_params(params_of(silent.pipeline), params_of(reference.pipeline))


# ---------------------------------------------------------------------------------------------- the bus


def test_raw_blinker_receivers_get_every_post_step_with_the_trainer_as_sender() -> None:
    trainer = make_trainer(max_epochs=2)
    strong: list[tuple[object, int, list[str]]] = []
    weak_default: list[tuple[object, int]] = []

    def receiver(sender: object, **payload: Any) -> None:
        strong.append((sender, trainer.state.iteration, sorted(payload)))

    trainer.bus.signal(Event.POST_STEP).connect(receiver, weak=False)
    trainer.bus.signal("post_step").connect(lambda sender, **kw: weak_default.append((sender, trainer.state.iteration)))
    gc.collect()  # a weakly held lambda would vanish here
    assert trainer.train() is Status.COMPLETED
    assert [it for _, it, _ in strong] == [1, 2, 3, 4, 5, 6]
    assert all(sender is trainer for sender, _, _ in strong)
    assert all(keys == ["outputs"] for _, _, keys in strong)
    assert weak_default == [(trainer, i) for i in range(1, 7)]


def test_raw_receiver_on_another_event_and_disconnect() -> None:
    trainer = make_trainer(max_epochs=2)
    seen: list[tuple[object, Any]] = []

    def on_end(sender: object, **payload: Any) -> None:
        seen.append((sender, payload["status"]))

    signal = trainer.bus.signal(Event.POST_TRAINING)
    signal.connect(on_end)
    trainer.bus.signal(Event.PRE_EPOCH).connect(lambda sender, **kw: seen.append((sender, "pre_epoch")))
    epochs: list[int] = []
    trainer.bus.signal(Event.POST_EPOCH).connect(lambda sender, **kw: epochs.append(sender.state.epoch))
    trainer.train()
    assert seen == [(trainer, "pre_epoch"), (trainer, "pre_epoch"), (trainer, "completed")]
    assert epochs == [1, 2]

    other = make_trainer(max_epochs=1)
    got: list[int] = []

    def count(sender: object, **payload: Any) -> None:
        got.append(other.state.iteration)

    other_signal = other.bus.signal(Event.POST_STEP)
    other_signal.connect(count)
    other.iterate()
    other_signal.disconnect(count)
    other.iterate()
    assert got == [1]
    assert signal is not other.bus.signal(Event.POST_TRAINING)  # each trainer owns its bus


def test_raw_receiver_that_raises_becomes_a_callback_error() -> None:
    trainer = make_trainer()
    rec = Recorder()
    trainer.add_callback(rec)

    def broken(sender: object, **payload: Any) -> None:
        raise KeyError("raw")

    trainer.bus.signal(Event.STEP).connect(broken)
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert info.value.event == "step"
    assert info.value.iteration == 1
    assert "broken" in info.value.handler
    assert isinstance(info.value.__cause__, KeyError)
    assert rec.names()[-3:] == ["step", "exception", "post_training"]


def test_on_decorator_with_every_and_priorities_interplay() -> None:
    order: list[tuple[str, int]] = []

    class Named(Callback):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            order.append((self.state_key, trainer.state.iteration))

    class High(Named):
        priority = 20

    trainer = make_trainer(
        items=8,
        batch_size=2,
        max_epochs=1,
        callbacks=[Named(state_key="a"), Named(state_key="b", priority=5), High(), Named(state_key="c")],
    )

    @trainer.on("post_step", every="2it")
    def every_other(t: BaseTrainer, **payload: Any) -> None:
        order.append(("on:2it", t.state.iteration))

    @trainer.on(Event.POST_STEP, priority=5)
    def tie_with_b(t: BaseTrainer, **payload: Any) -> None:
        order.append(("on:5", t.state.iteration))

    assert every_other.__name__ == "every_other"  # the decorator returns the function unchanged
    handle = trainer.bus.connect("post_step", lambda t, **kw: order.append(("bus:30", t.state.iteration)), priority=30)
    # a plain blinker receiver connected before the last handler still runs after every ordered handler
    trainer.bus.signal(Event.POST_STEP).connect(lambda t, **kw: order.append(("raw", t.state.iteration)))
    trainer.bus.connect(Event.POST_STEP, lambda t, **kw: order.append(("bus:-1", t.state.iteration)), priority=-1)
    trainer.train()
    per_step = [["bus:30", "High", "b", "on:5", "a", "c", "bus:-1", "raw"]] * 4
    expected: list[tuple[str, int]] = []
    for iteration, names in enumerate(per_step, start=1):
        for name in names:
            expected.append((name, iteration))
            if name == "c" and iteration % 2 == 0:
                expected.append(("on:2it", iteration))  # priority 0, registered after c
    assert order == expected
    assert handle.priority == 30
    assert [h.priority for h in trainer.bus.handles(Event.POST_STEP)] == [30, 20, 5, 5, 0, 0, 0, -1]


def test_on_rejects_a_schedule_that_cannot_filter_the_event() -> None:
    trainer = make_trainer()
    with pytest.raises(ValueError, match="counts iterations"):
        trainer.on("post_epoch", every="2it")(lambda t, **kw: None)
    with pytest.raises(ValueError, match="unknown event 'post_stpe'"):
        trainer.on("post_stpe")(lambda t, **kw: None)
    assert trainer.bus.handles() == ()


@pytest.mark.parametrize(
    ("where", "phase_seen", "post_training_after"),
    [
        (Event.POST_STEP, Phase.FAILING, True),
        (Event.POST_TRAINING, Phase.FINISHING, False),
    ],
)
def test_exception_handlers_see_whether_post_training_follows(
    where: Event, phase_seen: Phase, post_training_after: bool
) -> None:
    """While ``exception`` handlers run, ``FAILING`` means ``post_training(failed)`` follows and ``FINISHING`` that
    the error came from ``post_training`` itself (so a logger must end its run there); a stop asked for then is
    ignored."""
    trainer = make_trainer(items=6, batch_size=2, max_epochs=1)
    seen: list[Any] = []

    @trainer.on(where)
    def boom(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2 or where is Event.POST_TRAINING:
            raise RuntimeError("boom")

    @trainer.on(Event.EXCEPTION)
    def on_error(t: BaseTrainer, **_: Any) -> None:
        seen.append(("exception", t.phase, t.status))
        t.stop()  # ignored: the run is already ending

    @trainer.on(Event.POST_TRAINING, priority=100)
    def ended(t: BaseTrainer, *, status: Status, **_: Any) -> None:
        seen.append(("post_training", t.phase, status))

    with pytest.raises(CallbackError, match="boom"):
        trainer.train()
    expected: list[Any] = [("exception", phase_seen, Status.FAILED)]
    if post_training_after:
        expected.append(("post_training", Phase.FINISHING, Status.FAILED))
    else:
        expected.insert(0, ("post_training", Phase.FINISHING, Status.COMPLETED))
    assert seen == expected
    assert (trainer.phase, trainer.status) == (Phase.DONE, Status.FAILED)
