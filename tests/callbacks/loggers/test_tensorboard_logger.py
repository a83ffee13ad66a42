"""``TensorBoardLogger`` writes real event files, read back here with tensorboard's own ``EventAccumulator``: tags,
steps and values of the step, epoch and validation scalars, images, config text and hyper-parameters; a resumed run
appends with no duplicate or backward step; a directory that cannot be used disables the logger (or raises)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from callbacks import Checkpointer, TensorBoardLogger
from lifecycle import CallbackError, Event, Status
from tests.callbacks.loggers.runs import logged_run
from tests.support import make_trainer
from tests.tb_events import events, series


def test_step_epoch_and_validation_scalars_images_config_and_hparams(tmp_path: Path) -> None:
    trainer, recorded = logged_run(tmp_path, TensorBoardLogger(every="2it"))
    trainer.config = {"trainer": {"lr": 0.05, "name": "linear"}, "seed": 0}
    validated: list[tuple[int, float]] = []
    trainer.on(Event.POST_VALIDATION)(
        lambda t, *, metrics, **_: validated.append((t.state.iteration, metrics["val/mse"]))
    )
    assert trainer.train() is Status.COMPLETED
    values = [float(v) for v in recorded.losses]
    acc = events(tmp_path / "tb")
    tags = acc.Tags()
    assert {
        "train/loss",
        "time/iter_ms",
        "time/samples_per_s",
        "epoch/loss",
        "time/epoch_s",
        "val/mse",
        "best/mse",
    } <= set(tags["scalars"])
    # train/loss every 2 iterations: the mean of exactly the losses since the previous write
    assert [step for step, _ in series(acc, "train/loss")] == [2, 4, 6, 8, 10]
    for step, value in series(acc, "train/loss"):
        assert value == pytest.approx(sum(values[step - 2 : step]) / 2, rel=1e-6)
    # epoch means at each epoch's end
    assert series(acc, "epoch/loss") == [
        (5, pytest.approx(sum(values[0:5]) / 5, rel=1e-6)),
        (10, pytest.approx(sum(values[5:10]) / 5, rel=1e-6)),
    ]
    # validation metrics at the validating iterations, the same values the validator published
    assert series(acc, "val/mse") == [(step, pytest.approx(value, rel=1e-6)) for step, value in validated]
    assert [step for step, _ in series(acc, "best/mse")] == [5, 10]
    assert [e.step for e in acc.Images("val/field")] == [5, 10]
    assert (acc.Images("val/field")[0].width, acc.Images("val/field")[0].height) == (5, 6)
    assert "config/text_summary" in tags["tensors"]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "trainer.lr: 0.05" in config_text
    assert "trainer.name: 'linear'" in config_text
    assert series(acc, "hparam/iterations") == [(10, 10.0)]
    # every series has strictly increasing steps (nothing written twice)
    for tag in tags["scalars"]:
        steps = [step for step, _ in series(acc, tag)]
        assert steps == sorted(set(steps)), tag


def test_a_resumed_run_appends_with_no_duplicate_or_backward_step(tmp_path: Path) -> None:
    first, _ = logged_run(tmp_path, TensorBoardLogger(every="1it"), Checkpointer(every="1ep"))
    for _ in range(7):  # epoch 1 (saved at 5) and two steps of epoch 2, then the process "dies"
        first.iterate()
    logger = next(cb for cb in first.callbacks if isinstance(cb, TensorBoardLogger))
    assert logger._writer is not None
    logger.flush()  # what a crashed run had written beyond its checkpoint is on disk
    before = events(tmp_path / "tb")
    assert [step for step, _ in series(before, "train/loss")] == [1, 2, 3, 4, 5, 6, 7]
    first.close()  # a dead process holds no lock on its run directory

    second, _ = logged_run(tmp_path, TensorBoardLogger(every="1it"), Checkpointer(every="1ep"))
    assert second.restore("auto") == tmp_path / "checkpoints" / "step-00000005.pt"
    assert second.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    # steps 6 and 7 of the dead run were purged; the resumed run wrote them again, once
    assert [step for step, _ in series(acc, "train/loss")] == list(range(1, 11))
    for tag in acc.Tags()["scalars"]:
        steps = [step for step, _ in series(acc, tag)]
        assert steps == sorted(set(steps)), tag
    assert [step for step, _ in series(acc, "epoch/loss")] == [5, 10]


def test_a_directory_that_cannot_be_used_disables_the_logger_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tb").write_text("a file where the log directory should be")
    logger = TensorBoardLogger(every="1it")
    trainer, _ = logged_run(tmp_path, logger)
    with caplog.at_level(logging.WARNING, logger="stepbus.tensorboard"):
        assert trainer.train() is Status.COMPLETED
    assert logger.disabled is True
    assert logger.failures == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.tensorboard"]
    assert len(messages) == 1  # warned once
    assert f"could not open the event file in {tmp_path / 'tb'}" in messages[0]
    assert "the logger is disabled, training goes on" in messages[0]
    assert (tmp_path / "tb").read_text() == "a file where the log directory should be"


def test_on_error_raise_fails_the_run_naming_the_logger(tmp_path: Path) -> None:
    (tmp_path / "tb").write_text("blocked")
    trainer, _ = logged_run(tmp_path, TensorBoardLogger(every="1it", on_error="raise"))
    with pytest.raises(CallbackError, match=r"TensorBoardLogger\.pre_training"):
        trainer.train()
    assert trainer.status is Status.FAILED


def test_constructor_errors_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^TensorBoardLogger 'TensorBoardLogger': invalid schedule '0it'"):
        TensorBoardLogger(every="0it")
    with pytest.raises(ValueError, match=r"on_error must be one of 'disable', 'warn', 'raise', got 'ignore'"):
        TensorBoardLogger(on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs a directory"):
        make_trainer(callbacks=[TensorBoardLogger()])  # no run_dir
    assert TensorBoardLogger(tmp_path / "x").directory == tmp_path / "x"
