"""``Validator`` on real training runs of a tiny ``nn.Linear``: when it validates (epoch and iteration schedules,
``at_end`` and its dedupe, failed and stopped runs), the exact event order and payload, best tracking for max and
min metrics (NaN, ties), metric directions and result errors, eval mode / no_grad and their restoration, RNG
isolation, validation images on disk, the missing-``validate()`` error, a second validator, and resume."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from callbacks import Validator
from lifecycle import CallbackError, Status
from tests.support import Recorder, full_run, make_dataset, make_trainer, mse
from trainers import BaseTrainer

# 6 items in batches of 2: 3 iterations per epoch
STEPS = 3


class Script:
    """A validation function returning the next value of ``values`` as ``{key: value}``; logs the iterations."""

    def __init__(self, values: Sequence[float], key: str = "psnr") -> None:
        self.values, self.key = list(values), key
        self.iterations: list[int] = []

    def __call__(self, trainer: BaseTrainer) -> dict[str, Any]:
        self.iterations.append(trainer.state.iteration)
        return {self.key: self.values[len(self.iterations) - 1]}


def validations(rec: Recorder) -> list[tuple[int, str]]:
    """(iteration, reason) of every post_validation the recorder saw."""
    return [
        (row[3], payload["reason"])
        for row, (_, payload) in zip(rec.log, rec.payloads, strict=True)
        if row[0] == "post_validation"
    ]


def constant(trainer: BaseTrainer) -> dict[str, Any]:
    return {"psnr": 20.0}


# ---------------------------------------------------------------------------------------------- when it validates


@pytest.mark.parametrize(
    ("every", "max_epochs", "at_end", "expected"),
    [
        ("1ep", 3, True, [(3, "schedule"), (6, "schedule"), (9, "schedule")]),  # end at 9 deduped
        ("2ep", 3, True, [(6, "schedule"), (9, "end")]),
        ("2ep", 4, True, [(6, "schedule"), (12, "schedule")]),  # end at 12 deduped
        ("2ep", 3, False, [(6, "schedule")]),
        ("3it", 2, True, [(3, "schedule"), (6, "schedule")]),
        ("4it", 3, True, [(4, "schedule"), (8, "schedule"), (9, "end")]),
        ("4it", 3, False, [(4, "schedule"), (8, "schedule")]),
        (None, 2, True, [(6, "end")]),
        (None, 2, False, []),
    ],
)
def test_validates_at_the_scheduled_iterations(
    every: str | None, max_epochs: int, at_end: bool, expected: list[tuple[int, str]]
) -> None:
    script = Script([20.0] * 10)
    validator = Validator(script, every=every, at_end=at_end)
    rec = Recorder()
    trainer = make_trainer(max_epochs=max_epochs, callbacks=[validator, rec])
    assert trainer.train() is Status.COMPLETED
    assert validations(rec) == expected
    assert script.iterations == [it for it, _ in expected]
    assert validator.count == len(expected)


def test_at_end_is_skipped_when_the_run_fails() -> None:
    calls = []

    def failing_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(None)
        if len(calls) == 5:
            raise ArithmeticError("loss exploded")
        return mse(model, batch)

    script = Script([20.0] * 10)
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, loss_fn=failing_loss, callbacks=[Validator(script, every="1ep"), rec])
    with pytest.raises(ArithmeticError, match="loss exploded"):
        trainer.train()
    assert trainer.status is Status.FAILED
    assert script.iterations == [3]
    assert validations(rec) == [(3, "schedule")]
    assert rec.log[-1] == ("post_training", 2, 2, 5, Status.FAILED)
    assert rec.names()[-2] == "exception"


def test_at_end_validates_a_run_stopped_from_a_handler() -> None:
    script = Script([20.0] * 10)
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[Validator(script, every="2ep"), rec])

    @trainer.on("post_step")
    def stop_at_2(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2:
            t.stop()

    assert trainer.train() is Status.STOPPED
    assert validations(rec) == [(2, "end")]
    assert rec.log[-5:] == [
        ("post_step", 1, 2, 2, None),
        ("post_epoch", 1, 2, 2, None),
        ("pre_validation", 1, 2, 2, None),
        ("post_validation", 1, 2, 2, None),
        ("post_training", 1, 2, 2, Status.STOPPED),
    ]


def test_at_end_validates_a_run_stopped_from_outside() -> None:
    script = Script([20.0] * 10)
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[Validator(script, every="3it"), rec])
    for _ in range(4):
        assert trainer.iterate()
    trainer.stop()
    assert trainer.status is Status.STOPPED
    assert validations(rec) == [(3, "schedule"), (4, "end")]
    assert script.iterations == [3, 4]


def test_a_stop_on_a_validated_iteration_does_not_validate_again_at_end() -> None:
    script = Script([20.0] * 10)
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[Validator(script, every="3it"), rec])
    for _ in range(3):
        assert trainer.iterate()
    trainer.stop()
    assert validations(rec) == [(3, "schedule")]


# ---------------------------------------------------------------------------------------------- events and payload


def test_validation_events_nest_inside_post_epoch_and_carry_the_payload() -> None:
    script = Script([10.0, 12.0])
    rec = Recorder(priority=300)  # runs before the validator's post_epoch handler (priority 200)
    trainer = make_trainer(max_epochs=2, callbacks=[Validator(script, every="1ep"), rec])

    @trainer.on("post_epoch", priority=-100)  # after the validator's handler
    def late(t: BaseTrainer, **_: Any) -> None:
        s = t.state
        rec.log.append(("late_post_epoch", s.epoch, s.epoch_iteration, s.iteration, None))

    assert trainer.train() is Status.COMPLETED
    expected = []
    for row in full_run(2, STEPS):
        expected.append(row)
        if row[0] == "post_epoch":
            validation = (*row[1:4], None)
            expected += [
                ("pre_validation", *validation),
                ("post_validation", *validation),
                ("late_post_epoch", *validation),
            ]
    assert rec.log == expected

    pre = [p for name, p in rec.payloads if name == "pre_validation"]
    post = [p for name, p in rec.payloads if name == "post_validation"]
    assert pre == [{"validator": "Validator", "reason": "schedule", "prefix": "val"}] * 2
    assert [sorted(p) for p in post] == [
        ["best", "image_paths", "images", "improved", "metrics", "prefix", "reason", "seconds", "validator"]
    ] * 2
    first, second = post
    assert first["metrics"] == {"val/psnr": 10.0}
    assert first["best"] == {"best/psnr": 10.0}
    assert first["improved"] == ("val/psnr",)
    assert first["images"] == {}
    assert first["image_paths"] == {}
    assert first["validator"] == "Validator"
    assert first["reason"] == "schedule"
    assert first["prefix"] == "val"
    assert isinstance(first["seconds"], float)
    assert first["seconds"] >= 0.0
    assert second["metrics"] == {"val/psnr": 12.0}
    assert second["best"] == {"best/psnr": 12.0}


# ---------------------------------------------------------------------------------------------- best tracking


def track(trainer: BaseTrainer, validator: Validator) -> list[tuple[int, dict[str, Any], tuple[str, ...], dict]]:
    seen: list[tuple[int, dict[str, Any], tuple[str, ...], dict]] = []

    @trainer.on("post_validation")
    def record(t: BaseTrainer, *, improved: tuple[str, ...], **_: Any) -> None:
        seen.append((t.state.iteration, dict(t.state.metrics), improved, dict(validator.best)))

    return seen


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (for dicts of floats)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_best_of_a_max_metric_ignores_ties_and_nan() -> None:
    nan = float("nan")
    validator = Validator(Script([10.0, 12.0, 11.0, 12.0, nan, 13.0]), every="1it")
    trainer = make_trainer(max_epochs=2, callbacks=[validator])
    seen = track(trainer, validator)
    trainer.train()
    expected = [
        (1, {"val/psnr": 10.0, "best/psnr": 10.0}, ("val/psnr",), {"psnr": (10.0, 1)}),
        (2, {"val/psnr": 12.0, "best/psnr": 12.0}, ("val/psnr",), {"psnr": (12.0, 2)}),
        (3, {"val/psnr": 11.0, "best/psnr": 12.0}, (), {"psnr": (12.0, 2)}),
        (4, {"val/psnr": 12.0, "best/psnr": 12.0}, (), {"psnr": (12.0, 2)}),  # a tie is no improvement
        (5, {"val/psnr": nan, "best/psnr": 12.0}, (), {"psnr": (12.0, 2)}),  # NaN never becomes best
        (6, {"val/psnr": 13.0, "best/psnr": 13.0}, ("val/psnr",), {"psnr": (13.0, 6)}),
    ]
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        assert got[0] == want[0]
        assert same(got[1], want[1]), got
        assert got[2:] == want[2:]
    assert validator.best == {"psnr": (13.0, 6)}
    assert same(validator.last, {"psnr": 13.0})


def test_best_of_a_min_metric() -> None:
    validator = Validator(Script([3.0, 2.0, 2.0, 2.5, 1.0, 1.5], key="loss"), every="1it")
    trainer = make_trainer(max_epochs=2, callbacks=[validator])
    seen = track(trainer, validator)
    trainer.train()
    assert [(it, m["val/loss"], m["best/loss"], imp, best["loss"]) for it, m, imp, best in seen] == [
        (1, 3.0, 3.0, ("val/loss",), (3.0, 1)),
        (2, 2.0, 2.0, ("val/loss",), (2.0, 2)),
        (3, 2.0, 2.0, (), (2.0, 2)),
        (4, 2.5, 2.0, (), (2.0, 2)),
        (5, 1.0, 1.0, ("val/loss",), (1.0, 5)),
        (6, 1.5, 1.0, (), (1.0, 5)),
    ]


def test_a_first_nan_publishes_no_best() -> None:
    validator = Validator(Script([float("nan"), 5.0]), every="3it")
    trainer = make_trainer(max_epochs=2, callbacks=[validator])
    seen = track(trainer, validator)
    trainer.train()
    (it1, metrics1, improved1, best1), (it2, metrics2, improved2, best2) = seen
    assert it1 == 3
    assert list(metrics1) == ["val/psnr"]
    assert math.isnan(metrics1["val/psnr"])
    assert (improved1, best1) == ((), {})
    assert (it2, metrics2, improved2, best2) == (
        6,
        {"val/psnr": 5.0, "best/psnr": 5.0},
        ("val/psnr",),
        {"psnr": (5.0, 6)},
    )


def test_tensor_and_int_values_are_published_as_floats() -> None:
    validator = Validator(lambda t: {"psnr": torch.tensor([21.5]), "loss": 3}, every="1ep", at_end=False)
    trainer = make_trainer(max_epochs=1, callbacks=[validator])
    trainer.train()
    metrics = trainer.state.metrics
    assert metrics == {"val/psnr": 21.5, "best/psnr": 21.5, "val/loss": 3.0, "best/loss": 3.0}
    assert all(type(v) is float for v in metrics.values())


# ---------------------------------------------------------------------------------------------- metric errors


def test_declared_mode_tracks_an_unknown_metric() -> None:
    validator = Validator(Script([0.5, 0.7, 0.6], key="acc"), every="1ep", modes={"acc": "max"})
    trainer = make_trainer(max_epochs=3, callbacks=[validator])
    trainer.train()
    assert validator.best == {"acc": (0.7, 6)}
    assert trainer.state.metrics == {"val/acc": 0.6, "best/acc": 0.7}

    lower = Validator(Script([0.5, 0.7, 0.6], key="acc"), every="1ep", modes={"acc": "min"})
    make_trainer(max_epochs=3, callbacks=[lower]).train()
    assert lower.best == {"acc": (0.5, 3)}


def test_an_undeclared_unknown_metric_fails_the_first_validation() -> None:
    script = Script([0.5] * 5, key="acc")
    trainer = make_trainer(max_epochs=3, callbacks=[Validator(script, every="1ep")])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert info.value.iteration == 3
    assert info.value.handler == "Validator.post_epoch"
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    message = str(cause)
    assert message.startswith("Validator 'Validator': metric 'acc' has no known direction")
    assert "modes={'acc': 'max'}" in message
    assert script.iterations == [3]
    assert trainer.status is Status.FAILED
    assert "val/acc" not in trainer.state.metrics


def test_an_undeclared_metric_is_named_when_run_directly() -> None:
    validator = Validator(lambda t: {"psnr": 1.0, "f1": 0.5}, state_key="checker")
    trainer = make_trainer(callbacks=[validator])
    with pytest.raises(ValueError, match=r"^Validator 'checker': metric 'f1' has no known direction") as info:
        validator.run(trainer)
    assert "modes={'f1': 'max'}" in str(info.value)


def test_a_non_scalar_metric_is_a_type_error_naming_it() -> None:
    validator = Validator(lambda t: {"psnr": 1.0, "mse": torch.ones(2, 3)})
    trainer = make_trainer(callbacks=[validator])
    with pytest.raises(TypeError, match=r"metric 'mse' .* got Tensor of shape \(2, 3\)"):
        validator.run(trainer)
    with pytest.raises(TypeError, match=r"metric 'psnr' .* got str"):
        Validator(lambda t: {"psnr": "high"}, state_key="v2").run(trainer)


def test_a_non_dict_result_is_a_type_error() -> None:
    validator = Validator(lambda t: [1.0])
    trainer = make_trainer(callbacks=[validator])
    with pytest.raises(TypeError, match=r"^Validator 'Validator': its fn .* must return a dict of metrics, got list$"):
        validator.run(trainer)


def test_bad_modes_and_schedule_are_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match=r"modes\['acc'\] must be 'min' or 'max', got 'up'"):
        Validator(constant, modes={"acc": "up"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="fn must be callable"):
        Validator(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        Validator(constant, prefix="/val")


# ---------------------------------------------------------------------------------------------- model mode


def sequential(init_seed: int = 0, p: float = 0.5) -> nn.Sequential:
    torch.manual_seed(init_seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(p), nn.Linear(8, 1))


def test_eval_and_no_grad_during_validation_and_flags_restored() -> None:
    model = sequential()
    inside: list[tuple[list[bool], bool]] = []
    after: list[tuple[list[bool], bool]] = []

    def fn(trainer: BaseTrainer) -> dict[str, Any]:
        inside.append(([m.training for m in trainer.pipeline.modules()], torch.is_grad_enabled()))
        out = trainer.pipeline(torch.ones(2, 3))
        return {"loss": out.pow(2).mean()}  # computed without a graph

    trainer = make_trainer(max_epochs=2, model=model, callbacks=[Validator(fn, every="1ep")])

    @trainer.on("pre_epoch")
    def freeze_dropout(t: BaseTrainer, **_: Any) -> None:
        t.pipeline[1].eval()  # deliberately left in eval mode while the rest trains

    @trainer.on("post_validation")
    def check(t: BaseTrainer, **_: Any) -> None:
        after.append(([m.training for m in t.pipeline.modules()], torch.is_grad_enabled()))

    trainer.train()
    assert inside == [([False, False, False, False], False)] * 2
    assert after == [([True, True, False, True], True)] * 2


def test_flags_are_restored_when_validating_outside_training() -> None:
    model = sequential()
    model.eval()
    model[0].train()
    validator = Validator(lambda t: {"loss": 1.0})
    trainer = make_trainer(model=model, callbacks=[validator])
    validator.run(trainer)
    assert [m.training for m in model.modules()] == [False, True, False, False]
    assert torch.is_grad_enabled()


def test_flags_are_restored_when_validation_raises() -> None:
    model = sequential()
    model.train()

    def boom(trainer: BaseTrainer) -> dict[str, Any]:
        raise ZeroDivisionError("in validation")

    validator = Validator(boom)
    trainer = make_trainer(model=model, callbacks=[validator])
    with pytest.raises(ZeroDivisionError):
        validator.run(trainer)
    assert [m.training for m in model.modules()] == [True] * 4
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------------------------------------- RNG isolation


def train_dropout(callbacks: list[Any], on_post_epoch: Callable[..., None] | None = None) -> tuple[list, float]:
    torch.manual_seed(123)
    random.seed(7)
    model = sequential(init_seed=1)
    torch.manual_seed(123)
    trainer = make_trainer(max_epochs=3, model=model, callbacks=callbacks)
    if on_post_epoch is not None:
        trainer.on("post_epoch")(on_post_epoch)
    assert trainer.train() is Status.COMPLETED
    return [p.detach().clone() for p in model.parameters()], random.random()


def test_validation_does_not_change_training_rng() -> None:
    draws: list[float] = []

    def noisy(trainer: BaseTrainer) -> dict[str, Any]:
        draws.append(float(torch.rand(())) + random.random())
        torch.randn(100)
        return {"loss": float(trainer.pipeline(torch.ones(4, 3)).pow(2).mean())}

    plain_weights, plain_random = train_dropout([])
    validated_weights, validated_random = train_dropout([Validator(noisy, every="1it")])
    assert len(draws) == 9
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, validated_weights, strict=True))
    assert validated_random == plain_random

    # the comparison can fail: the same draws outside a Validator change the training
    def consume(trainer: BaseTrainer, **_: Any) -> None:
        torch.rand(())
        random.random()

    other_weights, other_random = train_dropout([], consume)
    assert not all(torch.equal(a, b) for a, b in zip(plain_weights, other_weights, strict=True))
    assert other_random != plain_random


# ---------------------------------------------------------------------------------------------- images


def float_image(h: int, w: int, c: int, seed: int = 0) -> torch.Tensor:
    """Floats in [0, 1] that are never near a rounding tie."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (h, w, c), generator=g).float()
    jitter = (torch.rand(h, w, c, generator=g) - 0.5) * 0.6  # |jitter| < 0.3 of a level
    return ((levels + jitter) / 255).clamp(0, 1)


def read_png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as img:
        img.load()
        return img.mode, np.asarray(img)


def test_images_are_written_and_passed_to_loggers(tmp_path: Path) -> None:
    pred = float_image(4, 5, 3)
    gray = torch.arange(20, dtype=torch.uint8).reshape(4, 5) * 12
    validator = Validator(lambda t: {"psnr": 30.0, "images": {"pred": pred, "gray": gray}}, every="4it", at_end=False)
    rec = Recorder()
    trainer = make_trainer(max_epochs=2, run_dir=tmp_path, callbacks=[validator, rec])
    trainer.train()

    folder = tmp_path / "val"
    assert sorted(p.name for p in folder.iterdir()) == ["gray-00000004.png", "pred-00000004.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]
    expected_rgb = np.array([[[round(float(x) * 255) for x in px] for px in row] for row in pred], dtype=np.uint8)
    mode, pixels = read_png(folder / "pred-00000004.png")
    assert mode == "RGB"
    assert pixels.shape == (4, 5, 3)
    assert np.array_equal(pixels, expected_rgb)
    mode, pixels = read_png(folder / "gray-00000004.png")
    assert mode == "L"
    assert np.array_equal(pixels, gray.numpy())

    (payload,) = [p for name, p in rec.payloads if name == "post_validation"]
    images = payload["images"]
    assert sorted(images) == ["gray", "pred"]
    assert images["pred"].dtype == torch.uint8
    assert images["pred"].shape == (4, 5, 3)
    assert torch.equal(images["pred"], torch.from_numpy(expected_rgb))
    assert images["gray"].dtype == torch.uint8
    assert torch.equal(images["gray"], gray.unsqueeze(-1))
    assert payload["image_paths"] == {"pred": folder / "pred-00000004.png", "gray": folder / "gray-00000004.png"}
    assert payload["metrics"] == {"val/psnr": 30.0}  # "images" is not a metric


def test_images_without_run_dir_are_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    image = float_image(2, 3, 3)
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[Validator(lambda t: {"psnr": 1.0, "images": {"pred": image}}), rec])
    trainer.train()
    assert list(tmp_path.iterdir()) == []
    (payload,) = [p for name, p in rec.payloads if name == "post_validation"]
    assert payload["image_paths"] == {}
    assert payload["images"]["pred"].dtype == torch.uint8
    assert payload["images"]["pred"].shape == (2, 3, 3)


def test_image_dir_and_save_images(tmp_path: Path) -> None:
    image = torch.full((2, 2, 4), 255, dtype=torch.uint8)
    custom = Validator(lambda t: {"psnr": 1.0, "images": {"rgba": image}}, image_dir=tmp_path / "imgs")
    make_trainer(max_epochs=1, callbacks=[custom]).train()
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["rgba-00000003.png"]

    run_dir = tmp_path / "run"
    silent = Validator(lambda t: {"psnr": 1.0, "images": {"rgba": image}}, save_images=False)
    make_trainer(max_epochs=1, run_dir=run_dir, callbacks=[silent]).train()
    assert not run_dir.exists()


def test_a_bad_image_shape_is_a_value_error_naming_it(tmp_path: Path) -> None:
    validator = Validator(lambda t: {"psnr": 1.0, "images": {"depth": torch.zeros(4, 4, 5)}})
    trainer = make_trainer(run_dir=tmp_path, callbacks=[validator])
    with pytest.raises(ValueError, match=r"^Validator 'Validator': image 'depth': expected shape .* got \(4, 4, 5\)"):
        validator.run(trainer)
    assert list(tmp_path.iterdir()) == []
    for bad in ("../x", "a/b", ".hidden", ""):
        v = Validator(lambda t, bad=bad: {"psnr": 1.0, "images": {bad: torch.zeros(2, 2)}}, state_key=f"v{bad!r}")
        with pytest.raises(ValueError, match="is not a plain file name"):
            v.run(trainer)


# ---------------------------------------------------------------------------------------------- wiring


def test_no_validate_override_and_no_fn_is_a_type_error_at_construction() -> None:
    with pytest.raises(TypeError, match=r"^Validator 'Validator': BaseTrainer does not override validate\(\)"):
        make_trainer(callbacks=[Validator()])

    trainer = make_trainer()
    with pytest.raises(TypeError, match="does not override validate"):
        trainer.add_callback(Validator())
    assert trainer.callbacks == ()
    with pytest.raises(RuntimeError, match="nothing on this trainer serves 'validation' requests"):
        trainer.request_validation()


class ValidatingTrainer(BaseTrainer):
    def compute_loss(self, batch: Any) -> torch.Tensor:
        return mse(self.pipeline, batch)

    def validate(self) -> dict[str, Any]:
        x, y = make_dataset().tensors
        return {"loss": mse(self.pipeline, (x, y))}


def test_trainer_validate_is_the_default_source() -> None:
    validator = Validator(every="1ep")
    trainer = make_trainer(max_epochs=2, cls=ValidatingTrainer, callbacks=[validator])
    trainer.train()
    x, y = make_dataset().tensors
    with torch.no_grad():
        expected = float(mse(trainer.pipeline, (x, y)))
    assert trainer.state.metrics["val/loss"] == expected
    assert validator.count == 2


def test_a_second_validator_needs_its_own_state_key_and_prefix() -> None:
    with pytest.raises(ValueError, match="two callbacks share state_key 'Validator'"):
        make_trainer(callbacks=[Validator(constant), Validator(constant, prefix="test")])

    test = Validator(Script([5.0, 7.0, 6.0]), prefix="test", state_key="test_validator", every="1ep")
    trainer = make_trainer(max_epochs=3, callbacks=[Validator(Script([1.0, 2.0, 3.0]), every="1ep"), test])
    trainer.train()
    assert trainer.state.metrics == {
        "val/psnr": 3.0,
        "best/psnr": 3.0,
        "test/psnr": 6.0,
        "best/test/psnr": 7.0,
    }
    assert test.best == {"psnr": (7.0, 6)}
    assert (test.metric_key("psnr"), test.best_key("psnr")) == ("test/psnr", "best/test/psnr")


# ---------------------------------------------------------------------------------------------- resume


def test_state_dict_round_trip_continues_best_tracking() -> None:
    by_epoch = {1: 14.0, 2: 10.0, 3: 12.0, 4: 15.0}

    def fn(trainer: BaseTrainer) -> dict[str, Any]:
        return {"psnr": by_epoch[trainer.state.epoch]}

    first = Validator(fn, every="1ep")
    trainer = make_trainer(max_epochs=2, callbacks=[first])
    trainer.train()
    saved = first.state_dict()
    assert saved == {"last": {"psnr": 10.0}, "best": {"psnr": [14.0, 3]}, "count": 2, "last_iteration": 6}

    second = Validator(fn, every="1ep")
    second.load_state_dict(saved)
    rec = Recorder()
    resumed = make_trainer(max_epochs=4, callbacks=[second, rec])
    resumed.load_state_dict(trainer.state_dict())
    at_start: list[dict[str, Any]] = []
    resumed.on("pre_training")(lambda t, **_: at_start.append(dict(t.state.metrics)))
    resumed.request_validation()  # iteration 6 was validated before the save: nothing to do
    assert rec.log == []
    seen = track(resumed, second)
    resumed.train()
    assert at_start == [{"val/psnr": 10.0, "best/psnr": 14.0}]
    assert [(it, m, imp, best) for it, m, imp, best in seen] == [
        (9, {"val/psnr": 12.0, "best/psnr": 14.0}, (), {"psnr": (14.0, 3)}),  # worse than the loaded best
        (12, {"val/psnr": 15.0, "best/psnr": 15.0}, ("val/psnr",), {"psnr": (15.0, 12)}),
    ]
    assert second.count == 4
    assert rec.log[0] == ("pre_training", 2, 3, 6, True)


def test_load_state_dict_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a Validator state dict"):
        Validator(constant).load_state_dict({"best": {}})


def test_a_failed_validation_does_not_count_as_done_for_its_iteration() -> None:
    """One validation per iteration means one *completed* validation: after a failure (a GUI button while the data
    server was down), asking again at the same iteration must validate."""
    calls: list[int] = []

    def flaky(trainer: BaseTrainer) -> dict[str, Any]:
        calls.append(trainer.state.iteration)
        if len(calls) == 1:
            raise ConnectionError("transient")
        return {"loss": 1.0}

    validator = Validator(flaky, every=None, at_end=False)
    trainer = make_trainer(callbacks=[validator])
    trainer.iterate()
    with pytest.raises(CallbackError, match="ConnectionError: transient"):
        trainer.request_validation()
    assert validator.count == 0
    trainer.request_validation()
    assert calls == [1, 1]
    assert validator.count == 1
    assert trainer.state.metrics == {"val/loss": 1.0, "best/loss": 1.0}
