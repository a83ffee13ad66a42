"""Config files end to end: YAML -> ``load_config`` -> ``build`` -> a trainer with the configured callbacks, trained
for real; toggling callbacks; ``--set`` overrides; every kind of config error with its exact message; the registry.

Real parts only: YAML files in ``tmp_path``, the real demo trainer (256 samples: 4 iterations per epoch), real
checkpoints read back with ``read_metadata``.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import Callback
from callbacks.checkpointer import Checkpointer
from callbacks.early_stopping import EarlyStopping
from callbacks.ema import EMA
from callbacks.gradient_guard import GradientGuard
from callbacks.grid_pruning import GridPruning
from callbacks.loggers.csv_logger import CSVLogger
from callbacks.loggers.metrics_file import MetricsFile
from callbacks.loggers.mlflow import MLflowLogger
from callbacks.loggers.tensorboard import TensorBoardLogger
from callbacks.loggers.wandb import WandbLogger
from callbacks.lr_decay import LRDecay
from callbacks.model_summary import ModelSummary
from callbacks.pipeline_export import PipelineExport
from callbacks.preview import Preview
from callbacks.profiler import Profiler
from callbacks.progress import ProgressBar
from callbacks.ray_report import RayReport
from callbacks.time_limit import TimeLimit
from callbacks.validator import Validator
from lifecycle import Event, Status
from trainers import BaseTrainer, ConfigError, Registry, RegistryError, RunConfig, load_config
from trainers.apps.demo import ReportProgress
from trainers.apps.image_field import ImageFieldTrainer
from trainers.checkpoint.format import read_metadata
from trainers.config.builder import build
from trainers.config.overrides import apply_overrides, parse_override
from trainers.config.schema import default_config_path
from trainers.engine.trainer import OptimizerSpec

ROOT = Path(__file__).resolve().parents[3]
BUILTINS = [
    "lr_decay",
    "grid_pruning",
    "gradient_guard",
    "validator",
    "early_stopping",
    "time_limit",
    "tensorboard",
    "wandb",
    "csv",
    "mlflow",
    "progress",
    "model_summary",
    "checkpointer",
    "metrics_file",
    "preview",
    "ema",
    "pipeline_export",
    "ray_report",
    "profiler",
]
KNOWN = (
    "checkpointer, csv, early_stopping, ema, gradient_guard, grid_pruning, lr_decay, metrics_file, mlflow, "
    "model_summary, pipeline_export, preview, profiler, progress, ray_report, tensorboard, time_limit, validator, wandb"
)
TRAINERS = "demo, gan, image_field"
CHECKPOINTER_KEYS = (
    "dir, every, at_end, on_interrupt, on_exception, keep_last, monitor, mode, keep_best, on_error, priority, state_key"
)
#: torch.optim's optimizers by lower-case name, and Adam's keyword arguments (both depend on the torch version)
OPTIMIZERS = ", ".join(
    sorted(
        name.lower()
        for name, value in vars(torch.optim).items()
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer
    )
)
ADAM_KEYS = ", ".join(name for name in inspect.signature(torch.optim.Adam).parameters if name != "params")
SCHEDULE_FORMS = (
    "valid forms are an int > 0 (iterations), a string '<N>it' (iterations), '<N>ep' (epochs), '<T>s' / '<T>min' / "
    "'<T>h' (wall time), 'once', 'never', or at=[...] with optional start=/end= bounds"
)
SMALL = ["trainer.samples=256", "trainer.max_epochs=1"]  # 4 iterations of 64 (of the demo)
DEMO = (
    ROOT / "trainers" / "apps" / "configs" / "demo.yaml"
)  # the fast MLP demo (the built-in default is the image-field app)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "WANDB_MODE": "offline"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def quiet(out: io.StringIO | None = None) -> dict[str, Any]:
    """``objects=`` for build: a console that writes to ``out`` (ReportProgress and ProgressBar take it)."""
    return {"console": Console(file=out if out is not None else io.StringIO(), width=200, no_color=True)}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def handler_names(trainer: BaseTrainer) -> list[str]:
    return [h.name for event in Event for h in trainer.bus.handles(event)]


def problems(error: ConfigError) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in error.problems]


def checked_error(config: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(config, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------------- round trip
ROUND_TRIP_YAML = """\
run: {name: trip, dir: runs, seed: 3}
trainer:
  name: demo
  max_epochs: 1
  batch_size: 64
  samples: 256
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  report_every: 2it
callbacks:
  lr_decay: {milestones: [0.5], gamma: 0.5}
  validator: {every: 1ep}
  validator@holdout: {prefix: holdout}
  checkpointer: {keep_last: 2, monitor: val/mse}
  early_stopping: {monitor: val/mse, patience: 2, enabled: false}
  tensorboard: false
  metrics_file: {path: outcome.json}
"""

ROUND_TRIP_RESOLVED = {
    "run": {"name": "trip", "dir": "runs", "seed": 3},
    "trainer": {
        "name": "demo",
        "max_epochs": 1,
        "batch_size": 64,
        "samples": 256,
        "report_every": "2it",
        "precision": "32",
        "accumulate": 1,
        "compile": False,
        "threads": 1,
        "strategy": "ddp",
        "fsdp": None,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    },
    "callbacks": {
        "lr_decay": {
            "enabled": True,
            "interval": "iteration",
            "milestones": [0.5],
            "gamma": 0.5,
            "warmup": 0,
            "warmup_start": 0.0,
            "monitor": None,
            "optimizer": None,
        },
        "validator": {
            "enabled": True,
            "every": "1ep",
            "at_end": True,
            "modes": None,
            "ranks": "zero",
            "prefix": "val",
            "image_dir": None,
            "save_images": True,
        },
        "validator@holdout": {
            "enabled": True,
            "every": "1ep",
            "at_end": True,
            "modes": None,
            "ranks": "zero",
            "prefix": "holdout",
            "image_dir": None,
            "save_images": True,
            "state_key": "Validator@holdout",
        },
        "checkpointer": {
            "enabled": True,
            "dir": None,
            "every": "1ep",
            "at_end": True,
            "on_interrupt": True,
            "on_exception": False,
            "keep_last": 2,
            "monitor": "val/mse",
            "mode": None,
            "keep_best": None,
            "on_error": "raise",
        },
        "early_stopping": {
            "enabled": False,
            "monitor": "val/mse",
            "mode": None,
            "patience": 2,
            "min_delta": 0.0,
            "stopping_threshold": None,
            "divergence_threshold": None,
            "check_finite": True,
        },
        "tensorboard": {
            "enabled": False,
            "dir": None,
            "every": "50it",
            "log_images": True,
            "background": True,
            "on_error": "disable",
        },
        "metrics_file": {"enabled": True, "path": "outcome.json"},
    },
}


def test_yaml_file_resolves_to_plain_data_with_every_default_filled_in(tmp_path: Path) -> None:
    path = write(tmp_path, ROUND_TRIP_YAML)
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.source == str(path)
    assert config.data == ROUND_TRIP_RESOLVED
    assert list(config.data["callbacks"]) == list(ROUND_TRIP_RESOLVED["callbacks"])  # config order kept
    assert config.trainer.name == "demo"
    assert config.trainer_kwargs == {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "max_epochs": 1,
        "batch_size": 64,
        "samples": 256,
        "report_every": "2it",
    }
    assert [(s.key, s.entry.name, s.tag, s.enabled, s.kwargs) for s in config.callbacks] == [
        ("lr_decay", "lr_decay", None, True, {"milestones": [0.5], "gamma": 0.5}),
        ("validator", "validator", None, True, {"every": "1ep"}),
        ("validator@holdout", "validator", "holdout", True, {"prefix": "holdout", "state_key": "Validator@holdout"}),
        ("checkpointer", "checkpointer", None, True, {"keep_last": 2, "monitor": "val/mse"}),
        ("early_stopping", "early_stopping", None, False, {"monitor": "val/mse", "patience": 2}),
        ("tensorboard", "tensorboard", None, False, {}),
        ("metrics_file", "metrics_file", None, True, {"path": "outcome.json"}),
    ]
    # the resolved data is a fixed point: resolving it again (as a resume does with config.yaml) changes nothing
    assert load_config(config.data).data == config.data
    assert load_config(write(tmp_path, yaml.safe_dump(config.data), "again.yaml")).data == config.data


def test_round_trip_file_build_train_saves_the_resolved_config(tmp_path: Path) -> None:
    path = write(tmp_path, ROUND_TRIP_YAML)
    run_dir = tmp_path / "run"
    out = io.StringIO()
    trainer = build(path, run_dir=run_dir, objects=quiet(out))

    assert [type(c) for c in trainer.callbacks] == [
        ReportProgress,
        LRDecay,
        Validator,
        Validator,
        Checkpointer,
        MetricsFile,
    ]
    assert [c.state_key for c in trainer.callbacks] == [
        "ReportProgress",
        "LRDecay",
        "Validator",
        "Validator@holdout",
        "Checkpointer",
        "MetricsFile",
    ]
    _, lr_decay, validator, holdout, checkpointer, metrics_file = trainer.callbacks
    assert isinstance(lr_decay, LRDecay)
    assert isinstance(validator, Validator)
    assert isinstance(holdout, Validator)
    assert isinstance(checkpointer, Checkpointer)
    assert isinstance(metrics_file, MetricsFile)
    assert (lr_decay.milestones, lr_decay.gamma, lr_decay.interval) == ((0.5,), 0.5, "iteration")
    assert (validator.every, validator.prefix, validator.at_end) == ("1ep", "val", True)
    assert (holdout.every, holdout.prefix) == ("1ep", "holdout")
    assert (checkpointer.keep_last, checkpointer.monitor, checkpointer.mode, checkpointer.keep_best) == (
        2,
        "val/mse",
        "min",
        1,
    )
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"]) == (0.05, 0.9)
    assert (trainer.state.max_epochs, trainer.run_dir) == (1, run_dir)
    assert trainer.config == ROUND_TRIP_RESOLVED
    assert not run_dir.exists()  # config.yaml is written when training starts, not at build

    assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 4
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved == trainer.config == ROUND_TRIP_RESOLVED
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt", "step-00000004.pt"]
    metadata = read_metadata(run_dir / "checkpoints" / "step-00000004.pt")  # saved at 1ep, then again at the end
    assert metadata["config"] == trainer.config
    assert (metadata["iteration"], metadata["epoch"], metadata["reason"]) == (4, 1, "end (completed)")
    # report_every: 2it -> the demo's progress lines at iterations 2 and 4
    lines = re.findall(r"^epoch 1/1  iteration +(\d+)/4  loss \d+\.\d{5}$", out.getvalue(), re.MULTILINE)
    assert lines == ["2", "4"]
    assert trainer.state.metrics["holdout/mse"] == trainer.state.metrics["val/mse"]  # same validate(), two prefixes
    assert sorted(trainer.state.metrics) == [
        "best/holdout/mse",
        "best/mse",
        "holdout/mse",
        "lr",
        "val/mse",
    ]
    last, best = trainer.state.last_checkpoint, trainer.state.best_checkpoint
    assert last is not None
    assert best is not None
    assert (last.path, last.iteration, last.reason) == (
        run_dir / "checkpoints" / "step-00000004.pt",
        4,
        "end (completed)",
    )
    assert best.path == last.path
    assert trainer.state.metrics["lr"] == pytest.approx(0.025)  # gamma 0.5 applied at the 0.5 milestone
    assert metrics_file.path == run_dir / "outcome.json"
    outcome = json.loads((run_dir / "outcome.json").read_text(encoding="utf-8"))
    step = run_dir / "checkpoints" / "step-00000004.pt"
    assert {k: outcome[k] for k in ("status", "iterations", "epochs", "final", "checkpoints")} == {
        "status": "completed",
        "iterations": 4,
        "epochs": 1,
        "final": {"val/mse": trainer.state.metrics["val/mse"]},
        "checkpoints": {"last": str(step), "best": str(step)},  # the files the last.pt and best.pt links name
    }
    trainer.close()


def test_default_config_is_the_image_field_yaml_and_builds_the_reference_app(tmp_path: Path) -> None:
    default = load_config(None)
    assert default_config_path() == ROOT / "trainers" / "apps" / "configs" / "image_field.yaml"
    assert default.source == str(default_config_path())
    assert load_config(default_config_path()).data == default.data
    assert default.trainer.name == "image_field"
    assert [(s.key, s.enabled) for s in default.callbacks] == [
        ("lr_decay", True),
        ("grid_pruning", True),
        ("validator", True),
        ("checkpointer", True),
        ("tensorboard", True),
        ("wandb", False),
        ("progress", True),
        ("metrics_file", True),
    ]
    assert default.data["run"] == {"name": "image_field", "dir": "runs", "seed": 0}
    assert default.data["trainer"] == {
        "name": "image_field",
        "image": None,
        "size": 512,
        "max_epochs": 10,
        "batch_size": 16384,
        "batches_per_epoch": 300,
        "dense": [16, 32, 64, 128],
        "hashed": [256, 512],
        "features": 2,
        "table": 8192,
        "hidden": 64,
        "occupancy_cells": 32,
        "occupancy_decay": 0.5,
        "occupancy_threshold": 0.02,
        "grid_lr_weight": 10.0,
        "device": "cpu",
        "threads": "auto",
        "precision": "32",
        "accumulate": 1,
        "compile": False,
        "strategy": "ddp",
        "fsdp": None,
        "optimizer": {"name": "adam", "lr": 0.01, "eps": 1e-15},
    }
    trainer = build(None, run_dir=tmp_path / "run", objects=quiet())
    assert isinstance(trainer, ImageFieldTrainer)
    assert [c.state_key for c in trainer.callbacks] == [
        "LRDecay",
        "GridPruning",
        "Validator",
        "Checkpointer",
        "TensorBoardLogger",
        "ProgressBar",
        "MetricsFile",
    ]
    assert (trainer.state.max_epochs, trainer.state.iterations_per_epoch) == (10, 300)
    assert [(g["name"], g["lr"]) for g in trainer.optimizer.param_groups] == [("grid", 0.01 * 10.0), ("decoder", 0.01)]
    assert trainer.config == default.data
    assert not (tmp_path / "run").exists()  # built, not started
    trainer.close()


def test_the_demo_yaml_is_the_small_mlp_demo(tmp_path: Path) -> None:
    demo = load_config(DEMO)
    assert demo.source == str(DEMO)
    assert [(s.key, s.enabled) for s in demo.callbacks] == [
        ("lr_decay", True),
        ("validator", True),
        ("checkpointer", True),
        ("tensorboard", False),
        ("wandb", False),
        ("progress", False),
    ]
    assert demo.data["run"] == {"name": "demo", "dir": "runs", "seed": 0}
    assert demo.data["trainer"] == {
        "name": "demo",
        "max_epochs": 5,
        "batch_size": 64,
        "samples": 8192,
        "report_every": "128it",
        "precision": "32",
        "accumulate": 1,
        "compile": False,
        "threads": 1,
        "strategy": "ddp",
        "fsdp": None,
        "optimizer": {"name": "adam", "lr": 0.01},
    }
    trainer = build(DEMO, run_dir=tmp_path / "run", objects=quiet())
    assert [c.state_key for c in trainer.callbacks] == ["ReportProgress", "LRDecay", "Validator", "Checkpointer"]
    assert (trainer.state.max_epochs, trainer.state.iterations_per_epoch) == (5, 128)
    assert trainer.config == demo.data
    trainer.close()


def test_two_validator_instances_publish_under_their_own_prefix(tmp_path: Path) -> None:
    config = load_config(DEMO, overrides=[*SMALL, "callbacks.validator@holdout={prefix: holdout}"])
    assert [s.key for s in config.callbacks if s.entry.name == "validator"] == ["validator", "validator@holdout"]
    trainer = build(config, run_dir=tmp_path / "run", objects=quiet())
    validators = [c for c in trainer.callbacks if isinstance(c, Validator)]
    assert [(v.state_key, v.prefix) for v in validators] == [("Validator", "val"), ("Validator@holdout", "holdout")]
    assert trainer.train() is Status.COMPLETED
    metrics = trainer.state.metrics
    assert {k: metrics[k] == metrics["val/mse"] for k in ("holdout/mse", "best/mse", "best/holdout/mse")} == {
        "holdout/mse": True,
        "best/mse": True,
        "best/holdout/mse": True,
    }
    state = read_metadata(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["config"]["callbacks"]["validator@holdout"]["state_key"] == "Validator@holdout"
    trainer.close()


def test_an_explicit_state_key_wins_over_the_tag(tmp_path: Path) -> None:
    config = load_config(
        {
            "trainer": {"name": "demo", "samples": 64},
            "callbacks": {"validator@b": {"prefix": "b", "state_key": "second"}},
        }
    )
    assert config.callbacks[0].kwargs == {"prefix": "b", "state_key": "second"}
    assert config.data["callbacks"]["validator@b"]["state_key"] == "second"
    trainer = build(config, run_dir=tmp_path / "run", objects=quiet())
    assert [c.state_key for c in trainer.callbacks] == ["ReportProgress", "second"]
    trainer.close()


def test_a_schedule_mapping_reaches_the_checkpointer_unchanged(tmp_path: Path) -> None:
    """``every: {every: 2ep}`` is the mapping form of ``every: 2ep`` (``Checkpointer(every={"every": "2ep"})`` in
    Python saves every 2 epochs); from a config it must mean the same, and the resolved config must resolve again."""
    path = write(
        tmp_path,
        "trainer: {name: demo, samples: 256, max_epochs: 3}\n"
        "callbacks:\n  checkpointer: {every: {every: 2ep}, keep_last: null, at_end: false}\n",
    )
    config = load_config(path)
    assert config.callbacks[0].kwargs == {"every": {"every": "2ep"}, "keep_last": None, "at_end": False}
    assert config.data["callbacks"]["checkpointer"]["every"] == {"every": "2ep"}
    assert load_config(config.data).data == config.data
    trainer = build(config, run_dir=tmp_path / "run", objects=quiet())
    assert trainer.train() is Status.COMPLETED
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.pt")) == ["step-00000008.pt"]
    trainer.close()


@pytest.mark.parametrize(
    ("block", "enabled", "kwargs"),
    [
        ("validator:", True, {}),
        ("validator: {}", True, {}),
        ("validator: true", True, {}),
        ("validator: false", False, {}),
    ],
)
def test_null_empty_true_mean_defaults_and_false_disables(
    tmp_path: Path, block: str, enabled: bool, kwargs: dict[str, Any]
) -> None:
    config = load_config(write(tmp_path, f"trainer: {{name: demo}}\ncallbacks:\n  {block}\n"))
    assert [(s.key, s.enabled, s.kwargs) for s in config.callbacks] == [("validator", enabled, kwargs)]
    assert config.data["callbacks"] == {
        "validator": {
            "enabled": enabled,
            "every": "1ep",
            "at_end": True,
            "modes": None,
            "ranks": "zero",
            "prefix": "val",
            "image_dir": None,
            "save_images": True,
        }
    }
    assert config.data["run"] == {"name": "demo", "dir": "runs", "seed": 0}  # run.name defaults to the trainer's


# ---------------------------------------------------------------------------------------------------- toggling
#: every built-in usable with the demo trainer, enabled (grid_pruning calls a real method of nn.Sequential)
ALL_ON: dict[str, dict[str, Any]] = {
    "lr_decay": {"milestones": [0.5]},
    "grid_pruning": {"prune": "zero_grad", "every": "2it"},
    "gradient_guard": {"clip_norm": 1.0},
    "validator": {},
    "early_stopping": {"monitor": "val/mse"},
    "time_limit": {"max_time": "1h"},
    "tensorboard": {"every": "2it"},
    "wandb": {"mode": "offline"},
    "csv": {"every": "2it"},
    "mlflow": {"every": "2it"},
    "progress": {},
    "model_summary": {},
    "checkpointer": {"monitor": "val/mse"},
    "metrics_file": {},
    "preview": {"every": "2it"},
    "ema": {"decay": 0.9},
    "pipeline_export": {"every": "1ep"},
    "ray_report": {},
    "profiler": {},
}
#: the handlers each one connects, by its state key
OWN_HANDLERS = {
    "lr_decay": ["LRDecay.pre_training", "LRDecay.pre_step"],
    "grid_pruning": ["GridPruning.pre_training", "GridPruning.post_step"],
    "gradient_guard": ["GradientGuard.step"],
    "validator": ["Validator.pre_training", "Validator.post_epoch", "Validator.post_training"],
    "early_stopping": ["EarlyStopping.pre_training", "EarlyStopping.post_validation"],
    "time_limit": ["TimeLimit.pre_training", "TimeLimit.post_step", "TimeLimit.post_epoch", "TimeLimit.post_training"],
    "tensorboard": [
        "TensorBoardLogger.pre_training",
        "TensorBoardLogger.pre_epoch",
        "TensorBoardLogger.post_step",
        "TensorBoardLogger.post_epoch",
        "TensorBoardLogger.post_training",
        "TensorBoardLogger.post_validation",
    ],
    "wandb": [
        "WandbLogger.pre_training",
        "WandbLogger.pre_epoch",
        "WandbLogger.post_step",
        "WandbLogger.post_epoch",
        "WandbLogger.post_training",
        "WandbLogger.post_validation",
        "WandbLogger.exception",
    ],
    "csv": [
        "CSVLogger.pre_training",
        "CSVLogger.pre_epoch",
        "CSVLogger.post_step",
        "CSVLogger.post_epoch",
        "CSVLogger.post_training",
        "CSVLogger.post_validation",
    ],
    "mlflow": [
        "MLflowLogger.pre_training",
        "MLflowLogger.pre_epoch",
        "MLflowLogger.post_step",
        "MLflowLogger.post_epoch",
        "MLflowLogger.post_training",
        "MLflowLogger.post_validation",
        "MLflowLogger.exception",
    ],
    "progress": [
        "ProgressBar.pre_training",
        "ProgressBar.pre_epoch",
        "ProgressBar.post_step",
        "ProgressBar.post_epoch",
        "ProgressBar.post_training",
        "ProgressBar.post_validation",
    ],
    "model_summary": ["ModelSummary.pre_training"],
    "checkpointer": [
        "Checkpointer.post_epoch",
        "Checkpointer.post_epoch",
        "Checkpointer.post_training",
        "Checkpointer.exception",
    ],
    "metrics_file": ["MetricsFile.pre_training", "MetricsFile.post_training"],
    "preview": ["Preview.pre_training", "Preview.post_step", "Preview.post_training", "Preview.post_validation"],
    "ema": ["EMA.pre_training", "EMA.post_step", "EMA.pre_validation", "EMA.post_validation", "EMA.exception"],
    "pipeline_export": ["PipelineExport.pre_training", "PipelineExport.post_epoch", "PipelineExport.post_training"],
    "ray_report": ["RayReport.pre_training", "RayReport.post_epoch", "RayReport.post_training"],
    "profiler": ["Profiler.pre_training", "Profiler.post_step", "Profiler.post_training"],
}
CLASSES = {
    "lr_decay": LRDecay,
    "grid_pruning": GridPruning,
    "gradient_guard": GradientGuard,
    "validator": Validator,
    "early_stopping": EarlyStopping,
    "time_limit": TimeLimit,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
    "csv": CSVLogger,
    "mlflow": MLflowLogger,
    "progress": ProgressBar,
    "model_summary": ModelSummary,
    "checkpointer": Checkpointer,
    "metrics_file": MetricsFile,
    "preview": Preview,
    "ema": EMA,
    "pipeline_export": PipelineExport,
    "ray_report": RayReport,
    "profiler": Profiler,
}


def _all_on(tmp_path: Path, name: str, off: str | None = None) -> BaseTrainer:
    callbacks = {key: ({**block, "enabled": False} if key == off else block) for key, block in ALL_ON.items()}
    config = {"trainer": {"name": "demo", "samples": 256, "max_epochs": 1}, "callbacks": callbacks}
    return build(config, run_dir=tmp_path / name, objects=quiet())


def test_every_builtin_callback_builds_with_the_demo_trainer_in_config_order(tmp_path: Path) -> None:
    assert list(ALL_ON) == BUILTINS
    trainer = _all_on(tmp_path, "all")
    assert [type(c) for c in trainer.callbacks] == [ReportProgress, *CLASSES.values()]
    # each handler list of the full trainer, per event in priority order (ties in registration order)
    rows = [(event.value, h.name, h.priority) for event in Event for h in trainer.bus.handles(event)]
    assert rows == [
        ("pre_training", "build.write_config", 10000),
        ("pre_training", "LRDecay.pre_training", 300),
        ("pre_training", "GridPruning.pre_training", 300),
        ("pre_training", "EMA.pre_training", 300),
        ("pre_training", "Validator.pre_training", 200),
        ("pre_training", "EarlyStopping.pre_training", 100),
        ("pre_training", "TimeLimit.pre_training", 100),
        ("pre_training", "TensorBoardLogger.pre_training", -100),
        ("pre_training", "WandbLogger.pre_training", -100),
        ("pre_training", "CSVLogger.pre_training", -100),
        ("pre_training", "MLflowLogger.pre_training", -100),
        ("pre_training", "Preview.pre_training", -100),
        ("pre_training", "ModelSummary.pre_training", -150),
        ("pre_training", "ProgressBar.pre_training", -200),
        ("pre_training", "PipelineExport.pre_training", -1000),
        ("pre_training", "MetricsFile.pre_training", -2000),
        ("pre_training", "RayReport.pre_training", -2000),
        ("pre_training", "Profiler.pre_training", -3000),
        ("pre_epoch", "TensorBoardLogger.pre_epoch", -100),
        ("pre_epoch", "WandbLogger.pre_epoch", -100),
        ("pre_epoch", "CSVLogger.pre_epoch", -100),
        ("pre_epoch", "MLflowLogger.pre_epoch", -100),
        ("pre_epoch", "ReportProgress.pre_epoch", -200),
        ("pre_epoch", "ProgressBar.pre_epoch", -200),
        ("pre_step", "LRDecay.pre_step", 300),
        ("step", "GradientGuard.step", 300),
        ("step", "ReportProgress.step", -200),
        ("post_step", "GridPruning.post_step", 300),
        ("post_step", "EMA.post_step", 300),
        ("post_step", "TimeLimit.post_step", 100),
        ("post_step", "TensorBoardLogger.post_step", -100),
        ("post_step", "WandbLogger.post_step", -100),
        ("post_step", "CSVLogger.post_step", -100),
        ("post_step", "MLflowLogger.post_step", -100),
        ("post_step", "Preview.post_step", -100),
        ("post_step", "ReportProgress.post_step", -200),
        ("post_step", "ProgressBar.post_step", -200),
        ("post_step", "Profiler.post_step", -3000),
        ("post_epoch", "Validator.post_epoch", 200),
        ("post_epoch", "TimeLimit.post_epoch", 100),
        ("post_epoch", "TensorBoardLogger.post_epoch", -100),
        ("post_epoch", "WandbLogger.post_epoch", -100),
        ("post_epoch", "CSVLogger.post_epoch", -100),
        ("post_epoch", "MLflowLogger.post_epoch", -100),
        ("post_epoch", "ReportProgress.post_epoch", -200),
        ("post_epoch", "ProgressBar.post_epoch", -200),
        ("post_epoch", "Checkpointer.post_epoch", -1000),
        ("post_epoch", "Checkpointer.post_epoch", -1000),
        ("post_epoch", "PipelineExport.post_epoch", -1000),
        ("post_epoch", "RayReport.post_epoch", -2000),
        ("post_training", "Validator.post_training", 200),
        ("post_training", "TimeLimit.post_training", 100),
        ("post_training", "TensorBoardLogger.post_training", -100),
        ("post_training", "CSVLogger.post_training", -100),
        ("post_training", "Preview.post_training", -100),
        ("post_training", "ReportProgress.post_training", -200),
        ("post_training", "Checkpointer.post_training", -1000),
        ("post_training", "PipelineExport.post_training", -1000),
        ("post_training", "WandbLogger.post_training", -2000),
        ("post_training", "MLflowLogger.post_training", -2000),
        ("post_training", "ProgressBar.post_training", -2000),
        ("post_training", "MetricsFile.post_training", -2000),
        ("post_training", "RayReport.post_training", -2000),
        ("post_training", "Profiler.post_training", -3000),
        ("pre_validation", "EMA.pre_validation", 300),
        ("post_validation", "EMA.post_validation", 300),
        ("post_validation", "EarlyStopping.post_validation", 100),
        ("post_validation", "TensorBoardLogger.post_validation", -100),
        ("post_validation", "WandbLogger.post_validation", -100),
        ("post_validation", "CSVLogger.post_validation", -100),
        ("post_validation", "MLflowLogger.post_validation", -100),
        ("post_validation", "Preview.post_validation", -100),
        ("post_validation", "ReportProgress.post_validation", -200),
        ("post_validation", "ProgressBar.post_validation", -200),
        ("exception", "EMA.exception", 300),
        ("exception", "WandbLogger.exception", -100),
        ("exception", "MLflowLogger.exception", -100),
        ("exception", "Checkpointer.exception", -1000),
    ]
    for event in Event:  # priority order within each event (ties keep registration order)
        priorities = [h.priority for h in trainer.bus.handles(event)]
        assert priorities == sorted(priorities, reverse=True)
    trainer.close()


@pytest.mark.parametrize("name", BUILTINS)
def test_disabling_a_callback_removes_exactly_its_handlers(tmp_path: Path, name: str) -> None:
    on = _all_on(tmp_path, "on")
    off = _all_on(tmp_path, "off", off=name)
    state_key = CLASSES[name].__name__
    names_on, names_off = handler_names(on), handler_names(off)
    assert [n for n in names_on if n.startswith(f"{state_key}.")] == OWN_HANDLERS[name]
    assert names_off == [n for n in names_on if not n.startswith(f"{state_key}.")]
    assert [type(c) for c in off.callbacks] == [ReportProgress, *(c for k, c in CLASSES.items() if k != name)]
    assert off.config is not None
    assert on.config is not None
    assert off.config["callbacks"][name]["enabled"] is False
    assert on.config["callbacks"][name]["enabled"] is True
    on.close()
    off.close()


def test_grid_pruning_with_its_default_method_is_refused_clearly_by_the_demo_pipeline(tmp_path: Path) -> None:
    config = {"trainer": {"name": "demo", "samples": 64}, "callbacks": {"grid_pruning": None}}
    assert load_config(config).data["callbacks"]["grid_pruning"] == {
        "enabled": True,
        "every": "100it",
        "start": None,
        "prune": "prune",
        "metric": "occupancy",
    }
    with pytest.raises(ConfigError) as info:
        build(config, run_dir=tmp_path / "run", objects=quiet())
    assert str(info.value) == (
        "<dict>: callbacks.grid_pruning: GridPruning 'GridPruning': the pipeline Sequential has no method 'prune'() "
        "to call every 100it; define it, name another method with prune=..., or pass prune=lambda pipeline: ..."
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    ("text", "parts", "value"),
    [
        ("trainer.max_epochs=5", ["trainer", "max_epochs"], 5),
        ("callbacks.wandb.enabled=true", ["callbacks", "wandb", "enabled"], True),
        ("a.b=yes", ["a", "b"], True),  # YAML 1.1: yes is a boolean
        ("a=0.5", ["a"], 0.5),
        ("a=[1, 2]", ["a"], [1, 2]),
        ("a=null", ["a"], None),
        ("a=~", ["a"], None),
        ("a=1e-3", ["a"], "1e-3"),  # YAML 1.1: a float needs a dot, so 1e-3 is a string
        ("a=1.0e-3", ["a"], 0.001),
        ("a=1_000", ["a"], 1000),
        ("a=2ep", ["a"], "2ep"),
        ("a={every: 2ep}", ["a"], {"every": "2ep"}),
        ("a=[1,", ["a"], "[1,"),  # not valid YAML: stays a string
        ("a=x=y", ["a"], "x=y"),
        ("a=", ["a"], ""),
        (" a . b = 5", ["a", "b"], 5),
    ],
)
def test_parse_override_reads_yaml_scalars(text: str, parts: list[str], value: Any) -> None:
    got_parts, got = parse_override(text)
    assert (got_parts, got, type(got)) == (parts, value, type(value))


@pytest.mark.parametrize("text", ["x", "=3", "a..b=1", "a.=1", " =1"])
def test_malformed_override_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert problems(info.value) == [
        ("", f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. trainer.max_epochs=5")
    ]
    assert str(info.value) == f"--set: --set {text!r}: expected KEY=VALUE with a dotted key, e.g. trainer.max_epochs=5"
    assert info.value.source == "--set"


def test_the_1e_minus_3_string_still_validates_as_a_float_learning_rate() -> None:
    config = load_config(DEMO, overrides=["trainer.optimizer.lr=1e-3"])
    assert config.source == f"{DEMO} with --set"
    assert config.data["trainer"]["optimizer"] == {"name": "adam", "lr": 0.001}
    assert type(config.data["trainer"]["optimizer"]["lr"]) is float
    assert config.trainer_kwargs["optimizer"] == {"name": "adam", "lr": 0.001}


def test_overrides_create_missing_blocks_and_enable_them() -> None:
    data = {"trainer": {"name": "demo"}}
    assert apply_overrides(data, ["callbacks.wandb.enabled=true"]) == {
        "trainer": {"name": "demo"},
        "callbacks": {"wandb": {"enabled": True}},
    }
    assert data == {"trainer": {"name": "demo"}}  # the input is not changed
    config = load_config(data, overrides=["callbacks.wandb.enabled=true", "callbacks.wandb.every=10"])
    assert config.source == "<dict> with --set"
    assert [(s.key, s.enabled, s.kwargs) for s in config.callbacks] == [("wandb", True, {"every": 10})]
    assert config.data["callbacks"]["wandb"]["enabled"] is True
    assert config.data["callbacks"]["wandb"]["every"] == 10


def test_overrides_turn_null_true_and_false_blocks_into_mappings() -> None:
    data = {"trainer": {"name": "demo"}, "callbacks": {"validator": None, "progress": True, "wandb": False}}
    result = apply_overrides(
        data, ["callbacks.validator.prefix=main", "callbacks.progress.plain_every=2", "callbacks.wandb.mode=disabled"]
    )
    assert result["callbacks"] == {
        "validator": {"prefix": "main"},
        "progress": {"plain_every": 2},
        "wandb": {"enabled": False, "mode": "disabled"},  # a block written `false` stays disabled
    }


def test_overrides_apply_in_order_the_last_one_wins_and_can_re_enable() -> None:
    config = load_config(
        DEMO,
        overrides=[
            "trainer.max_epochs=2",
            "trainer.max_epochs=7",
            "callbacks.progress.enabled=true",
            "callbacks.checkpointer.keep_last=null",
            "callbacks.lr_decay=false",
            "run.seed=9",
        ],
    )
    assert config.data["trainer"]["max_epochs"] == 7
    assert config.data["run"]["seed"] == 9
    assert config.data["callbacks"]["checkpointer"]["keep_last"] is None
    assert [(s.key, s.enabled) for s in config.callbacks] == [
        ("lr_decay", False),
        ("validator", True),
        ("checkpointer", True),
        ("tensorboard", False),
        ("wandb", False),
        ("progress", True),
    ]
    # `lr_decay=false` replaced the whole block: its settings fall back to the defaults
    assert config.data["callbacks"]["lr_decay"]["milestones"] is None


def test_setting_a_key_inside_a_scalar_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"trainer": {"name": "demo", "max_epochs": 3}}, ["trainer.max_epochs.x=1"])
    assert problems(info.value) == [
        ("trainer.max_epochs", "--set 'trainer.max_epochs.x=1': trainer.max_epochs is 3, not a mapping to set keys in")
    ]
    assert str(info.value) == (
        "--set: trainer.max_epochs: --set 'trainer.max_epochs.x=1': trainer.max_epochs is 3, not a mapping to set "
        "keys in"
    )


def test_every_bad_override_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "trainer: {name: demo}\n")
    error = checked_error(path, overrides=["trainer.name.x=1", "nokey", "trainer.max_epochs=4"])
    assert error.source == "--set"
    assert str(error) == (
        "--set: 2 problems\n"
        "  - trainer.name: --set 'trainer.name.x=1': trainer.name is 'demo', not a mapping to set keys in\n"
        "  - --set 'nokey': expected KEY=VALUE with a dotted key, e.g. trainer.max_epochs=5"
    )


def test_a_bad_value_from_an_override_is_attributed_to_the_file_with_set(tmp_path: Path) -> None:
    path = write(tmp_path, "trainer: {name: demo}\n")
    error = checked_error(path, overrides=["callbacks.checkpointer.keep_last=abc"])
    assert error.source == f"{path} with --set"
    assert str(error) == f"{path} with --set: callbacks.checkpointer.keep_last: got 'abc'; expected an integer or null"


def test_overrides_on_a_run_config_re_resolve_it() -> None:
    base = load_config(None)
    assert load_config(base) is base
    changed = load_config(base, overrides=["trainer.max_epochs=1"])
    assert changed.data["trainer"]["max_epochs"] == 1
    assert changed.source == f"{default_config_path()} with --set"
    assert base.data["trainer"]["max_epochs"] == 10


# ---------------------------------------------------------------------------------------------------- errors
def _cb(block: dict[Any, Any]) -> dict[str, Any]:
    return {"trainer": {"name": "demo"}, "callbacks": block}


ERRORS: list[tuple[str, Any, str, str]] = [
    (
        "unknown section",
        {"callbaks": {}, "trainer": {"name": "demo"}},
        "callbaks",
        "unknown section (did you mean 'callbacks'?); valid: run, trainer, callbacks",
    ),
    (
        "unknown callback",
        _cb({"chekpointer": {}}),
        "callbacks.chekpointer",
        f"unknown callback 'chekpointer' (did you mean 'checkpointer'?); known: {KNOWN}",
    ),
    (
        "unknown callback, nothing close",
        _cb({"zzz": {}}),
        "callbacks.zzz",
        f"unknown callback 'zzz'; known: {KNOWN}",
    ),
    (
        "unknown key",
        _cb({"checkpointer": {"keep_bset": 1}}),
        "callbacks.checkpointer.keep_bset",
        f"unknown key for checkpointer (Checkpointer) (did you mean 'keep_best'?); valid keys: {CHECKPOINTER_KEYS}",
    ),
    (
        "string for an int",
        _cb({"checkpointer": {"keep_last": "abc"}}),
        "callbacks.checkpointer.keep_last",
        "got 'abc'; expected an integer or null",
    ),
    (
        "bool for an int",
        _cb({"checkpointer": {"keep_last": True}}),
        "callbacks.checkpointer.keep_last",
        "got True; expected an integer or null",
    ),
    (
        "float for an int",
        _cb({"validator": {"priority": 1.5}}),
        "callbacks.validator.priority",
        "got 1.5; expected an integer or null",
    ),
    (
        "literal",
        _cb({"checkpointer": {"on_error": "ignore"}}),
        "callbacks.checkpointer.on_error",
        "got 'ignore'; input should be 'raise' or 'warn'",
    ),
    (
        "list of str given a str",
        _cb({"wandb": {"tags": "a"}}),
        "callbacks.wandb.tags",
        "got 'a'; 'str' instances are not allowed as a Sequence value",
    ),
    (
        "list of str given a list with an int",
        _cb({"progress": {"metrics": ["val/mse", 3]}}),
        "callbacks.progress.metrics",
        "got ['val/mse', 3] (list); input should be a valid string at [1]",
    ),
    (
        "mapping of literals",
        _cb({"validator": {"modes": {"mse": "up"}}}),
        "callbacks.validator.modes",
        "got {'mse': 'up'} (dict); expected a mapping of names to 'min', 'max' or null",
    ),
    (
        "schedule",
        _cb({"checkpointer": {"every": 2.5}}),
        "callbacks.checkpointer.every",
        "got 2.5; expected a schedule: '50it', '2ep', '10min', 'never', an integer (iterations), a mapping (every, at, "
        "start, end) or null",
    ),
    (
        "code-only Validator.fn",
        _cb({"validator": {"fn": "my.module:fn"}}),
        "callbacks.validator.fn",
        "validator (Validator) takes fn (ValidateFn | None) only in Python code, not from a config file",
    ),
    (
        "code-only ProgressBar.console",
        _cb({"progress": {"console": "stderr"}}),
        "callbacks.progress.console",
        "progress (ProgressBar) takes console (Console | None) only in Python code, not from a config file",
    ),
    (
        "code-only LRDecay.scheduler",
        _cb({"lr_decay": {"scheduler": "cosine"}}),
        "callbacks.lr_decay.scheduler",
        "lr_decay (LRDecay) takes scheduler (SchedulerSpec | None) only in Python code, not from a config file",
    ),
    (
        "schedule: tensorboard every 0it",
        _cb({"tensorboard": {"every": "0it"}}),
        "callbacks.tensorboard.every",
        "invalid schedule '0it': the period must be > 0; write 'never' for a schedule that never fires; "
        f"{SCHEDULE_FORMS}",
    ),
    (
        "constructor: bad schedule text, tag in the owner's name",
        _cb({"checkpointer@x": {"every": "xyz"}}),
        "callbacks.checkpointer@x.every",
        f"invalid schedule 'xyz': the period is not a number with an optional unit; {SCHEDULE_FORMS}",
    ),
    (
        "constructor: keep_best without monitor",
        _cb({"checkpointer": {"keep_best": 2}}),
        "callbacks.checkpointer",
        "Checkpointer 'Checkpointer': keep_best=2 needs monitor='<metric>' to rank checkpoints by",
    ),
    (
        "constructor: early stopping on a best/ metric",
        _cb({"early_stopping": {"monitor": "best/mse"}}),
        "callbacks.early_stopping",
        "EarlyStopping 'EarlyStopping': monitor='best/mse' is a best-so-far value, which never gets worse; monitor "
        "the validated metric itself, e.g. 'val/mse'",
    ),
    (
        "constructor: empty state_key",
        _cb({"validator": {"state_key": ""}}),
        "callbacks.validator",
        "state_key of Validator must be a non-empty string, got ''",
    ),
    (
        "empty tag",
        _cb({"validator@": {}}),
        "callbacks.validator@",
        "a tag after @ must be letters, digits, _ or - (e.g. validator@holdout)",
    ),
    (
        "tag with a dot",
        _cb({"validator@a.b": {}}),
        "callbacks.validator@a.b",
        "a tag after @ must be letters, digits, _ or - (e.g. validator@holdout)",
    ),
    (
        "block is a number",
        _cb({"validator": 5}),
        "callbacks.validator",
        "expected a mapping of settings, null, true or false, got 5",
    ),
    (
        "block is a list",
        _cb({"validator": ["every", "1ep"]}),
        "callbacks.validator",
        "expected a mapping of settings, null, true or false, got ['every', '1ep'] (list)",
    ),
    (
        "enabled: 'yes' (a string)",
        _cb({"validator": {"enabled": "yes"}}),
        "callbacks.validator.enabled",
        "got 'yes'; expected true or false",
    ),
    (
        "callbacks section a list",
        {"trainer": {"name": "demo"}, "callbacks": ["validator"]},
        "callbacks",
        "expected a mapping of callback names to their settings, got ['validator'] (list)",
    ),
    (
        "callback name not a string",
        _cb({1: {}}),
        "callbacks.1",
        "a callback name must be a string, got 1",
    ),
    (
        "trainer name unknown",
        {"trainer": {"name": "dmeo"}},
        "trainer.name",
        f"unknown trainer 'dmeo' (did you mean 'demo'?); known: {TRAINERS}",
    ),
    (
        "trainer name missing",
        {"trainer": {"max_epochs": 3}},
        "trainer.name",
        f"got None; expected a trainer name: {TRAINERS}",
    ),
    (
        "trainer section a string",
        {"trainer": "demo"},
        "trainer",
        "expected a mapping with a name, got 'demo'",
    ),
    (
        "trainer param wrong type",
        {"trainer": {"name": "demo", "max_epochs": "x"}},
        "trainer.max_epochs",
        "got 'x'; input should be a valid integer, unable to parse string as an integer",
    ),
    (
        "trainer param unknown",
        {"trainer": {"name": "demo", "max_epoch": 3}},
        "trainer.max_epoch",
        "unknown key for trainer 'demo' (did you mean 'max_epochs'?); valid keys: max_epochs, batch_size, samples, "
        "optimizer, report_every, precision, accumulate, compile, threads, strategy, fsdp, max_time",
    ),
    (
        "trainer code-only param",
        {"trainer": {"name": "demo", "console": "stdout"}},
        "trainer.console",
        "trainer 'demo' takes console (Console | None) only in Python code, not from a config file",
    ),
    (
        "optimizer name unknown",
        {"trainer": {"name": "demo", "optimizer": {"name": "adamm", "lr": 0.1}}},
        "trainer.optimizer.name",
        f"got 'adamm' (did you mean 'adam'?); expected one of {OPTIMIZERS}",
    ),
    (
        "optimizer name unknown, adamw closest",
        {"trainer": {"name": "demo", "optimizer": {"name": "adamww"}}},
        "trainer.optimizer.name",
        f"got 'adamww' (did you mean 'adamw'?); expected one of {OPTIMIZERS}",
    ),
    (
        "optimizer name missing",
        {"trainer": {"name": "demo", "optimizer": {"lr": 0.1}}},
        "trainer.optimizer.name",
        f"got None; expected one of {OPTIMIZERS}",
    ),
    (
        "optimizer kwarg unknown",
        {"trainer": {"name": "demo", "optimizer": {"name": "adam", "lrr": 0.1}}},
        "trainer.optimizer.lrr",
        f"unknown key for torch.optim.Adam (did you mean 'lr'?); valid keys: {ADAM_KEYS}",
    ),
    (
        "optimizer kwarg wrong type",
        {"trainer": {"name": "demo", "optimizer": {"name": "adam", "lr": "fast"}}},
        "trainer.optimizer.lr",
        "got 'fast'; expected a number",
    ),
    (
        "optimizer betas too short",
        {"trainer": {"name": "demo", "optimizer": {"name": "adam", "betas": [0.9]}}},
        "trainer.optimizer.betas",
        "got [0.9] (list); field required at [1]",
    ),
    (
        "optimizer block a list",
        {"trainer": {"name": "demo", "optimizer": [1]}},
        "trainer.optimizer",
        "expected a mapping like {name: adam, lr: 0.01}, got [1] (list)",
    ),
    (
        "run.seed negative",
        {"run": {"seed": -1}, "trainer": {"name": "demo"}},
        "run.seed",
        "got -1; expected an integer >= 0",
    ),
    (
        "run.seed a bool",
        {"run": {"seed": True}, "trainer": {"name": "demo"}},
        "run.seed",
        "got True; expected an integer >= 0",
    ),
    (
        "run.name with a slash",
        {"run": {"name": "a/b"}, "trainer": {"name": "demo"}},
        "run.name",
        "got 'a/b'; expected a non-empty name without / or \\",
    ),
    (
        "run.dir a number",
        {"run": {"dir": 5}, "trainer": {"name": "demo"}},
        "run.dir",
        "got 5; expected a path",
    ),
    (
        "run key unknown",
        {"run": {"sed": 1}, "trainer": {"name": "demo"}},
        "run.sed",
        "unknown key (did you mean 'seed'?); valid keys: name, dir, seed, allow_outside",
    ),
    (
        "run section a number",
        {"run": 3, "trainer": {"name": "demo"}},
        "run",
        "expected a mapping (name, dir, seed, allow_outside), got 3",
    ),
]


@pytest.mark.parametrize(("config", "path", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_each_kind_of_error_has_its_exact_message(config: Any, path: str, message: str) -> None:
    error = checked_error(config)
    assert problems(error) == [(path, message)]
    assert error.source == "<dict>"
    assert str(error) == f"<dict>: {path}: {message}"
    assert isinstance(error, ValueError)


def test_every_problem_in_a_file_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
trainr: {}
run: {seed: -1, nmae: x}
trainer: {name: demo, max_epochs: zero, optimizer: {name: adam, lrr: 1}}
callbacks:
  checkpointer: {keep_last: x, monitr: val/mse}
  foo: {}
  validator: {enabled: "yes"}
  tensorboard: {every: 0it}
  lr_decay: {scheduler: cosine}
""",
    )
    error = checked_error(path)
    assert error.source == str(path)
    assert problems(error) == [
        ("trainr", "unknown section (did you mean 'trainer'?); valid: run, trainer, callbacks"),
        ("run.seed", "got -1; expected an integer >= 0"),
        ("run.nmae", "unknown key (did you mean 'name'?); valid keys: name, dir, seed, allow_outside"),
        (
            "trainer.optimizer.lrr",
            f"unknown key for torch.optim.Adam (did you mean 'lr'?); valid keys: {ADAM_KEYS}",
        ),
        ("trainer.max_epochs", "got 'zero'; input should be a valid integer, unable to parse string as an integer"),
        ("callbacks.checkpointer.keep_last", "got 'x'; expected an integer or null"),
        (
            "callbacks.checkpointer.monitr",
            f"unknown key for checkpointer (Checkpointer) (did you mean 'monitor'?); valid keys: {CHECKPOINTER_KEYS}",
        ),
        ("callbacks.foo", f"unknown callback 'foo'; known: {KNOWN}"),
        ("callbacks.validator.enabled", "got 'yes'; expected true or false"),
        (
            "callbacks.tensorboard.every",
            f"invalid schedule '0it': the period must be > 0; write 'never' for a schedule that never fires; "
            f"{SCHEDULE_FORMS}",
        ),
        (
            "callbacks.lr_decay.scheduler",
            "lr_decay (LRDecay) takes scheduler (SchedulerSpec | None) only in Python code, not from a config file",
        ),
    ]
    lines = str(error).splitlines()
    assert lines[0] == f"{path}: 11 problems"
    assert lines[1:] == [f"  - {p}: {m}" for p, m in problems(error)]


def test_a_disabled_block_is_still_checked_but_not_constructed() -> None:
    # keys and types are checked even when disabled; only the constructor's own checks wait for enabled
    error = checked_error(_cb({"tensorboard": {"enabled": False, "evry": "1ep"}}))
    assert problems(error) == [
        (
            "callbacks.tensorboard.evry",
            "unknown key for tensorboard (TensorBoardLogger) (did you mean 'every'?); valid keys: dir, every, "
            "log_images, background, on_error, priority, state_key",
        )
    ]
    config = load_config(_cb({"checkpointer": {"enabled": False, "keep_best": 2}}))
    assert [(s.key, s.enabled, s.kwargs) for s in config.callbacks] == [("checkpointer", False, {"keep_best": 2})]
    error = checked_error(config, overrides=["callbacks.checkpointer.enabled=true"])
    assert str(error) == (
        "<dict> with --set: callbacks.checkpointer: Checkpointer 'Checkpointer': keep_best=2 needs monitor='<metric>' "
        "to rank checkpoints by"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "run:\n  name: demo\ntrainer: {name: demo\ncallbacks: {}\n",
            "line 4, column 10: not valid YAML: expected ',' or '}', but got ':'",
        ),
        (
            "trainer:\n  name: demo\n   bad: 1\n",
            "line 3, column 7: not valid YAML: mapping values are not allowed here",
        ),
        (
            "trainer:\n\tname: demo\n",
            "line 2, column 1: not valid YAML: found character '\\t' that cannot start any token",
        ),
        (
            "- run\n- trainer\n",
            "the top level must be a mapping (run:, trainer:, callbacks:), got ['run', 'trainer'] (list)",
        ),
        ("hello\n", "the top level must be a mapping (run:, trainer:, callbacks:), got 'hello'"),
    ],
    ids=["unclosed flow mapping", "bad indentation", "tab", "top level a list", "top level a scalar"],
)
def test_file_level_errors_name_the_file_and_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    error = checked_error(path)
    assert problems(error) == [("", message)]
    assert str(error) == f"{path}: {message}"


def test_a_missing_file_an_unreadable_one_and_an_empty_one(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.yaml"
    assert str(checked_error(missing)) == f"{missing}: no such file"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe trainer")
    assert str(checked_error(binary)) == (
        f"{binary}: cannot be read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    )
    empty = write(tmp_path, "# nothing here\n", "empty.yaml")  # an empty config: every section defaults
    assert str(checked_error(empty)) == f"{empty}: trainer.name: got None; expected a trainer name: {TRAINERS}"


def test_a_top_level_list_given_as_data() -> None:
    error = checked_error([{"trainer": {"name": "demo"}}])
    assert str(error) == "<dict>: the config must be a mapping, got [{'trainer': {'name': 'demo'}}] (list)"


def test_errors_found_only_when_building_name_the_block(tmp_path: Path) -> None:
    # the factory refuses a value its type allows
    with pytest.raises(ConfigError) as info:
        build({"trainer": {"name": "demo", "samples": 0}}, run_dir=tmp_path / "a", objects=quiet())
    assert problems(info.value) == [("trainer", "'demo' refused the config: samples must be an integer >= 1, got 0")]
    # torch refuses the optimizer's value
    with pytest.raises(ConfigError) as info:
        build(
            {"trainer": {"name": "demo", "optimizer": {"name": "adam", "lr": -1}}},
            run_dir=tmp_path / "b",
            objects=quiet(),
        )
    assert str(info.value) == "<dict>: trainer: 'demo' refused the config: Invalid learning rate: -1.0"
    # two blocks with one state key: the second is named
    with pytest.raises(ConfigError) as info:
        build(
            {
                "trainer": {"name": "demo", "samples": 64},
                "callbacks": {"validator": {}, "validator@x": {"state_key": "Validator"}},
            },
            run_dir=tmp_path / "c",
            objects=quiet(),
        )
    assert problems(info.value) == [
        (
            "callbacks.validator@x",
            "two callbacks share state_key 'Validator' (Validator and Validator); give the new one a distinct key, "
            "e.g. Validator(..., state_key='Validator_2')",
        )
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was written


# ---------------------------------------------------------------------------------------------------- registry
class Tally(Callback):
    """Counts the steps it sees (a callback defined by a user, registered in code)."""

    def __init__(
        self,
        *,
        label: str = "tally",
        limit: int = 10,
        mode: Literal["count", "skip"] = "count",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        if limit < 1:
            raise ValueError(f"Tally: limit must be >= 1, got {limit}")
        self.label, self.limit, self.mode = label, limit, mode
        self.count = 0

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.count += 1


def tiny_trainer(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    width: int,
    max_epochs: int = 1,
    activation: Literal["tanh", "relu"] = "tanh",
    optimizer: OptimizerSpec = None,
) -> BaseTrainer:
    """A two-layer MLP on 32 random points, batches of 8."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(32, 2, generator=generator)
    torch.manual_seed(seed)
    act = nn.Tanh() if activation == "tanh" else nn.ReLU()
    model = nn.Sequential(nn.Linear(2, width), act, nn.Linear(width, 1))
    return BaseTrainer(
        model,
        TensorDataset(x, x.sum(dim=1, keepdim=True)),
        max_epochs=max_epochs,
        batch_size=8,
        seed=seed,
        device="cpu",
        optimizer=optimizer,
        loss_fn=lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[1]),
        run_dir=run_dir,
    )


def test_default_registry_holds_the_builtins_and_an_empty_one_holds_nothing() -> None:
    registry = Registry.default()
    assert registry.names("callback") == BUILTINS
    assert registry.names("trainer") == ["demo", "gan", "image_field"]
    assert {e.source for e in registry.entries("callback")} == {"built-in"}
    assert Registry.default(plugins=False).names("callback") == BUILTINS
    empty = Registry()
    assert (empty.names("callback"), empty.names("trainer")) == ([], [])
    error = checked_error({"trainer": {"name": "demo"}}, registry=empty)
    assert problems(error) == [("trainer.name", "unknown trainer 'demo'; known: ")]


def test_a_callback_registered_in_code_is_usable_in_a_config(tmp_path: Path) -> None:
    registry = Registry.default()
    registry.register_callback("tally", Tally)
    assert registry.names("callback") == [*BUILTINS, "tally"]
    entry = registry.entry("callback", "tally", "callbacks.tally")
    assert (entry.source, entry.target, entry.summary()) == (
        "code",
        "tests.trainers.config.test_config:Tally",
        "Counts the steps it sees (a callback defined by a user, registered in code).",
    )
    path = write(
        tmp_path,
        "trainer: {name: demo, samples: 256, max_epochs: 1}\ncallbacks:\n  tally: {label: steps, limit: 3}\n"
        "  tally@two: {mode: skip}\n",
    )
    config = load_config(path, registry=registry)
    assert config.data["callbacks"] == {
        "tally": {"enabled": True, "label": "steps", "limit": 3, "mode": "count"},
        "tally@two": {"enabled": True, "label": "tally", "limit": 10, "mode": "skip", "state_key": "Tally@two"},
    }
    trainer = build(config, run_dir=tmp_path / "run", objects=quiet())
    tallies = [c for c in trainer.callbacks if isinstance(c, Tally)]
    assert [(t.state_key, t.label, t.limit, t.mode) for t in tallies] == [
        ("Tally", "steps", 3, "count"),
        ("Tally@two", "tally", 10, "skip"),
    ]
    assert trainer.train() is Status.COMPLETED
    assert [t.count for t in tallies] == [4, 4]
    trainer.close()

    # its keys, types and constructor checks are reported like a built-in's
    error = checked_error({"trainer": {"name": "demo"}, "callbacks": {"tally": {"lable": "x"}}}, registry=registry)
    assert problems(error) == [
        (
            "callbacks.tally.lable",
            "unknown key for tally (Tally) (did you mean 'label'?); valid keys: label, limit, mode, priority, "
            "state_key",
        )
    ]
    error = checked_error({"trainer": {"name": "demo"}, "callbacks": {"tally": {"mode": "all"}}}, registry=registry)
    assert problems(error) == [("callbacks.tally.mode", "got 'all'; input should be 'count' or 'skip'")]
    error = checked_error({"trainer": {"name": "demo"}, "callbacks": {"tally": {"limit": 0}}}, registry=registry)
    assert problems(error) == [("callbacks.tally", "Tally: limit must be >= 1, got 0")]
    # the default registry does not know it
    error = checked_error({"trainer": {"name": "demo"}, "callbacks": {"tally": {}}})
    assert problems(error) == [("callbacks.tally", f"unknown callback 'tally'; known: {KNOWN}")]


def test_registering_a_builtin_name_again_names_both_sources() -> None:
    registry = Registry.default()
    with pytest.raises(RegistryError) as info:
        registry.register_callback("checkpointer", Tally)
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == (
        "checkpointer: callback name 'checkpointer' is registered twice: by built-in and by code; rename one "
        "(names must be unique)"
    )
    registry.register_callback("tally", Tally)
    with pytest.raises(RegistryError) as info:
        registry.register_callback("tally", Tally)
    assert problems(info.value) == [
        ("tally", "callback name 'tally' is registered twice: by code and by code; rename one (names must be unique)")
    ]
    with pytest.raises(RegistryError) as info:
        registry.register_trainer("demo", tiny_trainer)
    assert problems(info.value) == [
        ("demo", "trainer name 'demo' is registered twice: by built-in and by code; rename one (names must be unique)")
    ]
    assert registry.names("callback") == [*BUILTINS, "tally"]  # nothing was replaced
    assert registry.entry("callback", "checkpointer", "x").load() is Checkpointer


@pytest.mark.parametrize("name", ["My-Logger", "my-logger", "1logger", "", "_private", "logger@x"])
def test_a_bad_name_is_refused(name: str) -> None:
    with pytest.raises(RegistryError) as info:
        Registry().register_callback(name, Tally)
    assert problems(info.value) == [
        (
            name,
            f"callback name {name!r} from code is not valid: use lower-case letters, digits and underscores, "
            "starting with a letter (e.g. 'my_logger')",
        )
    ]


def test_registering_something_that_is_not_a_callback_class_is_refused() -> None:
    registry = Registry()
    with pytest.raises(RegistryError) as info:
        registry.register_callback("thing", dict)
    assert str(info.value) == "thing: register_callback needs a Callback subclass, got <class 'dict'>"
    instance = Tally()
    with pytest.raises(RegistryError) as info:
        registry.register_callback("thing", instance)  # type: ignore[arg-type]
    assert str(info.value) == f"thing: register_callback needs a Callback subclass, got {instance!r}"
    with pytest.raises(RegistryError) as info:
        registry.register_trainer("thing", 42)  # type: ignore[arg-type]
    assert str(info.value) == "thing: register_trainer needs a callable factory, got 42"
    assert (registry.names("callback"), registry.names("trainer")) == ([], [])


def test_a_trainer_factory_registered_in_code_builds_from_its_typed_params(tmp_path: Path) -> None:
    registry = Registry.default()
    registry.register_trainer("tiny", tiny_trainer)
    assert registry.names("trainer") == ["demo", "gan", "image_field", "tiny"]
    path = write(
        tmp_path,
        "run: {seed: 5}\ntrainer: {name: tiny, width: 6, max_epochs: 2, activation: relu, "
        "optimizer: {name: sgd, lr: 0.1}}\ncallbacks:\n  checkpointer: {keep_last: 1}\n",
    )
    config = load_config(path, registry=registry)
    assert config.data == {
        "run": {"seed": 5, "name": "tiny", "dir": "runs"},
        "trainer": {
            "name": "tiny",
            "width": 6,
            "max_epochs": 2,
            "activation": "relu",
            "optimizer": {"name": "sgd", "lr": 0.1},
        },
        "callbacks": {
            "checkpointer": {
                "enabled": True,
                "dir": None,
                "every": "1ep",
                "at_end": True,
                "on_interrupt": True,
                "on_exception": False,
                "keep_last": 1,
                "monitor": None,
                "mode": None,
                "keep_best": None,
                "on_error": "raise",
            }
        },
    }
    trainer = build(config, run_dir=tmp_path / "run", registry=registry)
    assert [c.state_key for c in trainer.callbacks] == ["Checkpointer"]
    pipeline = trainer.pipeline
    assert isinstance(pipeline, nn.Sequential)
    first, activation = pipeline[0], pipeline[1]
    assert isinstance(first, nn.Linear)
    assert isinstance(activation, nn.ReLU)
    assert first.out_features == 6
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.train() is Status.COMPLETED
    assert (trainer.state.iteration, trainer.state.epoch) == (8, 2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.pt", "step-00000008.pt"]
    assert read_metadata(tmp_path / "run" / "checkpoints" / "last.pt")["config"] == config.data
    trainer.close()


def test_a_registered_trainer_s_keys_are_checked(tmp_path: Path) -> None:
    registry = Registry()
    registry.register_trainer("tiny", tiny_trainer)
    error = checked_error({"trainer": {"name": "tiny", "widht": 4, "activation": "gelu"}}, registry=registry)
    assert problems(error) == [
        (
            "trainer.widht",
            "unknown key for trainer 'tiny' (did you mean 'width'?); valid keys: width, max_epochs, activation, "
            "optimizer, max_time",
        ),
        ("trainer.activation", "got 'gelu'; input should be 'tanh' or 'relu'"),
        ("trainer.width", "trainer 'tiny' needs width (an integer)"),
    ]
    error = checked_error({"trainer": {"name": "tiny", "width": True}}, registry=registry)
    assert problems(error) == [("trainer.width", "got True; expected an integer")]
    error = checked_error({"trainer": {"name": "tny", "width": 2}}, registry=registry)
    assert problems(error) == [("trainer.name", "unknown trainer 'tny' (did you mean 'tiny'?); known: tiny")]
    # an empty registry knows no callbacks either
    error = checked_error({"trainer": {"name": "tiny", "width": 2}, "callbacks": {"validator": {}}}, registry=registry)
    assert problems(error) == [("callbacks.validator", "unknown callback 'validator'; known: ")]


# ---------------------------------------------------------------------------------------------------- package API
def test_trainers_build_is_the_build_function_not_the_submodule(tmp_path: Path) -> None:
    """The docs' ``from trainers import build, load_config`` then ``build(config, run_dir=...)``: the package's lazy
    name must not be shadowed by its ``trainers.build`` submodule (which importing load_config or build loads)."""
    code = (
        "import inspect, trainers\n"
        "from trainers import build\n"
        "print(inspect.isfunction(build), inspect.isfunction(trainers.build))\n"
        "from trainers import load_config\n"
        "print(inspect.isfunction(trainers.build), inspect.isfunction(trainers.load_config))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True True", "True True"]


def test_a_list_of_fixed_values_is_described_and_refused_in_plain_words() -> None:
    from typing import Literal

    from trainers.config.params import type_phrase

    assert type_phrase(list[Literal["a", "b"]]) == "a list of any of 'a', 'b'"
    assert type_phrase(dict[str, Literal["min", "max"]]) == "a mapping of names to 'min', 'max'"
    assert type_phrase(list[int]) == "a list of integers"
    with pytest.raises(ConfigError) as caught:
        load_config({"trainer": {"name": "demo"}, "callbacks": {"ema": {"use_for": ["validation", "render"]}}})
    assert str(caught.value).splitlines()[-1] == (
        "<dict>: callbacks.ema.use_for: got ['validation', 'render'] (list); input should be 'validation', "
        "'preview' or 'export' at [1]"
    )
