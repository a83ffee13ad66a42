"""How a run ends with writes still queued in the loggers' background writers, in real processes: a SIGTERM (a
graceful stop) loses no row; an interpreter that exits mid-run without ending it still writes every queued row;
a ``kill -9`` with rows queued leaves TensorBoard's files readable, every value in them right, and the resumed run
writes each step once, equal to an uninterrupted run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.callbacks.loggers.test_mlflow_resume import finish, lines_until, start
from tests.tb_events import events, series
from tests.trainers.checkpoint.resume_app import ITERATIONS

APP = "tests.callbacks.loggers.exit_app"


def _mlflow_steps(run_dir: Path) -> list[int]:
    client = MlflowClient(f"sqlite:///{run_dir / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]


def test_a_sigterm_loses_no_queued_row(tmp_path: Path) -> None:
    child = start(tmp_path / "run", "--mode", "signal", module=APP)
    lines_until(child, "step 40")
    child.send_signal(signal.SIGTERM)
    *_, last = finish(child)
    status, iteration = last.split()[1:]
    assert status == "interrupted"
    expected = list(range(1, int(iteration) + 1))
    assert [step for step, _ in series(events(tmp_path / "run" / "tb"), "train/loss")] == expected
    assert sorted(_mlflow_steps(tmp_path / "run")) == expected


def test_an_interpreter_that_exits_mid_run_writes_the_queued_rows_first(tmp_path: Path) -> None:
    child = start(tmp_path / "run", "--mode", "exit", module=APP)
    assert finish(child)[-1] == "left at 25"
    assert sorted(_mlflow_steps(tmp_path / "run")) == list(range(1, 26))  # MLflow writes synchronously: all there


@pytest.mark.slow
def test_kill_9_with_rows_queued_corrupts_nothing_and_the_resume_writes_each_step_once(tmp_path: Path) -> None:
    reference = start(tmp_path / "reference", "--logger", "tensorboard")
    killed = start(tmp_path / "killed", "--logger", "tensorboard", "--wait-after", "13", "--no-flush")
    lines_until(killed, "step 13")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.stdout is not None
    killed.stdout.close()
    finish(reference)
    expected = events(tmp_path / "reference" / "tb")
    tags = [tag for tag in expected.Tags()["scalars"] if not tag.startswith(("time/", "hparam/"))]
    assert {"train/loss", "lr", "val/mse", "epoch/loss"} <= set(tags)

    after_kill = events(tmp_path / "killed" / "tb")  # read back whole: no record is torn or wrong
    losses = series(after_kill, "train/loss")
    assert [step for step, _ in losses] == list(range(1, len(losses) + 1))  # in order, from the first
    assert 8 <= len(losses) <= 13  # the epoch's end flushed steps 1..8; 9..13 may still have been queued
    for tag in after_kill.Tags()["scalars"]:
        if tag in tags:
            assert set(series(after_kill, tag)) <= set(series(expected, tag)), tag

    resumed = start(tmp_path / "killed", "--logger", "tensorboard", "--resume")
    finish(resumed)
    final = events(tmp_path / "killed" / "tb")
    for tag in tags:
        assert series(final, tag) == series(expected, tag), tag  # every step once, the same values
    assert [step for step, _ in series(final, "train/loss")] == list(range(1, ITERATIONS + 1))
