"""``TimeLimit`` on real training whose steps are slowed by a real sleep (each item of the dataset sleeps first), so
the budget is spent after a bounded number of steps: the accepted and refused durations; the stop after the step
that spent the budget, with ``post_training(status="stopped")`` and the Checkpointer's end save at that iteration,
from which the run resumes exactly; the budget carried across resumes in the checkpoint (in process and through
``stepbus train --resume auto`` in subprocesses, read back from the checkpoint files); a run resumed after its budget
was spent stopping before any step; a fresh run starting at zero; and two gloo ranks stopping together.

Assertions bound the number of steps from above only (each step sleeps at least ``step_s``, so the budget is spent
after at most ``ceil(max_time / step_s)`` steps); nothing depends on how fast this machine is."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import Dataset

from callbacks import Callback, Checkpointer
from callbacks.time_limit import DURATION_FORMS, TimeLimit, format_duration, parse_duration
from lifecycle import Status
from tests.support import Recorder, make_dataset, make_trainer
from trainers import BaseTrainer
from trainers.checkpoint.format import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
POSITIVE = "a duration must be > 0 (to train without a limit, leave it out)"


class SlowRows(Dataset[Any]):
    """Eight rows of a linear regression; fetching an item sleeps ``item_s`` first, so every step takes at least
    ``batch_size * item_s`` of wall time."""

    def __init__(self, item_s: float) -> None:
        self.rows = make_dataset(8)
        self.item_s = item_s

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        time.sleep(self.item_s)
        return self.rows[index]


class RankReport(Callback):
    """At the end of the run, write ``rank-<rank>.json``: the final iteration, the status and where this rank's
    TimeLimit decided to stop."""

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        limit = next(c for c in trainer.callbacks if isinstance(c, TimeLimit))
        assert trainer.run_dir is not None
        report = {"iteration": trainer.state.iteration, "status": str(status), "decided": limit.stopped_iteration}
        (trainer.run_dir / f"rank-{trainer.rank}.json").write_text(json.dumps(report), encoding="utf-8")


def slow_trainer(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_epochs: int = 50,
    step_s: float = 0.02,
    report_ranks: bool = False,
) -> BaseTrainer:
    """``nn.Linear(3, 1)`` on :class:`SlowRows` (4 steps per epoch, each at least ``step_s``): the trainer factory
    the subprocess tests name as ``trainer: {name: slow}`` through an entry point."""
    return make_trainer(
        dataset=SlowRows(step_s / 2),
        batch_size=2,
        max_epochs=max_epochs,
        seed=seed,
        run_dir=run_dir,
        callbacks=[RankReport()] if report_ranks else [],
    )


def steps_of(recorder: Recorder) -> list[int]:
    return [row[3] for row in recorder.log if row[0] == "pre_step"]


def elapsed_in(path: Path) -> float:
    return float(load_checkpoint(path)["callbacks"]["TimeLimit"]["elapsed_s"])


# ---------------------------------------------------------------------------------------------------- durations
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("45sec", 45.0),
        ("30min", 1800.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30min", 5400.0),
        ("1h 30min 15s", 5415.0),
        ("1.5h", 5400.0),
        ("2H", 7200.0),
        ("1h0min", 3600.0),
        (timedelta(minutes=3), 180.0),
    ],
)
def test_a_duration_is_read_in_seconds(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert TimeLimit(value).max_time == seconds


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0, POSITIVE),
        (-5, POSITIVE),
        ("0s", POSITIVE),
        ("0h0min", POSITIVE),
        (timedelta(0), POSITIVE),
        (float("nan"), "a duration must be finite"),
        (float("inf"), "a duration must be finite"),
        ("abc", "not a duration"),
        ("10", "not a duration"),
        ("-1h", "not a duration"),
        ("1h-30min", "not a duration"),
        ("2 parsecs", "not a duration"),
        ("", "not a duration"),
        (True, "a duration must be a number of seconds or a string, not bool"),
        (None, "a duration must be a number of seconds or a string, not NoneType"),
        ([60], "a duration must be a number of seconds or a string, not list"),
    ],
)
def test_a_bad_duration_is_refused_naming_the_callback_the_value_and_the_valid_forms(value: Any, why: str) -> None:
    with pytest.raises(ValueError, match=r"^TimeLimit 'TimeLimit': max_time: ") as caught:
        TimeLimit(value)
    assert str(caught.value) == f"TimeLimit 'TimeLimit': max_time: {why}, got {value!r}; valid forms: {DURATION_FORMS}"


def test_durations_are_shown_in_their_largest_units() -> None:
    assert [format_duration(s) for s in (0.25, 59.0, 60.0, 90.0, 5400.0, 90061.0)] == [
        "0.25s",
        "59s",
        "1min",
        "1min 30s",
        "1h 30min",
        "1d 1h 1min 1s",
    ]


# ---------------------------------------------------------------------------------------------------- in process
def test_the_run_stops_after_the_step_that_spent_the_budget_and_resumes_exactly_from_the_end_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    step_s, budget = 0.02, 0.1
    limit, recorder = TimeLimit(budget), Recorder(compact=True)
    trainer = slow_trainer(run_dir=tmp_path / "a", max_epochs=5, step_s=step_s)
    for callback in (limit, recorder, Checkpointer(every=None)):
        trainer.add_callback(callback)
    with caplog.at_level(logging.INFO, logger="stepbus.time_limit"):
        assert trainer.train() is Status.STOPPED
    stop = trainer.state.iteration
    assert 1 <= stop <= math.ceil(budget / step_s) < trainer.state.max_iterations  # 5 at most of 20
    assert steps_of(recorder) == list(range(1, stop + 1))  # no step after the one that spent the budget
    assert recorder.log[-2:] == [
        ("post_epoch", *recorder.log[-2][1:]),
        ("post_training", *recorder.log[-2][1:], "stopped"),
    ]
    assert limit.stopped_iteration == stop
    assert limit.reason is not None
    assert limit.reason.startswith("the time limit 0.1s is spent (")
    assert [r.getMessage() for r in caplog.records if r.name == "stepbus.time_limit"] == [
        f"TimeLimit 'TimeLimit': stopping at iteration {stop}: {limit.reason}"
    ]
    # the end save is at the stopping iteration and holds the elapsed time, frozen at post_training
    saved = tmp_path / "a" / "checkpoints" / f"step-{stop:08d}.pt"
    assert sorted(p.name for p in saved.parent.glob("step-*.pt")) == [saved.name]
    assert elapsed_in(saved) == limit.elapsed == trainer.state.metrics["time_limit/elapsed_s"] >= budget

    # resumed with a larger budget, the run ends exactly where a run without a limit ends
    resumed = slow_trainer(run_dir=tmp_path / "a", max_epochs=5, step_s=0.0)
    resumed.add_callback(TimeLimit("1h"))
    resumed.restore(saved)
    assert resumed.train() is Status.COMPLETED
    straight = slow_trainer(run_dir=tmp_path / "b", max_epochs=5, step_s=0.0)
    assert straight.train() is Status.COMPLETED
    assert resumed.state.iteration == straight.state.iteration == 20
    for a, b in zip(resumed.pipeline.parameters(), straight.pipeline.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_resumed_run_continues_the_budget_from_the_checkpoint(tmp_path: Path) -> None:
    step_s = 0.02
    first = slow_trainer(run_dir=tmp_path, max_epochs=50, step_s=step_s)
    first.add_callback(TimeLimit(0.1))
    first.add_callback(Checkpointer(every=None))
    assert first.train() is Status.STOPPED
    saved = tmp_path / "checkpoints" / f"step-{first.state.iteration:08d}.pt"
    carried = elapsed_in(saved)
    assert carried >= 0.1

    limit, recorder = TimeLimit(0.2), Recorder(compact=True)
    second = slow_trainer(run_dir=tmp_path, max_epochs=50, step_s=step_s)
    for callback in (limit, recorder, Checkpointer(every=None)):
        second.add_callback(callback)
    second.restore("auto")
    assert limit.carried == carried
    assert second.train() is Status.STOPPED
    steps = steps_of(recorder)
    assert 1 <= len(steps) <= math.ceil((0.2 - carried) / step_s)  # the rest of the budget, not a new one
    final = elapsed_in(tmp_path / "checkpoints" / f"step-{second.state.iteration:08d}.pt")
    assert final >= carried + len(steps) * step_s
    assert final >= 0.2


def test_a_run_resumed_after_its_budget_was_spent_stops_before_any_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = slow_trainer(run_dir=tmp_path, max_epochs=50, step_s=0.02)
    first.add_callback(TimeLimit(0.05))
    first.add_callback(Checkpointer(every=None))
    assert first.train() is Status.STOPPED
    stop = first.state.iteration
    spent = elapsed_in(tmp_path / "checkpoints" / f"step-{stop:08d}.pt")

    limit, recorder = TimeLimit(0.05), Recorder(compact=True)
    again = slow_trainer(run_dir=tmp_path, max_epochs=50, step_s=0.02)
    for callback in (limit, recorder, Checkpointer(every=None)):
        again.add_callback(callback)
    again.restore("auto")
    with caplog.at_level(logging.INFO, logger="stepbus.time_limit"):
        assert again.train() is Status.STOPPED
    assert again.state.iteration == stop
    assert steps_of(recorder) == []
    assert recorder.names() == ["pre_training", "pre_epoch", "post_epoch", "post_training"]
    assert recorder.log[-1][-1] == "stopped"
    reason = (
        f"the time limit 0.05s was already spent when the run resumed ({format_duration(spent)} of training); no "
        "step is taken. Raise max_time to train on"
    )
    assert limit.reason == reason
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "stepbus.time_limit"] == [
        ("WARNING", f"TimeLimit 'TimeLimit': stopping at iteration {stop}: {reason}")
    ]


def test_a_fresh_run_starts_its_budget_at_zero_whatever_the_instance_carried(tmp_path: Path) -> None:
    limit = TimeLimit(0.05)
    limit.load_state_dict({"elapsed_s": 3600.0})  # without a restore: state from elsewhere
    recorder = Recorder(compact=True)
    trainer = slow_trainer(run_dir=tmp_path, max_epochs=50, step_s=0.02)
    trainer.add_callback(limit)
    trainer.add_callback(recorder)
    assert trainer.train() is Status.STOPPED
    assert 1 <= len(steps_of(recorder)) <= 3  # 0.05 s of its own steps, not an hour spent before the first
    assert 0.05 <= limit.elapsed < 3600.0


def test_a_state_dict_that_is_not_a_time_limits_is_refused() -> None:
    limit = TimeLimit("1h")
    for bad in ({}, {"elapsed_s": "soon"}, {"elapsed_s": -1.0}, {"elapsed_s": float("inf")}):
        with pytest.raises(ValueError, match=r"^TimeLimit 'TimeLimit': "):
            limit.load_state_dict(bad)
    limit.load_state_dict({"elapsed_s": 12.5})
    assert limit.state_dict() == {"elapsed_s": 12.5}
    assert limit.remaining == 3600.0 - 12.5


# ---------------------------------------------------------------------------------------------------- the CLI
def _plugin_site(tmp_path: Path) -> Path:
    """A distribution's metadata that registers :func:`slow_trainer` as the trainer ``slow`` (entry points are read
    from ``*.dist-info`` folders on the path, as pip installs them)."""
    site = tmp_path / "site"
    info = site / "slow_trainer-0.1.dist-info"
    if not info.exists():
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-trainer\nVersion: 0.1\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(
            "[stepbus.trainers]\nslow = tests.callbacks.test_time_limit:slow_trainer\n", encoding="utf-8"
        )
    return site


def _stepbus(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``stepbus ARGS`` in a subprocess, with the ``slow`` trainer installed (its output as text, no colour)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "COLUMNS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "STEPBUS_DIST_TIMEOUT": "60"})
    env["PYTHONPATH"] = os.pathsep.join([str(_plugin_site(tmp_path)), str(ROOT)])
    command = [sys.executable, "-m", "trainers", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


def test_stepbus_train_with_max_time_stops_and_resume_auto_continues_the_same_budget(tmp_path: Path) -> None:
    step_s = 0.05
    config = tmp_path / "slow.yaml"
    config.write_text(
        "trainer: {name: slow, max_epochs: 100, step_s: 0.05}\n"
        "callbacks:\n  checkpointer: {every: null, keep_last: null}\n  progress: {}\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    common = ["train", "--config", str(config), "--run-dir", str(run)]
    checkpoints = run / "checkpoints"

    first = _stepbus(tmp_path, *common, "--set", "trainer.max_time=0.5")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "training stopped" in first.stdout
    (one,) = sorted(checkpoints.glob("step-*.pt"))
    k1 = int(one.stem.removeprefix("step-"))
    assert 1 <= k1 <= math.ceil(0.5 / step_s) < 400
    e1 = elapsed_in(one)
    assert e1 >= 0.5
    assert load_checkpoint(one)["stepbus"]["reason"] == "end (stopped)"
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["trainer"]["max_time"] == 0.5

    second = _stepbus(tmp_path, *common, "--resume", "auto", "--set", "trainer.max_time=1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "training stopped" in second.stdout
    two = sorted(checkpoints.glob("step-*.pt"))[-1]
    k2 = int(two.stem.removeprefix("step-"))
    assert 1 <= k2 - k1 <= math.ceil((1.0 - e1) / step_s)  # the rest of one second, not a second of its own
    e2 = elapsed_in(two)
    assert e2 >= max(1.0, e1 + (k2 - k1) * step_s)

    third = _stepbus(tmp_path, *common, "--resume", "auto", "--set", "trainer.max_time=1")
    assert third.returncode == 0, third.stdout + third.stderr
    assert sorted(checkpoints.glob("step-*.pt"))[-1] == two  # no step: the end save rewrote the same iteration
    assert load_checkpoint(two)["stepbus"]["iteration"] == k2
    assert f"stopping at iteration {k2}: the time limit 1s was already spent when the run resumed" in third.stderr
    assert elapsed_in(two) >= e2


def test_two_ranks_stop_at_the_same_iteration(tmp_path: Path) -> None:
    config = tmp_path / "slow.yaml"
    config.write_text(
        "trainer: {name: slow, max_epochs: 100, step_s: 0.05, report_ranks: true}\n"
        "callbacks:\n  checkpointer: {every: null}\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    result = _stepbus(
        tmp_path, "train", "--nproc", "2", "--config", str(config), "--run-dir", str(run), "--set",
        "trainer.max_time=0.5", timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    reports = [json.loads((run / f"rank-{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]
    assert reports[0] == reports[1]
    assert reports[0]["status"] == "stopped"
    # decided after step k: at an epoch's end the ranks agree at once, after a step one step later (stop_vote)
    assert reports[0]["decided"] in (reports[0]["iteration"], reports[0]["iteration"] - 1)
    (saved,) = sorted((run / "checkpoints").glob("step-*.pt"))
    assert load_checkpoint(saved)["stepbus"]["iteration"] == reports[0]["iteration"]
    assert elapsed_in(saved) >= 0.5
