"""``Preview`` on real training runs (the demo MLP and a small image field): the frame is exactly the trainer's
preview at the capture iteration, the loss history holds the means of the steps between captures, ``preview/*``
and ``val/*`` series, the final capture at ``post_training``, bit-identical training with and without captures,
``fn=`` and trainers without a preview, renders with an ``EMA``'s average (exactly the average, the training weights
back bit for bit, also after a render that raises) and without one, every kind of bad input with its exact message,
thinning at the history's capacity, and the callback built from a config and listed by ``stepbus callbacks``.

Captures use iteration schedules (``"1it"``, ``"5it"``) so that they are deterministic; checks that must see the
frame of the current iteration run in ``post_step`` handlers with a priority below Preview's (``LOGGING``).

Two tests guard against bugs an earlier version had: a failing preview aborted the rest of ``post_training``
(``test_a_failing_preview_does_not_cut_post_training_short``), and thinning collapsed the old part of a series into
its first point (``test_a_thinned_history_keeps_spanning_the_run``).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import EMA, GridPruning, MetricsFile, Preview, Validator
from callbacks.images import tensor_bytes, to_uint8_hwc
from callbacks.preview import Frame
from callbacks.weights import EvaluationWeights
from lifecycle import Callback, CallbackError, Priority, Status
from tests.support import make_trainer, params_of, same_params, small_field
from trainers import BaseTrainer, ConfigError
from trainers.apps.demo import demo_trainer
from trainers.apps.image_field import ImageFieldTrainer
from trainers.cli import main
from trainers.config.builder import build

#: a handler at this priority runs right after Preview's handler of the same event
AFTER_PREVIEW = Priority.LOGGING - 1
#: the demo with 256 samples in batches of 16: 16 iterations per epoch
DEMO_STEPS = 16
#: the tests' small image field (64x64 pixels) in 10 batches of 256 pixels per epoch; its preview is 32x32 (stride 2)
FIELD: dict[str, Any] = {"batch_size": 256, "batches_per_epoch": 10}
FIELD_STEPS = 10


def demo(**overrides: Any) -> BaseTrainer:
    settings: dict[str, Any] = {
        "samples": 256,
        "batch_size": 16,
        "max_epochs": 2,
        "console": Console(file=io.StringIO()),
    }
    return demo_trainer(**{**settings, **overrides})


def field(**overrides: Any) -> ImageFieldTrainer:
    return small_field(**{"max_epochs": 2, **FIELD, **overrides})


def make(kind: str, **overrides: Any) -> BaseTrainer:
    return demo(**overrides) if kind == "demo" else field(**overrides)


def uint8_bytes(image: torch.Tensor) -> bytes:
    """The frame bytes of ``image`` by ``to_uint8_hwc``, checked against a conversion written out here."""
    converted = to_uint8_hwc(image)
    by_hand = (image.detach().cpu().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if by_hand.dim() == 2:
        by_hand = by_hand.unsqueeze(-1)
    assert torch.equal(converted, by_hand)
    assert bytes(by_hand.reshape(-1).tolist()) == tensor_bytes(converted)
    return tensor_bytes(converted)


def record_losses(trainer: BaseTrainer) -> list[float]:
    """Every step's loss (one ``.item()`` per step), from a real ``step`` handler."""
    losses: list[float] = []

    def on_step(t: BaseTrainer, *, loss: torch.Tensor, **payload: Any) -> None:
        losses.append(loss.item())

    trainer.on("step")(on_step)
    return losses


def iterations(points: list[tuple[int, float]]) -> list[int]:
    return [iteration for iteration, _ in points]


def window_means(losses: list[float], marks: list[int]) -> list[float]:
    """The mean of ``losses`` over each window ending at an iteration of ``marks`` (1-based, the previous mark
    excluded)."""
    means: list[float] = []
    previous = 0
    for mark in marks:
        chunk = losses[previous:mark]
        means.append(sum(chunk) / len(chunk))
        previous = mark
    return means


X = torch.linspace(-1.0, 1.0, 32).unsqueeze(1)


def linear_loss(pipeline: nn.Module, batch: Any) -> torch.Tensor:
    inputs, targets = batch
    return nn.functional.mse_loss(pipeline(inputs), targets)


def linear_trainer() -> BaseTrainer:
    """A trainer with no ``preview()``: ``nn.Linear`` fits 3x + 1 on 32 points in batches of 4 (8 per epoch)."""
    torch.manual_seed(0)
    return BaseTrainer(nn.Linear(1, 1), TensorDataset(X, 3 * X + 1), max_epochs=2, batch_size=4, loss_fn=linear_loss)


# ---------------------------------------------------------------------------------------------- the frame


@pytest.mark.parametrize(("kind", "size", "scalar"), [("demo", 128, "mse"), ("field", 32, "psnr")])
def test_frame_is_exactly_the_preview_at_the_capture_iteration(kind: str, size: int, scalar: str) -> None:
    trainer = make(kind)
    preview = trainer.add_callback(Preview(every="1it"))
    assert isinstance(preview, Preview)
    seen: list[tuple[int, int, Frame | None, bytes, bytes, Frame | None, float]] = []

    def after_capture(t: BaseTrainer, **payload: Any) -> None:
        shown = t.preview()  # type: ignore[attr-defined]
        state = t.state
        seen.append(
            (
                state.iteration,
                state.epoch,
                preview.frame,
                uint8_bytes(shown["image"]),
                uint8_bytes(shown["target"]),
                preview.target,
                shown[scalar],
            )
        )

    trainer.on("post_step", priority=AFTER_PREVIEW)(after_capture)
    assert trainer.train() is Status.COMPLETED
    steps = 2 * (DEMO_STEPS if kind == "demo" else FIELD_STEPS)
    assert [row[0] for row in seen] == list(range(1, steps + 1))
    first_target = seen[0][5]
    assert first_target is not None
    for iteration, epoch, frame, pixels, target_pixels, target, value in seen:
        assert frame is not None
        assert (frame.iteration, frame.epoch) == (iteration, epoch)
        assert (frame.height, frame.width, frame.channels) == (size, size, 3)
        assert len(frame.pixels) == size * size * 3
        assert frame.pixels == pixels
        assert target is first_target  # converted once, at the first capture
        assert target.pixels == target_pixels  # the target does not change
        assert dict(preview.history[f"preview/{scalar}"])[iteration] == value
    assert (first_target.iteration, first_target.epoch) == (0, 0)
    assert (first_target.height, first_target.width, first_target.channels) == (size, size, 3)
    assert (seen[0][1], seen[-1][1]) == (1, 2)  # epochs 1 and 2
    # post_training captured once more at the last iteration (same pixels: nothing stepped since)
    final = preview.frame
    assert final is not None
    assert final is not seen[-1][2]
    assert (final.iteration, final.epoch, final.pixels) == (steps, 2, seen[-1][3])
    assert preview.version == steps + 1
    trainer.close()


# ---------------------------------------------------------------------------------------------- the history


@pytest.mark.parametrize(("kind", "scalar"), [("demo", "mse"), ("field", "psnr")])
def test_loss_points_are_the_step_means_between_captures(kind: str, scalar: str) -> None:
    trainer = make(kind)
    preview = trainer.add_callback(Preview(every="5it"))
    assert isinstance(preview, Preview)
    losses = record_losses(trainer)
    shown: dict[int, float] = {}
    samples: list[float] = []

    def after_step(t: BaseTrainer, *, outputs: Mapping[str, Any], **payload: Any) -> None:
        shown[t.state.iteration] = t.preview()[scalar]  # type: ignore[attr-defined]
        if "samples" in outputs:
            samples.append(float(outputs["samples"]))

    trainer.on("post_step", priority=AFTER_PREVIEW)(after_step)
    assert trainer.train() is Status.COMPLETED
    steps = 2 * (DEMO_STEPS if kind == "demo" else FIELD_STEPS)
    assert len(losses) == steps
    scheduled = [*range(5, steps + 1, 5)]
    # the capture at post_training adds a point, or (at a scheduled iteration: the field's 20) replaces it
    marks = scheduled if scheduled[-1] == steps else [*scheduled, steps]
    history = preview.history
    expected_keys = {"train/loss", f"preview/{scalar}"} | ({"train/samples"} if kind == "field" else set())
    assert set(history) == expected_keys
    assert iterations(history["train/loss"]) == marks
    for (_, value), mean in zip(history["train/loss"], window_means(losses, marks), strict=True):
        assert value == pytest.approx(mean, rel=1e-6, abs=0)
    assert history[f"preview/{scalar}"] == [(mark, shown[mark]) for mark in marks]
    if kind == "field":  # a step output that is a Python number is averaged the same way
        assert samples == [256.0] * steps
        assert history["train/samples"] == [(mark, 256.0) for mark in marks]
    assert preview.version == len(scheduled) + 1
    trainer.close()


def test_validation_results_are_recorded_at_the_validation_iterations() -> None:
    trainer = demo()
    preview = trainer.add_callback(Preview(every="5it"))
    validator = trainer.add_callback(Validator(every="1ep"))
    assert isinstance(preview, Preview)
    assert isinstance(validator, Validator)
    versions: list[tuple[int, int]] = []  # (before, after) each validation
    published: list[tuple[int, float, float]] = []

    def before(t: BaseTrainer, **payload: Any) -> None:
        versions.append((preview.version, -1))

    def after(t: BaseTrainer, *, metrics: Mapping[str, float], **payload: Any) -> None:
        versions[-1] = (versions[-1][0], preview.version)
        published.append((t.state.iteration, metrics["val/mse"], float(t.state.metrics["val/mse"])))

    trainer.on("pre_validation")(before)
    trainer.on("post_validation", priority=AFTER_PREVIEW)(after)
    assert trainer.train() is Status.COMPLETED
    assert validator.count == 2  # at 16 and 32; at_end is deduped at 32
    assert [row[0] for row in published] == [DEMO_STEPS, 2 * DEMO_STEPS]
    assert all(row[1] == row[2] for row in published)
    assert preview.history["val/mse"] == [(iteration, value) for iteration, value, _ in published]
    assert preview.history["val/mse"][-1][1] == validator.last["mse"]
    assert versions == [(3, 4), (7, 8)]  # captures at 5, 10, 15; then 20, 25, 30
    assert set(preview.history) == {"train/loss", "preview/mse", "val/mse"}
    assert preview.version == 6 + 1 + 2  # six scheduled captures, the final one, two validations
    trainer.close()


def test_validation_metrics_without_a_namespace_go_under_val() -> None:
    trainer = linear_trainer()
    preview = trainer.add_callback(Preview(every="5it"))
    assert isinstance(preview, Preview)
    trainer.post_validation(
        {
            "acc": 0.75,
            "test/psnr": torch.tensor([21.5]),  # type: ignore[dict-item]
            "flag": True,  # not a number
            "curve": torch.zeros(3),  # type: ignore[dict-item]
            "nan": math.nan,
        }
    )
    assert preview.history == {"val/acc": [(0, 0.75)], "test/psnr": [(0, 21.5)]}
    assert preview.version == 1
    trainer.close()


# ---------------------------------------------------------------------------------------------- post_training


def test_post_training_captures_a_final_frame_at_the_last_iteration() -> None:
    trainer = demo(max_epochs=1)
    preview = trainer.add_callback(Preview(every="1000it"))  # never due in 16 steps
    assert isinstance(preview, Preview)
    losses = record_losses(trainer)
    frames: list[Frame | None] = []
    trainer.on("post_step", priority=AFTER_PREVIEW)(lambda t, **_: frames.append(preview.frame))
    assert trainer.train() is Status.COMPLETED
    assert frames == [None] * DEMO_STEPS
    frame = preview.frame
    assert frame is not None
    assert (frame.iteration, frame.epoch, frame.height, frame.width, frame.channels) == (DEMO_STEPS, 1, 128, 128, 3)
    assert frame.pixels == uint8_bytes(trainer.preview()["image"])  # type: ignore[attr-defined]
    assert iterations(preview.history["train/loss"]) == [DEMO_STEPS]
    assert preview.history["train/loss"][0][1] == pytest.approx(sum(losses) / DEMO_STEPS, rel=1e-6, abs=0)
    assert preview.version == 1
    trainer.close()


def test_nothing_is_captured_when_the_run_never_stepped() -> None:
    trainer = demo()
    preview = trainer.add_callback(Preview(every="1it"))
    assert isinstance(preview, Preview)
    statuses: list[Status] = []
    trainer.on("pre_training")(lambda t, **_: t.stop())
    trainer.on("post_training", priority=AFTER_PREVIEW)(lambda t, *, status, **_: statuses.append(status))
    assert trainer.train() is Status.STOPPED
    assert statuses == [Status.STOPPED]  # post_training reached Preview, at iteration 0
    assert trainer.state.iteration == 0
    assert preview.frame is None
    assert preview.target is None
    assert preview.history == {}
    assert preview.version == 0
    trainer.close()


# ---------------------------------------------------------------------------------------------- no effect on training


def pruned_field(with_preview: bool) -> tuple[dict[str, torch.Tensor], float, int]:
    """30 steps of a small field pruned every 2 iterations from 4 (threshold 0.05: background blocks drop), with or
    without a Preview at every step; returns the model's state, the occupied fraction and the preview's version."""
    trainer = field(max_epochs=3, batch_size=512, occupancy_threshold=0.05)
    trainer.add_callback(GridPruning("2it", start=4))
    preview = trainer.add_callback(Preview(every="1it")) if with_preview else None
    assert trainer.train() is Status.COMPLETED
    state = {key: value.clone() for key, value in trainer.pipeline.state_dict().items()}
    fraction = trainer.pipeline.occupancy.fraction()
    trainer.close()
    return state, fraction, preview.version if isinstance(preview, Preview) else 0


def test_captures_never_change_the_image_field_result() -> None:
    plain, plain_fraction, _ = pruned_field(with_preview=False)
    captured, fraction, version = pruned_field(with_preview=True)
    assert version == 3 * FIELD_STEPS + 1  # a capture per step, and the final one
    assert fraction == plain_fraction
    assert fraction < 1.0  # pruning did drop blocks, so render and training shared a changing occupancy
    assert list(captured) == list(plain)
    for key in plain:
        assert torch.equal(captured[key], plain[key]), key


def demo_state(with_preview: bool) -> dict[str, torch.Tensor]:
    trainer = demo()
    if with_preview:
        trainer.add_callback(Preview(every="1it"))
    assert trainer.train() is Status.COMPLETED
    state = {key: value.clone() for key, value in trainer.pipeline.state_dict().items()}
    trainer.close()
    return state


def test_captures_never_change_the_demo_result() -> None:
    plain, captured = demo_state(with_preview=False), demo_state(with_preview=True)
    assert list(captured) == list(plain)
    for key in plain:
        assert torch.equal(captured[key], plain[key]), key


# ---------------------------------------------------------------------------------------------- fn and no preview


def test_fn_overrides_the_trainers_preview() -> None:
    trainer = demo(max_epochs=1)
    calls: list[tuple[bool, int]] = []

    def fn(t: BaseTrainer) -> dict[str, Any]:
        calls.append((t is trainer, t.state.iteration))
        return {
            "image": torch.full((4, 5), 0.5),  # (H, W): one channel
            "target": torch.full((4, 5, 3), 7, dtype=torch.uint8),
            "score": torch.tensor([3.0]),
            "count": 2,
            "name": "not a number",
            "flag": True,
            "inf": math.inf,
        }

    preview = trainer.add_callback(Preview(every="5it", fn=fn))
    assert isinstance(preview, Preview)
    assert trainer.train() is Status.COMPLETED
    assert calls == [(True, 5), (True, 10), (True, 15), (True, 16)]
    frame = preview.frame
    assert frame is not None
    assert (frame.iteration, frame.height, frame.width, frame.channels) == (16, 4, 5, 1)
    assert frame.pixels == bytes([128] * 20)  # 0.5 * 255 = 127.5, rounded half to even
    target = preview.target
    assert target is not None
    assert (target.height, target.width, target.channels, target.pixels) == (4, 5, 3, bytes([7] * 60))
    assert set(preview.history) == {"train/loss", "preview/score", "preview/count"}
    assert preview.history["preview/score"] == [(5, 3.0), (10, 3.0), (15, 3.0), (16, 3.0)]
    assert preview.history["preview/count"] == [(5, 2.0), (10, 2.0), (15, 2.0), (16, 2.0)]
    trainer.close()


def test_a_trainer_without_preview_gets_loss_and_validation_history() -> None:
    trainer = linear_trainer()
    assert not hasattr(trainer, "preview")
    preview = trainer.add_callback(Preview(every="3it"))
    trainer.add_callback(Validator(fn=lambda t: {"mse": linear_loss(t.pipeline, (X, 3 * X + 1))}, every="1ep"))
    assert isinstance(preview, Preview)
    losses = record_losses(trainer)
    validated: list[tuple[int, float]] = []
    trainer.on("post_validation")(lambda t, *, metrics, **_: validated.append((t.state.iteration, metrics["val/mse"])))
    assert trainer.train() is Status.COMPLETED
    assert preview.frame is None
    assert preview.target is None
    assert set(preview.history) == {"train/loss", "val/mse"}
    marks = [3, 6, 9, 12, 15, 16]
    assert iterations(preview.history["train/loss"]) == marks
    for (_, value), mean in zip(preview.history["train/loss"], window_means(losses, marks), strict=True):
        assert value == pytest.approx(mean, rel=1e-6, abs=0)
    assert preview.history["val/mse"] == validated
    assert iterations(validated) == [8, 16]
    assert preview.version == 5 + 1 + 2
    trainer.close()


# ---------------------------------------------------------------------------------------------- the evaluation weights

#: a handler at this priority runs after the EMA's post_step (STATE) and right before Preview's capture (LOGGING)
BEFORE_PREVIEW = Priority.LOGGING + 1


@dataclasses.dataclass
class Recording:
    """A run of :func:`recording_run`: what each render saw, and the training weights and the EMA's average right
    before each scheduled capture and the weights right after it, by iteration."""

    trainer: BaseTrainer
    preview: Preview
    rendered: list[tuple[int, list[torch.Tensor]]] = dataclasses.field(default_factory=list)
    before: dict[int, list[torch.Tensor]] = dataclasses.field(default_factory=dict)
    averages: dict[int, list[torch.Tensor]] = dataclasses.field(default_factory=dict)
    after: dict[int, list[torch.Tensor]] = dataclasses.field(default_factory=dict)


def recording_run(*callbacks: Callback, ema: EMA | None = None, fails_at: int | None = None) -> Recording:
    """The tiny linear trainer (12 iterations) with ``callbacks``, ``ema`` and a Preview every 2 iterations whose
    render records the pipeline's weights (and raises at iteration ``fails_at``); not run yet."""
    rendered: list[tuple[int, list[torch.Tensor]]] = []

    def render(t: BaseTrainer) -> dict[str, Any]:
        rendered.append((t.state.iteration, params_of(t.pipeline)))
        if t.state.iteration == fails_at:
            raise RuntimeError("the renderer ran out of memory")
        # a scalar that views a weight: read while the render's weights are still in place, or it shows others
        return {"image": torch.zeros(2, 2, 3), "w00": t.pipeline.weight.detach()[0, 0]}  # type: ignore[index]

    preview = Preview(every="2it", fn=render)
    chosen = [*callbacks, *([ema] if ema is not None else []), preview]
    recording = Recording(make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=chosen), preview, rendered)

    def before(t: BaseTrainer, **payload: Any) -> None:
        recording.before[t.state.iteration] = params_of(t.pipeline)
        if ema is not None:
            recording.averages[t.state.iteration] = [average.clone() for average in ema.average]

    def after(t: BaseTrainer, **payload: Any) -> None:
        recording.after[t.state.iteration] = params_of(t.pipeline)

    recording.trainer.on("post_step", priority=BEFORE_PREVIEW)(before)
    recording.trainer.on("post_step", priority=AFTER_PREVIEW)(after)
    return recording


def test_with_an_ema_the_preview_renders_the_average_and_training_goes_on_from_the_exact_weights() -> None:
    ema = EMA(decay=0.9)
    run = recording_run(ema=ema)
    assert run.trainer.train() is Status.COMPLETED
    assert [iteration for iteration, _ in run.rendered] == [2, 4, 6, 8, 10, 12, 12]  # the last one at post_training
    assert EvaluationWeights.of(run.trainer).provider("preview") == "EMA 'EMA'"
    for iteration, seen in run.rendered[:-1]:
        assert same_params(seen, run.averages[iteration]), iteration  # the render saw the average, exactly
        assert not same_params(seen, run.before[iteration]), iteration  # which is not the training weights
        assert same_params(run.after[iteration], run.before[iteration]), iteration  # those came back bit for bit
    assert same_params(run.rendered[-1][1], ema.average)  # the final capture too
    scheduled = run.preview.history["preview/w00"][:-1]
    assert scheduled == [(iteration, float(run.averages[iteration][0][0, 0])) for iteration in range(2, 11, 2)]
    assert same_params(params_of(run.trainer.pipeline), run.before[12])
    # training went on exactly as it does without a preview: the same weights and the same average
    plain_ema = EMA(decay=0.9)
    plain = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[plain_ema])
    assert plain.train() is Status.COMPLETED
    assert same_params(params_of(run.trainer.pipeline), params_of(plain.pipeline))
    assert same_params(ema.average, plain_ema.average)


def test_a_render_that_raises_leaves_the_exact_training_weights_and_average() -> None:
    ema = EMA(decay=0.9)
    run = recording_run(ema=ema, fails_at=4)
    with pytest.raises(CallbackError) as raised:
        run.trainer.train()
    assert (raised.value.handler, raised.value.iteration) == ("Preview.post_step", 4)
    assert str(raised.value.__cause__) == "the renderer ran out of memory"
    assert same_params(run.rendered[-1][1], run.averages[4])  # it failed while rendering the average
    assert not same_params(run.averages[4], run.before[4])
    assert same_params(params_of(run.trainer.pipeline), run.before[4])
    assert same_params(ema.average, run.averages[4])
    # and called directly between steps, as a display would
    with pytest.raises(RuntimeError, match="the renderer ran out of memory"):
        run.preview.capture(run.trainer)
    assert len(run.rendered) == 3
    assert same_params(params_of(run.trainer.pipeline), run.before[4])
    assert same_params(ema.average, run.averages[4])


def test_a_bad_render_result_is_refused_after_the_training_weights_are_back() -> None:
    ema = EMA(decay=0.9)
    preview = Preview(every="2it", fn=lambda t: {"picture": 1})
    trainer = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[ema, preview])
    weights: list[list[torch.Tensor]] = []
    trainer.on("post_step", priority=BEFORE_PREVIEW)(lambda t, **_: weights.append(params_of(t.pipeline)))
    with pytest.raises(CallbackError, match="must return a mapping with an 'image'"):
        trainer.train()
    assert not same_params(weights[-1], ema.average)
    assert same_params(params_of(trainer.pipeline), weights[-1])


@pytest.mark.parametrize(
    "ema",
    [
        pytest.param(None, id="no-ema"),
        pytest.param(lambda: EMA(decay=0.9, use_for=["validation", "export"]), id="ema-not-for-preview"),
    ],
)
def test_without_an_ema_for_the_preview_it_renders_the_training_weights(ema: Callable[[], EMA] | None) -> None:
    average = None if ema is None else ema()
    run = recording_run(ema=average)
    assert run.trainer.train() is Status.COMPLETED
    assert EvaluationWeights.of(run.trainer).provider("preview") is None
    assert [iteration for iteration, _ in run.rendered] == [2, 4, 6, 8, 10, 12, 12]
    for iteration, seen in run.rendered[:-1]:
        assert same_params(seen, run.before[iteration]), iteration
        if average is not None:  # the EMA kept an average that differs, and it was not shown
            assert not same_params(seen, run.averages[iteration]), iteration
    assert same_params(run.rendered[-1][1], params_of(run.trainer.pipeline))
    assert run.preview.history["preview/w00"] == [
        (iteration, float(run.before[iteration][0][0, 0])) for iteration in range(2, 13, 2)
    ]


def test_validate_with_average_false_still_previews_the_average() -> None:
    validated: list[list[torch.Tensor]] = []

    def validate(t: BaseTrainer) -> dict[str, Any]:
        validated.append(params_of(t.pipeline))
        return {"mse": 0.0}

    ema = EMA(decay=0.9, validate_with_average=False)
    run = recording_run(Validator(fn=validate, every="6it", at_end=False), ema=ema)
    assert (ema.use_for, ema.validate_with_average) == (("preview", "export"), False)
    assert run.trainer.train() is Status.COMPLETED
    assert len(validated) == 2
    assert same_params(validated[-1], run.before[12])  # validation at 12 ran on the training weights
    assert same_params(run.rendered[-2][1], run.averages[12])  # the capture at 12 on the average
    assert not same_params(run.averages[12], run.before[12])


def test_with_an_ema_the_frame_is_the_trainers_own_render_of_the_average() -> None:
    trainer = demo(max_epochs=1)
    ema = trainer.add_callback(EMA(decay=0.9))
    preview = trainer.add_callback(Preview(every="1000it"))  # only the final capture
    assert isinstance(ema, EMA)
    assert isinstance(preview, Preview)
    assert trainer.train() is Status.COMPLETED
    with ema.applied():
        averaged = trainer.preview()  # type: ignore[attr-defined]
    trained = trainer.preview()  # type: ignore[attr-defined]
    frame = preview.frame
    assert frame is not None
    assert frame.pixels == uint8_bytes(averaged["image"])
    assert frame.pixels != uint8_bytes(trained["image"])
    assert preview.history["preview/mse"] == [(DEMO_STEPS, averaged["mse"])]
    assert averaged["mse"] != trained["mse"]
    trainer.close()


# ---------------------------------------------------------------------------------------------- bad input

NO_IMAGE = (
    "Preview: the preview function (fn) must return a mapping with an 'image' (H, W, C) tensor, plus an optional "
    "'target' and scalars; got "
)


@pytest.mark.parametrize(
    ("returned", "got"),
    [
        ({"picture": torch.zeros(4, 4, 3), "psnr": 1.0}, "['picture', 'psnr']"),
        ({}, "[]"),
        (torch.zeros(4, 4, 3), "Tensor"),
        (None, "NoneType"),
        ([("image", torch.zeros(4, 4, 3))], "list"),
    ],
)
def test_a_preview_without_an_image_fails_training_loudly(returned: object, got: str) -> None:
    trainer = demo()
    preview = Preview(every="5it", fn=lambda t: returned)  # type: ignore[arg-type,return-value]
    trainer.add_callback(preview)
    with pytest.raises(ValueError, match="preview") as direct:
        preview.capture(trainer)  # between steps, as a display would
    assert str(direct.value) == NO_IMAGE + got
    statuses: list[Status] = []
    errors: list[BaseException] = []
    trainer.on("post_training", priority=Priority.LOGGING + 1)(lambda t, *, status, **_: statuses.append(status))
    trainer.on("exception")(lambda t, *, error, **_: errors.append(error))
    with pytest.raises(CallbackError) as raised:
        trainer.train()
    error = raised.value
    assert (error.handler, error.event, error.iteration) == ("Preview.post_step", "post_step", 5)
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == NO_IMAGE + got
    assert str(error).endswith(f"ValueError: {NO_IMAGE}{got}")
    assert errors == [error]
    assert statuses == [Status.FAILED]  # once
    assert trainer.status is Status.FAILED
    assert trainer.state.iteration == 5
    trainer.close()


def test_a_failing_preview_does_not_cut_post_training_short(tmp_path: Path) -> None:
    """Callbacks after Preview in ``post_training`` (loggers closing files, the progress bar, the metrics file) still
    see the failed run end. Preview's own ``post_training`` capture must not call the preview that just failed
    again and abort the rest of the emission."""
    trainer = demo(run_dir=tmp_path)
    trainer.add_callback(Preview(every="5it", fn=lambda t: {"picture": 1}))
    trainer.add_callback(MetricsFile(path="metrics.json"))
    statuses: list[Status] = []
    trainer.on("post_training", priority=Priority.FINAL - 1)(lambda t, *, status, **_: statuses.append(status))
    with pytest.raises(CallbackError) as raised:
        trainer.train()
    assert raised.value.handler == "Preview.post_step"
    assert statuses == [Status.FAILED]
    report = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert (report["status"], report["iterations"]) == ("failed", 5)
    trainer.close()


@pytest.mark.parametrize(
    ("shown", "message"),
    [
        (
            {"image": torch.zeros(4, 4, 5)},
            "preview 'image': expected shape (H, W) or (H, W, C) with C in 1..4 (channels last), got (4, 4, 5)",
        ),
        (
            {"image": torch.zeros(2, 4, 4, 3)},
            "preview 'image': expected shape (H, W) or (H, W, C) with C in 1..4 (channels last), got (2, 4, 4, 3)",
        ),
        (
            {"image": torch.zeros(0, 4, 3)},
            "preview 'image': expected shape (H, W) or (H, W, C) with C in 1..4 (channels last), got (0, 4, 3)",
        ),
        (
            {"image": torch.zeros(4, 4, 3, dtype=torch.int32)},
            "preview 'image': expected a floating-point tensor in [0, 1] or uint8, got dtype torch.int32",
        ),
        ({"image": [[0.5]]}, "preview 'image': expected an HxWxC tensor, got list"),
        (
            {"image": torch.zeros(4, 4, 3), "target": torch.zeros(3, 4, 4, 4, 4)},
            "preview 'target': expected shape (H, W) or (H, W, C) with C in 1..4 (channels last), got (3, 4, 4, 4, 4)",
        ),
    ],
)
def test_a_badly_shaped_image_is_refused_naming_it(shown: dict[str, Any], message: str) -> None:
    trainer = demo()
    preview = Preview(every="2it", fn=lambda t: shown)
    trainer.add_callback(preview)
    with pytest.raises(ValueError, match="preview '") as direct:
        preview.capture(trainer)
    assert str(direct.value) == message
    with pytest.raises(CallbackError) as raised:
        trainer.train()
    assert isinstance(raised.value.__cause__, ValueError)
    assert str(raised.value.__cause__) == message
    assert raised.value.iteration == 2
    trainer.close()


@pytest.mark.parametrize("history", [1, 0, -5, True, False, 2.5, "8", None])
def test_history_must_be_an_int_of_at_least_two(history: object) -> None:
    with pytest.raises(ValueError, match="history") as raised:
        Preview(history=history)  # type: ignore[arg-type]
    assert str(raised.value) == f"Preview: history must be an int >= 2 (points kept per series), got {history!r}"


def test_history_of_two_is_accepted() -> None:
    assert Preview(history=2).capacity == 2


def test_a_bad_schedule_is_refused_at_construction_naming_the_callback() -> None:
    trainer = demo()
    with pytest.raises(ValueError, match="Preview") as raised:
        trainer.add_callback(Preview(every="0it"))
    assert "'Preview'" in str(raised.value)
    assert trainer.callbacks == trainer.callbacks[:1]  # only the demo's ReportProgress: nothing registered
    trainer.close()


# ---------------------------------------------------------------------------------------------- thinning


def thinning_run(capacity: int, steps: int) -> tuple[Preview, list[float], dict[int, float]]:
    """``steps`` demo iterations (16 samples each) with a capture at every one and ``capacity`` points per series;
    returns the preview, every step's loss and the preview's mse at every iteration."""
    trainer = demo(samples=16 * steps, max_epochs=1)
    preview = trainer.add_callback(Preview(every="1it", history=capacity))
    assert isinstance(preview, Preview)
    losses = record_losses(trainer)
    shown: dict[int, float] = {}

    def after_capture(t: BaseTrainer, **payload: Any) -> None:
        shown[t.state.iteration] = t.preview()["mse"]  # type: ignore[attr-defined]

    trainer.on("post_step", priority=AFTER_PREVIEW)(after_capture)
    assert trainer.train() is Status.COMPLETED
    assert len(losses) == steps
    assert preview.version == steps + 1
    trainer.close()
    return preview, losses, shown


def test_history_is_thinned_at_capacity() -> None:
    preview, losses, shown = thinning_run(8, 100)
    assert set(preview.history) == {"train/loss", "preview/mse"}
    kept = iterations(preview.history["train/loss"])
    for name, points in preview.history.items():
        marks = iterations(points)
        assert marks == kept, name  # every series is thinned alike
        assert 4 <= len(points) <= 8  # at capacity; a thinning halves at most
        assert marks[0] == 1  # the first capture
        assert marks[-1] == 100  # the last
        assert all(a < b for a, b in itertools.pairwise(marks))
    for iteration, value in preview.history["train/loss"]:  # a kept point is its own step's loss, not moved
        assert value == pytest.approx(losses[iteration - 1], rel=1e-6, abs=0)
    assert preview.history["preview/mse"] == [(iteration, shown[iteration]) for iteration in kept]


def test_a_thinned_history_keeps_spanning_the_run() -> None:
    """The docstring's promise (a curve always spans the whole run): after thinning, every quarter of the run still
    has points. (A first version thinned only the older half at every overflow, so the oldest points were halved
    over and over and the history collapsed to the first capture plus the newest ones: ``[1, 93, 95, ..., 100]``.)"""
    preview, _, _ = thinning_run(8, 100)
    marks = iterations(preview.history["train/loss"])
    quarters = [sum(1 for mark in marks if 25 * q < mark <= 25 * (q + 1)) for q in range(4)]
    assert all(count >= 1 for count in quarters), (marks, quarters)


# ---------------------------------------------------------------------------------------------- configs and the CLI


def test_built_from_a_config_with_its_schedule(tmp_path: Path) -> None:
    config = {
        "trainer": {"name": "demo", "samples": 256, "max_epochs": 1, "batch_size": 16},
        "callbacks": {"preview": {"every": "2it", "history": 16}},
    }
    trainer = build(config, run_dir=tmp_path / "run", objects={"console": Console(file=io.StringIO())})
    previews = [callback for callback in trainer.callbacks if isinstance(callback, Preview)]
    assert len(previews) == 1
    preview = previews[0]
    assert (preview.every, preview.capacity, preview.fn) == ("2it", 16, None)
    assert [callback.state_key for callback in trainer.callbacks] == ["ReportProgress", "Preview"]
    assert trainer.train() is Status.COMPLETED
    assert iterations(preview.history["train/loss"]) == list(range(2, DEMO_STEPS + 1, 2))
    assert preview.version == DEMO_STEPS // 2 + 1
    trainer.close()


def test_a_bad_config_schedule_names_the_block(tmp_path: Path) -> None:
    config = {"trainer": {"name": "demo", "samples": 256}, "callbacks": {"preview": {"every": "0it"}}}
    with pytest.raises(ConfigError, match=r"callbacks\.preview"):
        build(config, run_dir=tmp_path / "run", objects={"console": Console(file=io.StringIO())})


def test_stepbus_callbacks_lists_preview(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["callbacks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith("preview: Preview (built-in) ")]
    assert len(starts) == 1
    rows: list[list[str]] = []
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    assert rows[0] == ["key", "default", "accepts"]
    assert [row[0] for row in rows[1:]] == ["every", "history"]  # fn is code-only; priority, state_key implied
    assert rows[1][1] == "'0.5s'"
    assert rows[2][:4] == ["history", "4096", "an", "integer"]
