"""Schedules in config files: a bad one is reported at its own key (``callbacks.grid_pruning.every``), through
``load_config``, ``build`` and ``stepbus config validate`` in a subprocess; ``never`` and epoch schedules for the
loggers are accepted and train."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from callbacks import TensorBoardLogger, Validator
from lifecycle import Status
from trainers import ConfigError, build, load_config

ROOT = Path(__file__).resolve().parents[3]
TRAINER = {"name": "demo", "samples": 256, "max_epochs": 2, "batch_size": 64}  # 4 iterations per epoch


def _config(callbacks: dict[str, Any]) -> dict[str, Any]:
    return {"trainer": dict(TRAINER), "callbacks": callbacks}


def _problems(error: ConfigError) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in error.problems]


def _quiet() -> dict[str, Any]:
    return {"console": Console(file=io.StringIO(), width=200, no_color=True)}


@pytest.mark.parametrize("load", ["load_config", "build"])
def test_a_zero_schedule_names_the_key(tmp_path: Path, load: str) -> None:
    config = _config({"grid_pruning": {"every": "0it"}})
    run: Callable[[], object] = (
        (lambda: load_config(config))
        if load == "load_config"
        else (lambda: build(config, run_dir=tmp_path / "run", objects=_quiet()))
    )
    with pytest.raises(ConfigError) as info:
        run()
    [(path, message)] = _problems(info.value)
    assert path == "callbacks.grid_pruning.every"
    assert message.startswith("invalid schedule '0it': the period must be > 0; write 'never' for a schedule")
    assert info.value.source == "<dict>"
    assert not (tmp_path / "run").exists()


def test_wisps_minus_one_points_to_never_and_to_enabled_false() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config({"validator": {"every": -1}, "tensorboard": {"every": "-1it"}}))
    problems = dict(_problems(info.value))
    assert set(problems) == {"callbacks.validator.every", "callbacks.tensorboard.every"}
    for message in problems.values():
        assert "a negative period does not mean 'off' here: write 'never'" in message
        assert "'enabled: false' leaves the callback out altogether" in message


def test_every_problem_is_reported_at_its_key_at_once() -> None:
    config = _config(
        {
            "checkpointer": {"every": "0ep"},
            "validator@holdout": {"every": {"every": "2ep", "start": "0ep"}, "prefix": "holdout"},
            "grid_pruning": {"every": "1ep", "start": "0ep"},  # a bound of its own: checked by the constructor
            "wandb": {"every": "5 parsecs"},
        }
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    paths = [path for path, _ in _problems(info.value)]
    assert paths == [
        "callbacks.checkpointer.every",
        "callbacks.validator@holdout.every",
        "callbacks.grid_pruning.start",
        "callbacks.wandb.every",
    ]


def test_never_and_epoch_logging_are_accepted_and_train(tmp_path: Path) -> None:
    pruning = load_config(_config({"grid_pruning": {"every": "never", "start": "2ep"}}))
    assert pruning.data["callbacks"]["grid_pruning"]["every"] == "never"  # (the demo's MLP has no prune() to run)
    config = _config({"validator": {"every": "never"}, "tensorboard": {"every": "1ep"}})
    trainer = build(config, run_dir=tmp_path / "run", objects=_quiet())
    assert trainer.config is not None
    assert trainer.config["callbacks"]["validator"]["every"] == "never"
    validator = next(c for c in trainer.callbacks if isinstance(c, Validator))
    logger = next(c for c in trainer.callbacks if isinstance(c, TensorBoardLogger))
    assert logger.epoch_rows is True
    validations: list[int] = []
    trainer.on("post_validation")(lambda t, **_: validations.append(t.state.iteration))
    assert trainer.train() is Status.COMPLETED
    assert (validator.count, validations) == (1, [8])  # only at the end
    trainer.close()


def test_stepbus_config_validate_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "trainer: {name: demo, samples: 256, max_epochs: 1}\ncallbacks:\n  grid_pruning: {every: 0it}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000", "WANDB_MODE": "offline"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "trainers", "config", "validate", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"config error in {path}:"
    assert lines[1].startswith("  callbacks.grid_pruning.every: invalid schedule '0it': the period must be > 0; ")
    assert "write 'never'" in lines[1]
    assert result.stdout == ""
