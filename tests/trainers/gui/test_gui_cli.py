"""``stepbus gui`` as a real subprocess on the Xvfb display: it trains, a signal closes the window cleanly (the
checkpointer's end-of-run save, exit 128 + signal), two configs share one window, and bad invocations exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainers.engine.live_process import LiveProcess
from trainers.checkpoint.format import list_checkpoints, read_metadata

ROOT = Path(__file__).resolve().parents[3]
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")

pytestmark = pytest.mark.usefixtures("display")


def _env() -> dict[str, str]:
    # this interpreter first on PATH: the hints name it as `python -m trainers` (trainers.cli.invocation)
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "200", "PATH": search}


def test_gui_trains_and_a_signal_closes_it_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with LiveProcess(
        tmp_path, "trainers", "gui", "--config", DEMO, "--start", "--epochs", "500", "--run-dir", str(run_dir),
        env=_env(),
    ) as gui:  # fmt: skip
        gui.wait_for(r"epoch 3/500 +iteration +384/64000")  # the demo's own progress lines: it is training
        gui.proc.send_signal(signal.SIGINT)
        code, out, _ = gui.finish(60)
    assert code == 130, gui.output()
    final = re.search(r"demo: .*run: stopped at epoch (\d+)/500, step (\d+)/128, iteration (\d+)", out)
    assert final is not None, out
    iteration = int(final.group(3))
    assert iteration == (int(final.group(1)) - 1) * 128 + int(final.group(2)) >= 384
    assert out.count("training stopped:") == 1  # post_training once
    assert re.search(r"^frame \d+ ms \(p95 \d+, max \d+\)", out, re.MULTILINE), out
    # the config checkpointer (every epoch, keep 3, best by val/mse) saved the end position last
    saved = sorted(int(read_metadata(c.path)["iteration"]) for c in list_checkpoints(run_dir / "checkpoints"))
    assert saved[-1] == iteration
    assert len(saved) <= 4
    assert (run_dir / "config.yaml").is_file()
    assert "preview:" in (run_dir / "config.yaml").read_text(encoding="utf-8")  # the GUI's Preview, from config


def test_two_configs_share_one_window(tmp_path: Path) -> None:
    with LiveProcess(
        tmp_path, "trainers", "gui", "--config", DEMO, "--config", DEMO, "--start", "--epochs", "1", env=_env()
    ) as gui:
        gui.wait_for(r"(training completed: 128 iterations[\s\S]*){2}")  # both ran to their end in one window
        gui.proc.send_signal(signal.SIGTERM)
        code, out, _ = gui.finish(60)
    assert code == 128 + signal.SIGTERM, gui.output()
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2
    assert runs[0] != runs[1]
    for name in runs:
        assert re.search(rf"demo: runs/{name}: completed at epoch 1/1, step 128/128, iteration 128", out), out
        assert (tmp_path / "runs" / name / "checkpoints" / "last.pt").exists()


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_without_a_display_it_says_what_to_do(tmp_path: Path) -> None:
    env = _env()
    env.pop("DISPLAY", None)
    result = _run(["gui", "--config", DEMO], tmp_path, env)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "stepbus gui needs a display" in message
    assert f"xvfb-run -a {Path(sys.executable).name} -m trainers gui" in message
    assert not (tmp_path / "runs").exists()  # nothing was built or written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", DEMO, "--config", DEMO, "--run-dir", "x"], "--run-dir and --resume take a single --config"),
        (["--budget-ms", "0"], "--budget-ms must be > 0, got 0.0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (
            ["--config", DEMO, "--set", "callbacks.preview.every=soon"],
            "callbacks.preview.every: invalid schedule 'soon'",
        ),
        (["--config", DEMO, "--set", "callbacks.preview.every=soon"], "invalid schedule 'soon'"),
    ],
)
def test_bad_invocations_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run(["gui", *args], tmp_path, _env())
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
