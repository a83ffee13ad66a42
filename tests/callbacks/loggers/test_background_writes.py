"""Loggers write on a thread of their own (``background=True``, the default): the events are the same as written on
the training thread, a logged tensor is read when it is logged, the writes run in order on the logger's thread,
which ends with the run, the queue is bounded, and a write that fails on the thread meets the logger's ``on_error``
policy on the training thread -- in a real MLflow run whose store breaks mid-run, and for each policy on the
writer itself."""

from __future__ import annotations

import io
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import MLflowLogger, TensorBoardLogger
from callbacks.loggers import background
from callbacks.loggers.background import BackgroundWriter
from callbacks.loggers.failure_policy import BackendGuard
from lifecycle import CallbackError, Event, Status
from tests.callbacks.loggers.runs import logged_run
from tests.tb_events import events, series
from trainers import BaseTrainer

_log = logging.getLogger("stepbus.test-background")


def _log_extras(trainer: BaseTrainer) -> None:
    """At iterations 3 and 7: a number, an image and a text through ``trainer.log``."""

    @trainer.on(Event.POST_STEP, priority=10)
    def extras(t: BaseTrainer, **_: Any) -> None:
        i = t.state.iteration
        if i in (3, 7):
            t.log("extra/number", torch.tensor(float(i) / 4))
            t.log("extra/image", torch.full((2, 3, 3), i / 10))
            t.log("extra/text", f"at {i}")


def _written(directory: Path) -> dict[str, Any]:
    """Every scalar series but the wall times, every image's bytes and every text, by tag."""
    acc = events(directory)
    tags = acc.Tags()
    written: dict[str, Any] = {
        tag: series(acc, tag) for tag in tags["scalars"] if not tag.startswith(("time/", "hparam/"))
    }
    written.update({tag: [(e.step, e.encoded_image_string) for e in acc.Images(tag)] for tag in tags["images"]})
    written.update({tag: [(e.step, e.tensor_proto.string_val) for e in acc.Tensors(tag)] for tag in tags["tensors"]})
    return written


def test_the_events_are_those_written_on_the_training_thread(tmp_path: Path) -> None:
    written = []
    for on_thread in (True, False):
        torch.manual_seed(0)
        run_dir = tmp_path / f"background-{on_thread}"
        logger = TensorBoardLogger(every="2it", background=on_thread)
        trainer, _ = logged_run(run_dir, logger)
        _log_extras(trainer)
        assert trainer.train() is Status.COMPLETED
        written.append(_written(run_dir / "tb"))
    on_thread, on_training_thread = written
    assert {"train/loss", "epoch/loss", "val/mse", "extra/number", "extra/image", "extra/text/text_summary"} <= set(
        on_thread
    )
    assert [step for step, _ in on_thread["train/loss"]] == [2, 4, 6, 8, 10]
    assert on_thread == on_training_thread


def test_a_logged_tensor_is_read_when_it_is_logged(tmp_path: Path) -> None:
    logger = TensorBoardLogger(every="never")
    trainer, _ = logged_run(tmp_path, logger, images=False)
    number, image = torch.tensor(0.25), torch.zeros(2, 2, 3)

    @trainer.on(Event.POST_STEP, priority=10)
    def log_then_change(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 2:
            t.log("changed/number", number)
            t.log("changed/image", image)
            number.add_(100.0)  # the step goes on with its tensors
            image.fill_(1.0)

    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    assert series(acc, "changed/number") == [(2, 0.25)]
    [picture] = acc.Images("changed/image")
    assert (picture.height, picture.width) == (2, 2)
    assert np.array(Image.open(io.BytesIO(picture.encoded_image_string))).max() == 0  # zeros, not the later ones


def test_the_writes_run_on_the_loggers_thread_which_ends_with_the_run(tmp_path: Path) -> None:
    logger = TensorBoardLogger(every="1it")
    trainer, _ = logged_run(tmp_path, logger)
    seen: list[list[str]] = []

    @trainer.on(Event.POST_STEP, priority=-10_000)  # after the logger's row of this step
    def threads(t: BaseTrainer, **_: Any) -> None:
        seen.append(sorted(th.name for th in threading.enumerate() if th.name.startswith("stepbus-")))

    assert trainer.train() is Status.COMPLETED
    assert seen[0] == ["stepbus-TensorBoardLogger"]  # started by the first row
    assert not [th for th in threading.enumerate() if th.name.startswith("stepbus-TensorBoardLogger")]
    assert [step for step, _ in series(events(tmp_path / "tb"), "train/loss")] == list(range(1, 11))


# ---------------------------------------------------------------------------------------------------- failures
def _drop_metrics_table(database: Path, iteration: int, trainer: BaseTrainer) -> None:
    @trainer.on(Event.POST_STEP, priority=10)  # before the logger's row of that step
    def drop(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == iteration:
            with sqlite3.connect(database) as connection:
                connection.execute("DROP TABLE metrics")


def test_a_store_broken_mid_run_disables_the_logger_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    database = tmp_path / "broken.db"
    logger = MLflowLogger(tracking_uri=f"sqlite:///{database}", every="1it")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    _drop_metrics_table(database, 3, trainer)
    with caplog.at_level(logging.WARNING, logger="stepbus.mlflow"):
        assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 10
    assert (logger.disabled, logger.failures) == (True, 1)  # the writes queued behind the failed one: dropped
    assert trainer.state.failed_writes == {"MLflowLogger": 1}
    [message] = [r.getMessage() for r in caplog.records if r.name == "stepbus.mlflow"]
    assert "could not log metrics in sqlite:///" in message
    assert "no such table: metrics" in message
    assert message.endswith("the logger is disabled, training goes on")
    from mlflow.tracking import MlflowClient

    assert MlflowClient(f"sqlite:///{database}").get_run(logger.run_id).info.status == "FAILED"


def test_on_error_raise_fails_the_run_at_a_later_event_of_the_logger(tmp_path: Path) -> None:
    database = tmp_path / "broken.db"
    logger = MLflowLogger(tracking_uri=f"sqlite:///{database}", every="1it", on_error="raise")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    _drop_metrics_table(database, 3, trainer)
    with pytest.raises(CallbackError, match=r"MLflowLogger\.post_(step|validation|epoch)") as raised:
        trainer.train()
    assert trainer.status is Status.FAILED
    assert "no such table: metrics" in str(raised.value.__cause__)
    assert 3 <= trainer.state.iteration <= 5  # at the logger's next write, or at the latest its epoch's end flush


# ---------------------------------------------------------------------------------------------------- the writer
def _writer(on_error: str, **options: Any) -> tuple[BackgroundWriter, BackendGuard]:
    guard = BackendGuard("TestLogger 'x'", on_error, _log, lambda: "the-store")  # type: ignore[arg-type]
    return BackgroundWriter(guard, "stepbus-test", **options), guard


def test_writes_run_in_order_and_a_full_queue_makes_the_next_write_wait() -> None:
    writer, _ = _writer("raise", capacity=2)
    release, done = threading.Event(), []
    assert writer.submit("block", release.wait)
    assert writer.submit("one", lambda: done.append(1))
    assert writer.submit("two", lambda: done.append(2))  # the queue: 2 waiting (one running)
    third = threading.Thread(target=writer.submit, args=("three", lambda: done.append(3)))
    third.start()
    third.join(0.3)
    assert third.is_alive()
    assert done == []
    release.set()
    third.join(10)
    assert writer.flush()
    assert done == [1, 2, 3]
    assert writer.pending == 0
    writer.close()


def test_the_thread_ends_when_idle_and_a_new_write_starts_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "IDLE_SECONDS", 0.05)
    writer, _ = _writer("raise")
    names: list[str] = []
    writer.submit("first", lambda: names.append(threading.current_thread().name))
    assert writer.flush()
    deadline = time.monotonic() + 10
    while any(t.name == "stepbus-test" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "stepbus-test" for t in threading.enumerate())
    writer.submit("second", lambda: names.append(threading.current_thread().name))
    assert writer.close()
    assert names == ["stepbus-test", "stepbus-test"]
    assert not any(t.name == "stepbus-test" for t in threading.enumerate())


def _fail(message: str) -> None:
    raise OSError(message)


def test_warn_reports_each_failure_in_order_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    writer, guard = _writer("warn")
    done: list[int] = []
    with caplog.at_level(logging.WARNING, logger=_log.name):
        writer.submit("write a", lambda: _fail("first"))
        writer.submit("write b", lambda: done.append(1))
        writer.submit("write c", lambda: _fail("second"))
        assert writer.flush()
    assert done == [1]
    assert guard.failures == 2
    assert not guard.disabled
    assert [r.getMessage() for r in caplog.records] == [
        "TestLogger 'x' could not write a in the-store: OSError: first; training goes on",
        "TestLogger 'x' could not write c in the-store: OSError: second; training goes on",
    ]
    writer.close()


def test_disable_drops_the_queued_writes_and_refuses_new_ones(caplog: pytest.LogCaptureFixture) -> None:
    writer, guard = _writer("disable")
    release, done = threading.Event(), []
    with caplog.at_level(logging.WARNING, logger=_log.name):
        writer.submit("wait", release.wait)
        writer.submit("write a", lambda: _fail("full"))
        writer.submit("write b", lambda: done.append(1))  # behind the failure: dropped
        release.set()
        assert writer.flush() is False
        assert writer.submit("write c", lambda: done.append(2)) is False
        writer.close()
    assert done == []
    assert guard.disabled
    assert guard.failures == 1
    assert [r.getMessage() for r in caplog.records] == [
        "TestLogger 'x' could not write a in the-store: OSError: full; the logger is disabled, training goes on"
    ]


def test_raise_raises_the_failure_at_the_next_call_on_the_callers_thread() -> None:
    writer, guard = _writer("raise")
    done: list[int] = []
    writer.submit("write a", lambda: _fail("broken"))
    writer.wait()
    with pytest.raises(OSError, match="broken"):
        writer.submit("write b", lambda: done.append(1))
    assert guard.raised
    assert done == []
    writer.close()


def test_background_false_writes_at_once_on_the_callers_thread() -> None:
    writer, _ = _writer("raise", enabled=False)
    names: list[str] = []
    assert writer.submit("now", lambda: names.append(threading.current_thread().name))
    assert names == [threading.current_thread().name]
    assert writer.pending == 0
    with pytest.raises(OSError, match="at once"):
        writer.submit("fail", lambda: _fail("at once"))
