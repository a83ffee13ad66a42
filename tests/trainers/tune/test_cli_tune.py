"""``stepbus tune lr`` in a subprocess: exit 0 with the plot and the data in the run directory and nothing else,
the printed suggestion the one in the data; exit 2 with one message and no traceback for bad input and for a run
directory another process holds; ``--help`` without torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.checkpoint.run_lock import LOCK_NAME, RunLock

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "trainers" / "apps" / "configs" / "demo.yaml"
GAN = ROOT / "trainers" / "apps" / "configs" / "gan.yaml"


def _stepbus(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "trainers", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_it_writes_the_plot_and_the_data_and_prints_the_suggestion(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "lr"
    done = _stepbus(
        "tune", "lr", "--config", DEMO, "--set", "trainer.samples=1024", "--steps", "60", "--min-lr", "1e-5",
        "--smooth", "0.9", "--run-dir", run_dir, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert sorted(p.name for p in run_dir.iterdir()) == ["lr_find.json", "lr_find.png"]  # no lock, config, checkpoint
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs",
        "runs/lr",
        "runs/lr/lr_find.json",
        "runs/lr/lr_find.png",
    ]
    data = json.loads((run_dir / "lr_find.json").read_text(encoding="utf-8"))
    printed = re.search(
        r"^suggested lr: (\S+); steepest descent of the smoothed loss \(step \d+ of \d+\)$", done.stdout, re.MULTILINE
    )
    assert printed is not None, done.stdout
    assert float(printed.group(1)) == data["suggestion"]
    assert len(data["points"]) == 60 or data["diverged"]
    command = re.search(r"^train with it: (.+)$", done.stdout, re.MULTILINE)
    assert command is not None, done.stdout
    assert command.group(1).endswith(
        f"-m trainers train --config {DEMO} --set trainer.samples=1024 "
        f"--set trainer.optimizer.lr={data['suggestion']:.3g}"
    )
    assert f"wrote {run_dir / 'lr_find.png'} and {run_dir / 'lr_find.json'}" in done.stdout


def test_named_optimizers_need_one_chosen_and_get_its_config_key(tmp_path: Path) -> None:
    refused = _stepbus("tune", "lr", "--config", GAN, "--run-dir", tmp_path / "a", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: lr range test: this trainer has named optimizers ('discriminator', 'generator'): choose the one to "
        "sweep with optimizer=NAME (on the command line: --optimizer NAME)\n"
    )
    assert not (tmp_path / "a").exists()  # the folder made for the lock is gone again
    chosen = _stepbus(
        "tune", "lr", "--config", GAN, "--optimizer", "generator", "--steps", "30", "--set", "trainer.samples=512",
        "--run-dir", tmp_path / "b", cwd=tmp_path,
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    data = json.loads((tmp_path / "b" / "lr_find.json").read_text(encoding="utf-8"))
    assert data["optimizer"] == "generator"
    assert data["suggestion"] is not None
    assert (
        f"--set trainer.samples=512 --set trainer.optimizers.generator.lr={data['suggestion']:.3g}\n" in chosen.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--steps", "1"), "error: lr range test: steps must be an integer >= 2, got 1\n"),
        (("--min-lr", "1", "--max-lr", "0.1"), "error: lr range test: max_lr must be greater than min_lr, got "),
        (("--mode", "log"), "argument --mode: invalid choice: 'log' (choose from "),
        (("--set", "trainer.nope=1"), "config error"),
    ],
    ids=["steps", "range", "mode", "config"],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    done = _stepbus("tune", "lr", "--config", DEMO, "--run-dir", tmp_path / "r", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_in_use_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "busy"
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        done = _stepbus("tune", "lr", "--config", DEMO, "--run-dir", run_dir, cwd=tmp_path)
    finally:
        lock.release()
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: run directory {run_dir} is in use by process {os.getpid()} on host ")
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()  # nothing was written, and the lock's folder went with the lock
    assert LOCK_NAME not in done.stdout


def test_help_imports_no_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainers", "tune", "lr", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0
    assert "usage: stepbus tune lr" in result.stdout
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "trainers.cli.parser" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "numpy", "PIL", "rich")}
