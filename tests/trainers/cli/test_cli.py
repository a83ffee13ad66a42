"""The ``stepbus`` command line: ``python -m trainers train`` end to end, and its argument errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.cli import main

ROOT = Path(__file__).resolve().parents[3]
DEMO = str(
    ROOT / "trainers" / "apps" / "configs" / "demo.yaml"
)  # the fast MLP demo (the default is the image-field app)
PROGRESS = re.compile(r"^epoch 1/1\s+iteration\s+128/128\s+loss (\d+\.\d{5})$", re.MULTILINE)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    # run the code of this checkout (the one the in-process tests import), from any working directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _stepbus(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(),
    )


def test_train_one_epoch_completes_and_reports_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _stepbus(tmp_path, "train", "--config", DEMO, "--epochs", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training completed: 128 iterations" in result.stdout
    progress = PROGRESS.findall(result.stdout)
    assert len(progress) == 1, result.stdout
    assert "epoch 1 done" in result.stdout
    assert "Traceback" not in result.stderr

    # the same command in-process prints the same loss: the run is a pure function of the seed
    assert main(["train", "--config", DEMO, "--epochs", "1", "--run-dir", str(tmp_path / "in-process")]) == 0
    assert PROGRESS.findall(capsys.readouterr().out) == progress


def test_epochs_zero_exits_2_naming_the_option(tmp_path: Path) -> None:
    result = _stepbus(tmp_path, "train", "--epochs", "0")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "--epochs must be >= 1, got 0" in result.stderr  # errors go to stderr
    assert result.stdout == ""
    assert "training" not in output
    assert "Traceback" not in output


def test_bad_arguments_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--epochs", "-1"]) == 2
    assert "--epochs must be >= 1, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    assert info.value.code == 2
    assert "argument --epochs: invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_argument_errors_do_not_import_torch(tmp_path: Path) -> None:
    # cli.py: "torch is imported only when a command needs it" -- a bad --epochs must answer without it
    code = "import sys; from trainers.cli import main; code = main(['train', '--epochs', '0']); "
    code += "print('torch imported:', 'torch' in sys.modules); sys.exit(code)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env()
    )
    assert result.returncode == 2, result.stderr
    assert "torch imported: False" in result.stdout
