"""Loggers and ``metrics.json`` on a disk that fills up mid-run (a small tmpfs filled to the last byte by the run
itself, or the ``RLIMIT_FSIZE`` stand-in: see tests/full_disk.py), in real child processes.

TensorBoard reports the failure once, in plain words, and its writer thread prints no traceback; W&B's service,
which fails in a process of its own and tells nobody, is caught by the logger and reported once (``warn``: one
warning, the run completes; ``raise``: the run fails, exit 1); every failure the run survives is counted in the
progress summary's final line and in ``metrics.json``; ``metrics.json`` itself on the full disk fails the run with
the file named and the reason in plain words."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

from tests.full_disk import Disk, full_disk, run_case

WANDB_ID = "fulldisk"  # the run id tests/full_disk_run.py gives W&B


def _note(run_dir: Path) -> dict[str, Any]:
    note: dict[str, Any] = json.loads((run_dir / "note.json").read_text())
    return note


def _report(run_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text())
    return report


def _last_line(stdout: str) -> str:
    return stdout.strip().splitlines()[-1]


def _errno(disk: Disk) -> int:
    return errno.ENOSPC if disk.mode == "tmpfs" else errno.EFBIG


def _sync_dir(disk: Disk) -> Path:
    (found,) = (disk.root / "wandb").glob(f"offline-run-*-{WANDB_ID}")
    return found


def test_tensorboard_reports_a_full_disk_once_without_the_writer_threads_traceback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with full_disk(tmp_path) as disk:
        done = run_case(disk, run_dir, case="tensorboard", fill_at=2, on_error="disable")
        reason = disk.reason()
        folder = disk.root / "tb"
    assert done.returncode == 0, done.stderr
    assert "Exception in thread" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()  # the logger's warning, and nothing else
    # the writer thread fails on its own; the writer raises its failure from the next add_scalar or flush
    expected = (
        rf"stepbus\.tensorboard: TensorBoardLogger 'TensorBoardLogger' could not (write scalars|flush) in "
        rf"{re.escape(str(folder))}: {re.escape(reason)}; the logger is disabled, training goes on"
    )
    assert re.fullmatch(expected, line), line
    note = _note(run_dir)
    assert (note["status"], note["failures"], note["failed_writes"]) == ("completed", 1, {"TensorBoardLogger": 1})
    assert _report(run_dir)["failed_writes"] == {"TensorBoardLogger": 1}
    assert _last_line(done.stdout) == "training completed with 1 failed write: TensorBoardLogger 1"


def test_tensorboard_under_warn_counts_every_failed_write_in_the_summary_and_metrics_json(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with full_disk(tmp_path) as disk:
        done = run_case(disk, run_dir, case="tensorboard", fill_at=2, on_error="warn")
        reason = disk.reason()
    assert done.returncode == 0, done.stderr
    assert "Exception in thread" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    note = _note(run_dir)
    warnings = note["warnings"]
    count = len(warnings)
    assert count >= 2  # at least a row and the final hyper-parameters
    assert all(w.endswith(f": {reason}; training goes on") for w in warnings), warnings
    assert warnings[-1].startswith(
        "stepbus.tensorboard: TensorBoardLogger 'TensorBoardLogger' could not write the final hyper-parameters and "
        "close in "
    )
    assert note["failures"] == count
    assert note["failed_writes"] == _report(run_dir)["failed_writes"] == {"TensorBoardLogger": count}
    assert _last_line(done.stdout) == f"training completed with {count} failed writes: TensorBoardLogger {count}"
    assert done.stderr.strip().splitlines() == warnings  # nothing else on stderr


def _wandb_failures(disk: Disk, sync_dir: Path) -> list[str]:
    """What the W&B logger reports, in order: its run file, found at the first epoch's end (the file system has no
    block left; under the stand-in, the run file has reached the file size limit the service inherits). Under the
    stand-in, whose limit holds for this process too, W&B's own ``finish`` then fails as well (it writes the run's
    summary files)."""
    run_file = (
        f"WandbLogger 'WandbLogger' could not write the run file run-{WANDB_ID}.wandb in {sync_dir}: {disk.reason()}"
    )
    if disk.mode == "tmpfs":
        return [run_file]
    return [run_file, f"WandbLogger 'WandbLogger' could not finish the run in {disk.root}: {disk.reason()}"]


def test_wandb_losing_its_run_file_is_detected_reported_once_and_counted(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with full_disk(tmp_path) as disk:
        done = run_case(disk, run_dir, case="wandb", fill_at=5, on_error="warn")
        expected, sync_dir = _wandb_failures(disk, _sync_dir(disk)), _sync_dir(disk)
    assert done.returncode == 0, done.stderr
    note = _note(run_dir)
    assert note["sync_dir"] == str(sync_dir)
    ours = [w for w in note["warnings"] if w.startswith("stepbus.wandb: ")]
    assert ours == [f"stepbus.wandb: {failure}; training goes on" for failure in expected]
    count = len(expected)
    assert (note["status"], note["failures"], note["failed_writes"]) == ("completed", count, {"WandbLogger": count})
    assert _report(run_dir)["failed_writes"] == {"WandbLogger": count}
    assert (
        _last_line(done.stdout)
        == f"training completed with {count} failed write{'s' * (count > 1)}: WandbLogger {count}"
    )


def test_wandb_losing_its_run_file_fails_the_run_under_raise(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with full_disk(tmp_path) as disk:
        done = run_case(disk, run_dir, case="wandb", fill_at=5, on_error="raise")
        first, code = _wandb_failures(disk, _sync_dir(disk))[0], _errno(disk)
    assert done.returncode == 1, done.stderr
    assert not (run_dir / "note.json").exists()  # train() raised
    expected = (
        "lifecycle.errors.CallbackError: handler 'WandbLogger.post_epoch' (priority -100) failed during event "
        f"'post_epoch' at iteration 16 (epoch 1/2, step 16/16): OSError: [Errno {code}] {first}"
    )
    assert done.stderr.splitlines()[-2:] == [
        expected,
        "stepbus: raised at iteration 16 (epoch 1/2, step 16/16, iteration 16)",
    ]
    assert "also failed" not in done.stderr  # the W&B run was ended, with no second error
    assert "training failed" in done.stdout


def test_metrics_json_on_a_full_disk_fails_the_run_naming_the_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with full_disk(tmp_path) as disk:
        done = run_case(disk, run_dir, case="metrics", fill_at=30)
        reason, target, code = disk.reason(), disk.root / "metrics.json", _errno(disk)
        assert sorted(p.name for p in disk.root.iterdir()) == (["filler"] if disk.mode == "tmpfs" else [])
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    message = f"OSError: [Errno {code}] MetricsFile 'MetricsFile': {target} could not be written: {reason}"
    assert message in lines, done.stderr
    assert (
        "lifecycle.errors.CallbackError: handler 'MetricsFile.post_training' (priority -2000) failed during event "
        f"'post_training' at iteration 32 (epoch 2/2, step 16/16): {message}"
    ) in lines, done.stderr
