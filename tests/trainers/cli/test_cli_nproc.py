"""``stepbus train --nproc N``: the command line starts ``torchrun`` itself; rank 0 picks the run directory, prints
and writes; Ctrl-C reaches every rank once and the interrupt checkpoint is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.tb_events import events as tb_events
from tests.tb_events import series
from trainers.checkpoint.format import read_metadata

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")


def _stepbus(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trainers", "train", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240, cwd=cwd)


def test_nproc_trains_on_two_ranks_and_rank_zero_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _stepbus(
        "--nproc", "2", "--config", DEMO, "--epochs", "2", "--run-dir", str(run), "--set",
        "callbacks.tensorboard.enabled=true", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "".join(result.stdout.split()).count(f"stepbusdemorunin{run}") == 1  # rank 0 speaks for the job
    assert result.stdout.count("training completed: 256 iterations") == 1
    assert (run / "config.yaml").is_file()
    names = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert names == ["step-00000128.pt", "step-00000256.pt"]
    meta = read_metadata(run / "checkpoints" / names[-1])
    assert (meta["world_size"], meta["writer"]["rank"], meta["iteration"]) == (2, 0, 256)
    events = sorted((run / "tb").glob("events.out.tfevents.*"))
    assert len({p.name.split(".")[-2] for p in events}) == 1  # one process wrote them
    assert [step for step, _ in series(tb_events(run / "tb"), "val/mse")] == [128, 256]


def test_nproc_refuses_bad_counts_and_nesting(tmp_path: Path) -> None:
    result = _stepbus("--nproc", "0", "--config", DEMO, cwd=tmp_path)
    assert result.returncode == 2
    assert "--nproc must be >= 1, got 0" in result.stderr
    nested = subprocess.run(
        [sys.executable, "-m", "trainers", "train", "--nproc=2", "--config", DEMO],
        env={**ENV, "WORLD_SIZE": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert nested.returncode == 2
    assert "--nproc inside a torchrun job" in nested.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_interrupts_every_rank_once_and_saves(tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "trainers", "train", "--nproc", "2", "--config", DEMO, "--epochs", "200",
         "--run-dir", str(run)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "step-00000128.pt").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, out[-2000:] + err[-2000:]
    assert err.count("interrupted by SIGINT at ") == 1
    assert f"stepbustrain--nproc2--epochs200--resumeauto--run-dir{run}" in "".join(err.split())
    interrupt = [p for p in (run / "checkpoints").glob("step-*.pt") if read_metadata(p)["reason"] == "interrupt"]
    assert len(interrupt) == 1
    meta = read_metadata(interrupt[0])
    assert (meta["resumable"], meta["world_size"]) == (True, 2)
    assert meta["iteration"] > 128
