"""``WandbLogger`` writes real W&B runs in offline mode, read back from the ``.wandb`` run file with
``tests.callbacks.loggers.wandb_records``: the rows (steps, window and epoch means, validation values, images, ``lr``),
the run record and config, the exit code and summary for each way a run ends, the checkpoint artifact, a resume after a
killed process, ``mode="disabled"``, the ``on_error`` policy, the missing-package and no-credentials refusals (in
subprocesses, the latter on a real pseudo-terminal), two runs in one process and the host syncs per step.

Nothing here mocks W&B, and nothing reaches the network: every run is offline and W&B's own directories (config,
cache, data, artifacts) point into the test's ``tmp_path``."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import Checkpointer, EarlyStopping, LRDecay, WandbLogger
from callbacks.images import to_uint8_hwc
from lifecycle import CallbackError, Event, Status
from tests.callbacks.loggers.runs import BATCH, logged_run
from tests.callbacks.loggers.wandb_records import (
    artifacts,
    complete,
    config,
    exit_record,
    history,
    read_records,
    run_files,
    run_record,
    summary,
)
from tests.support import make_trainer
from trainers import BaseTrainer

ROOT = Path(__file__).resolve().parents[3]
STEP_KEYS = {"train/loss", "time/iter_ms", "time/samples_per_s"}
EPOCH_KEYS = {"epoch/loss", "time/epoch_s"}
VAL_KEYS = {"val/mse", "best/mse"}


@pytest.fixture(autouse=True)
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's own directories inside the test's tmp_path and no credentials (HOME is left alone: wandb caches it)."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / "wandb-env" / name.lower()))


def run_file(logger: WandbLogger) -> Path:
    """The logger's last run file, complete (the run must have been finished)."""
    assert logger.sync_dir is not None
    assert logger.run_id is not None
    return complete(logger.sync_dir / f"run-{logger.run_id}.wandb")


def steps(path: Path) -> list[int]:
    return [row["_step"] for row in history(path)]


def exit_code(path: Path) -> int:
    record = exit_record(path)
    assert record is not None, f"{path}: no exit record (the run was never finished)"
    return int(record.exit_code)


def own_keys(row: dict[str, Any]) -> set[str]:
    """A row's keys less W&B's own (``_step``, ``_runtime`` ...) and the image entries' sub-keys."""
    return {k for k in row if not k.startswith("_") and not k.startswith("val/field/")}


# ---------------------------------------------------------------------------------------------------- the rows


def test_rows_steps_window_and_epoch_means_validation_values_lr_and_images(tmp_path: Path) -> None:
    logger = WandbLogger(every="2it")
    trainer, rec = logged_run(tmp_path / "run", logger, LRDecay())
    lrs: list[float] = []
    trainer.on(Event.POST_STEP, priority=-50)(lambda t, **_: lrs.append(t.state.metrics["lr"]))
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    rows = {row["_step"]: row for row in history(path)}
    # steps are iterations: the "2it" rows, merged with the epoch-end and validation rows at 5 and 10
    assert steps(path) == [2, 4, 5, 6, 8, 10]
    for step in (2, 4, 6, 8):
        assert own_keys(rows[step]) == STEP_KEYS | {"lr"}, step
    assert own_keys(rows[5]) == EPOCH_KEYS | VAL_KEYS
    assert own_keys(rows[10]) == STEP_KEYS | {"lr"} | EPOCH_KEYS | VAL_KEYS
    # train/loss: the mean of exactly the losses since the previous row
    for step in (2, 4, 6, 8, 10):
        assert rows[step]["train/loss"] == pytest.approx(rec.loss(step - 1, step), rel=1e-6), step
        # the window's time per step and samples per second describe the same window: 2 samples a step
        assert rows[step]["time/samples_per_s"] * rows[step]["time/iter_ms"] == pytest.approx(BATCH * 1000.0)
    # epoch means at each epoch's end; the epoch's wall time is there
    assert rows[5]["epoch/loss"] == pytest.approx(rec.loss(1, 5), rel=1e-6)
    assert rows[10]["epoch/loss"] == pytest.approx(rec.loss(6, 10), rel=1e-6)
    assert rows[5]["time/epoch_s"] > 0
    assert rows[10]["time/epoch_s"] > 0
    # validation: exactly what the validator published
    assert sorted(rec.validated) == [5, 10]
    for step, published in rec.validated.items():
        assert {k: rows[step][k] for k in VAL_KEYS} == published, step
    assert rows[10]["best/mse"] == min(p["val/mse"] for p in rec.validated.values())
    # lr: what LRDecay published for the row's iteration (milestones 0.5, 0.75, 0.9 of 10 iterations)
    for step in (2, 4, 6, 8, 10):
        assert rows[step]["lr"] == lrs[step - 1], step
    assert [rows[s]["lr"] for s in (2, 6, 10)] == pytest.approx([0.05, 0.05 * 0.333, 0.05 * 0.333**3])
    # images: an image file per validation, the PNG on disk holds the validator's pixels
    assert logger.sync_dir is not None
    assert len(rec.images) == 2
    for step, image in zip((5, 10), rec.images, strict=True):
        row = rows[step]
        assert row["val/field/_type"] == "image-file"
        assert (row["val/field/width"], row["val/field/height"]) == (5, 6)
        assert row["val/field/caption"] == f"iteration {step}"
        png = logger.sync_dir / "files" / row["val/field/path"]
        assert png.is_file()
        assert png.parent == logger.sync_dir / "files" / "media" / "images" / "val"
        with Image.open(png) as decoded:
            pixels = np.asarray(decoded.convert("RGB"))
        np.testing.assert_array_equal(pixels, to_uint8_hwc(image).numpy())
    # nothing is logged twice or backwards
    assert steps(path) == sorted(set(steps(path)))
    assert exit_code(path) == 0


def test_run_record_names_the_run_and_carries_the_config(tmp_path: Path) -> None:
    logger = WandbLogger("stepbus-tests", name="linear-1", every="5it", group="g1", tags=["a", "b"], notes="n")
    trainer, _ = logged_run(tmp_path / "run", logger, max_epochs=1, images=False)
    blob = "0123456789" * 7000  # 70 kB: the run record spans three 32 KiB blocks (FIRST, MIDDLE, LAST fragments)
    trainer.config = {"model": {"width": 3, "act": "relu"}, "lr": 0.05, "blob": blob}
    assert trainer.train() is Status.COMPLETED
    assert logger.run is None  # finished
    assert logger.sync_dir is not None
    assert logger.run_id is not None
    assert logger.sync_dir.parent == tmp_path / "run" / "wandb"
    assert logger.sync_dir.name.startswith("offline-run-")
    assert logger.sync_dir.name.endswith(logger.run_id)
    path = run_file(logger)
    assert run_files(tmp_path) == [path]
    data = path.read_bytes()
    assert len(data) > 2 * 32768
    # the physical records opening blocks 2 and 3 continue the run record: MIDDLE (3), then LAST (4)
    assert (data[32768 + 6], data[65536 + 6]) == (3, 4)
    record = run_record(path)
    assert record.run_id == logger.run_id
    assert (record.project, record.display_name, record.run_group, record.notes) == (
        "stepbus-tests",
        "linear-1",
        "g1",
        "n",
    )
    assert list(record.tags) == ["a", "b"]
    values = config(path)
    values.pop("_wandb", None)  # W&B's own entry
    assert values == {
        "model": {"width": 3, "act": "relu"},
        "lr": 0.05,
        "blob": blob,
        "max_epochs": 1,
        "iterations_per_epoch": 5,
    }
    assert steps(path) == [5]


# ---------------------------------------------------------------------------------------------------- how runs end


class StraySignal(Exception):
    """A SIGINT that reached the handler installed before ``train()``."""


@contextmanager
def stray_sigint() -> Iterator[None]:
    """While the block runs, a SIGINT the trainer does not catch fails the test instead of ending pytest."""

    def stray(signum: int, frame: FrameType | None) -> None:
        raise StraySignal("SIGINT reached the handler that was installed before train()")

    previous = signal.signal(signal.SIGINT, stray)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Ending:
    """One way a run ends and what its W&B run must say about it."""

    status: Status
    exit_code: int
    iterations: int
    epochs: int
    steps: list[int]
    set_up: Callable[[BaseTrainer], None] | None = None
    extra: tuple[Any, ...] = ()
    fail_at: int | None = None
    handle_signals: bool = True
    error: type[BaseException] | None = None  # what train() raises
    logged: Status | None = None  # what the W&B run records, where it is not ``status``


def _on_step(iteration: int, action: Callable[[BaseTrainer], None]) -> Callable[[BaseTrainer], None]:
    def set_up(trainer: BaseTrainer) -> None:
        @trainer.on(Event.POST_STEP)
        def act(t: BaseTrainer, **_: Any) -> None:
            if t.state.iteration == iteration:
                action(t)

    return set_up


def _sigint(times: int) -> Callable[[BaseTrainer], None]:
    def send(t: BaseTrainer) -> None:
        for _ in range(times):
            signal.raise_signal(signal.SIGINT)  # a real signal, to this thread, handled before the next step

    return send


def _keyboard_interrupt(t: BaseTrainer) -> None:
    raise KeyboardInterrupt


def _fail_at_the_end(trainer: BaseTrainer) -> None:
    @trainer.on(Event.POST_TRAINING)  # priority 0: before the logger's post_training (FINAL)
    def fail(t: BaseTrainer, **_: Any) -> None:
        raise RuntimeError("a post_training handler failed")


ENDINGS = {
    "completed": Ending(Status.COMPLETED, 0, 10, 2, list(range(1, 11))),
    "stop_from_a_handler": Ending(Status.STOPPED, 0, 3, 1, [1, 2, 3], set_up=_on_step(3, lambda t: t.stop())),
    "early_stopping": Ending(
        Status.STOPPED, 0, 5, 1, [1, 2, 3, 4, 5], extra=(EarlyStopping("val/mse", stopping_threshold=1e9),)
    ),
    "loss_fails": Ending(Status.FAILED, 1, 7, 2, [1, 2, 3, 4, 5, 6], fail_at=7, error=RuntimeError),
    # every post_training handler runs even when one raises: the logger's, after the failing one, was told
    # "completed" (the run then fails: train() raises, trainer.status is "failed")
    "post_training_fails": Ending(
        Status.FAILED,
        0,
        10,
        2,
        list(range(1, 11)),
        set_up=_fail_at_the_end,
        error=CallbackError,
        logged=Status.COMPLETED,
    ),
    "sigint": Ending(Status.INTERRUPTED, 130, 3, 1, [1, 2, 3], set_up=_on_step(3, _sigint(1))),
    # a second SIGINT aborts at once (TrainingInterrupted, a KeyboardInterrupt): still an interrupted run
    "sigint_twice": Ending(
        Status.INTERRUPTED, 130, 3, 1, [1, 2], set_up=_on_step(3, _sigint(2)), error=KeyboardInterrupt
    ),
    # Ctrl-C without the trainer's signal handling (a notebook): KeyboardInterrupt, exit code 128 + SIGINT
    "keyboard_interrupt": Ending(
        Status.INTERRUPTED,
        130,
        3,
        1,
        [1, 2],
        set_up=_on_step(3, _keyboard_interrupt),
        handle_signals=False,
        error=KeyboardInterrupt,
    ),
}


@pytest.mark.parametrize("name", list(ENDINGS))
def test_exit_code_and_summary_follow_how_the_run_ended(tmp_path: Path, name: str) -> None:
    ending = ENDINGS[name]
    logger = WandbLogger(every="1it")
    trainer, _ = logged_run(tmp_path / "run", logger, *ending.extra, images=False, fail_at=ending.fail_at)
    if ending.set_up is not None:
        ending.set_up(trainer)
    with stray_sigint():
        if ending.error is None:
            assert trainer.train(handle_signals=ending.handle_signals) is ending.status
        else:
            with pytest.raises(ending.error):
                trainer.train(handle_signals=ending.handle_signals)
    assert trainer.status is ending.status
    assert logger.run is None  # the run was finished, whatever the ending
    path = run_file(logger)
    values = summary(path)
    assert (values["status"], values["exit_code"], exit_code(path)) == (
        str(ending.logged or ending.status),
        ending.exit_code,
        ending.exit_code,
    )
    assert (values["iterations"], values["epochs"]) == (ending.iterations, ending.epochs)
    assert steps(path) == ending.steps
    if name.startswith("sigint"):
        assert trainer.interrupted_by == signal.SIGINT


# ---------------------------------------------------------------------------------------------------- checkpoints


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_log_checkpoint_logs_the_final_save_and_the_best_one_and_the_summary_names_them(tmp_path: Path) -> None:
    logger = WandbLogger(every="5it", log_checkpoint=True)
    # saves at 3, 6, 9 and the end save at 10; mode="max" makes the best a different file than the last (6: the
    # first save scored with the worse, first validation)
    checkpointer = Checkpointer(every="3it", monitor="val/mse", mode="max")
    trainer, rec = logged_run(tmp_path / "run", logger, checkpointer, images=False)
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.last_checkpoint is not None
    assert trainer.state.best_checkpoint is not None
    last, best = trainer.state.last_checkpoint.path, trainer.state.best_checkpoint.path
    assert last.name == "step-00000010.pt"  # the checkpointer's end save
    assert best.name == "step-00000006.pt"
    path = run_file(logger)
    assert exit_code(path) == 0
    found = artifacts(path)
    assert [(a.type, a.name) for a in found] == [("model", f"checkpoint-{logger.run_id}")] * 2
    by_role = {json.loads(a.metadata)["role"]: a for a in found}
    assert sorted(by_role) == ["best", "last"]
    for role, file in (("last", last), ("best", best)):
        artifact = by_role[role]
        # the logger's post_training ran after the checkpointer's end save: iteration 10, the end save's file
        assert json.loads(artifact.metadata) == {"iteration": 10, "epoch": 2, "status": "completed", "role": role}
        [entry] = artifact.manifest.contents
        assert entry.path == file.name
        assert entry.size == file.stat().st_size
        assert entry.digest == _md5(file)  # the very bytes of the checkpoint file
    assert {"latest", "last"} <= set(by_role["last"].aliases)
    assert "best" in by_role["best"].aliases
    assert "last" not in by_role["best"].aliases
    # W&B adds "latest" to every version it logs and keeps it on the most recent one: that must be the final save,
    # so that checkpoint-<id>:latest is the run's last checkpoint, not its best
    with_latest = [json.loads(a.metadata)["role"] for a in found if "latest" in a.aliases]
    assert with_latest[-1] == "last", f"checkpoint-<id>:latest ends on the {with_latest[-1]!r} checkpoint"
    values = summary(path)
    assert values["checkpoint/last"] == str(last)
    assert values["checkpoint/best"] == str(best)
    assert (values["status"], values["iterations"], values["epochs"]) == ("completed", 10, 2)
    assert values["val/mse"] == rec.validated[10]["val/mse"]
    assert values["best/mse"] == rec.validated[10]["best/mse"]


def test_log_checkpoint_without_a_checkpointer_warns_and_the_run_still_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = WandbLogger(every="5it", log_checkpoint=True)
    trainer, _ = logged_run(tmp_path / "run", logger, max_epochs=1, images=False)
    with caplog.at_level(logging.WARNING, logger="stepbus.wandb"):
        assert trainer.train() is Status.COMPLETED
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.wandb"]
    assert len(messages) == 1
    assert "log_checkpoint=True but no checkpoint was published (add a Checkpointer)" in messages[0]
    path = run_file(logger)
    assert artifacts(path) == []
    assert exit_code(path) == 0
    assert summary(path)["status"] == "completed"
    assert "checkpoint/last" not in summary(path)


# ---------------------------------------------------------------------------------------------------- resume

KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from callbacks import Checkpointer, WandbLogger
from tests.callbacks.loggers.runs import logged_run
logger = WandbLogger(every="1it")
trainer, _ = logged_run(Path(sys.argv[1]), logger, Checkpointer(every="1ep"), images=False)
for _ in range(7):  # epoch 1 (saved at 5) and two steps of epoch 2, then the process dies
    trainer.iterate()
print(logger.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_resume_after_a_killed_process_continues_the_run_id_from_the_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # the child starts its own W&B service, which dies with it (an inherited WANDB_SERVICE would attach it to this
    # process's service, which would go on holding the dead run's id)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(run_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    dead_id = child.stdout.strip()
    assert len(dead_id) == 8, child.stdout
    [dead] = run_files(run_dir)
    assert dead.name == f"run-{dead_id}.wandb"

    logger = WandbLogger(every="1it")
    trainer, rec = logged_run(run_dir, logger, Checkpointer(every="1ep"), images=False)
    assert trainer.restore("auto") == run_dir / "checkpoints" / "step-00000005.pt"
    assert logger.run_id == dead_id  # from the checkpoint
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    assert run_files(run_dir) == sorted([dead, path], key=lambda p: p.parent.name)
    assert path != dead
    assert run_record(path).run_id == dead_id
    # the resumed process logs from the step after the checkpoint, each step once
    assert steps(path) == [6, 7, 8, 9, 10]
    rows = {row["_step"]: row for row in history(path)}
    assert rows[6]["train/loss"] == pytest.approx(rec.loss(1, 1), rel=1e-6)  # its first step is iteration 6
    assert rows[10]["epoch/loss"] == pytest.approx(rec.loss(1, 5), rel=1e-6)
    assert exit_code(path) == 0


def test_an_explicit_id_wins_over_the_checkpoints(tmp_path: Path) -> None:
    first_logger = WandbLogger(every="1it")
    first, _ = logged_run(tmp_path / "first", first_logger, Checkpointer(every="1ep"), images=False)
    for _ in range(5):
        first.iterate()
    assert first_logger.run is not None
    first_logger.run.finish(exit_code=255)  # abandoned: the trainer never ends
    first_id = first_logger.run_id
    assert first_id is not None
    assert first_id != "myid1234"

    logger = WandbLogger(every="1it", id="myid1234")
    trainer, _ = logged_run(tmp_path / "second", logger, Checkpointer(every="1ep"), images=False)
    first = tmp_path / "first" / "checkpoints"
    assert trainer.restore(first) == first / "step-00000005.pt"
    assert logger.run_id == "myid1234"
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    assert path.name == "run-myid1234.wandb"
    assert run_record(path).run_id == "myid1234"
    assert steps(path) == [6, 7, 8, 9, 10]
    [abandoned] = run_files(tmp_path / "first")
    complete(abandoned)
    assert run_record(abandoned).run_id == first_id
    assert steps(abandoned) == [1, 2, 3, 4, 5]
    assert exit_code(abandoned) == 255


# ---------------------------------------------------------------------------------------------------- modes, errors


def test_mode_disabled_trains_and_writes_no_run_file(tmp_path: Path) -> None:
    logger = WandbLogger(every="1it", mode="disabled", log_checkpoint=True)
    trainer, _ = logged_run(tmp_path / "run", logger, Checkpointer(every="1ep"))
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 10
    assert (logger.disabled, logger.failures, logger.run) == (False, 0, None)
    assert run_files(tmp_path) == []
    assert list(tmp_path.rglob("*.wandb")) == []
    assert not (tmp_path / "run" / "wandb").exists()


def test_mode_disabled_reports_no_run_directory(tmp_path: Path) -> None:
    """``sync_dir`` is documented as the offline-run directory of the last run; a disabled run has none."""
    logger = WandbLogger(every="1it", mode="disabled")
    trainer, _ = logged_run(tmp_path / "run", logger, max_epochs=1, images=False)
    assert trainer.train() is Status.COMPLETED
    assert logger.sync_dir is None, f"sync_dir names {logger.sync_dir}, which W&B never created"


def test_a_directory_that_cannot_be_used_disables_the_logger_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("a file where the W&B directory should be")
    logger = WandbLogger(every="1it")
    trainer, _ = logged_run(run_dir, logger, images=False)
    with caplog.at_level(logging.WARNING, logger="stepbus.wandb"):
        assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 10
    assert (logger.disabled, logger.failures, logger.run) == (True, 1, None)
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.wandb"]
    assert len(messages) == 1  # warned once
    assert f"could not start the run in {run_dir}" in messages[0]
    assert "the logger is disabled, training goes on" in messages[0]
    assert (run_dir / "wandb").read_text() == "a file where the W&B directory should be"
    assert list(tmp_path.rglob("*.wandb")) == []


def test_on_error_raise_fails_the_run_naming_the_logger(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("blocked")
    trainer, _ = logged_run(run_dir, WandbLogger(every="1it", on_error="raise"), images=False)
    with pytest.raises(CallbackError, match=r"WandbLogger\.pre_training"):
        trainer.train()
    assert trainer.status is Status.FAILED


def test_constructor_errors_name_the_parameter(tmp_path: Path) -> None:
    owner = "WandbLogger 'WandbLogger'"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"every": -1}, "invalid schedule -1: the period must be > 0; a negative period does not mean 'off'"),
        ({"mode": "cloud"}, "mode must be one of 'offline', 'online', 'disabled', got 'cloud'"),
        ({"log_images": "yes"}, "log_images must be true or false, got 'yes'"),
        ({"log_checkpoint": 1}, "log_checkpoint must be true or false, got 1"),
        ({"tags": "a"}, "tags must be a list of strings, got 'a'"),
        ({"id": "a/b"}, "id must be a non-empty string without / \\ : ? # %, got 'a/b'"),
        ({"name": " "}, "name must be a non-empty string, got ' '"),
        ({"on_error": "ignore"}, "on_error must be one of 'disable', 'warn', 'raise', got 'ignore'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            WandbLogger(**kwargs)
        assert str(caught.value).startswith(owner), kwargs
    with pytest.raises(ValueError, match=r"needs a directory"):
        make_trainer(callbacks=[WandbLogger()])  # no run_dir
    assert WandbLogger(dir=tmp_path / "x").directory == tmp_path / "x"


MISSING_CHILD = """
import sys
sys.modules[{module!r}] = None  # as if the package were not installed
import torch
from torch import nn
from torch.utils.data import TensorDataset
from callbacks import {logger}
from trainers import BaseTrainer
try:
    BaseTrainer(nn.Linear(1, 1), TensorDataset(torch.zeros(2, 1), torch.zeros(2, 1)), max_epochs=1, batch_size=1,
                run_dir=sys.argv[1], loss_fn=lambda m, b: m(b[0]).sum(), callbacks=[{logger}()])
except ModuleNotFoundError as exc:
    print("REFUSED", exc.name, str(exc))
"""


@pytest.mark.parametrize(("module", "logger"), [("wandb", "WandbLogger"), ("tensorboard", "TensorBoardLogger")])
def test_a_missing_package_is_refused_with_the_install_command(tmp_path: Path, module: str, logger: str) -> None:
    script = MISSING_CHILD.format(module=module, logger=logger)
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(f"REFUSED {module} {logger} '{logger}' needs the {module} package"), child.stdout
    # the extra's own requirements, read from stepbus's installed metadata, then how to get them with stepbus
    wanted = {"wandb": '"wandb>=0.17"', "tensorboard": '"tensorboard>=2.14"'}[module] + ' "pillow>=10" "numpy"'
    assert f"package: pip install {wanted} (stepbus's {module!r} extra: " in child.stdout, child.stdout
    assert f'pip install "/path/to/stepbus[{module}]" from a clone)' in child.stdout


ONLINE_CHILD = """
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
from callbacks import WandbLogger
from trainers import BaseTrainer
print("terminal", sys.stdin.isatty(), sys.stdout.isatty(), flush=True)
try:
    BaseTrainer(nn.Linear(1, 1), TensorDataset(torch.zeros(2, 1), torch.zeros(2, 1)), max_epochs=1, batch_size=1,
                run_dir=sys.argv[1], loss_fn=lambda m, b: m(b[0]).sum(), callbacks=[WandbLogger(mode="online")])
except ValueError as exc:
    print("REFUSED", exc, flush=True)
else:
    print("ACCEPTED", flush=True)
"""


def test_online_without_credentials_is_refused_on_a_terminal_without_a_prompt(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(
        HOME=str(tmp_path),  # no ~/.netrc
        WANDB_CONFIG_DIR=str(tmp_path / "config"),
        WANDB_CACHE_DIR=str(tmp_path / "cache"),
        WANDB_DATA_DIR=str(tmp_path / "data"),
    )
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", ONLINE_CHILD, str(tmp_path / "run")],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + 60
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                pytest.fail(
                    f"the child still waits after 60 s (a prompt?); its output: {output.decode(errors='replace')}"
                )
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child's side of the terminal is closed
                break
            if not chunk:
                break
            output += chunk
        assert child.wait(timeout=30) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = output.decode(errors="replace")
    assert "terminal True True" in text  # the child really was on a terminal
    assert "Enter your choice" not in text  # W&B's login prompt
    assert "REFUSED WandbLogger 'WandbLogger': mode='online' needs W&B credentials" in text, text
    assert "wandb login" in text
    assert "WANDB_API_KEY" in text
    assert not (tmp_path / "run" / "wandb").exists()


# ---------------------------------------------------------------------------------------------------- several runs


def test_two_trainers_in_one_process_write_two_runs(tmp_path: Path) -> None:
    loggers = WandbLogger(every="5it"), WandbLogger(every="5it")
    first, first_rec = logged_run(tmp_path / "a", loggers[0], images=False)
    second, second_rec = logged_run(tmp_path / "b", loggers[1], max_epochs=1, images=False)
    # interleaved: both runs are open at once
    for _ in range(5):
        first.iterate()
        second.iterate()
    assert second.status is Status.COMPLETED
    assert first.train() is Status.COMPLETED
    ids = [logger.run_id for logger in loggers]
    assert ids[0] != ids[1]
    paths = [run_file(logger) for logger in loggers]
    assert run_files(tmp_path) == sorted(paths, key=lambda p: p.parent.name)
    assert [run_record(p).run_id for p in paths] == ids
    assert steps(paths[0]) == [5, 10]
    assert steps(paths[1]) == [5]
    for path, rec in zip(paths, (first_rec, second_rec), strict=True):
        for row in history(path):
            assert row["train/loss"] == pytest.approx(rec.loss(row["_step"] - 4, row["_step"]), rel=1e-6)
            assert row["val/mse"] == rec.validated[row["_step"]]["val/mse"]
        assert exit_code(path) == 0


def test_removing_the_logger_mid_run_finishes_its_run(tmp_path: Path) -> None:
    logger = WandbLogger(every="1it")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    for _ in range(3):
        trainer.iterate()
    trainer.remove_callback(logger)
    assert logger.run is None
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    assert steps(path) == [1, 2, 3]
    assert exit_code(path) == 0


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


def test_one_host_copy_per_log_point_and_none_per_step(tmp_path: Path) -> None:
    baseline, _ = logged_run(tmp_path / "baseline", images=False)
    with host_syncs() as without:
        assert baseline.train() is Status.COMPLETED
    logger = WandbLogger(every="5it")
    trainer, _ = logged_run(tmp_path / "run", logger, images=False)
    with host_syncs() as counts:
        assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 10
    # 10 steps; log points: the rows at 5 and 10 and the epoch means at 5 and 10 -- one tolist() each
    added = {name: counts[name] - without[name] for name in counts}
    assert added == {"item": 0, "tolist": 4, "__float__": 0, "__bool__": 0, "__int__": 0}
    assert steps(run_file(logger)) == [5, 10]


# ---------------------------------------------------------------------------------------------------- the reader


def test_the_reader_rejects_a_damaged_run_file_naming_it(tmp_path: Path) -> None:
    logger = WandbLogger(every="5it")
    trainer, _ = logged_run(tmp_path / "run", logger, max_epochs=1, images=False)
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    good = path.read_bytes()
    kinds = [r.WhichOneof("record_type") for r in read_records(path)]
    assert (kinds[0], kinds[-1]) == ("header", "exit")
    assert {"run", "history", "summary"} <= set(kinds)

    damaged = tmp_path / "damaged.wandb"
    data = bytearray(good)
    data[7 + 7 + 2] ^= 0xFF  # a byte of the first record's payload
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"CRC mismatch in the record at byte 7") as caught:
        read_records(damaged)
    assert str(damaged) in str(caught.value)

    damaged.write_bytes(b"XW&B" + good[4:])
    with pytest.raises(ValueError, match=r"not a W&B run file") as caught:
        history(damaged)
    assert str(damaged) in str(caught.value)

    first_length = struct.unpack_from("<IHB", good, 7)[1]
    damaged.write_bytes(good[: 7 + 7 + first_length // 2])  # cut inside the first record
    with pytest.raises(ValueError, match=r"the file ends at") as caught:
        summary(damaged)
    assert str(damaged) in str(caught.value)
