"""Values that are not step outputs: ``trainer.log(name, value)`` reaches the TensorBoard and W&B loggers through the
sink each registers in ``setup`` -- numbers and one-element tensors as scalars, ``HxWxC`` tensors as images, strings
as text, W&B lists of dicts as tables, anything else a ``TypeError`` -- and ``post_validation`` writes each validator's
own values and images under its prefix. Read back from real TensorBoard event files and offline W&B run files."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import TensorBoardLogger, Validator, WandbLogger
from callbacks.images import to_uint8_hwc
from lifecycle import CallbackError, Event, Status
from tests.callbacks.loggers.runs import logged_run
from tests.callbacks.loggers.test_wandb_logger import (  # noqa: F401 - wandb_env: the autouse fixture (W&B dirs)
    host_syncs,
    run_file,
    wandb_env,
)
from tests.callbacks.loggers.wandb_records import history
from tests.support import make_trainer
from tests.tb_events import events, series
from trainers import BaseTrainer

FRONT = torch.rand(4, 6, 3, generator=torch.Generator().manual_seed(1))  # float in [0, 1]
MASK = torch.randint(0, 256, (4, 6, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
VALUES: dict[str, Any] = {
    "custom/number": 1.5,
    "custom/count": 7,
    "custom/tensor": torch.tensor(2.5),
    "custom/one": torch.tensor([0.25], dtype=torch.float64),
    "render/front": FRONT,
    "render/mask": MASK,
    "note": "hello **world**",
}


def _log_at(trainer: BaseTrainer, iteration: int, values: dict[str, Any]) -> None:
    @trainer.on(Event.POST_STEP)
    def log(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == iteration:
            for name, value in values.items():
                t.log(name, value)


def _decoded(encoded: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image)


# ---------------------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_writes_logged_scalars_images_and_text_at_the_iteration(tmp_path: Path) -> None:
    trainer, _ = logged_run(tmp_path, TensorBoardLogger(every="5it"), images=False)
    _log_at(trainer, 3, VALUES)
    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    assert series(acc, "custom/number") == [(3, 1.5)]
    assert series(acc, "custom/count") == [(3, 7.0)]
    assert series(acc, "custom/tensor") == [(3, 2.5)]
    assert series(acc, "custom/one") == [(3, 0.25)]
    [front] = acc.Images("render/front")
    assert (front.step, front.width, front.height) == (3, 6, 4)
    np.testing.assert_array_equal(_decoded(front.encoded_image_string), to_uint8_hwc(FRONT).numpy())
    [mask] = acc.Images("render/mask")
    grey = _decoded(mask.encoded_image_string)  # TensorBoard stores one channel as grey RGB
    for channel in range(grey.shape[-1]):
        np.testing.assert_array_equal(grey[..., channel], MASK[..., 0].numpy())
    [text] = acc.Tensors("note/text_summary")
    assert (text.step, text.tensor_proto.string_val[0].decode()) == (3, "hello **world**")


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ({"a": 1}, "got a dict"),
        ([{"a": 1}], "got a list"),  # a table only for W&B
        (True, "got a bool"),
        (None, "got a NoneType"),
        (torch.zeros(5), "got a tensor of shape (5,) and dtype torch.float32"),
        (torch.zeros(4, 6, 5), "got a tensor of shape (4, 6, 5) and dtype torch.float32"),
        (torch.zeros(4, 6, 3, dtype=torch.int64), "got a tensor of shape (4, 6, 3) and dtype torch.int64"),
        (torch.tensor(True), "got a torch.bool tensor"),
    ],
)
def test_tensorboard_refuses_what_it_cannot_write_naming_the_value(tmp_path: Path, value: Any, what: str) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[TensorBoardLogger()])
    with pytest.raises(TypeError) as info:
        trainer.log("custom/table", value)
    message = str(info.value)
    assert message.startswith(f"TensorBoardLogger 'TensorBoardLogger': trainer.log('custom/table', ...) {what}; ")
    assert message.endswith(
        "it writes numbers and one-element tensors (scalars), HxWxC or HxW tensors with C in 1..4, float in "
        "[0, 1] or uint8 (images), and strings (text)"
    )


def test_a_refused_value_during_training_fails_the_step_that_logged_it(tmp_path: Path) -> None:
    trainer, _ = logged_run(tmp_path, TensorBoardLogger(every="5it"), images=False)
    _log_at(trainer, 2, {"custom/table": {"rows": [1, 2]}})
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert info.value.iteration == 2
    assert isinstance(info.value.__cause__, TypeError)
    assert "trainer.log('custom/table', ...) got a dict" in str(info.value.__cause__)


def test_a_tensor_is_read_once_when_written_and_never_while_nothing_is_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = TensorBoardLogger(every="5it")
    trainer, _ = logged_run(tmp_path, logger, images=False)
    with caplog.at_level(logging.WARNING, logger="stepbus.tensorboard"), host_syncs() as before:
        trainer.log("custom/early", torch.tensor(1.0))  # no event file yet: dropped, not read
        trainer.log("custom/early", torch.tensor(2.0))
    assert before["item"] == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.tensorboard"]
    assert messages == [
        "TensorBoardLogger 'TensorBoardLogger': trainer.log('custom/early', ...) at iteration 0 while the logger has "
        "nothing open (it writes from pre_training to the end of the run); not written"
    ]
    reads: list[int] = []

    @trainer.on(Event.POST_STEP)
    def log(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 4:
            with host_syncs() as counts:
                t.log("custom/late", torch.tensor(4.0))
            reads.append(counts["item"])

    assert trainer.train() is Status.COMPLETED
    assert reads == [1]  # the one read is the write
    acc = events(tmp_path / "tb")
    assert series(acc, "custom/late") == [(4, 4.0)]
    assert "custom/early" not in acc.Tags()["scalars"]


def test_removing_the_logger_removes_its_sink(tmp_path: Path) -> None:
    logger = TensorBoardLogger()
    trainer = make_trainer(run_dir=tmp_path, callbacks=[logger])
    with pytest.raises(TypeError):
        trainer.log("x", {"a": 1})
    trainer.remove_callback(logger)
    trainer.log("x", {"a": 1})  # no logger left: nothing checks or writes it


# ---------------------------------------------------------------------------------------------------- W&B


def test_wandb_logs_scalars_images_text_and_tables_at_the_iteration(tmp_path: Path) -> None:
    logger = WandbLogger(every="5it")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    table = [{"name": "a", "score": 1.0}, {"name": "b", "extra": 3}]
    _log_at(trainer, 3, {**VALUES, "render/table": table})
    refused = r"^WandbLogger 'WandbLogger': trainer.log\('x', \.\.\.\) got a dict; .*lists of dicts become tables$"
    with pytest.raises(TypeError, match=refused):
        trainer.log("x", {"a": 1})
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    rows = {row["_step"]: row for row in history(path)}
    assert sorted(rows) == [3, 5, 10]
    row = rows[3]
    assert {k: row[k] for k in ("custom/number", "custom/count", "custom/tensor", "custom/one", "note")} == {
        "custom/number": 1.5,
        "custom/count": 7.0,
        "custom/tensor": 2.5,
        "custom/one": 0.25,
        "note": "hello **world**",
    }
    assert logger.sync_dir is not None
    files = logger.sync_dir / "files"
    assert row["render/front/_type"] == "image-file"
    assert (row["render/front/width"], row["render/front/height"]) == (6, 4)
    with Image.open(files / row["render/front/path"]) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), to_uint8_hwc(FRONT).numpy())
    assert row["render/mask/_type"] == "image-file"
    assert row["render/table/_type"] == "table-file"
    saved = json.loads((files / row["render/table/path"]).read_text())
    assert saved["columns"] == ["name", "score", "extra"]
    assert saved["data"] == [["a", 1.0, None], ["b", None, 3]]


# ---------------------------------------------------------------------------------------------------- validation


def _validator(prefix: str, every: str, values: list[float], **kwargs: Any) -> Validator:
    pending = list(values)

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        return {"psnr": pending.pop(0), "images": {"front": FRONT}}

    return Validator(validate, every=every, prefix=prefix, at_end=False, **kwargs)


def test_each_validation_writes_only_its_own_values_and_its_images_under_its_prefix(tmp_path: Path) -> None:
    val = _validator("val", "1ep", [20.0, 22.0, 21.0, 23.0], save_images=False)
    render = _validator("render", "2ep", [30.0, 29.0], state_key="render", save_images=False)
    trainer = make_trainer(10, 2, 4, run_dir=tmp_path, callbacks=[val, render, TensorBoardLogger(every="1it")])
    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    # each series at its own validator's iterations, once: no other validation repeats it
    assert series(acc, "val/psnr") == [(5, 20.0), (10, 22.0), (15, 21.0), (20, 23.0)]
    assert series(acc, "best/psnr") == [(5, 20.0), (10, 22.0), (15, 22.0), (20, 23.0)]
    assert series(acc, "render/psnr") == [(10, 30.0), (20, 29.0)]  # not in the step rows between validations
    assert series(acc, "best/render/psnr") == [(10, 30.0), (20, 30.0)]
    assert [image.step for image in acc.Images("val/front")] == [5, 10, 15, 20]
    assert [image.step for image in acc.Images("render/front")] == [10, 20]
    assert series(acc, "hparam/render/psnr") == [(20, 29.0)]  # the final values include every validator's


def _emit_at(trainer: BaseTrainer, iteration: int, **payload: Any) -> None:
    """A validator as another agent's may emit: ``post_validation`` with a ``prefix`` (and what it says)."""

    @trainer.on(Event.POST_STEP)
    def emit(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == iteration:
            t.post_validation(**payload)


@pytest.mark.parametrize(
    ("payload", "folder"),
    [
        ({"metrics": {"x/score": 0.5}, "best": {"best/x/score": 0.5}, "prefix": "render"}, "render"),
        ({"metrics": {"x/score": 0.5}, "best": {"best/x/score": 0.5}}, "x"),  # today's payload: from the metric
        ({"metrics": {}, "best": {}}, "val"),
    ],
)
def test_images_go_under_the_payloads_prefix_else_the_first_metrics_else_val(
    tmp_path: Path, payload: dict[str, Any], folder: str
) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[TensorBoardLogger(every="never")])
    trainer.state.metrics.update({"val/psnr": 9.0, "best/psnr": 9.0})  # another validator's: not this payload's
    _emit_at(trainer, 2, images={"pic": to_uint8_hwc(FRONT)}, validator="custom", **payload)
    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    assert [image.step for image in acc.Images(f"{folder}/pic")] == [2]
    scalars = set(acc.Tags()["scalars"])
    assert not {"val/psnr", "best/psnr"} & scalars
    for key, value in {**payload["metrics"], **payload["best"]}.items():
        assert series(acc, key) == [(2, value)]


def test_wandb_rows_hold_each_validations_own_values(tmp_path: Path) -> None:
    logger = WandbLogger(every="never")
    val = _validator("val", "1ep", [20.0, 22.0], save_images=False)
    render = _validator("render", "2ep", [30.0], state_key="render", save_images=False)
    trainer = make_trainer(10, 2, 2, run_dir=tmp_path, callbacks=[val, render, logger])
    assert trainer.train() is Status.COMPLETED
    rows = {row["_step"]: row for row in history(run_file(logger))}
    assert sorted(rows) == [5, 10]
    own: Callable[[dict[str, Any]], set[str]] = lambda row: {  # noqa: E731 - W&B's own keys and image sub-keys out
        k for k in row if not k.startswith("_") and not k.startswith(("val/front/", "render/front/"))
    }
    assert own(rows[5]) == {"epoch/loss", "time/epoch_s", "val/psnr", "best/psnr"}
    assert own(rows[10]) == {"epoch/loss", "time/epoch_s", "val/psnr", "best/psnr", "render/psnr", "best/render/psnr"}
    assert (rows[5]["val/psnr"], rows[10]["val/psnr"], rows[10]["render/psnr"]) == (20.0, 22.0, 30.0)
    assert rows[5]["val/front/_type"] == rows[10]["render/front/_type"] == "image-file"
    assert "render/front/_type" not in rows[5]
