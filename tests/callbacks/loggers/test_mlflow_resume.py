"""Every step exactly once in MLflow after a kill -9 and a resume: the exact-resume training of
``tests.trainers.checkpoint.resume_app`` with an ``MLflowLogger`` logging every step (``mlflow_resume_app.py``) is
SIGKILLed at iteration 13 -- after the logger wrote steps 9..13, which its last checkpoint (iteration 8) does not
hold -- and resumed in a new process. Read back with ``MlflowClient``, the resumed run has the same id, every metric
key's history holds each step once, and equals an uninterrupted run's point for point (``time/*`` aside, which are
wall-clock measurements)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.trainers.checkpoint.resume_app import ITERATIONS, ROOT, subprocess_env

KILL_AT = 13
APP = "tests.callbacks.loggers.mlflow_resume_app"


def start(run_dir: Path, *args: str, module: str = APP) -> subprocess.Popen[bytes]:
    """``python -m module --run-dir run_dir ARGS`` (the resume app by default), its stderr beside the folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.stderr", "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-u", "-m", module, "--run-dir", str(run_dir), *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=subprocess_env(),
            cwd=ROOT,
        )


def lines_until(child: subprocess.Popen[bytes], last: str, timeout: float = 120) -> list[str]:
    """The child's progress lines up to and including ``last``."""
    assert child.stdout is not None
    fd, buffer = child.stdout.fileno(), b""
    lines: list[str] = []
    while last not in lines:
        if not select.select([fd], [], [], timeout)[0]:
            pytest.fail(f"no line from the child in {timeout} s after {lines[-3:]}")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"the child exited ({child.wait()}) before {last!r}; its lines: {lines}")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
    return lines


def finish(child: subprocess.Popen[bytes]) -> list[str]:
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out
    return out.decode().splitlines()


def store(run_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{run_dir / 'mlruns' / 'mlflow.db'}")


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Per metric key (``time/*`` aside), the ``(step, value)`` points in the order MLflow returns them."""
    run = client.get_run(run_id)
    keys = sorted(k for k in run.data.metrics if not k.startswith("time/"))
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("mlflow-resume")
    reference = start(base / "reference")  # runs beside the killed one
    killed = start(base / "killed", "--wait-after", str(KILL_AT))
    lines = lines_until(killed, f"step {KILL_AT}")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.stdout is not None
    killed.stdout.close()
    run_id = lines[0].removeprefix("run ")
    client = store(base / "killed")
    after_kill = {
        "exit": killed.returncode,
        "status": client.get_run(run_id).info.status,
        "histories": histories(client, run_id),
        "checkpoints": sorted(p.name for p in (base / "killed" / "checkpoints").glob("step-*.pt")),
    }
    resumed = finish(start_again := subprocess.Popen(
        [sys.executable, "-u", "-m", APP, "--run-dir", str(base / "killed"), "--resume"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=subprocess_env(),
        cwd=ROOT,
    ))  # fmt: skip
    assert start_again.returncode == 0
    reference_lines = finish(reference)
    reference_id = reference_lines[0].removeprefix("run ")
    return {
        "run_id": run_id,
        "after_kill": after_kill,
        "resumed_lines": [line for line in resumed if line.startswith(("run ", "step ", "finished "))],
        "resumed": histories(client, run_id),
        "run": client.get_run(run_id),
        "runs": client.search_runs([client.get_run(run_id).info.experiment_id]),
        "reference": histories(store(base / "reference"), reference_id),
        "reference_lines": reference_lines,
    }


def test_the_killed_process_had_logged_steps_its_checkpoint_does_not_hold(killed_and_resumed: dict[str, Any]) -> None:
    after = killed_and_resumed["after_kill"]
    assert after["exit"] == -signal.SIGKILL
    assert after["status"] == "RUNNING"  # nobody ended it
    assert after["checkpoints"] == ["step-00000008.pt"]  # saved every epoch of 8 iterations
    assert [step for step, _ in after["histories"]["train/loss"]] == list(range(1, KILL_AT + 1))


def test_the_resumed_process_continues_the_same_run_to_the_end(killed_and_resumed: dict[str, Any]) -> None:
    lines = killed_and_resumed["resumed_lines"]
    assert lines[0] == f"run {killed_and_resumed['run_id']}"
    assert lines[1:] == [f"step {i}" for i in range(9, ITERATIONS + 1)] + [f"finished completed {ITERATIONS}"]
    assert killed_and_resumed["run"].info.status == "FINISHED"
    assert [run.info.run_id for run in killed_and_resumed["runs"]] == [killed_and_resumed["run_id"]]  # no new run


def test_every_step_is_logged_exactly_once_and_equals_the_uninterrupted_run(
    killed_and_resumed: dict[str, Any],
) -> None:
    resumed, reference = killed_and_resumed["resumed"], killed_and_resumed["reference"]
    assert reference["train/loss"][-1][0] == ITERATIONS
    assert sorted(resumed) == sorted(reference)
    assert {"train/loss", "lr", "grad_norm", "val/mse", "best/mse", "epoch/loss"} <= set(reference)
    for key, points in resumed.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        assert sorted(points) == sorted(reference[key]), key  # the same steps and the very same values
