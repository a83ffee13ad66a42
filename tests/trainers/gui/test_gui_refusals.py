"""``stepbus gui`` refuses like ``stepbus train``: a window whose run directory holds another run's checkpoints
trains nothing, and the command exits 2 with the reason, also when a signal closed the window afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainers.engine.live_process import LiveProcess
from trainers.checkpoint.format import list_checkpoints

ROOT = Path(__file__).resolve().parents[3]
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")

pytestmark = pytest.mark.usefixtures("display")


def _env() -> dict[str, str]:
    # this interpreter first on PATH: the hints name it as `python -m trainers` (trainers.cli.invocation)
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "PATH": search,
    }


def test_a_window_into_another_runs_checkpoints_trains_nothing_and_exits_2(tmp_path: Path) -> None:
    first = subprocess.run(
        [sys.executable, "-m", "trainers", "train", "--config", DEMO, "--epochs", "1", "--run-dir", "run"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    with LiveProcess(
        tmp_path, "trainers", "gui", "--config", DEMO, "--start", "--epochs", "2", "--run-dir", "run", env=_env()
    ) as gui:
        # the first tick refused the directory as the run started, before any event
        gui.wait_for(r"refused: checkpoint run/checkpoints: holds 1 checkpoint", stderr=True)
        gui.proc.send_signal(signal.SIGTERM)
        code, out, err = gui.finish(60)
    assert code == 2, gui.output()
    assert (
        "error: checkpoint run/checkpoints: holds 1 checkpoint(s) of an earlier run (newest step-00000128.pt, "
        "iteration 128)" in err
    ), err
    again = f"{Path(sys.executable).name} -m trainers train --resume auto --run-dir run"
    assert f"to continue the run saved there: {again}\n" in err
    assert [c.path.name for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000128.pt"]
    assert "demo: run: failed: checkpoint run/checkpoints: holds 1 checkpoint(s) of an earlier run" in out
    assert "Traceback" not in out + err, err
