"""``stepbus train --nproc N``: the command line starts ``torchrun`` itself; rank 0 picks the run directory, prints
and writes; Ctrl-C reaches every rank once and the interrupt checkpoint is written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.tb_events import events as tb_events
from tests.tb_events import series
from trainers.checkpoint.format import list_checkpoints, read_metadata

ROOT = Path(__file__).resolve().parents[3]
#: this interpreter first on PATH: the hints name it as `python -m trainers` (trainers.cli.invocation)
SEARCH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "PATH": SEARCH}
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
    # the command the user typed (not the ranks' own under torchrun), on one line
    again = f"{Path(sys.executable).name} -m trainers train --nproc 2 --epochs 200 --resume auto --run-dir {run}"
    assert next(line for line in err.splitlines() if line.startswith("interrupted by SIGINT at ")).endswith(
        f"; continue with: {again}"
    ), err
    stopped = int(re.search(r"interrupted by SIGINT at epoch \d+/200, step \d+/128, iteration (\d+);", err)[1])
    # the position it stopped at is saved: by the interrupt, or by the epoch's own save when the signal arrived
    # just after it (an interrupt never saves one position twice)
    newest = list_checkpoints(run / "checkpoints")[0]
    meta = read_metadata(newest.path)
    assert (meta["iteration"], meta["resumable"], meta["world_size"]) == (stopped, True, 2)
    assert meta["reason"] == "interrupt" or (meta["reason"] == "schedule" and stopped % 128 == 0), meta["reason"]
    assert stopped >= 128
