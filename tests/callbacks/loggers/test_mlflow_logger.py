"""``MLflowLogger`` writes real MLflow runs into real SQLite stores, read back with ``MlflowClient``: metric histories
(steps and values of the step, epoch and validation rows, ``lr``, ``trainer.log`` numbers), params from the config
(long values, refused keys), tags, the run's name and experiment, artifacts downloaded and compared byte for byte
(validation and logged images, text, ``config.json``, the best checkpoint), the run status for each way a training
ends, two trainers in one store, the ``on_error`` policies under real store faults, the refusals at construction and
the missing-package message (in a subprocess). The kill -9 test is in ``test_mlflow_resume.py``.

Creating an SQLite store costs about a second (MLflow's migrations), so the tests that read one run share it through
module-scoped fixtures, and the ending tests log into one shared store."""

from __future__ import annotations

import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from callbacks import Checkpointer, LRDecay, MLflowLogger
from callbacks.images import to_uint8_hwc
from lifecycle import CallbackError, Event, Status
from tests.callbacks.loggers.runs import BATCH, logged_run
from trainers import BaseTrainer

ROOT = Path(__file__).resolve().parents[3]
LOGGED_IMAGE = torch.linspace(0, 1, 4 * 3 * 2).reshape(4, 3, 2)  # grey + alpha
LONG = "0123456789" * 700  # 7000 characters: over MLflow's 6000 for a param value


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of the run under ``path``, recursively, sorted."""
    found: list[str] = []
    for info in client.list_artifacts(run_id, path):
        found.extend(artifact_files(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(found)


def png_pixels(path: Path) -> np.ndarray[Any, Any]:
    with Image.open(path) as decoded:
        return np.asarray(decoded)


# ---------------------------------------------------------------------------------------------------- one full run


@dataclass
class FullRun:
    logger: MLflowLogger
    trainer: BaseTrainer
    client: MlflowClient
    run: Any
    recorded: Any
    lrs: list[float]
    config: dict[str, Any]
    downloads: Path
    warnings: list[str]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> FullRun:
    base = tmp_path_factory.mktemp("mlflow-full")
    logger = MLflowLogger(every="2it", run_name="linear-1", tags={"team": "field"}, log_checkpoint=True)
    # saves at 3, 6, 9 and the end save at 10; mode="max" makes the best (6) another file than the last (10)
    checkpointer = Checkpointer(every="3it", monitor="val/mse", mode="max")
    trainer, recorded = logged_run(base / "run", logger, LRDecay(), checkpointer)
    config = {
        "model": {"width": 3, "act": "relu"},
        "lr": 0.05,
        "blob": LONG,
        "bad key!": 1,
        "flag": True,
        "milestones": [0.5, 0.75],
        "nothing": None,
    }
    trainer.config = config
    lrs: list[float] = []
    trainer.on(Event.POST_STEP, priority=-50)(lambda t, **_: lrs.append(t.state.metrics["lr"]))

    @trainer.on(Event.POST_STEP)
    def log_values(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == 3:
            t.log("custom/score", 0.25)
            t.log("custom/tensor", torch.tensor([1.5]))
            t.log("sample", LOGGED_IMAGE)
            t.log("note", "hello at 3")

    warnings = Collect()
    logging.getLogger("stepbus.mlflow").addHandler(warnings)
    try:
        assert trainer.train() is Status.COMPLETED
    finally:
        logging.getLogger("stepbus.mlflow").removeHandler(warnings)
    assert logger.run_id is not None
    client = MlflowClient(f"sqlite:///{base / 'run' / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(logger.run_id)
    return FullRun(logger, trainer, client, run, recorded, lrs, config, base / "downloads", warnings.messages)


def test_step_epoch_and_validation_metrics_with_their_steps_and_values(full: FullRun) -> None:
    client, run_id, rec = full.client, full.run.info.run_id, full.recorded
    assert set(full.run.data.metrics) == {
        "train/loss", "time/iter_ms", "time/samples_per_s", "lr",  # the "2it" rows
        "epoch/loss", "time/epoch_s",  # each epoch's end
        "val/mse", "best/mse",  # each validation
        "custom/score", "custom/tensor",  # trainer.log numbers
    }  # fmt: skip
    loss = history(client, run_id, "train/loss")
    assert [step for step, _ in loss] == [2, 4, 6, 8, 10]
    for step, value in loss:  # the mean of exactly the losses since the previous row
        assert value == pytest.approx(rec.loss(step - 1, step), rel=1e-6), step
    assert history(client, run_id, "lr") == [(step, full.lrs[step - 1]) for step in (2, 4, 6, 8, 10)]
    iter_ms = dict(history(client, run_id, "time/iter_ms"))
    for step, per_second in history(client, run_id, "time/samples_per_s"):
        assert per_second * iter_ms[step] == pytest.approx(BATCH * 1000.0), step
    epoch = history(client, run_id, "epoch/loss")
    assert [step for step, _ in epoch] == [5, 10]
    assert epoch[0][1] == pytest.approx(rec.loss(1, 5), rel=1e-6)
    assert epoch[1][1] == pytest.approx(rec.loss(6, 10), rel=1e-6)
    assert [step for step, _ in history(client, run_id, "time/epoch_s")] == [5, 10]
    # validation: exactly what the validator published, at its iterations
    assert sorted(rec.validated) == [5, 10]
    for key in ("val/mse", "best/mse"):
        assert history(client, run_id, key) == [(step, rec.validated[step][key]) for step in (5, 10)]
    assert history(client, run_id, "custom/score") == [(3, 0.25)]
    assert history(client, run_id, "custom/tensor") == [(3, 1.5)]


def test_params_tags_name_experiment_and_status(full: FullRun) -> None:
    run, client = full.run, full.client
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "linear-1"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "stepbus"
    artifacts = (full.trainer.run_dir / "mlruns" / "artifacts").resolve()  # type: ignore[operator]
    assert experiment.artifact_location == artifacts.as_uri()
    assert run.info.artifact_uri == f"{artifacts.as_uri()}/{run.info.run_id}/artifacts"
    # the config flattened, as text; the long value cut to MLflow's 6000 characters; "bad key!" left out
    assert run.data.params == {
        "model.width": "3",
        "model.act": "relu",
        "lr": "0.05",
        "blob": LONG[:5997] + "...",
        "flag": "True",
        "milestones": "[0.5, 0.75]",
        "nothing": "None",
        "max_epochs": "2",
        "iterations_per_epoch": "5",
    }
    assert full.warnings == [
        "MLflowLogger 'MLflowLogger': config keys MLflow refuses as param names were left out of the params: "
        "bad key! (config.json holds them)"
    ]
    saved = full.trainer.state.saved_checkpoints()
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or k == "mlflow.runName"}
    assert tags == {
        "team": "field",
        "mlflow.runName": "linear-1",
        "stepbus.run_dir": str(full.trainer.run_dir.resolve()),  # type: ignore[union-attr]
        "stepbus.status": "completed",
        "stepbus.iterations": "10",
        "stepbus.epochs": "2",
        "stepbus.checkpoint.last": str(saved["last"].path),
        "stepbus.checkpoint.best": str(saved["best"].path),
        "stepbus.checkpoint": "checkpoint/step-00000006.pt (best)",
    }


def test_artifacts_images_text_config_and_the_best_checkpoint(full: FullRun) -> None:
    client, run_id = full.client, full.run.info.run_id
    assert artifact_files(client, run_id) == [
        "checkpoint/step-00000006.pt",
        "config.json",
        "images/sample/step-00000003.png",
        "images/val/field/step-00000005.png",
        "images/val/field/step-00000010.png",
        "text/note/step-00000003.txt",
    ]
    local = Path(client.download_artifacts(run_id, "", str(full.downloads)))
    # validation images: the validator's pixels; the logged image: grey + alpha as it was given
    for step, image in zip((5, 10), full.recorded.images, strict=True):
        pixels = png_pixels(local / f"images/val/field/step-{step:08d}.png")
        np.testing.assert_array_equal(pixels, to_uint8_hwc(image).numpy())
    sample = png_pixels(local / "images/sample/step-00000003.png")
    np.testing.assert_array_equal(sample, to_uint8_hwc(LOGGED_IMAGE).numpy())
    assert (local / "text/note/step-00000003.txt").read_text() == "hello at 3"
    assert json.loads((local / "config.json").read_text()) == {
        **full.config,
        "max_epochs": 2,
        "iterations_per_epoch": 5,
    }
    best = full.trainer.state.best_checkpoint
    assert best is not None
    assert best.path.name == "step-00000006.pt"
    assert (local / "checkpoint/step-00000006.pt").read_bytes() == best.path.read_bytes()


# ---------------------------------------------------------------------------------------------------- how runs end


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the tests that need many runs (its artifacts go beside it)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-shared') / 'shared.db'}"


def _on_step(iteration: int, action: Callable[[BaseTrainer], None]) -> Callable[[BaseTrainer], None]:
    def set_up(trainer: BaseTrainer) -> None:
        @trainer.on(Event.POST_STEP)
        def act(t: BaseTrainer, **_: Any) -> None:
            if t.state.iteration == iteration:
                action(t)

    return set_up


def _sigint(t: BaseTrainer) -> None:
    # a real signal to this (the main) thread, caught by train()'s handler; a process-directed one
    # (os.kill(os.getpid(), ...)) may, by POSIX, go to any thread that does not block it -- the writer threads too
    signal.raise_signal(signal.SIGINT)


def _fail_at_the_end(trainer: BaseTrainer) -> None:
    @trainer.on(Event.POST_TRAINING)  # priority 0: before the logger's post_training (FINAL)
    def fail(t: BaseTrainer, **_: Any) -> None:
        raise RuntimeError("a post_training handler failed")


ENDINGS: dict[str, tuple[Status, str, list[int], dict[str, Any]]] = {
    "completed": (Status.COMPLETED, "FINISHED", list(range(1, 11)), {}),
    "stopped": (Status.STOPPED, "FINISHED", [1, 2, 3], {"set_up": _on_step(3, lambda t: t.stop())}),
    "failed": (Status.FAILED, "FAILED", [1, 2, 3, 4, 5, 6], {"fail_at": 7, "error": RuntimeError}),
    "interrupted": (Status.INTERRUPTED, "KILLED", [1, 2, 3], {"set_up": _on_step(3, _sigint)}),
    # every post_training handler runs even when one raises: the logger's, after the failing one, was told
    # "completed"; the training then fails
    "post_training_fails": (
        Status.FAILED,
        "FINISHED",
        list(range(1, 11)),
        {"set_up": _fail_at_the_end, "error": CallbackError},
    ),
}


@pytest.mark.parametrize("name", list(ENDINGS))
def test_the_run_status_follows_how_the_training_ended(tmp_path: Path, shared_store: str, name: str) -> None:
    status, mlflow_status, steps, options = ENDINGS[name]
    logger = MLflowLogger(f"endings-{name}", tracking_uri=shared_store, every="1it")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False, fail_at=options.get("fail_at"))
    if "set_up" in options:
        options["set_up"](trainer)
    if "error" in options:
        with pytest.raises(options["error"]):
            trainer.train()
    else:
        assert trainer.train() is status
    assert trainer.status is status
    assert logger.client is None  # the run was ended
    assert logger.run_id is not None
    client = MlflowClient(shared_store)
    run = client.get_run(logger.run_id)
    assert run.info.status == mlflow_status
    assert run.info.end_time is not None
    logged = "completed" if name == "post_training_fails" else str(status)
    assert run.data.tags["stepbus.status"] == logged
    assert run.data.tags["stepbus.iterations"] == str(steps[-1] + (name == "failed"))
    assert [step for step, _ in history(client, logger.run_id, "train/loss")] == steps
    assert not (tmp_path / "run" / "mlruns").exists()  # the given store, not the default one


def test_an_epoch_schedule_logs_epoch_rows_only(tmp_path: Path, shared_store: str) -> None:
    logger = MLflowLogger("epoch-rows", tracking_uri=shared_store, every="1ep")
    trainer, rec = logged_run(tmp_path / "run", logger, LRDecay(), images=False)
    assert trainer.train() is Status.COMPLETED
    assert logger.run_id is not None
    client = MlflowClient(shared_store)
    run = client.get_run(logger.run_id)
    assert set(run.data.metrics) == {"epoch/loss", "time/epoch_s", "lr", "val/mse", "best/mse"}
    assert [step for step, _ in history(client, logger.run_id, "epoch/loss")] == [5, 10]
    assert [step for step, _ in history(client, logger.run_id, "lr")] == [5, 10]
    assert history(client, logger.run_id, "epoch/loss")[1][1] == pytest.approx(rec.loss(6, 10), rel=1e-6)


def test_two_trainers_in_one_process_and_one_store_keep_two_runs(tmp_path: Path, shared_store: str) -> None:
    loggers = (
        MLflowLogger("two", tracking_uri=shared_store, every="5it"),
        MLflowLogger("two", tracking_uri=shared_store, every="5it"),
    )
    first, first_rec = logged_run(tmp_path / "a", loggers[0], images=False)
    second, second_rec = logged_run(tmp_path / "b", loggers[1], max_epochs=1, images=False)
    for _ in range(5):  # interleaved: both runs are open at once
        first.iterate()
        second.iterate()
    assert second.status is Status.COMPLETED
    assert first.train() is Status.COMPLETED
    client = MlflowClient(shared_store)
    ids = [logger.run_id for logger in loggers]
    assert ids[0] != ids[1]
    runs = [client.get_run(run_id) for run_id in ids if run_id is not None]
    assert [run.info.run_name for run in runs] == ["a", "b"]
    assert runs[0].info.experiment_id == runs[1].info.experiment_id
    for run, rec, steps in zip(runs, (first_rec, second_rec), ([5, 10], [5]), strict=True):
        assert run.info.status == "FINISHED"
        loss = history(client, run.info.run_id, "train/loss")
        assert [step for step, _ in loss] == steps
        for step, value in loss:
            assert value == pytest.approx(rec.loss(step - 4, step), rel=1e-6)
        assert history(client, run.info.run_id, "val/mse") == [(s, rec.validated[s]["val/mse"]) for s in steps]


def test_a_resume_in_process_continues_the_run_and_keeps_the_first_params(
    tmp_path: Path, shared_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    first_logger = MLflowLogger("continued", tracking_uri=shared_store, every="1it")
    first, _ = logged_run(tmp_path / "run", first_logger, Checkpointer(every="1ep"), images=False)
    first.config = {"lr": 0.05, "width": 3}
    for _ in range(7):  # saved at 5; steps 6 and 7 logged beyond the checkpoint, then abandoned
        first.iterate()
    run_id = first_logger.run_id
    assert run_id is not None
    first.remove_callback(first_logger)  # ends the run (FINISHED)
    first.close()  # the run directory's lock
    logger = MLflowLogger("continued", tracking_uri=shared_store, every="1it")
    trainer, rec = logged_run(tmp_path / "run", logger, Checkpointer(every="1ep"), images=False)
    trainer.config = {"lr": 0.01, "width": 3, "depth": 2}  # lr changed, depth new
    assert trainer.restore("auto") == tmp_path / "run" / "checkpoints" / "step-00000005.pt"
    assert logger.run_id == run_id
    seen: list[str] = []
    trainer.on(Event.PRE_STEP)(lambda t, **_: seen.append(MlflowClient(shared_store).get_run(run_id).info.status))
    with caplog.at_level(logging.WARNING, logger="stepbus.mlflow"):
        assert trainer.train() is Status.COMPLETED
    assert seen[0] == "RUNNING"  # set back when the resumed training opened it
    client = MlflowClient(shared_store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # steps 6 and 7 once (the first process's values: the same, the training being deterministic), then 8..10
    loss = history(client, run_id, "train/loss")
    assert [step for step, _ in loss] == list(range(1, 11))
    for step, value in loss[7:]:
        assert value == pytest.approx(rec.loss(step - 5, step - 5), rel=1e-6)
    assert run.data.params == {"lr": "0.05", "width": "3", "depth": "2", "max_epochs": "2", "iterations_per_epoch": "5"}
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.mlflow"]
    assert messages == [
        f"MLflowLogger 'MLflowLogger': the config changed lr since run {run_id} logged them; MLflow params cannot "
        "change, so they keep their first values (config.json holds the new ones)"
    ]


def test_run_id_continues_an_existing_run_and_refuses_an_unknown_one(tmp_path: Path, shared_store: str) -> None:
    first = MLflowLogger("by-id", tracking_uri=shared_store, every="5it")
    trainer, _ = logged_run(tmp_path / "a", first, max_epochs=1, images=False)
    assert trainer.train() is Status.COMPLETED
    assert first.run_id is not None
    again = MLflowLogger("by-id", tracking_uri=shared_store, every="5it", run_id=first.run_id)
    trainer, _ = logged_run(tmp_path / "b", again, max_epochs=2, images=False)
    assert trainer.train() is Status.COMPLETED
    client = MlflowClient(shared_store)
    # the second training's step 5 is skipped (the run has it), its step 10 is new
    assert [step for step, _ in history(client, first.run_id, "train/loss")] == [5, 10]
    unknown = MLflowLogger("by-id", tracking_uri=shared_store, run_id="0" * 32, on_error="raise")
    trainer, _ = logged_run(tmp_path / "c", unknown, max_epochs=1, images=False)
    with pytest.raises(CallbackError, match=r"MLflowLogger\.pre_training") as caught:
        trainer.train()
    assert f"run_id='{'0' * 32}': the store {shared_store} has no such run (or it was deleted)" in str(caught.value)


# ---------------------------------------------------------------------------------------------------- on_error


def test_a_store_that_cannot_be_created_disables_the_logger_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mlruns").write_text("a file where the store's folder should be")
    logger = MLflowLogger(every="1it")
    trainer, _ = logged_run(run_dir, logger, images=False)
    with caplog.at_level(logging.WARNING, logger="stepbus.mlflow"):
        assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 10
    assert (logger.disabled, logger.failures, logger.client) == (True, 1, None)
    assert trainer.state.failed_writes == {"MLflowLogger": 1}
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.mlflow"]
    assert len(messages) == 1  # warned once
    uri = f"sqlite:///{(run_dir / 'mlruns' / 'mlflow.db').resolve()}"
    assert messages[0].startswith(f"MLflowLogger 'MLflowLogger' could not start the run in {uri}: ")
    assert messages[0].endswith("; the logger is disabled, training goes on")
    assert (run_dir / "mlruns").read_text() == "a file where the store's folder should be"


def test_on_error_raise_fails_the_run_naming_the_logger(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mlruns").write_text("blocked")
    trainer, _ = logged_run(run_dir, MLflowLogger(every="1it", on_error="raise"), images=False)
    with pytest.raises(CallbackError, match=r"MLflowLogger\.pre_training"):
        trainer.train()
    assert trainer.status is Status.FAILED


def test_an_unreachable_server_is_warned_about_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once instead of retried for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = "http://127.0.0.1:9"  # the discard port: nothing listens there
    logger = MLflowLogger(tracking_uri=uri, every="1it", on_error="warn")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    with caplog.at_level(logging.WARNING, logger="stepbus.mlflow"):
        assert trainer.train() is Status.COMPLETED
    assert (logger.disabled, logger.failures, logger.run_id) == (False, 1, None)
    [message] = [r.getMessage() for r in caplog.records if r.name == "stepbus.mlflow"]
    assert message.startswith(f"MLflowLogger 'MLflowLogger' could not start the run in {uri}: ")
    assert message.endswith("; training goes on")


def _drop_metrics_table(database: Path) -> Callable[[BaseTrainer], None]:
    def drop(t: BaseTrainer) -> None:
        with sqlite3.connect(database) as connection:
            connection.execute("DROP TABLE metrics")

    return drop


@pytest.mark.parametrize(("on_error", "failures"), [("disable", 1), ("warn", 12)])
def test_a_store_broken_mid_run_follows_the_policy(
    tmp_path: Path, shared_store: str, caplog: pytest.LogCaptureFixture, on_error: str, failures: int
) -> None:
    database = tmp_path / "broken.db"
    # written on the training thread: the table is dropped between the rows of steps 2 and 3, not while a queued
    # row waits (the background writer's failures: tests/callbacks/loggers/test_background_writes.py)
    logger = MLflowLogger(tracking_uri=f"sqlite:///{database}", every="1it", on_error=on_error, background=False)
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    _on_step(3, _drop_metrics_table(database))(trainer)  # at step 3, before the logger's row (priority 0 > -100)
    with caplog.at_level(logging.WARNING, logger="stepbus.mlflow"):
        assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 10
    # "disable": the row of step 3 fails, the logger stops; "warn": every later write fails -- the step rows of 3..10,
    # the epoch rows and the validations at 5 and 10
    assert (logger.disabled, logger.failures) == (on_error == "disable", failures)
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.mlflow"]
    assert len(messages) == failures
    assert all("could not log metrics in sqlite:///" in m and "no such table: metrics" in m for m in messages)
    run = MlflowClient(f"sqlite:///{database}").get_run(logger.run_id)
    # disabled: ended as failed at once; warned: the end still worked (tags and status live in other tables)
    assert run.info.status == ("FAILED" if on_error == "disable" else "FINISHED")


# ---------------------------------------------------------------------------------------------------- host syncs


@contextmanager
def host_syncs() -> Iterator[dict[str, int]]:
    """Count torch's tensor-to-Python conversions (each one waits for the device) while the block runs."""
    counts = {"item": 0, "tolist": 0, "__float__": 0, "__bool__": 0, "__int__": 0}
    with pytest.MonkeyPatch.context() as patch:
        for name in counts:
            original = getattr(torch.Tensor, name)

            def counted(self: torch.Tensor, *args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
                counts[_name] += 1
                return _original(self, *args, **kw)

            patch.setattr(torch.Tensor, name, counted)
        yield counts


def test_one_host_copy_per_log_point_and_none_per_step(tmp_path: Path, shared_store: str) -> None:
    baseline, _ = logged_run(tmp_path / "baseline", images=False)
    with host_syncs() as without:
        assert baseline.train() is Status.COMPLETED
    logger = MLflowLogger("syncs", tracking_uri=shared_store, every="5it")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    with host_syncs() as counts:
        assert trainer.train() is Status.COMPLETED
    # 10 steps; log points: the rows at 5 and 10 and the epoch means at 5 and 10 -- one tolist() each
    added = {name: counts[name] - without[name] for name in counts}
    assert added == {"item": 0, "tolist": 4, "__float__": 0, "__bool__": 0, "__int__": 0}
    assert [step for step, _ in history(MlflowClient(shared_store), logger.run_id, "train/loss")] == [5, 10]


# ---------------------------------------------------------------------------------------------------- refusals


def test_constructor_errors_name_the_parameter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    owner = "MLflowLogger 'MLflowLogger'"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"every": 0}, "invalid schedule 0"),
        ({"experiment": " "}, "experiment must be a non-empty string, got ' '"),
        ({"run_name": 3}, "run_name must be a non-empty string, got 3"),
        ({"log_images": "yes"}, "log_images must be true or false, got 'yes'"),
        ({"log_checkpoint": 1}, "log_checkpoint must be true or false, got 1"),
        ({"run_id": "a/b"}, "run_id must be an MLflow run id (letters and digits), got 'a/b'"),
        ({"tags": ["a"]}, "tags must map names to strings, got ['a']"),
        ({"tags": {"v": 2}}, "tags must map names to strings, got {'v': 2}"),
        ({"tags": {"a/../b": "x"}}, "tag name 'a/../b' is not one MLflow accepts"),
        ({"on_error": "ignore"}, "on_error must be one of 'disable', 'warn', 'raise', got 'ignore'"),
        ({"tracking_uri": ""}, "tracking_uri must be a non-empty string, got ''"),
        ({"tracking_uri": "./mlruns"}, "for a local store pass dir='./mlruns' instead"),
        ({"tracking_uri": "sqlit:///x.db"}, "has the scheme 'sqlit', which MLflow does not know; valid schemes: "),
        ({"tracking_uri": "file:///tmp/mlruns"}, "unless the environment has MLFLOW_ALLOW_FILE_STORE=true"),
        ({"tracking_uri": "sqlite:///x.db", "dir": "y"}, "dir='y' is the folder of the default store"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            MLflowLogger(**kwargs)
        assert str(caught.value).startswith(owner), kwargs
    with pytest.raises(ValueError, match=r"needs a directory: pass MLflowLogger\(dir=\.\.\.\)"):
        logged_run(None, MLflowLogger())  # type: ignore[arg-type]  # no run_dir
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert MLflowLogger(tracking_uri="file:///tmp/mlruns").tracking_uri == "file:///tmp/mlruns"
    assert MLflowLogger(tracking_uri="postgresql+psycopg2://u@h/db").tracking_uri == "postgresql+psycopg2://u@h/db"


MISSING_CHILD = """
import sys
sys.modules["mlflow"] = None  # as if the package were not installed
import torch
from torch import nn
from torch.utils.data import TensorDataset
from callbacks import MLflowLogger
from trainers import BaseTrainer
try:
    BaseTrainer(nn.Linear(1, 1), TensorDataset(torch.zeros(2, 1), torch.zeros(2, 1)), max_epochs=1, batch_size=1,
                run_dir=sys.argv[1], loss_fn=lambda m, b: m(b[0]).sum(), callbacks=[MLflowLogger()])
except ModuleNotFoundError as exc:
    print("REFUSED", exc.name, str(exc))
"""


def test_a_missing_package_is_refused_with_the_install_command(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", MISSING_CHILD, str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == (
        "REFUSED mlflow MLflowLogger 'MLflowLogger' needs the mlflow package: pip install \"mlflow-skinny>=3.0\" "
        '"sqlalchemy>=2" "alembic>=1.13" (stepbus\'s \'mlflow\' extra: pip install "/path/to/stepbus[mlflow]" '
        "from a clone)"
    ), child.stdout
    assert not (tmp_path / "run" / "mlruns").exists()
