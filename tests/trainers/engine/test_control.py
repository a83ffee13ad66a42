"""Driving a trainer: pause/resume/run_for, skipping an optimizer step, resuming from counters, and the errors
the constructor and ``load_state_dict`` raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import Callback
from lifecycle import Event, Status
from tests.support import (
    Recorder,
    full_run,
    make_dataset,
    make_model,
    make_trainer,
    mse,
    params_of,
    same_params,
)
from trainers import BaseTrainer

Factory = Callable[..., BaseTrainer]

# ---------------------------------------------------------------------------------------------- pause / resume


class PauseAt(Recorder):
    def __init__(self, event: str, iterations: set[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pause_event, self.pause_iterations = event, iterations

    def _add(self, trainer: BaseTrainer, event: str, payload: dict[str, Any], selected: Any = None) -> None:
        super()._add(trainer, event, payload, selected)
        if event == self.pause_event and trainer.state.iteration in self.pause_iterations:
            trainer.pause()


def test_pause_from_a_callback_returns_from_train_after_the_current_step() -> None:
    rec = PauseAt("post_step", {2})
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.train() is None
    assert trainer.is_paused
    assert trainer.status is None
    assert not trainer.is_finished
    assert rec.log == full_run(2, 3)[:8]  # through post_step of iteration 2
    weights = params_of(trainer.pipeline)

    for _ in range(3):  # paused: iterate() does nothing and says training continues
        assert trainer.iterate() is True
    assert trainer.run_for(0.0) is True
    assert len(rec.log) == 8
    assert trainer.state.iteration == 2
    assert same_params(weights, params_of(trainer.pipeline))

    assert trainer.train() is Status.COMPLETED  # train() un-pauses
    assert not trainer.is_paused
    assert rec.log == full_run(2, 3)


def test_pause_at_pre_step_still_finishes_that_step() -> None:
    rec = PauseAt("pre_step", {4})
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.train() is None
    assert rec.log == full_run(2, 3)[:16]  # iteration 4 (first of epoch 2) complete
    assert rec.log[-1] == ("post_step", 2, 1, 4, None)
    assert trainer.train() is Status.COMPLETED
    assert rec.log == full_run(2, 3)


def test_pause_at_an_epochs_last_step_and_repeated_pauses() -> None:
    rec = PauseAt("post_step", {3, 4, 5})
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    results = [trainer.train() for _ in range(4)]
    assert results == [None, None, None, Status.COMPLETED]
    assert rec.log == full_run(2, 3)
    assert [row[3] for row in rec.log if row[0] == "post_step"] == [1, 2, 3, 4, 5, 6]


def test_paused_run_matches_an_uninterrupted_one_bit_for_bit() -> None:
    paused = make_trainer(max_epochs=3, callbacks=[PauseAt("post_step", {1, 4, 7})])
    results = [paused.train() for _ in range(4)]
    assert results == [None, None, None, Status.COMPLETED]
    straight = make_trainer(max_epochs=3)
    straight.train()
    assert same_params(params_of(paused.pipeline), params_of(straight.pipeline))


def test_pause_and_resume_from_outside(trainer_factory: Factory, recorder: Recorder) -> None:
    rec = recorder  # the shared fixtures (tests/conftest.py)
    trainer = trainer_factory(max_epochs=2, callbacks=[rec])
    assert trainer.iterate() is True
    trainer.pause()
    assert trainer.is_paused
    assert trainer.iterate() is True
    assert len(rec.log) == 5
    trainer.resume()
    assert not trainer.is_paused
    assert trainer.iterate() is True
    assert rec.log == full_run(2, 3)[:8]
    trainer.resume()  # resuming a running trainer is harmless
    assert [trainer.iterate() for _ in range(4)] == [True, True, True, False]
    assert rec.log == full_run(2, 3)


def test_stop_while_paused_finishes_at_once() -> None:
    rec = PauseAt("post_step", {1})
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.train() is None
    trainer.stop()
    assert rec.log == [*full_run(2, 3)[:5], ("post_epoch", 1, 1, 1, None), ("post_training", 1, 1, 1, "stopped")]
    assert trainer.iterate() is False  # finished wins over paused
    assert trainer.status is Status.STOPPED


# ---------------------------------------------------------------------------------------------- run_for


def test_run_for_zero_seconds_runs_exactly_one_step(trainer_factory: Factory, recorder: Recorder) -> None:
    rec = recorder  # the shared fixtures (tests/conftest.py)
    trainer = trainer_factory(max_epochs=2, callbacks=[rec])
    result = trainer.run_for(0.0)
    assert result is True
    assert trainer.state.iteration == 1
    assert rec.log == full_run(2, 3)[:5]
    assert trainer.run_for(0) is True
    assert trainer.state.iteration == 2


def test_run_for_a_long_budget_runs_to_the_end_and_returns_false(trainer_factory: Factory, recorder: Recorder) -> None:
    rec = recorder  # the shared fixtures (tests/conftest.py)
    trainer = trainer_factory(max_epochs=2, callbacks=[rec])
    assert trainer.run_for(600.0) is False
    assert rec.log == full_run(2, 3)
    assert trainer.run_for(600.0) is False
    assert len(rec.log) == len(full_run(2, 3))


def test_run_for_returns_after_a_pause() -> None:
    rec = PauseAt("post_step", {2})
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    assert trainer.run_for(600.0) is True
    assert trainer.state.iteration == 2
    assert trainer.run_for(600.0) is True  # still paused: no step
    assert trainer.state.iteration == 2
    trainer.resume()
    assert trainer.run_for(600.0) is False
    assert rec.log == full_run(2, 3)


def test_run_for_stopped_by_a_callback_returns_false() -> None:
    trainer = make_trainer(max_epochs=2)
    trainer.on("post_step")(lambda t, **kw: t.stop() if t.state.iteration == 2 else None)
    assert trainer.run_for(600.0) is False
    assert trainer.status is Status.STOPPED
    assert trainer.state.iteration == 2


# ---------------------------------------------------------------------------------------------- skipping a step


def test_skip_optimizer_step_leaves_parameters_unchanged_for_that_step_only() -> None:
    snapshots: dict[int, list[torch.Tensor]] = {}

    class SkipSecond(Callback):
        def step(self, trainer: BaseTrainer, **payload: Any) -> None:
            if trainer.state.iteration == 2:
                trainer.skip_optimizer_step()

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            snapshots[trainer.state.iteration] = params_of(trainer.pipeline)

    trainer = make_trainer(max_epochs=1, callbacks=[SkipSecond()])
    start = params_of(trainer.pipeline)
    trainer.train()
    assert sorted(snapshots) == [1, 2, 3]
    assert not same_params(start, snapshots[1])
    assert same_params(snapshots[1], snapshots[2])  # skipped
    assert not same_params(snapshots[2], snapshots[3])  # the next step applies again


def test_skipped_step_equals_a_run_without_that_batch_for_sgd() -> None:
    # with SGD (stateless) skipping step 2 must equal applying steps 1 and 3 only
    def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    skipping = make_trainer(max_epochs=1, optimizer=sgd)
    skipping.on("step")(lambda t, **kw: t.skip_optimizer_step() if t.state.iteration == 2 else None)
    skipping.train()

    manual = make_trainer(max_epochs=1, optimizer=sgd)

    @manual.on("step")
    def undo(t: BaseTrainer, **payload: Any) -> None:
        if t.state.iteration == 2:
            for p in t.pipeline.parameters():
                p.grad = torch.zeros_like(p)

    manual.train()
    assert same_params(params_of(skipping.pipeline), params_of(manual.pipeline))


# ---------------------------------------------------------------------------------------------- resume


def _resumed_run(
    k: int, *, max_epochs: int = 3, seed: int = 7, stop_by: str = "iterate"
) -> tuple[list[torch.Tensor], Recorder, dict[str, Any]]:
    first = make_trainer(items=6, batch_size=2, max_epochs=max_epochs, seed=seed)
    if stop_by == "iterate":
        for _ in range(k):
            assert first.iterate() is True
    else:
        first.on("post_step")(lambda t, **kw: t.pause() if t.state.iteration == k else None)
        assert first.train() is None
    saved = first.state_dict()
    model_state = {name: t.clone() for name, t in first.pipeline.state_dict().items()}
    optimizer_state = first.optimizer.state_dict()

    rec = Recorder()
    # a fresh model initialised differently: only the loaded state may make it match
    fresh = make_trainer(items=6, batch_size=2, max_epochs=max_epochs, seed=seed, init_seed=99, callbacks=[rec])
    assert not same_params(params_of(fresh.pipeline), params_of(first.pipeline))
    fresh.pipeline.load_state_dict(model_state)
    fresh.optimizer.load_state_dict(optimizer_state)
    fresh.load_state_dict(saved)
    assert fresh.train() is Status.COMPLETED
    return params_of(fresh.pipeline), rec, saved


def _uninterrupted(max_epochs: int = 3, seed: int = 7) -> list[torch.Tensor]:
    trainer = make_trainer(items=6, batch_size=2, max_epochs=max_epochs, seed=seed)
    assert trainer.train() is Status.COMPLETED
    return params_of(trainer.pipeline)


@pytest.mark.parametrize("stop_by", ["iterate", "pause"])
def test_resume_mid_epoch_is_bit_identical(stop_by: str) -> None:
    reference = _uninterrupted()
    resumed, rec, saved = _resumed_run(4, stop_by=stop_by)
    assert saved == {
        "counters": {
            "epoch": 2,
            "iteration": 4,
            "epoch_iteration": 1,
            "max_epochs": 3,
            "iterations_per_epoch": 3,
            "optimizer_step": 4,
        },
        "seed": 7,
        "ended": False,
        "data_size": 6,
    }
    assert same_params(resumed, reference)
    assert rec.log[:3] == [
        ("pre_training", 2, 1, 4, True),
        ("pre_epoch", 2, 1, 4, None),
        ("pre_step", 2, 2, 5, 2),
    ]
    assert [row[3] for row in rec.log if row[0] == "pre_step"] == [5, 6, 7, 8, 9]
    assert rec.names().count("post_epoch") == 2
    assert rec.log[-1] == ("post_training", 3, 3, 9, "completed")


@pytest.mark.parametrize("stop_by", ["iterate", "pause"])
def test_resume_at_an_epoch_boundary_is_bit_identical(stop_by: str) -> None:
    reference = _uninterrupted()
    resumed, rec, _ = _resumed_run(3, stop_by=stop_by)
    assert same_params(resumed, reference)
    assert rec.log[:3] == [
        ("pre_training", 1, 3, 3, True),
        ("pre_epoch", 2, 0, 3, None),
        ("pre_step", 2, 1, 4, 2),
    ]
    assert [row[3] for row in rec.log if row[0] == "pre_step"] == [4, 5, 6, 7, 8, 9]
    assert rec.names().count("pre_epoch") == 2


def test_resume_after_a_stop_at_pre_epoch_starts_that_epoch_again() -> None:
    first = make_trainer(max_epochs=3, seed=7)
    first.on("pre_epoch")(lambda t, **kw: t.stop() if t.state.epoch == 2 else None)
    assert first.train() is Status.STOPPED
    saved = first.state_dict()
    assert saved["counters"]["epoch"] == 2
    assert saved["counters"]["epoch_iteration"] == 0
    rec = Recorder()
    fresh = make_trainer(max_epochs=3, seed=7, callbacks=[rec])
    fresh.pipeline.load_state_dict(first.pipeline.state_dict())
    fresh.optimizer.load_state_dict(first.optimizer.state_dict())
    fresh.load_state_dict(saved)
    fresh.train()
    assert rec.log[:3] == [("pre_training", 1, 3, 3, True), ("pre_epoch", 2, 0, 3, None), ("pre_step", 2, 1, 4, 2)]
    assert same_params(params_of(fresh.pipeline), _uninterrupted())


def test_loading_a_fresh_state_is_not_a_resume() -> None:
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec])
    trainer.load_state_dict(make_trainer().state_dict())
    trainer.train()
    assert rec.log == full_run(2, 3)


def test_a_finished_run_can_be_extended_with_more_epochs() -> None:
    first = make_trainer(max_epochs=2, seed=7)
    first.train()
    rec = Recorder()
    longer = make_trainer(max_epochs=3, seed=7, callbacks=[rec])
    longer.pipeline.load_state_dict(first.pipeline.state_dict())
    longer.optimizer.load_state_dict(first.optimizer.state_dict())
    longer.load_state_dict(first.state_dict())
    assert longer.train() is Status.COMPLETED
    assert rec.log[:2] == [("pre_training", 2, 3, 6, True), ("pre_epoch", 3, 0, 6, None)]
    assert [row[3] for row in rec.log if row[0] == "post_step"] == [7, 8, 9]
    assert rec.log[-1] == ("post_training", 3, 3, 9, "completed")
    assert same_params(params_of(longer.pipeline), _uninterrupted(max_epochs=3))


def test_restoring_a_completed_run_of_the_same_length_does_nothing() -> None:
    first = make_trainer(max_epochs=2)
    first.train()
    rec = Recorder()
    again = make_trainer(max_epochs=2, callbacks=[rec])
    again.load_state_dict(first.state_dict())
    assert again.iterate() is False
    assert again.status is Status.COMPLETED
    assert rec.log == []


def test_load_state_dict_after_start_is_refused() -> None:
    trainer = make_trainer()
    saved = trainer.state_dict()
    trainer.iterate()
    with pytest.raises(RuntimeError, match=r"load_state_dict\(\) must be called before the first iterate\(\)"):
        trainer.load_state_dict(saved)
    assert trainer.state.iteration == 1


def test_load_state_dict_with_another_seed_is_refused() -> None:
    first = make_trainer(seed=1)
    first.iterate()
    other = make_trainer(seed=2)
    with pytest.raises(ValueError, match="seed") as info:
        other.load_state_dict(first.state_dict())
    assert "seed=1" in str(info.value)
    assert "seed=2" in str(info.value)
    assert other.state.iteration == 0


def test_load_state_dict_with_another_batch_size_is_refused() -> None:
    first = make_trainer(batch_size=2)
    first.iterate()
    other = make_trainer(batch_size=3)
    with pytest.raises(ValueError, match="iterations per epoch") as info:
        other.load_state_dict(first.state_dict())
    assert "3 iterations per epoch" in str(info.value)
    assert "has 2" in str(info.value)


def test_load_state_dict_rejects_malformed_and_too_long_states() -> None:
    trainer = make_trainer(max_epochs=2)
    with pytest.raises(ValueError, match="not a trainer state dict"):
        trainer.load_state_dict({"epoch": 1})
    longer = make_trainer(max_epochs=3)
    longer.train()
    with pytest.raises(ValueError, match="beyond this trainer's max_epochs=2"):
        trainer.load_state_dict(longer.state_dict())


# ---------------------------------------------------------------------------------------------- constructor errors


def _build(**overrides: Any) -> BaseTrainer:
    args: dict[str, Any] = {"max_epochs": 1, "batch_size": 2, "loss_fn": mse, "device": "cpu"}
    pipeline = overrides.pop("pipeline", make_model())
    dataset = overrides.pop("dataset", make_dataset())
    args.update(overrides)
    return BaseTrainer(pipeline, dataset, **args)


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        ({"max_epochs": 0}, ValueError, "max_epochs must be >= 1, got 0"),
        ({"max_epochs": -3}, ValueError, "max_epochs must be >= 1, got -3"),
        ({"max_epochs": 2.0}, TypeError, "max_epochs must be an int, got 2.0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"batch_size": True}, TypeError, "batch_size must be an int, got True"),
        ({"batch_size": "2"}, TypeError, "batch_size must be an int, got '2'"),
        ({"num_workers": -1}, ValueError, "num_workers must be >= 0, got -1"),
        ({"seed": None}, TypeError, "seed must be an int, got None"),
        ({"loss_fn": "mse"}, TypeError, "loss_fn must be callable"),
        ({"batch_size": 10, "drop_last": True}, ValueError, "gives no batch per epoch"),
        ({"device": "bogus"}, ValueError, "device='bogus' is not a torch device"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
        ({"optimizer": lambda params: None}, TypeError, "returned NoneType, not a torch.optim.Optimizer"),
    ],
)
def test_constructor_rejects_bad_arguments(overrides: dict[str, Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        _build(**overrides)
    assert fragment in str(info.value)


def test_no_loss_is_a_type_error_mentioning_compute_loss() -> None:
    with pytest.raises(TypeError, match="compute_loss") as info:
        BaseTrainer(make_model(), make_dataset(), max_epochs=1, batch_size=2, device="cpu")
    assert "BaseTrainer has no loss" in str(info.value)

    class NoLoss(BaseTrainer):
        pass

    with pytest.raises(TypeError, match="NoLoss has no loss: override compute_loss"):
        NoLoss(make_model(), make_dataset(), max_epochs=1, batch_size=2, device="cpu")


def test_non_module_pipeline_is_refused() -> None:
    with pytest.raises(TypeError, match=r"pipeline must be a torch\.nn\.Module, got function"):
        _build(pipeline=lambda x: x)


def test_iterable_dataset_without_len_is_refused() -> None:
    with pytest.raises(TypeError, match="dataset must be map-style"):
        _build(dataset=iter([1, 2, 3]))


def test_module_without_parameters_needs_an_optimizer() -> None:
    with pytest.raises(ValueError, match="ReLU has no parameters to optimise"):
        _build(pipeline=nn.ReLU())


class Plain(Callback):
    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        pass


def test_a_callback_class_instead_of_an_instance_is_refused() -> None:
    with pytest.raises(TypeError, match=r"add_callback needs an instance, got the class Plain; write Plain\(\.\.\.\)"):
        _build(callbacks=[Plain])


def test_a_non_callback_object_is_refused() -> None:
    with pytest.raises(TypeError, match="callbacks must be Callback instances") as info:
        _build(callbacks=[lambda trainer: None])
    assert "trainer.on(event)" in str(info.value)
    trainer = _build()
    with pytest.raises(TypeError, match="callbacks must be Callback instances"):
        trainer.add_callback(object())  # type: ignore[arg-type]
    assert trainer.bus.handles() == ()


def test_duplicate_state_key_names_the_key_and_suggests_state_key() -> None:
    with pytest.raises(ValueError, match="two callbacks share state_key 'Plain'") as info:
        _build(callbacks=[Plain(), Plain()])
    assert "state_key='Plain_2'" in str(info.value)
    trainer = _build(callbacks=[Plain(), Plain(state_key="Plain_2")])
    assert [cb.state_key for cb in trainer.callbacks] == ["Plain", "Plain_2"]


def test_the_same_instance_twice_is_refused() -> None:
    plain = Plain()
    trainer = _build(callbacks=[plain])
    with pytest.raises(ValueError, match="callback 'Plain' is already registered"):
        trainer.add_callback(plain)
    assert len(trainer.bus.handles(Event.POST_STEP)) == 1


@pytest.mark.parametrize("bad", [None, 1.5, "loss", {"value": 1.0}, {"loss": 1.0}])
def test_compute_loss_returning_a_non_tensor_fails_at_iterate(bad: Any) -> None:
    rec = Recorder()
    trainer = _build(loss_fn=lambda model, batch: bad, callbacks=[rec])
    with pytest.raises(TypeError, match="compute_loss must return a loss tensor") as info:
        trainer.iterate()
    message = str(info.value)
    assert message.startswith("BaseTrainer.compute_loss")
    assert "at iteration 1" in message
    assert rec.names() == ["pre_training", "pre_epoch", "pre_step", "exception", "post_training"]
    assert rec.log[-1][4] == "failed"


def test_optimizer_instance_and_factory_are_used() -> None:
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = BaseTrainer(model, make_dataset(), max_epochs=1, batch_size=2, loss_fn=mse, device="cpu", optimizer=sgd)
    assert trainer.optimizer is sgd
    built: list[torch.optim.Optimizer] = []

    def factory(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        built.append(torch.optim.SGD(params, lr=0.5))
        return built[-1]

    other = _build(optimizer=factory)
    assert other.optimizer is built[0]
    default = _build()
    assert isinstance(default.optimizer, torch.optim.Adam)
    assert default.optimizer.param_groups[0]["lr"] == 1e-3


def test_tensor_dataset_with_one_tensor_and_a_loss_fn() -> None:
    x = torch.arange(8.0).reshape(4, 2)
    seen: list[torch.Tensor] = []

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        (rows,) = batch
        seen.append(rows)
        return model(rows).pow(2).mean()

    trainer = BaseTrainer(
        nn.Linear(2, 1), TensorDataset(x), max_epochs=1, batch_size=4, shuffle=False, loss_fn=loss, device="cpu"
    )
    trainer.train()
    assert len(seen) == 1
    assert torch.equal(seen[0], x)
