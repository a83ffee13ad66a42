"""Loggers under real backend faults (see logger_faults.py): a disk that fills up mid-run and a directory the
process may not write. By default the logger warns once, disables itself and training completes; ``on_error="raise"``
fails the run naming the logger's handler and the iteration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
FAULTS = Path(__file__).with_name("logger_faults.py")
LIMIT = 10_000  # bytes: the event file passes it after a hundred-odd steps of scalars every iteration


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("logger-faults")
    base.chmod(0o755)  # the unprivileged child must reach its directories
    cases: list[dict[str, Any]] = []
    for logger, on_error in (("tensorboard", "disable"), ("tensorboard", "raise")):
        folder = base / f"full-{logger}-{on_error}"
        folder.mkdir()
        cases.append(
            {
                "name": f"full-{logger}-{on_error}",
                "kind": "disk_full",
                "limit": LIMIT,
                "dir": str(folder),
                "log_dir": "logs",
                "logger": logger,
                "on_error": on_error,
                "note": str(base / f"full-{on_error}.json"),
            }
        )
    for logger in ("tensorboard", "wandb"):
        folder = base / f"ro-{logger}"
        folder.mkdir()
        folder.chmod(0o555)
        cases.append(
            {
                "name": f"ro-{logger}",
                "kind": "read_only",
                "dir": str(folder),
                "log_dir": "logs",
                "logger": logger,
                "on_error": "disable",
                "note": str(base / f"ro-{logger}.json"),
            }
        )
    spec = base / "spec.json"
    spec.write_text(json.dumps({"report": str(base / "report.json"), "cases": cases}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(base / "wandb-config"), WANDB_CACHE_DIR=str(base / "wc"))
    env.update(WANDB_DATA_DIR=str(base / "wd"))
    result = subprocess.run(
        [sys.executable, str(FAULTS), str(spec)], capture_output=True, text=True, timeout=300, env=env, cwd=base
    )
    for case in cases:
        if case["kind"] == "read_only":
            Path(case["dir"]).chmod(0o755)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((base / "report.json").read_text())
    notes = {case["name"]: json.loads(Path(case["note"]).read_text()) for case in cases}
    return {"base": base, "report": report, "notes": notes}


def test_a_disk_filling_up_mid_run_disables_the_logger_once_and_training_completes(faults: dict[str, Any]) -> None:
    report, note = faults["report"]["full-tensorboard-disable"], faults["notes"]["full-tensorboard-disable"]
    assert report == {"exit": 0}, note
    assert "crash" not in note, note.get("crash")
    assert (note["status"], note["iteration"]) == ("completed", 192), note  # 6 epochs of 32 steps
    assert (note["disabled"], note["failures"]) == (True, 1)
    (warning,) = note["warnings"]  # warned once, not once per step
    assert warning.startswith("stepbus.tensorboard: TensorBoardLogger 'TensorBoardLogger' could not ")
    limit = "this process may not write more than 9.8 KiB into a file: ulimit -f"  # LIMIT, in plain words
    assert warning.endswith(f" in logs: file too large ({limit}); the logger is disabled, training goes on")
    events = list((faults["base"] / "full-tensorboard-disable" / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert events[0].stat().st_size <= LIMIT  # the real file hit the real limit


def test_on_error_raise_fails_the_run_at_the_failing_write_naming_the_handler(faults: dict[str, Any]) -> None:
    report, note = faults["report"]["full-tensorboard-raise"], faults["notes"]["full-tensorboard-raise"]
    assert report == {"exit": 0}, note
    assert note["status"] == "failed", note
    assert 0 < note["iteration"] < 192
    assert note["error"].startswith("CallbackError: handler 'TensorBoardLogger.")
    assert f"at iteration {note['iteration']} " in note["error"]
    limit = "this process may not write more than 9.8 KiB into a file: ulimit -f"
    assert note["error"].endswith(f" in logs: file too large ({limit})"), note["error"]
    assert ": OSError: [Errno 27] TensorBoardLogger 'TensorBoardLogger' could not " in note["error"]
    assert note["failures"] == 0  # raised, not counted as handled
    assert note["disabled"] is False


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_a_read_only_directory_disables_the_logger_and_training_completes(faults: dict[str, Any], logger: str) -> None:
    report, note = faults["report"][f"ro-{logger}"], faults["notes"][f"ro-{logger}"]
    assert report == {"exit": 0}, note
    assert "crash" not in note, note.get("crash")
    assert note["euid"] != 0  # the permission bits were really enforced
    assert (note["status"], note["iteration"]) == ("completed", 192), note
    assert (note["disabled"], note["failures"]) == (True, 1)
    name = {"tensorboard": "TensorBoardLogger", "wandb": "WandbLogger"}[logger]
    ours = [m for m in note["warnings"] if m.startswith(f"stepbus.{logger}: ")]
    assert len(ours) == 1, note["warnings"]
    assert ours[0].startswith(f"stepbus.{logger}: {name} '{name}' could not ")
    assert "in logs: PermissionError: [Errno 13] Permission denied: 'logs'; the logger is disabled" in ours[0]
    assert not (faults["base"] / f"ro-{logger}" / "logs").exists()
