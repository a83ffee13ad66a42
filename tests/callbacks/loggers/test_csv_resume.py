"""A resumed run continues ``metrics.csv`` with every step exactly once: after a run killed with SIGKILL -- at random
points, halfway through a write of rows (a partial last line), or while a rewrite for a new column was about to
replace the file -- ``restore("auto")`` (in this process, or ``stepbus train --resume auto``) cuts the file back to
its checkpoint and the finished file equals an uninterrupted run's, cell for cell, apart from the wall times."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lifecycle import Status
from tests.callbacks.loggers.csv_resume_app import ITERATIONS, build, deterministic, kill_run, run_to_end, table
from tests.trainers.engine.live_process import LiveProcess
from trainers.checkpoint.format import list_checkpoints

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[list[str]]]:
    """The uninterrupted run's file, without its wall times."""
    run_dir = tmp_path_factory.mktemp("reference")
    trainer = run_to_end(run_dir, resume=False)
    assert trainer.status is Status.COMPLETED
    return deterministic(run_dir / "metrics.csv")


def _steps(rows: list[list[str]]) -> list[int]:
    return [int(row[0]) for row in rows]


def _checked(run_dir: Path, reference: tuple[list[str], list[list[str]]]) -> None:
    """The finished file: one header, every row complete, no temporary file left, and the reference's cells."""
    raw = (run_dir / "metrics.csv").read_bytes()
    assert raw.endswith(b"\n")
    assert raw.count(b"step,epoch") == 1
    header, rows = table(run_dir / "metrics.csv")
    assert all(len(row) == len(header) for row in rows)
    assert [n for n in os.listdir(run_dir) if n.endswith(".tmp")] == []
    got = deterministic(run_dir / "metrics.csv")
    assert got[0] == reference[0]
    assert got[1] == reference[1]


def test_the_reference_has_every_kind_of_row_and_a_column_that_appeared_mid_run(
    reference: tuple[list[str], list[list[str]]],
) -> None:
    header, rows = reference
    assert header == [
        "step", "epoch", "odd", "train/loss", "lr", "val/mse", "best/mse", "epoch/loss", "train/aux", "epoch/aux",
    ]  # fmt: skip
    step_rows = [row for row in rows if row[header.index("train/loss")] != ""]
    assert _steps(step_rows) == list(range(1, ITERATIONS + 1))
    assert [row[0] for row in rows if row[header.index("train/aux")] != ""] == [str(i) for i in range(6, 21)]
    assert _steps([row for row in rows if row[header.index("val/mse")] != ""]) == [3, 6, 9, 12, 15, 18, 20]
    assert _steps(rows) == sorted(_steps(rows))


def test_resume_in_process_drops_the_rows_written_after_the_checkpoint(
    tmp_path: Path, reference: tuple[list[str], list[list[str]]], caplog: pytest.LogCaptureFixture
) -> None:
    first = build(tmp_path)
    for _ in range(11):  # saved at 8 (epoch 2's end); the validation at 9 flushed rows 9 to disk; then it "dies"
        first.iterate()
    first.close()  # a dead process holds no lock on its run directory
    with open(tmp_path / "metrics.csv", "ab") as handle:
        handle.write(b"10,3,,0.123")  # and a write cut short
    assert _steps(table(tmp_path / "metrics.csv")[1])[-1] == 10  # the csv module reads the torn line as a row

    with caplog.at_level(logging.INFO, logger="stepbus.csv"):
        trainer = run_to_end(tmp_path, resume=True)
    assert trainer.resumed_from == tmp_path / "checkpoints" / "step-00000008.pt"
    _checked(tmp_path, reference)
    messages = [r.getMessage() for r in caplog.records if r.name == "stepbus.csv"]
    kept = len([row for row in reference[1] if int(row[0]) <= 8])  # 8 step rows, 4 odd, 2 validations, 2 epochs
    assert kept == 16
    assert messages == [
        f"CSVLogger 'CSVLogger': resumed {tmp_path / 'metrics.csv'} at row {kept}; dropped 2 rows written after the "
        "checkpoint and a partial last line (11 bytes)"
    ]


def test_a_checkpoint_without_the_loggers_record_keeps_the_rows_up_to_its_iteration(
    tmp_path: Path, reference: tuple[list[str], list[list[str]]]
) -> None:
    first = build(tmp_path)
    for _ in range(10):
        first.iterate()
    first.close()
    written = table(tmp_path / "metrics.csv")[1]
    assert _steps(written)[-1] == 9  # the validation's flush at 9

    saved = tmp_path / "checkpoints" / "step-00000008.pt"
    payload = torch.load(saved, weights_only=True)
    del payload["callbacks"]["CSVLogger"]  # as a run without the logger would have saved it
    torch.save(payload, saved)
    again = build(tmp_path)
    assert again.restore(saved) == saved
    again.train(handle_signals=False)
    again.close()
    _checked(tmp_path, reference)  # the checkpoint at 8 followed every row of step 8


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("mid-write", ("--die-at", "write", "--die-after", "5")),  # the validation flush at 6: half a line
        ("mid-rewrite", ("--die-at", "rewrite", "--die-after", "6")),  # the new column aux at 6
    ],
)
def test_a_kill_inside_a_write_leaves_a_file_that_resumes_exactly(
    tmp_path: Path, reference: tuple[list[str], list[list[str]]], name: str, extra: tuple[str, ...]
) -> None:
    run_dir = tmp_path / name
    assert kill_run(run_dir, after_step=None, extra=extra) == -signal.SIGKILL
    raw = (run_dir / "metrics.csv").read_bytes()
    if name == "mid-write":
        assert not raw.endswith(b"\n")  # a partial last line
        assert max(_steps(table(run_dir / "metrics.csv")[1][:-1])) > 4  # rows beyond the checkpoint at 4
    else:
        assert [n for n in os.listdir(run_dir) if n.startswith(".metrics.csv.") and n.endswith(".tmp")]
        assert raw.endswith(b"\n")  # the file as it was: the rewrite never replaced it
    assert [c.iteration for c in list_checkpoints(run_dir / "checkpoints")] == [4]
    run_to_end(run_dir, resume=True)
    _checked(run_dir, reference)


def test_kills_at_random_points_resume_to_the_uninterrupted_file(
    tmp_path: Path, reference: tuple[list[str], list[list[str]]]
) -> None:
    rng = random.Random(7)
    for trial, after_step in enumerate([10, rng.randint(2, 19), rng.randint(2, 19)]):
        run_dir = tmp_path / f"trial{trial}"
        code = kill_run(run_dir, after_step=after_step, delay=rng.uniform(0.0, 0.01))
        assert code in (-signal.SIGKILL, 0), code
        if after_step == 10:  # saved at 8, flushed at the validation of 9: rows beyond the checkpoint on disk
            assert max(_steps(table(run_dir / "metrics.csv")[1])) >= 9
        run_to_end(run_dir, resume=True)
        _checked(run_dir, reference)


CLI_CONFIG = """\
run: {name: csv, seed: 1}
trainer: {name: demo, max_epochs: 3, batch_size: 64, samples: 256, report_every: 100it}
callbacks:
  lr_decay: {milestones: [0.5]}
  validator: {every: 3it}
  checkpointer: {every: 1ep, keep_last: 5}
  csv: {every: 1it}
"""


def _stepbus(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env
    )


def test_stepbus_train_killed_then_resumed_with_resume_auto_writes_each_step_once(tmp_path: Path) -> None:
    config = tmp_path / "csv.yaml"
    config.write_text(CLI_CONFIG, encoding="utf-8")
    whole = _stepbus(tmp_path, "trainers", "train", "--config", str(config), "--run-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    expected = deterministic(tmp_path / "whole" / "metrics.csv")

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    held = LiveProcess(
        tmp_path,
        "tests.trainers.engine.interrupt_app",
        *("--hold-at", "7", "train", "--config", str(config), "--run-dir", str(run_dir)),
        env=env,
    )
    try:
        held.wait_for(r"^HOLD 7$")  # saved at 4; the validation at 6 flushed rows 5 and 6
    finally:
        held.proc.send_signal(signal.SIGKILL)
        held.proc.wait(timeout=60)
    killed = table(run_dir / "metrics.csv")[1]
    assert _steps(killed)[-1] == 6
    resumed = _stepbus(tmp_path, "trainers", "train", "--resume", "auto", "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    got = deterministic(run_dir / "metrics.csv")
    assert got == expected
    assert _steps([r for r in got[1] if r[got[0].index("train/loss")] != ""]) == list(range(1, 13))
