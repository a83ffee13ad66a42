"""All five scheduled callbacks on one trainer of the real grid model (with dropout): run order by priority band
whatever the registration order, the actual call order on a step where pruning and validation both fire, early
stopping from a validation with everything active, validation leaving training bit-identical, and a mid-epoch
resume of everything that continues bit-identically."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from callbacks import Callback, EarlyStopping, GradientGuard, GridPruning, LRDecay, Validator
from lifecycle import Priority, Status
from tests.callbacks.grid_model import GridModel, grid_loss, image_data, pixel_coords
from tests.support import Recorder
from trainers import BaseTrainer

#: 256 pixels in batches of 64
STEPS_PER_EPOCH = 4
Row = tuple[str, int, int, int, Any]


def row(trainer: BaseTrainer, name: str) -> Row:
    s = trainer.state
    return (name, s.epoch, s.epoch_iteration, s.iteration, None)


class Stack:
    """The five callbacks plus a Recorder, all logging into one list, on a real trainer (built by :meth:`trainer`).

    The pruning function and the validation function log their calls; ``LoggedEarlyStopping`` logs its checks.
    The validation function draws from torch's global RNG, as a stochastic validation (ray jitter) would.
    """

    def __init__(
        self,
        *,
        prune_every: Any = STEPS_PER_EPOCH,
        validate_every: Any = "1ep",
        early_stopping: dict[str, Any] | None = None,
        with_validation: bool = True,
        lr_scheduler: bool = True,
    ) -> None:
        self.log: list[Row] = []
        self.holder: dict[str, BaseTrainer] = {}
        self.lr = (
            LRDecay(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5), warmup=3)
            if lr_scheduler
            else LRDecay(milestones=[0.5])
        )
        self.pruning = GridPruning(every=prune_every, prune=self._prune)
        self.guard = GradientGuard(clip_norm=1.0, on_nonfinite="skip", every="2it")
        self.validator = Validator(self._validate, every=validate_every) if with_validation else None
        self.stopping = (
            LoggedEarlyStopping(self.log, monitor="val/loss", **(early_stopping or {"patience": 100}))
            if with_validation
            else None
        )
        self.recorder = Recorder(self.log)
        self.val_values: list[tuple[int, float]] = []

    def callbacks(self) -> list[Callback]:
        """Registered in a scrambled order: bands, not registration, must decide the run order."""
        ordered = [self.stopping, self.pruning, self.validator, self.recorder, self.guard, self.lr]
        return [cb for cb in ordered if cb is not None]

    def _prune(self, model: GridModel) -> torch.Tensor:
        self.log.append(row(self.holder["t"], "prune"))
        return model.prune()

    def _validate(self, trainer: BaseTrainer) -> dict[str, Any]:
        self.log.append(row(trainer, "validate"))
        torch.rand(16)  # consumes the global RNG: the Validator must hand training its own state back
        assert not trainer.pipeline.training
        coords, target = image_data().tensors
        loss = grid_loss(trainer.pipeline, (coords, target))
        self.val_values.append((trainer.state.iteration, float(loss)))
        return {"loss": loss}

    def trainer(self, *, max_epochs: int = 6, init_seed: int = 0, model: GridModel | None = None) -> BaseTrainer:
        if model is None:
            torch.manual_seed(init_seed)
            model = GridModel(dropout=0.2)
        trainer = BaseTrainer(
            model,
            image_data(),
            max_epochs=max_epochs,
            batch_size=64,
            optimizer=lambda params: torch.optim.Adam(params, lr=0.03),
            callbacks=self.callbacks(),
            loss_fn=grid_loss,
            device="cpu",
        )
        self.holder["t"] = trainer
        return trainer

    def all_callbacks(self) -> dict[str, Callback]:
        return {cb.state_key: cb for cb in self.callbacks()}


class LoggedEarlyStopping(EarlyStopping):
    def __init__(self, log: list[Row], **kwargs: Any) -> None:
        super().__init__(state_key="EarlyStopping", **kwargs)
        self._log = log

    def post_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._log.append(row(trainer, "early_stopping"))
        super().post_validation(trainer, **payload)


def weights(trainer: BaseTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.pipeline.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- run order


def test_handlers_run_in_priority_bands_whatever_the_registration_order() -> None:
    stack = Stack()
    trainer = stack.trainer()
    assert [cb.state_key for cb in trainer.callbacks] == [
        "EarlyStopping",
        "GridPruning",
        "Validator",
        "Recorder",
        "GradientGuard",
        "LRDecay",
    ]

    def order(event: str) -> list[tuple[str, int]]:
        return [(h.name, h.priority) for h in trainer.bus.handles(event)]

    assert order("pre_training") == [
        ("GridPruning.pre_training", 300),
        ("LRDecay.pre_training", 300),
        ("Validator.pre_training", 200),
        ("EarlyStopping.pre_training", 100),
        ("Recorder.pre_training", 0),
    ]
    assert order("pre_step") == [("LRDecay.pre_step", 300), ("Recorder.pre_step", 0)]
    assert order("step") == [("GradientGuard.step", 300), ("Recorder.step", 0)]
    assert order("post_step") == [
        ("GridPruning.post_step", 300),
        ("LRDecay.post_step", 300),
        ("Recorder.post_step", 0),
    ]
    assert order("post_epoch") == [("Validator.post_epoch", 200), ("Recorder.post_epoch", 0)]
    assert order("post_validation") == [("EarlyStopping.post_validation", 100), ("Recorder.post_validation", 0)]
    assert order("post_training") == [("Validator.post_training", 200), ("Recorder.post_training", 0)]
    # every state changer sits in the STATE band, in registration order among themselves
    state_band = [h.name for h in trainer.bus.handles() if h.priority == Priority.STATE]
    assert state_band == [
        "GridPruning.pre_training",
        "LRDecay.pre_training",
        "LRDecay.pre_step",
        "GradientGuard.step",
        "GridPruning.post_step",
        "LRDecay.post_step",
    ]


def test_ties_in_the_state_band_follow_registration_order() -> None:
    def names(callbacks: list[Callback]) -> list[str]:
        torch.manual_seed(0)
        trainer = BaseTrainer(
            GridModel(), image_data(), max_epochs=1, batch_size=64, callbacks=callbacks, loss_fn=grid_loss
        )
        return [h.name for h in trainer.bus.handles("post_step")]

    lr = LRDecay(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5))
    assert names([GridPruning(every="4it"), lr]) == ["GridPruning.post_step", "LRDecay.post_step"]
    lr = LRDecay(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5))
    assert names([lr, GridPruning(every="4it")]) == ["LRDecay.post_step", "GridPruning.post_step"]


def test_on_the_last_step_of_an_epoch_prune_then_validate_then_early_stopping() -> None:
    stack = Stack(prune_every=STEPS_PER_EPOCH)
    trainer = stack.trainer(max_epochs=2)
    assert trainer.train() is Status.COMPLETED

    def step_rows(epoch: int, step: int) -> list[Row]:
        iteration = (epoch - 1) * STEPS_PER_EPOCH + step
        return [
            ("pre_step", epoch, step, iteration, 64),
            ("step", epoch, step, iteration, None),
            ("post_step", epoch, step, iteration, None),
        ]

    expected: list[Row] = [("pre_training", 0, 0, 0, False)]
    for epoch in (1, 2):
        expected.append(("pre_epoch", epoch, 0, (epoch - 1) * STEPS_PER_EPOCH, None))
        for step in range(1, STEPS_PER_EPOCH):
            expected += step_rows(epoch, step)
        last = epoch * STEPS_PER_EPOCH
        expected += [
            ("pre_step", epoch, 4, last, 64),
            ("step", epoch, 4, last, None),
            ("prune", epoch, 4, last, None),  # STATE, on post_step
            ("post_step", epoch, 4, last, None),
            ("pre_validation", epoch, 4, last, None),  # VALIDATION, on post_epoch
            ("validate", epoch, 4, last, None),
            ("early_stopping", epoch, 4, last, None),  # METRICS, on post_validation
            ("post_validation", epoch, 4, last, None),
            ("post_epoch", epoch, 4, last, None),  # the user's handler comes last
        ]
    expected.append(("post_training", 2, 4, 8, Status.COMPLETED))  # at_end: already validated at iteration 8
    assert stack.log == expected
    metrics = trainer.state.metrics
    assert metrics["prune/count"] == 2
    assert metrics["val/loss"] == stack.val_values[-1][1]
    assert metrics["best/loss"] == min(v for _, v in stack.val_values)
    assert metrics["early_stopping/wait"] == stack.stopping.wait
    assert metrics["lr"] == trainer.optimizer.param_groups[0]["lr"]
    assert metrics["grad_norm"] > 0


def test_early_stopping_stops_at_the_validation_that_triggers_it_with_everything_active() -> None:
    # a reference run without early stopping: where would val/loss first reach the threshold?
    reference = Stack(prune_every="3it", validate_every="3it")
    ref_trainer = reference.trainer(max_epochs=6)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    ref_trainer.bus.connect("post_step", lambda t, **_: snapshots.__setitem__(t.state.iteration, weights(t)))
    assert ref_trainer.train() is Status.COMPLETED
    values = reference.val_values
    assert [it for it, _ in values] == list(range(3, 25, 3))
    threshold = values[3][1]
    assert all(v > threshold for _, v in values[:3])  # reached first at the 4th validation, iteration 12

    stack = Stack(prune_every="3it", validate_every="3it", early_stopping={"stopping_threshold": threshold})
    trainer = stack.trainer(max_epochs=6)
    assert trainer.train() is Status.STOPPED
    assert trainer.state.iteration == 12
    assert stack.stopping.stopped_iteration == 12
    assert stack.stopping.reason == f"val/loss = {threshold:g} reached stopping_threshold {threshold:g}"
    assert stack.val_values == values[:4]  # at_end did not validate again at iteration 12
    assert stack.validator.count == 4
    assert stack.pruning.count == 4
    assert stack.log[-2:] == [("post_epoch", 3, 4, 12, None), ("post_training", 3, 4, 12, Status.STOPPED)]
    assert same_weights(weights(trainer), snapshots[12])  # the run up to the stop is the reference run


def test_validation_leaves_training_bit_identical() -> None:
    """The validation draws from the global RNG and runs the dropout model in eval mode; training must continue
    exactly as without any validation at all (dropout masks, pruning, LR, clipping)."""
    with_val = Stack(validate_every="1ep")
    trainer = with_val.trainer(max_epochs=4)
    trainer.request_validation()  # and an extra one from outside, before the first step (a GUI button)
    trainer.train()
    assert with_val.validator.count == 5

    without = Stack(with_validation=False)
    plain = without.trainer(max_epochs=4)
    plain.train()
    assert same_weights(weights(trainer), weights(plain))
    assert with_val.pruning.state_dict() == without.pruning.state_dict()


# ---------------------------------------------------------------------------------------------- resume


def save_everything(trainer: BaseTrainer, stack: Stack) -> dict[str, Any]:
    return copy.deepcopy(
        {
            "model": trainer.pipeline.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "trainer": trainer.state_dict(),
            "callbacks": {key: cb.state_dict() for key, cb in stack.all_callbacks().items()},
            "rng": torch.get_rng_state(),
        }
    )


@pytest.mark.parametrize("lr_scheduler", [True, False], ids=["torch-scheduler", "milestones"])
def test_mid_epoch_resume_of_everything_is_bit_identical(lr_scheduler: bool) -> None:
    total_epochs, k = 6, 2 * STEPS_PER_EPOCH + 2  # saved at iteration 10, mid-epoch 3
    full = Stack(prune_every="3it", lr_scheduler=lr_scheduler)
    full_trainer = full.trainer(max_epochs=total_epochs)
    assert full_trainer.train() is Status.COMPLETED

    first = Stack(prune_every="3it", lr_scheduler=lr_scheduler)
    first_trainer = first.trainer(max_epochs=total_epochs)
    for _ in range(k):
        assert first_trainer.iterate()
    assert (first_trainer.state.epoch, first_trainer.state.epoch_iteration) == (3, 2)
    saved = save_everything(first_trainer, first)
    del first_trainer
    torch.manual_seed(12345)  # whatever ran in between

    second = Stack(prune_every="3it", lr_scheduler=lr_scheduler)
    second_trainer = second.trainer(max_epochs=total_epochs, init_seed=7)  # other initial weights: must be loaded
    second_trainer.pipeline.load_state_dict(saved["model"])
    second_trainer.optimizer.load_state_dict(saved["optimizer"])
    second_trainer.load_state_dict(saved["trainer"])
    for key, cb in second.all_callbacks().items():
        cb.load_state_dict(saved["callbacks"][key])
    torch.set_rng_state(saved["rng"])
    assert second_trainer.train() is Status.COMPLETED

    assert second_trainer.state.iteration == full_trainer.state.iteration == total_epochs * STEPS_PER_EPOCH
    assert same_weights(weights(second_trainer), weights(full_trainer))  # weights and the occupancy grid
    assert not bool(second_trainer.pipeline.occupancy.all())  # pruning really happened
    assert second_trainer.optimizer.param_groups[0]["lr"] == full_trainer.optimizer.param_groups[0]["lr"]
    full_states = {key: cb.state_dict() for key, cb in full.all_callbacks().items()}
    second_states = {key: cb.state_dict() for key, cb in second.all_callbacks().items()}
    assert second_states == full_states
    assert second_trainer.state.metrics == full_trainer.state.metrics
    # the second half of the log repeats the uninterrupted run's from iteration k + 1 on
    resumed_rows = [r for r in second.log if r[0] not in ("pre_training",)]
    full_rows = [r for r in full.log if r[3] > k or (r[3] == k and r[0] == "pre_epoch")]
    assert resumed_rows[0] == ("pre_epoch", 3, 2, k, None)  # the open epoch is re-entered
    assert resumed_rows[1:] == [r for r in full_rows if r[0] != "pre_epoch" or r[1] > 3]
    with torch.no_grad():
        second_trainer.pipeline.eval()
        full_trainer.pipeline.eval()
        assert torch.equal(second_trainer.pipeline(pixel_coords()), full_trainer.pipeline(pixel_coords()))
