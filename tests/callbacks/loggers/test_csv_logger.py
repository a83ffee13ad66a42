"""``CSVLogger`` writes a real CSV file, read back here with the csv module: the step, epoch and validation rows hold
exactly the numbers the run computed and the numbers TensorBoard's reader finds for the same run; a metric that
appears mid-run adds a column without moving any earlier cell, and the file is valid CSV at every flush;
``trainer.log`` numbers share a row per step, strings and images are told once and skipped; a file that cannot be
written follows ``on_error``; bad arguments and bad config values are refused with clear errors."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import LRDecay, TensorBoardLogger
from callbacks.loggers.csv_logger import CSVLogger
from lifecycle import CallbackError, Event, Status
from tests.callbacks.loggers.csv_resume_app import table
from tests.callbacks.loggers.runs import logged_run
from tests.support import make_trainer
from tests.tb_events import events, series
from trainers import BaseTrainer
from trainers.cli import main


def _cells(path: Path) -> list[dict[str, str]]:
    header, rows = table(path)
    assert all(len(row) == len(header) for row in rows), "every row has the header's width"
    return [dict(zip(header, row, strict=True)) for row in rows]


def _column(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[name])) for row in rows if row.get(name, "") != ""]


def test_step_epoch_and_validation_rows_hold_the_runs_numbers_and_what_tensorboard_wrote(tmp_path: Path) -> None:
    trainer, recorded = logged_run(tmp_path, CSVLogger(every="2it"), TensorBoardLogger(every="2it"), LRDecay())
    lrs: dict[int, float] = {}
    trainer.on(Event.POST_STEP, priority=-50)(lambda t, **_: lrs.update({t.state.iteration: t.state.metrics["lr"]}))
    assert trainer.train() is Status.COMPLETED
    header, _ = table(tmp_path / "metrics.csv")
    assert header == [
        "step",
        "epoch",
        "train/loss",
        "time/iter_ms",
        "time/samples_per_s",
        "lr",
        "val/mse",
        "best/mse",
        "epoch/loss",
        "time/epoch_s",
    ]
    rows = _cells(tmp_path / "metrics.csv")
    kinds = [(row["step"], row["epoch"], [k for k in header[2:] if row[k] != ""]) for row in rows]
    step_row = ["train/loss", "time/iter_ms", "time/samples_per_s", "lr"]
    assert kinds == [
        ("2", "1", step_row),
        ("4", "1", step_row),
        ("5", "1", ["val/mse", "best/mse"]),  # the validator runs at post_epoch before the loggers
        ("5", "1", ["epoch/loss", "time/epoch_s"]),
        ("6", "2", step_row),
        ("8", "2", step_row),
        ("10", "2", step_row),
        ("10", "2", ["val/mse", "best/mse"]),
        ("10", "2", ["epoch/loss", "time/epoch_s"]),
    ]
    losses = [float(v) for v in recorded.losses]
    # the window means: float64 sums of float32 losses are exact here, so the means are the same floats
    assert _column(rows, "train/loss") == [(s, math.fsum(losses[s - 2 : s]) / 2) for s in (2, 4, 6, 8, 10)]
    assert _column(rows, "epoch/loss") == [(5, math.fsum(losses[0:5]) / 5), (10, math.fsum(losses[5:10]) / 5)]
    assert _column(rows, "lr") == [(s, lrs[s]) for s in (2, 4, 6, 8, 10)]
    assert _column(rows, "val/mse") == [(s, v["val/mse"]) for s, v in recorded.validated.items()]
    assert _column(rows, "best/mse") == [(s, v["best/mse"]) for s, v in recorded.validated.items()]
    assert all(v > 0 for _, v in _column(rows, "time/iter_ms"))
    # every scalar TensorBoard wrote (float32) is the CSV's number at the same step
    acc = events(tmp_path / "tb")
    for tag in header[2:]:
        csv_series = _column(rows, tag)
        if tag.startswith("time/"):
            assert [s for s, _ in series(acc, tag)] == [s for s, _ in csv_series], tag
            continue
        expected = [(s, float(torch.tensor(v, dtype=torch.float32))) for s, v in csv_series]
        assert series(acc, tag) == expected, tag


def test_a_metric_appearing_mid_run_adds_a_column_and_moves_no_earlier_cell(tmp_path: Path) -> None:
    def loss_fn(model: nn.Module, batch: Any) -> Any:
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        if trainer.state.iteration >= 7:
            return {"loss": loss, "aux": loss.detach() + 1.0}
        return loss

    path = tmp_path / "metrics.csv"
    trainer = make_trainer(
        12, batch_size=2, max_epochs=3, run_dir=tmp_path, loss_fn=loss_fn, callbacks=[CSVLogger(every="1it")]
    )
    seen: list[tuple[int, int, list[str], list[list[str]]]] = []  # at each flush: step, inode, header, rows

    @trainer.on(Event.POST_EPOCH, priority=-500)  # after the logger's flush
    def look(t: BaseTrainer, **_: Any) -> None:
        raw = path.read_bytes()
        assert raw.endswith(b"\n")
        assert raw.count(b"step,epoch") == 1
        header, rows = table(path)
        assert all(len(row) == len(header) for row in rows)
        seen.append((t.state.iteration, os.stat(path).st_ino, header, rows))

    assert trainer.train() is Status.COMPLETED
    (s1, ino1, h1, r1), (s2, ino2, h2, r2), (s3, ino3, h3, r3) = seen
    assert (s1, s2, s3) == (6, 12, 18)
    base = ["step", "epoch", "train/loss", "time/iter_ms", "time/samples_per_s", "epoch/loss", "time/epoch_s"]
    assert h1 == h3[: len(h1)] == base
    assert h2 == h3 == [*base, "train/aux", "epoch/aux"]
    # the rows of epoch 1 are still there, the same cells, padded with empty ones for the new columns
    assert r2[: len(r1)] == [[*row, "", ""] for row in r1]
    assert r3[: len(r2)] == r2
    assert [row[0] for row in r3 if row[h3.index("train/aux")] != ""] == [str(i) for i in range(7, 19)]
    # the file was replaced (a new inode) only when the columns grew; otherwise appended to
    assert ino2 != ino1
    assert ino3 == ino2


def test_an_epoch_schedule_writes_epoch_rows_with_the_published_numbers_and_no_step_rows(tmp_path: Path) -> None:
    logger = CSVLogger(every="1ep")
    trainer, recorded = logged_run(tmp_path, logger, LRDecay(), max_epochs=3)
    assert Event.POST_STEP not in {h.event for h in trainer.handles_of(logger)}
    assert trainer.train() is Status.COMPLETED
    header, _ = table(tmp_path / "metrics.csv")
    assert header == ["step", "epoch", "val/mse", "best/mse", "epoch/loss", "time/epoch_s", "lr"]
    rows = _cells(tmp_path / "metrics.csv")
    assert [(row["step"], row["epoch"], row["epoch/loss"] != "") for row in rows] == [
        ("5", "1", False),
        ("5", "1", True),
        ("10", "2", False),
        ("10", "2", True),
        ("15", "3", False),
        ("15", "3", True),
    ]
    assert _column(rows, "epoch/loss") == [
        (5, recorded.loss(1, 5)),
        (10, recorded.loss(6, 10)),
        (15, recorded.loss(11, 15)),
    ]
    assert [s for s, _ in _column(rows, "lr")] == [5, 10, 15]


def test_trainer_log_numbers_share_a_row_per_step_and_strings_and_images_are_told_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer, _ = logged_run(tmp_path, CSVLogger(every="never"), max_epochs=1)

    @trainer.on(Event.POST_STEP, priority=-500)
    def log(t: BaseTrainer, **_: Any) -> None:
        step = t.state.iteration
        t.log("a", step * 0.5)
        t.log("b", torch.tensor([step + 0.25]))  # a one-element tensor: read when written
        t.log("note", f"step {step}")
        t.log("picture", torch.zeros(4, 4, 3))
        if step == 2:
            t.log("a", -1.0)  # the same name again at one step: a row of its own

    with caplog.at_level(logging.WARNING, logger="stepbus.csv"):
        assert trainer.train() is Status.COMPLETED
        with pytest.raises(TypeError, match=r"^CSVLogger 'CSVLogger': trainer.log\('bad', \.\.\.\) got a dict"):
            trainer.log("bad", {"x": 1})
        trainer.log("late", 1.0)  # after the end: not written, told once
        trainer.log("late", 2.0)
    rows = _cells(tmp_path / "metrics.csv")
    logged = [(r["step"], r["a"], r["b"]) for r in rows if r["a"] or r["b"]]
    assert logged == [
        ("1", "0.5", "1.25"),
        ("2", "1.0", "2.25"),
        ("2", "-1.0", ""),
        ("3", "1.5", "3.25"),
        ("4", "2.0", "4.25"),
        ("5", "2.5", "5.25"),
    ]
    assert "note" not in rows[0]
    assert "picture" not in rows[0]
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.csv"]
    assert len(messages) == 3  # once per name, and the log after the end
    assert "trainer.log('note', ...) sent a string; a CSV cell holds a number" in messages[0]
    assert "trainer.log('picture', ...) sent an image" in messages[1]
    assert "while the logger has nothing open" in messages[2]


def test_a_failed_run_flushes_its_rows_and_a_new_run_replaces_the_file_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer, recorded = logged_run(tmp_path, CSVLogger(every="1it"), fail_at=8)
    with pytest.raises(RuntimeError, match="loss failed at iteration 8"):
        trainer.train()
    assert trainer.status is Status.FAILED
    rows = _cells(tmp_path / "metrics.csv")
    losses = [float(v) for v in recorded.losses]
    assert _column(rows, "train/loss") == list(enumerate(losses, start=1))  # steps 1..7, flushed at the end
    assert len(rows) == 9  # and the validation and epoch rows at 5
    trainer.close()

    again, _ = logged_run(tmp_path, CSVLogger(every="1it"), max_epochs=1)
    with caplog.at_level(logging.WARNING, logger="stepbus.csv"):
        assert again.train() is Status.COMPLETED
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.csv"]
    assert messages == [
        f"CSVLogger 'CSVLogger': replaced {tmp_path / 'metrics.csv'}, which held {len(rows)} rows of an earlier run"
    ]
    assert [row["step"] for row in _cells(tmp_path / "metrics.csv")] == ["1", "2", "3", "4", "5", "5", "5"]


def test_a_file_removed_mid_run_is_started_over_with_the_rows_that_follow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer, _ = logged_run(tmp_path, CSVLogger(every="1it"))
    path = tmp_path / "metrics.csv"
    trainer.on(Event.POST_STEP, priority=-500)(lambda t, **_: path.unlink() if t.state.iteration == 7 else None)
    with caplog.at_level(logging.WARNING, logger="stepbus.csv"):
        assert trainer.train() is Status.COMPLETED
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.csv"]
    assert messages == [
        f"CSVLogger 'CSVLogger': {path} was removed or shortened during the run; started it over (7 earlier rows lost)"
    ]
    header, rows = table(path)
    step_columns = ["train/loss", "time/iter_ms", "time/samples_per_s"]
    assert header == ["step", "epoch", *step_columns, "val/mse", "best/mse", "epoch/loss", "time/epoch_s"]
    assert [row[0] for row in rows] == ["6", "7", "8", "9", "10", "10", "10"]  # queued since the flush at 5


@pytest.mark.parametrize("on_error", ["disable", "warn"])
def test_a_file_that_cannot_be_written_follows_on_error_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, on_error: str
) -> None:
    (tmp_path / "metrics.csv").mkdir()  # a folder where the file should be
    logger = CSVLogger(every="1it", on_error=on_error)  # type: ignore[arg-type]
    trainer, _ = logged_run(tmp_path, logger)
    with caplog.at_level(logging.WARNING, logger="stepbus.csv"):
        assert trainer.train() is Status.COMPLETED
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.csv"]
    assert all(f"could not write the rows in {tmp_path / 'metrics.csv'}: IsADirectoryError" in m for m in messages)
    if on_error == "disable":
        assert (logger.disabled, logger.failures, len(messages)) == (True, 1, 1)
        assert "the logger is disabled, training goes on" in messages[0]
    else:
        # tried at every flush: the start, 2 validations, 2 epoch ends, the end of the run
        assert (logger.disabled, logger.failures, len(messages)) == (False, 6, 6)
        assert all(m.endswith("; training goes on") for m in messages)
    assert trainer.state.failed_writes == {"CSVLogger": logger.failures}
    assert (tmp_path / "metrics.csv").is_dir()
    assert not list((tmp_path / "metrics.csv").iterdir())


def test_under_warn_a_file_blocked_mid_run_loses_those_rows_only_and_stays_valid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = CSVLogger(every="1it", on_error="warn")
    trainer, _ = logged_run(tmp_path, logger, max_epochs=3)
    path, aside = tmp_path / "metrics.csv", tmp_path / "aside.csv"

    @trainer.on(Event.POST_STEP, priority=-500)
    def block(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 6:  # a folder in the file's place: the flushes at iteration 10 fail
            path.rename(aside)
            path.mkdir()
        if t.state.iteration == 11:  # the file is back
            path.rmdir()
            aside.rename(path)

    with caplog.at_level(logging.WARNING, logger="stepbus.csv"):
        assert trainer.train() is Status.COMPLETED
    assert logger.failures == 2  # the validation's flush and the epoch's, at iteration 10
    assert len([r for r in caplog.records if "IsADirectoryError" in r.getMessage()]) == 2
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    assert raw.count(b"step,epoch") == 1
    rows = _cells(path)
    # the rows queued at the failed flushes (6..10) are lost; the file goes on with the next ones
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "5", "5", "11", "12", "13", "14", "15", "15", "15"]


def test_on_error_raise_fails_the_run_naming_the_logger(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").mkdir()
    trainer, _ = logged_run(tmp_path, CSVLogger(every="1it", on_error="raise"))
    with pytest.raises(CallbackError, match=r"CSVLogger\.pre_training") as info:
        trainer.train()
    assert isinstance(info.value.__cause__, IsADirectoryError)
    assert trainer.status is Status.FAILED


def test_constructor_errors_name_the_logger_the_parameter_and_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^CSVLogger 'CSVLogger': invalid schedule '0it'"):
        CSVLogger(every="0it")
    with pytest.raises(
        ValueError, match=r"^CSVLogger 'CSVLogger': on_error must be one of 'disable', 'warn', 'raise', got 'ignore'$"
    ):
        CSVLogger(on_error="ignore")  # type: ignore[arg-type]
    for bad in ("", "  ", "logs/", 3):
        with pytest.raises(
            ValueError, match=r"^CSVLogger 'CSVLogger': path must be a file name such as 'metrics.csv', got "
        ):
            CSVLogger(bad)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"^CSVLogger 'x': path 'metrics.csv' is relative and the trainer has no run_dir"
    ):
        make_trainer(callbacks=[CSVLogger(state_key="x")])
    absolute = CSVLogger(tmp_path / "elsewhere" / "m.csv")
    trainer = make_trainer(callbacks=[absolute])
    assert trainer.train() is Status.COMPLETED
    assert table(tmp_path / "elsewhere" / "m.csv")[0][:3] == ["step", "epoch", "epoch/loss"]


def test_config_validate_checks_the_csv_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("trainer: {name: demo, max_epochs: 1, samples: 64}\ncallbacks:\n  csv: {every: 10it}\n")
    assert main(["config", "validate", str(config)]) == 0
    assert capsys.readouterr().out == f"{config}: valid; trainer demo, callbacks: csv\n"
    for setting, words in [
        ("callbacks.csv.every=0it", "callbacks.csv.every: invalid schedule '0it': the period must be > 0"),
        (
            "callbacks.csv.on_error=ignore",
            "callbacks.csv.on_error: got 'ignore'; input should be 'disable', 'warn' or 'raise'",
        ),
        ("callbacks.csv.flush=1", "callbacks.csv.flush: unknown key for csv (CSVLogger); valid keys: path, every, "),
        ("callbacks.csv.path=../../x.csv", "callbacks.csv.path: '../../x.csv' resolves to"),
    ]:
        assert main(["config", "validate", str(config), "--set", setting]) == 2, setting
        assert words in capsys.readouterr().err, setting


def test_flush_writes_the_queued_rows_mid_epoch(tmp_path: Path) -> None:
    logger = CSVLogger(every="1it")
    trainer, recorded = logged_run(tmp_path, logger)
    for _ in range(3):  # mid-epoch: the rows wait for the epoch's end, a validation, a checkpoint or 256 rows
        trainer.iterate()
    path = tmp_path / "metrics.csv"
    before = path.read_text() if path.exists() else ""
    assert "\n1," not in before
    logger.flush()
    rows = _cells(path)
    assert [int(row["step"]) for row in rows] == [1, 2, 3]
    assert [float(row["train/loss"]) for row in rows] == [recorded.loss(i, i) for i in (1, 2, 3)]
    trainer.close()
