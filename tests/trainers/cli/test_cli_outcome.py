"""How ``stepbus train`` ends on an error, as real subprocesses of the demo: a refusal of its input exits 2 with a
message and no traceback; a failure while training exits 1 with the one-line cause first, then the traceback --
except for a full disk, where that line is all."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle import Bus, CallbackError, State
from trainers.checkpoint.format import list_checkpoints
from trainers.cli.outcome import cause_of, environmental, failure_line, refusal

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "trainers" / "apps" / "configs" / "demo.yaml"
UNPRIVILEGED = Path(__file__).with_name("unprivileged_stepbus.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "WANDB_MODE": "offline"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # this interpreter first on PATH: the hints name it as `python -m trainers` (trainers.cli.invocation)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _train(cwd: Path, *args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """``stepbus train --config demo.yaml ARGS`` in ``cwd``; ``limit``: the largest file it may write (bytes)."""

    def cap_file_size() -> None:  # a write past the limit fails with EFBIG, as on a full disk (no SIGXFSZ kill)
        assert limit is not None
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "trainers", "train", "--config", str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env=_env(),
        preexec_fn=None if limit is None else cap_file_size,
    )


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# ------------------------------------------------------------------------------------------------ refusals: exit 2


def test_a_fresh_run_into_another_runs_checkpoints_exits_2_and_says_how_to_continue(tmp_path: Path) -> None:
    first = _train(tmp_path, "--epochs", "1", "--run-dir", "run")
    assert first.returncode == 0, first.stderr
    saved = tmp_path / "run" / "checkpoints" / "step-00000128.pt"
    before = saved.read_bytes()

    fresh = _train(tmp_path, "--epochs", "2", "--run-dir", "run")
    assert fresh.returncode == 2, fresh.stderr
    lines = fresh.stderr.splitlines()
    assert lines[0].startswith(
        "error: checkpoint run/checkpoints: holds 1 checkpoint(s) of an earlier run (newest step-00000128.pt, "
        "iteration 128)"
    ), fresh.stderr
    again = f"{Path(sys.executable).name} -m trainers train --resume auto --run-dir run"
    assert lines[-1] == f"to continue the run saved there: {again}"
    assert len(lines) == 2, fresh.stderr
    assert "Traceback" not in fresh.stdout + fresh.stderr
    assert saved.read_bytes() == before  # nothing was overwritten
    assert [c.path.name for c in list_checkpoints(saved.parent)] == ["step-00000128.pt"]

    # and the advice works: the same directory, resumed, trains the second epoch
    resumed = _train(tmp_path, "--epochs", "2", "--resume", "auto", "--run-dir", "run")
    assert resumed.returncode == 0, resumed.stderr
    assert "training completed: 256 iterations" in resumed.stdout


def test_a_file_where_the_run_directory_should_be_exits_2(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder\n", encoding="utf-8")
    result = _train(tmp_path, "--epochs", "1", "--run-dir", "taken/run")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "error: cannot lock run directory taken/run: Not a directory (a file stands where a folder is needed); "
        "nothing was trained. The run directory (taken/run) and the folders its callbacks write must be directories "
        "this process can write: choose another --run-dir (or run.dir in the config), or fix the permissions\n"
    )
    assert (tmp_path / "taken").read_text(encoding="utf-8") == "not a folder\n"


def test_a_read_only_run_directory_exits_2(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(DEMO, work / "demo.yaml")
    read_only = work / "run"
    read_only.mkdir()
    read_only.chmod(0o555)
    work.chmod(0o755)
    result = subprocess.run(
        [sys.executable, str(UNPRIVILEGED), str(work), *("train", "--config", "demo.yaml", "--run-dir", "run")],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        "error: cannot lock run directory run: Permission denied; nothing was trained. The run directory (run) and "
        "the folders its callbacks write must be directories this process can write: choose another --run-dir (or "
        "run.dir in the config), or fix the permissions\n"
    )
    assert _files(read_only) == []


# -------------------------------------------------------------------------------------------- failures: exit 1


def test_a_failure_while_training_exits_1_with_the_cause_first_then_the_traceback(tmp_path: Path) -> None:
    result = _train(
        tmp_path,
        "--epochs",
        "2",
        "--run-dir",
        "run",
        "--set",
        "callbacks.early_stopping.monitor=val/nope",  # no validation publishes it: found at the first one
        "--set",
        "callbacks.early_stopping.mode=min",
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "error: training failed at epoch 1, iteration 128 in EarlyStopping.post_validation: KeyError: "
        "\"EarlyStopping 'EarlyStopping' monitors 'val/nope', but the validation published ['val/mse']; "
        'set monitor= to one of them"'
    ), result.stderr
    assert lines[1] == "Traceback (most recent call last):"
    raised = [line for line in lines if line.startswith("lifecycle.errors.CallbackError: ")]
    assert len(raised) == 1, result.stderr
    assert raised[0].startswith("lifecycle.errors.CallbackError: handler 'EarlyStopping.post_validation' (priority ")
    assert "training failed: 128 iterations" in result.stdout


def test_a_full_disk_while_training_exits_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    # config.yaml and metrics.json fit in 20000 bytes; the first checkpoint (at the end of epoch 1) does not
    result = _train(tmp_path, "--epochs", "2", "--run-dir", "run", limit=20_000)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        "error: training failed at epoch 1, iteration 128 in Checkpointer.post_epoch: CheckpointError: checkpoint "
        "run/checkpoints/step-00000128.pt: could not be written: file too large"
    ), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []


# ------------------------------------------------------------------------------------ the classification itself


def _raised_by_a_handler(event: str, error: Exception, *, iteration: int = 0) -> CallbackError:
    bus = Bus(State(max_epochs=2, iterations_per_epoch=4, epoch=1, iteration=iteration, epoch_iteration=iteration))

    def handler(sender: object, **payload: object) -> None:
        raise error

    bus.connect(event, handler, name=f"Saver.{event}")
    try:
        bus.emit(event, None)
    except CallbackError as exc:
        return exc
    raise AssertionError("the handler did not raise")


def test_refusals_are_decided_by_the_cause_and_whether_a_step_began(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(NotADirectoryError) as info:
        (tmp_path / "file" / "sub").mkdir()
    not_a_directory = info.value
    wrapped = _raised_by_a_handler("pre_training", not_a_directory)
    assert cause_of(wrapped) == (not_a_directory, wrapped)
    message = refusal(wrapped, began=False, run_dir=tmp_path)
    assert message is not None
    assert message.startswith(f"{tmp_path / 'file' / 'sub'}: Not a directory (a file stands where a folder is needed)")
    assert refusal(wrapped, began=True, run_dir=tmp_path) is None  # once a step began, it is a failure

    read_only_fs = OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "config.yaml"))
    message = refusal(read_only_fs, began=False, run_dir=tmp_path / "run")
    assert message is not None
    assert message.startswith(f"{tmp_path / 'run' / 'config.yaml'}: Read-only file system; nothing was trained.")
    assert refusal(KeyError("x"), began=False, run_dir=tmp_path) is None


def test_the_failure_line_names_the_handler_that_raised_inside_a_nested_emission() -> None:
    bus = Bus(State(max_epochs=2, iterations_per_epoch=4, epoch=2, iteration=7, epoch_iteration=3))

    def validator(sender: object, **payload: object) -> None:
        bus.emit("post_validation", sender, metrics={})

    def metric(sender: object, **payload: object) -> None:
        raise ValueError("metric is NaN\nsecond line")

    bus.connect("post_step", validator, name="Validator.post_step")
    bus.connect("post_validation", metric, name="Tracker.post_validation")
    with pytest.raises(CallbackError) as info:
        bus.emit("post_step", None)
    error = info.value
    assert failure_line(error, bus.state) == (
        "training failed at epoch 2, iteration 7 in Tracker.post_validation: ValueError: metric is NaN ..."
    )
    assert failure_line(ValueError("bad"), None) == "training failed before the trainer was built: ValueError: bad"
    assert environmental(error) is False


def test_a_full_disk_is_recognised_behind_its_wrappers(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("unexpected pos 64 vs 0")  # noqa: B904 - torch.save's writer keeps it as the context
    except RuntimeError as exc:
        wrapped = _raised_by_a_handler("post_step", exc, iteration=3)
    assert environmental(wrapped) is True
    assert environmental(_raised_by_a_handler("post_step", KeyError("x"))) is False
