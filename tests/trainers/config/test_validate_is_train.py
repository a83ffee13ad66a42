"""``stepbus config validate`` refuses exactly what ``stepbus train`` refuses before its first step, with the same
message, and writes nothing.

Each case is a real config (the demo, the image-field app or the GAN, with ``--set``) that ``validate`` used to call
valid while ``train`` refused it, failed at its end or trained on to a NaN loss. Both commands run through
``trainers.cli.main`` in this process (exit code, stdout and stderr compared byte for byte), and a few of them again as
real ``python -m trainers`` processes: exit 2, the config error on stderr, no traceback, no run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifecycle import Schedule
from trainers.cli import main

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "trainers" / "apps" / "configs"
DEMO, IMAGE_FIELD, GAN = (str(CONFIGS / f"{name}.yaml") for name in ("demo", "image_field", "gan"))
#: the image-field app made small: its cases build in a fraction of a second
SMALL_FIELD = ["trainer.size=32", "trainer.dense=[4, 8]", "trainer.hashed=[16]", "trainer.table=64"]
UP = "../" * 40  # more parent steps than any temporary directory is deep: from anywhere, up to /
OUTSIDE = (
    "outside the run directory; give a path inside it (a relative path is taken from the run directory, e.g. {!r}), "
    "or allow the folder with run.allow_outside: [{}]"
)


def _schedule_error(spec: str) -> str:
    with pytest.raises(ValueError) as info:  # noqa: PT011 - the schedule's own words are what the config error shows
        Schedule.parse(spec)
    return str(info.value)


@dataclass(frozen=True)
class Case:
    config: str
    overrides: tuple[str, ...]
    problem: str | Callable[[], str]  # the one problem line, after "  "

    def expected(self) -> str:
        return self.problem if isinstance(self.problem, str) else self.problem()


CASES: dict[str, Case] = {
    # the cases that validate called valid
    "max_epochs -1": Case(
        DEMO, ("trainer.max_epochs=-1",), "trainer: 'demo' refused the config: max_epochs must be >= 1, got -1"
    ),
    "lr -1": Case(
        DEMO, ("trainer.optimizer.lr=-1",), "trainer: 'demo' refused the config: Invalid learning rate: -1.0"
    ),
    "betas [2, 3]": Case(
        DEMO,
        ("trainer.optimizer.betas=[2, 3]",),
        "trainer: 'demo' refused the config: Invalid beta parameter at index 0: 2.0",
    ),
    "report_every 1.5ep": Case(
        DEMO, ("trainer.report_every=1.5ep",), lambda: f"trainer.report_every: {_schedule_error('1.5ep')}"
    ),
    "grid_pruning without prune": Case(
        DEMO,
        ("callbacks.grid_pruning.every=100it",),
        "callbacks.grid_pruning: GridPruning 'GridPruning': the pipeline Sequential has no method 'prune'() to call "
        "every 100it; define it, name another method with prune=..., or pass prune=lambda pipeline: ...",
    ),
    "a missing trainer.image": Case(
        IMAGE_FIELD, ("trainer.image=missing.png",), "trainer.image: missing.png: no such file"
    ),
    "metrics_file path /": Case(
        DEMO,
        ("callbacks.metrics_file.path=/",),
        "callbacks.metrics_file.path: '/' names the directory /; a file name is needed here, e.g. 'metrics.json'",
    ),
    "metrics_file path .": Case(
        DEMO,
        ("callbacks.metrics_file.path=.",),
        "callbacks.metrics_file.path: '.' names the run directory itself; a file name is needed here, e.g. "
        "'metrics.json'",
    ),
    "metrics_file path up to /etc": Case(
        DEMO,
        (f"callbacks.metrics_file.path={UP}etc/x.json",),
        f"callbacks.metrics_file.path: '{UP}etc/x.json' resolves to /etc/x.json, "
        + OUTSIDE.format("metrics.json", "/etc"),
    ),
    "checkpointer dir /proc/nonexistent": Case(
        DEMO,
        ("callbacks.checkpointer.dir=/proc/nonexistent",),
        "callbacks.checkpointer.dir: '/proc/nonexistent' resolves to /proc/nonexistent, "
        + OUTSIDE.format("nonexistent", "/proc/nonexistent"),
    ),
    "checkpointer dir /proc/nonexistent, /proc allowed": Case(
        DEMO,
        ("callbacks.checkpointer.dir=/proc/nonexistent", "run.allow_outside=[/proc]"),
        "callbacks.checkpointer.dir: '/proc/nonexistent' resolves to /proc/nonexistent, which cannot be created: "
        "/proc is on the kernel's proc file system, where nothing can be created",
    ),
    "lr_decay gamma inf": Case(
        DEMO,
        ("callbacks.lr_decay.gamma=.inf",),
        "callbacks.lr_decay: LRDecay 'LRDecay': gamma must be a finite number > 0 (the decay factor), got inf",
    ),
    "accumulate 0": Case(
        DEMO, ("trainer.accumulate=0",), "trainer: 'demo' refused the config: accumulate must be >= 1, got 0"
    ),
    "accumulate -1": Case(
        DEMO, ("trainer.accumulate=-1",), "trainer: 'demo' refused the config: accumulate must be >= 1, got -1"
    ),
    # more of the same kind: numbers that must be finite, true/false read as numbers, sizes of 0
    "lr_decay gamma NaN": Case(
        DEMO,
        ("callbacks.lr_decay.gamma=.nan",),
        "callbacks.lr_decay.gamma: got nan; expected a number, and NaN is never a valid setting",
    ),
    "lr_decay gamma 'nan' as text": Case(
        DEMO,
        ("callbacks.lr_decay.gamma=nan",),
        "callbacks.lr_decay.gamma: got 'nan'; expected a number, and NaN is never a valid setting",
    ),
    "lr_decay milestones [true]": Case(
        DEMO,
        ("callbacks.lr_decay.milestones=[true]",),
        "callbacks.lr_decay.milestones: got [True] (list); expected a list of numbers or null",
    ),
    "validator every true": Case(
        DEMO,
        ("callbacks.validator.every=true",),
        "callbacks.validator.every: got True; expected a schedule: '50it', '2ep', '10min', 'never', an integer "
        "(iterations), a mapping (every, at, start, end) or null",
    ),
    "validator prefix ..": Case(
        DEMO,
        ("callbacks.validator.prefix=..",),
        "callbacks.validator: Validator 'Validator': prefix '..' has an empty, '.' or '..' part; its images go to "
        "<run_dir>/<prefix>, which must be a folder inside the run directory",
    ),
    "optimizer lr inf": Case(
        DEMO,
        ("trainer.optimizer.lr=.inf",),
        "trainer.optimizer.lr: got inf; expected finite numbers (no optimizer setting takes infinity)",
    ),
    "optimizer eps inf": Case(
        DEMO,
        ("trainer.optimizer.eps=.inf",),
        "trainer.optimizer.eps: got inf; expected finite numbers (no optimizer setting takes infinity)",
    ),
    "optimizer lr true": Case(
        DEMO, ("trainer.optimizer.lr=true",), "trainer.optimizer.lr: got True; expected a number"
    ),
    "gradient_guard clip_norm inf": Case(
        DEMO,
        ("callbacks.gradient_guard.clip_norm=.inf",),
        "callbacks.gradient_guard: GradientGuard 'GradientGuard': clip_norm must be a finite number > 0, or None "
        "for no clipping, got inf",
    ),
    "early_stopping divergence_threshold inf": Case(
        DEMO,
        ("callbacks.early_stopping={monitor: val/mse, divergence_threshold: .inf}",),
        "callbacks.early_stopping: EarlyStopping 'EarlyStopping': divergence_threshold must be a finite number or "
        "None, got inf",
    ),
    "early_stopping min_delta inf": Case(
        DEMO,
        ("callbacks.early_stopping={monitor: val/mse, min_delta: .inf}",),
        "callbacks.early_stopping: EarlyStopping 'EarlyStopping': min_delta must be a finite number >= 0, got inf",
    ),
    "progress refresh_per_second inf": Case(
        DEMO,
        ("callbacks.progress.enabled=true", "callbacks.progress.refresh_per_second=.inf"),
        "callbacks.progress: ProgressBar 'ProgressBar': refresh_per_second must be a finite number > 0, got inf",
    ),
    "image_field grid_lr_weight inf": Case(
        IMAGE_FIELD,
        (*SMALL_FIELD, "trainer.grid_lr_weight=.inf"),
        "trainer: 'image_field' refused the config: grid_lr_weight must be a finite number > 0, got inf",
    ),
    "image_field table 0": Case(
        IMAGE_FIELD,
        (*SMALL_FIELD[:3], "trainer.table=0"),
        "trainer: 'image_field' refused the config: table must be an integer >= 1, got 0",
    ),
    "image_field occupancy_cells 0": Case(
        IMAGE_FIELD,
        (*SMALL_FIELD, "trainer.occupancy_cells=0"),
        "trainer: 'image_field' refused the config: occupancy_cells must be an integer >= 1, got 0",
    ),
    "gan threads 0": Case(
        GAN,
        ("trainer.threads=0",),
        "trainer: 'gan' refused the config: threads must be an integer >= 1, 'auto' or null (torch's setting), got 0",
    ),
}


def _args(case: Case) -> list[str]:
    return [arg for override in case.overrides for arg in ("--set", override)]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current directory (``validate`` checks against ``runs/<name>-<timestamp>`` there), wide consoles."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("NO_COLOR", "1")
    return tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_validate_and_train_refuse_with_the_same_message(
    name: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    expected = f"config error in {case.config} with --set:\n  {case.expected()}\n"

    assert main(["config", "validate", case.config, *_args(case)]) == 2
    validated = capsys.readouterr()
    assert (validated.out, validated.err) == ("", expected)

    short = [] if any(o.startswith("trainer.max_epochs") for o in case.overrides) else ["--epochs", "1"]
    assert main(["train", "--config", case.config, *_args(case), "--run-dir", "run", *short]) == 2
    trained = capsys.readouterr()
    assert (trained.out, trained.err) == ("", expected)
    assert sorted(os.listdir(workdir)) == []  # no run directory, no runs/: nothing was written


def _stepbus(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m trainers ARGS`` in ``cwd``, with no W&B credentials reachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC", "FORCE_COLOR")}
    home = cwd.parent / f"{cwd.name}-home"  # no ~/.netrc, no wandb settings
    home.mkdir(exist_ok=True)
    env.update({"HOME": str(home), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


@pytest.mark.parametrize("name", ["wandb online without credentials", "metrics_file path up to /etc", "lr -1"])
def test_as_processes_both_exit_2_with_the_message_and_no_traceback(name: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    overrides: tuple[str, ...]
    problem: str | None
    if name == "wandb online without credentials":
        overrides = ("callbacks.wandb.enabled=true", "callbacks.wandb.mode=online")
        config = DEMO
        problem = None  # the W&B logger's own words, the same in both
    else:
        case = CASES[name]
        overrides, config, problem = case.overrides, case.config, case.expected()
    args = [arg for override in overrides for arg in ("--set", override)]

    validated = _stepbus(work, "config", "validate", config, *args)
    trained = _stepbus(work, "train", "--config", config, *args, "--run-dir", "run")
    for result in (validated, trained):
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    assert validated.stderr == trained.stderr
    lines = validated.stderr.splitlines()
    assert lines[0] == f"config error in {config} with --set:"
    if problem is None:
        assert lines[1].startswith(
            "  callbacks.wandb: WandbLogger 'WandbLogger': mode='online' needs W&B credentials"
        ), validated.stderr
    else:
        assert lines[1:] == [f"  {problem}"]
    assert os.listdir(work) == []
    assert not Path("/etc/x.json").exists()


def test_a_valid_config_is_valid_and_validating_it_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--set", "callbacks.tensorboard.enabled=true", "--set", "callbacks.wandb.enabled=true"]
    args += ["--set", "callbacks.metrics_file.path=out/metrics.json", "--set", "callbacks.checkpointer.dir=ckpt"]
    assert main(["config", "validate", DEMO, *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == (
        f"{DEMO} with --set: valid; trainer demo, callbacks: lr_decay, validator, checkpointer, tensorboard, wandb, "
        "metrics_file\n"
    )
    assert os.listdir(workdir) == []  # no runs/, no event file, no W&B folder, no checkpoint folder


def test_validate_with_a_run_dir_refuses_a_directory_that_holds_an_earlier_runs_checkpoints(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", DEMO, "--epochs", "1", "--run-dir", "run"]) == 0
    capsys.readouterr()
    before = sorted(os.listdir(workdir / "run" / "checkpoints"))
    assert main(["config", "validate", DEMO, "--run-dir", "run"]) == 2
    refused = capsys.readouterr()
    assert refused.out == ""
    assert refused.err == (
        f"config error in {DEMO}:\n  callbacks.checkpointer: run/checkpoints holds 1 checkpoint(s) of an earlier run "
        "(newest step-00000128.pt, iteration 128); continue that run with --resume auto, or choose another run "
        "directory\n"
    )
    assert sorted(os.listdir(workdir / "run" / "checkpoints")) == before
    assert main(["config", "validate", DEMO, "--run-dir", "another"]) == 0  # a new directory is fine
    assert not (workdir / "another").exists()
