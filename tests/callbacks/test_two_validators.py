"""Two ``Validator`` s on one real training run -- the default one (metrics, every epoch) and an images-only render
every second epoch, as Wisp's renders: each publishes under its own prefix, its ``post_validation`` carries only its
own values and its prefix, ``trainer.request_validation(name)`` runs one picked by prefix or state_key, a taken or
unknown name is a clear error, the progress display prints only what each validation produced, and TensorBoard's
own reader finds ``val/...`` and ``render/...`` where they belong."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from callbacks import ProgressBar, TensorBoardLogger, Validator
from lifecycle import Status
from tests.support import Recorder, make_trainer
from tests.tb_events import events, series
from trainers import BaseTrainer


def loss_by_iteration(trainer: BaseTrainer) -> dict[str, Any]:
    return {"loss": 1.0 / trainer.state.iteration if trainer.state.iteration else 2.0}


def render(trainer: BaseTrainer) -> dict[str, Any]:
    """An images-only validation: a 4x5 RGB frame whose brightness follows the iteration."""
    return {"images": {"rgb": torch.full((4, 5, 3), trainer.state.iteration / 100.0)}}


def render_with_psnr(trainer: BaseTrainer) -> dict[str, Any]:
    return {"psnr": 10.0 + trainer.state.iteration, **render(trainer)}


def two(*, render_fn: Any = render, **trainer_kwargs: Any) -> tuple[BaseTrainer, Validator, Validator, Recorder]:
    val = Validator(loss_by_iteration, every="1ep")
    shots = Validator(render_fn, prefix="render", state_key="render", every="2ep")
    rec = Recorder()
    trainer = make_trainer(callbacks=[val, shots, rec], **trainer_kwargs)
    return trainer, val, shots, rec


def post_validations(rec: Recorder) -> list[dict[str, Any]]:
    return [payload for name, payload in rec.payloads if name == "post_validation"]


# ---------------------------------------------------------------------------------------------- end to end


def test_two_validators_in_one_run_through_tensorboard_and_the_progress_display(tmp_path: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120, color_system=None)
    logger = TensorBoardLogger(every="50it")  # no step rows in this short run: only what validations write
    trainer, _, _, _ = two(max_epochs=4, run_dir=tmp_path, render_fn=render)
    trainer.add_callback(logger)
    trainer.add_callback(ProgressBar(console=console, plain_every=3600))
    assert trainer.train() is Status.COMPLETED

    acc = events(tmp_path / "tb")
    tags = acc.Tags()
    # the default validator's values, once per its validation -- the render's runs (iterations 6, 12) add none
    expected = [(3, 1 / 3), (6, 1 / 6), (9, 1 / 9), (12, 1 / 12)]  # TensorBoard keeps float32
    for tag in ("val/loss", "best/loss"):
        written = series(acc, tag)
        assert [step for step, _ in written] == [step for step, _ in expected]
        assert [value for _, value in written] == pytest.approx([value for _, value in expected], rel=1e-6)
    # the render's images under its prefix, at its own iterations; nothing of it under val/
    assert sorted(tags["images"]) == ["render/rgb"]
    assert [event.step for event in acc.Images("render/rgb")] == [6, 12]
    assert not [tag for tag in tags["scalars"] if tag.startswith(("render/", "best/render"))]

    out = buffer.getvalue()
    lines = out.splitlines()
    render_dir = tmp_path / "render"
    assert [line for line in lines if line.startswith("validation")] == [
        "validation at iteration 3",
        "validation at iteration 6",
        f"validation 'render' at iteration 6: images rgb in {render_dir}",
        "validation at iteration 9",
        "validation at iteration 12",
        f"validation 'render' at iteration 12: images rgb in {render_dir}",
    ]
    assert sorted(p.name for p in render_dir.iterdir()) == ["rgb-00000006.png", "rgb-00000012.png"]
    # one table per validation that has metrics: four headers, never an empty one for the render
    assert sum(1 for line in lines if re.match(r"^ metric\s+┃\s+value\s+┃\s+best\s*$", line)) == 4


def test_a_render_with_a_metric_publishes_it_under_its_prefix(tmp_path: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120, color_system=None)
    trainer, _, shots, rec = two(max_epochs=2, run_dir=tmp_path, render_fn=render_with_psnr)
    trainer.add_callback(ProgressBar(console=console, plain_every=3600))
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.metrics == {
        "val/loss": 1 / 6,
        "best/loss": 1 / 6,
        "render/psnr": 16.0,
        "best/render/psnr": 16.0,
    }
    assert shots.best == {"psnr": (16.0, 6)}
    out = buffer.getvalue()
    # the render's table shows its own best, not the default validator's best/psnr (there is none)
    assert re.search(r"^ render/psnr\s+│\s+16\s+│\s+16\s*$", out, re.MULTILINE), out
    assert f"images rgb in {tmp_path / 'render'}" in out
    assert post_validations(rec)[-1]["best"] == {"best/render/psnr": 16.0}


def test_each_post_validation_carries_only_its_own_values_and_its_prefix() -> None:
    trainer, _, _, rec = two(max_epochs=2, render_fn=render_with_psnr)
    assert trainer.train() is Status.COMPLETED
    seen = [
        (p["validator"], p["prefix"], p["metrics"], p["best"], p["improved"], sorted(p["images"]))
        for p in post_validations(rec)
    ]
    assert seen == [
        ("Validator", "val", {"val/loss": 1 / 3}, {"best/loss": 1 / 3}, ("val/loss",), []),
        ("Validator", "val", {"val/loss": 1 / 6}, {"best/loss": 1 / 6}, ("val/loss",), []),
        ("render", "render", {"render/psnr": 16.0}, {"best/render/psnr": 16.0}, ("render/psnr",), ["rgb"]),
    ]
    pre = [(p["validator"], p["prefix"]) for name, p in rec.payloads if name == "pre_validation"]
    assert pre == [("Validator", "val"), ("Validator", "val"), ("render", "render")]


def test_an_images_only_validation_publishes_nothing() -> None:
    trainer, _, shots, rec = two(max_epochs=2)
    assert trainer.train() is Status.COMPLETED
    last = post_validations(rec)[-1]
    assert (last["validator"], last["metrics"], last["best"], last["improved"]) == ("render", {}, {}, ())
    assert sorted(trainer.state.metrics) == ["best/loss", "val/loss"]
    assert (shots.count, shots.best, shots.last) == (1, {}, {})


# ---------------------------------------------------------------------------------------------- requests by name


def validated(rec: Recorder) -> list[tuple[str, int, str]]:
    return [
        (p["validator"], row[3], p["reason"])
        for row, (name, p) in zip(rec.log, rec.payloads, strict=True)
        if name == "post_validation"
    ]


@pytest.mark.parametrize("name", ["render", "val", "Validator"])
def test_request_validation_by_prefix_or_state_key_runs_only_that_one(name: str) -> None:
    trainer, _, _, rec = two(max_epochs=2)
    assert trainer.iterate()
    trainer.request_validation(name)  # between steps: served at once
    who = "render" if name == "render" else "Validator"
    assert validated(rec) == [(who, 1, "request")]


def test_request_validation_without_a_name_runs_every_validator() -> None:
    trainer, _, _, rec = two(max_epochs=2)
    assert trainer.iterate()
    trainer.request_validation()
    assert validated(rec) == [("Validator", 1, "request"), ("render", 1, "request")]


def test_a_named_request_from_a_handler_is_served_at_the_next_safe_point() -> None:
    trainer, _, _, rec = two(max_epochs=2)
    trainer.on("step")(lambda t, **_: t.request_validation("render") if t.state.iteration == 2 else None)
    assert trainer.train() is Status.COMPLETED
    assert validated(rec) == [
        ("render", 2, "request"),
        ("Validator", 3, "schedule"),
        ("Validator", 6, "schedule"),
        ("render", 6, "schedule"),
    ]


def test_an_unknown_name_is_an_error_naming_the_names_that_work() -> None:
    trainer, _, _, rec = two(max_epochs=2)
    with pytest.raises(RuntimeError) as info:
        trainer.request_validation("rendr")
    message = str(info.value)
    assert "'validation:rendr'" in message
    for works in ("render", "val", "Validator"):
        assert f"'validation:{works}'" in message or f"'{works}'" in message
    assert post_validations(rec) == []


def test_a_removed_validator_no_longer_answers_to_its_names() -> None:
    trainer, _, shots, _ = two(max_epochs=2)
    assert trainer.servers("validation:render") == ("render.validation",)
    trainer.remove_callback(shots)
    for kind in ("validation:render", "validation:val", "validation:Validator"):
        assert trainer.servers(kind) == (() if kind == "validation:render" else ("Validator.validation",))
    assert trainer.servers("validation") == ("Validator.validation",)
    with pytest.raises(RuntimeError, match="'validation:render'"):
        trainer.request_validation("render")
    trainer.add_callback(shots)  # back: answers again
    trainer.request_validation("render")
    assert shots.count == 1


# ---------------------------------------------------------------------------------------------- names that collide


@pytest.mark.parametrize(
    ("second", "taken"),
    [
        ({"prefix": "val", "state_key": "other"}, "'val'"),  # the same prefix: the same published keys
        ({"prefix": "Validator", "state_key": "other"}, "'Validator'"),  # a prefix that is the other's state_key
        ({"prefix": "other", "state_key": "val"}, "'val'"),  # a state_key that is the other's prefix
    ],
)
def test_a_name_another_validator_answers_to_is_refused(second: dict[str, Any], taken: str) -> None:
    trainer = make_trainer(callbacks=[Validator(loss_by_iteration)])
    extra = Validator(loss_by_iteration, **second)
    owner = second["state_key"]
    with pytest.raises(ValueError, match=f"^Validator '{owner}'.*{taken}.*already taken by Validator.validation"):
        trainer.add_callback(extra)
    assert [cb.state_key for cb in trainer.callbacks] == ["Validator"]
    assert trainer.servers("validation") == ("Validator.validation",)
    assert trainer.servers(f"validation:{second['prefix']}") == (
        ("Validator.validation",) if second["prefix"] in ("val", "Validator") else ()
    )


def test_a_prefix_and_state_key_that_are_one_name_serve_it_once() -> None:
    test = Validator(loss_by_iteration, prefix="test", state_key="test")
    trainer = make_trainer(callbacks=[test])
    assert test.names == ("test",)
    assert trainer.servers("validation:test") == ("test.validation",)


@pytest.mark.parametrize("prefix", ["best", "best/render"])
def test_a_prefix_under_best_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match=rf"^Validator 'Validator': prefix '{prefix}' would publish into best/"):
        Validator(loss_by_iteration, prefix=prefix)
