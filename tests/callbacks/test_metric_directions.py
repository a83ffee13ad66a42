"""A metric's direction is found by any part of its path (``val/iou/lod0`` -> ``iou``), the most specific first, an
exact full-name key before all; an unknown one is refused at construction where the name is known (``monitor=``),
else at the first validation, with a suggestion that works -- checked by applying it in real training."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from callbacks import Checkpointer, EarlyStopping, Validator
from callbacks.metrics import find_mode, metric_mode, monitor_mode, name_keys, suggested_key
from lifecycle import CallbackError, Status
from tests.support import make_trainer
from trainers import BaseTrainer

# ---------------------------------------------------------------------------------------------------- the lookup


def test_keys_run_from_the_full_name_over_trailing_paths_to_single_parts_most_specific_first() -> None:
    assert name_keys("val/iou/lod0") == ("val/iou/lod0", "iou/lod0", "lod0", "iou", "val")
    assert name_keys("best/render/iou/lod0")[:3] == ("best/render/iou/lod0", "render/iou/lod0", "iou/lod0")
    assert name_keys("psnr") == ("psnr",)


@pytest.mark.parametrize(
    ("name", "declared", "mode"),
    [
        ("val/iou/lod0", {"iou": "max"}, "max"),  # any part
        ("iou/lod0", {"iou": "max"}, "max"),
        ("best/render/iou/lod3", {"iou": "max"}, "max"),
        ("val/loss/rgb", None, "min"),  # the built-in table by any part too
        ("render/psnr/lod0", None, "max"),
        ("val/lpips/lod0", {"lod0": "max"}, "max"),  # the most specific part first, declared before built-in
        ("val/iou/lod0", {"iou": "max", "lod0": "min"}, "min"),
        ("val/iou/lod0", {"iou/lod0": "min", "lod0": "max"}, "min"),  # a trailing path before a single part
        ("val/iou/lod0", {"val/iou/lod0": "min", "iou": "max"}, "min"),  # the exact full name wins
        ("val/loss", {"val": "max"}, "min"),  # 'loss' is more specific than the namespace 'val'
    ],
)
def test_a_direction_matches_any_path_part(name: str, declared: dict[str, str] | None, mode: str) -> None:
    assert metric_mode(name, declared) == mode


def test_parts_match_whole_not_as_substrings() -> None:
    assert find_mode("val/psnr_gain") is None
    assert find_mode("val/iou_lod0", {"iou": "max"}) is None


def test_suggested_keys_drop_best_and_val_only() -> None:
    assert suggested_key("val/acc") == "acc"
    assert suggested_key("best/val/acc") == "acc"
    assert suggested_key("best/acc") == "acc"
    assert suggested_key("iou/lod0") == "iou/lod0"
    assert suggested_key("render/iou/lod0") == "render/iou/lod0"
    assert suggested_key("val") == "val"


@pytest.mark.parametrize("name", ["acc", "val/acc", "iou/lod0", "val/iou/lod0", "best/render/score", "a/b/c/d"])
def test_the_suggested_declaration_is_found_by_the_same_lookup(name: str) -> None:
    with pytest.raises(ValueError, match="no known direction") as info:
        metric_mode(name, {"f1": "max"})
    suggestion = _suggested_modes(str(info.value))
    assert metric_mode(name, suggestion) == "max"


def _suggested_modes(message: str) -> dict[str, str]:
    match = re.search(r"e\.g\. modes=(\{[^}]*\})", message)
    assert match is not None, message
    value = ast.literal_eval(match.group(1))
    assert isinstance(value, dict)
    return value


def test_a_monitor_name_with_an_unknown_direction_is_refused_at_construction_suggesting_mode() -> None:
    for make in (lambda: EarlyStopping("val/iou/lod0"), lambda: Checkpointer("unused", monitor="val/iou/lod0")):
        with pytest.raises(ValueError, match="no known direction") as info:
            make()
        message = str(info.value)
        assert "metric 'val/iou/lod0' has no known direction" in message
        assert message.endswith("pass mode='max' if higher is better or mode='min' if lower is better")
        assert "modes=" not in message  # neither callback takes modes=
    assert monitor_mode("val/iou/lod0", "max", "x") == "max"
    assert EarlyStopping("val/loss/rgb").mode == "min"  # known by a part: no mode needed
    assert EarlyStopping("val/psnr/lod0").mode == "max"


# ---------------------------------------------------------------------------------------------------- in training


def _scores(values: list[float]) -> Any:
    """A validator fn returning ``iou/lod0`` = the next value and ``iou/lod1`` = its half, per validation."""
    pending = list(values)

    def validate(trainer: BaseTrainer) -> dict[str, float]:
        value = pending.pop(0)
        return {"iou/lod0": value, "iou/lod1": value / 2}

    return validate


def test_a_validator_declaring_the_path_part_tracks_the_best_upward(tmp_path: Path) -> None:
    validator = Validator(_scores([0.2, 0.6, 0.4]), every="1ep", at_end=False, modes={"iou": "max"})
    stopping = EarlyStopping("val/iou/lod0", mode="max", patience=5)
    checkpointer = Checkpointer(every="1ep", monitor="val/iou/lod0", mode="max", keep_last=None)
    trainer = make_trainer(max_epochs=3, run_dir=tmp_path, callbacks=[validator, stopping, checkpointer])
    assert trainer.train() is Status.COMPLETED
    metrics = trainer.state.metrics
    assert metrics["best/iou/lod0"] == 0.6
    assert metrics["best/iou/lod1"] == 0.3
    assert metrics["val/iou/lod0"] == 0.4
    assert (stopping.best, stopping.wait) == (0.6, 1)
    assert checkpointer.best_path is not None
    assert checkpointer.best_path.name == "step-00000006.pt"


def test_an_undeclared_path_metric_fails_the_first_validation_and_the_suggestion_then_works() -> None:
    trainer = make_trainer(max_epochs=2, callbacks=[Validator(_scores([0.2, 0.6]), every="1ep", at_end=False)])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert info.value.iteration == 3  # the first validation, at the end of epoch 1
    message = str(info.value.__cause__)
    assert message.startswith("Validator 'Validator': metric 'iou/lod0' has no known direction")
    assert "one part of the name between '/'" in message
    suggestion = _suggested_modes(message)
    assert suggestion == {"iou/lod0": "max"}

    validator = Validator(_scores([0.2, 0.6]), every="1ep", at_end=False, modes={**suggestion, "iou/lod1": "max"})
    trainer = make_trainer(max_epochs=2, callbacks=[validator])
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.metrics["best/iou/lod0"] == 0.6
