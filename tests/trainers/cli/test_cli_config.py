"""Config files on the command line, end to end: ``python -m trainers train --config/--set/--dry-run/--resume``,
``config show|validate``, ``callbacks``, and plugins found through entry points.

Everything is real: YAML files written to ``tmp_path``, subprocesses running the ``stepbus`` command, real training
of the demo, real SIGINTs. The plugin is a real distribution (``tests/fixtures/stepbus_plugin_example``) built and
installed with pip into a folder of its own -- never into the venv -- and put on the subprocesses' ``PYTHONPATH``;
a second one (``tests/fixtures/stepbus_plugin_clash``) takes names that are already registered.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.trainers.engine.live_process import LiveProcess
from trainers.checkpoint.format import read_metadata
from trainers.cli import main
from trainers.config.builder import load_config
from trainers.config.errors import ConfigError
from trainers.config.schema import default_config_path, dump_yaml

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
IMAGE_FIELD = ROOT / "trainers" / "apps" / "configs" / "image_field.yaml"  # the built-in default: the reference app
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")  # the fast MLP demo, for the tests that train
CLI = "trainers"  # python -m trainers: the stepbus command
APP = "tests.trainers.engine.interrupt_app"  # the same command with a Hold callback (--hold-at N stops at iteration N)
BUILT_IN: tuple[str, ...] = ("lr_decay", "grid_pruning", "gradient_guard", "validator", "early_stopping", "time_limit")
BUILT_IN += ("tensorboard", "wandb", "csv", "mlflow", "progress", "model_summary", "checkpointer", "metrics_file")
BUILT_IN += ("preview", "ema", "pipeline_export", "ray_report", "profiler")
SAMPLE = "plugin stepbus-plugin-example (stepbus_plugin_example:SampleLogger)"
TINY = "plugin stepbus-plugin-example (stepbus_plugin_example:tiny_trainer)"
CLASH = "plugin stepbus-plugin-clash (stepbus_plugin_clash:OtherLogger)"
CLASH_DEMO = "plugin stepbus-plugin-clash (stepbus_plugin_clash:other_demo)"
SCHEDULE = (
    "a schedule: '50it', '2ep', '10min', 'never', an integer (iterations), a mapping (every, at, start, end) or null"
)
RESUMED = re.compile(r"^resumed from (\S+) at (.+)$", re.MULTILINE)


def _env(*paths: Path, columns: str | None = "1000") -> dict[str, str]:
    """The subprocesses' environment: this checkout first on the path (after ``paths``: plugin sites), no colour."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS", "COLUMNS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "WANDB_MODE": "offline"})
    if columns is not None:
        env["COLUMNS"] = columns
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*paths, ROOT, env.get("PYTHONPATH", "")) if str(p))
    # this interpreter first on PATH: the hints name it as `python -m ...` (trainers.cli.invocation)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(
    cwd: Path, *args: str, paths: Sequence[Path] = (), columns: str | None = "1000", module: str = CLI
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env=_env(*paths, columns=columns),
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step-*.pt"))


def _step(iteration: int) -> str:
    return f"step-{iteration:08d}.pt"


def _config_error(source: str, *problems: str) -> str:
    """What the CLI prints to stderr for a bad config."""
    where = f" in {source}" if source else ""
    return "".join([f"config error{where}:\n", *(f"  {p}\n" for p in problems)])


# ---------------------------------------------------------------------------------------------- the plugins


@dataclass(frozen=True)
class Sites:
    example: Path  #: stepbus-plugin-example installed with pip --target
    clash: Path  #: stepbus-plugin-clash, the same way


def _pip_install(source: Path, target: Path) -> None:
    # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(
        source,
        target.parent / f"src-{source.name}",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--no-cache-dir", "--disable-pip-version-check", "--target", str(target)]
    command += [str(target.parent / f"src-{source.name}")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip could not install {source.name}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Sites:
    root = tmp_path_factory.mktemp("plugins")
    example, clash = root / "site-example", root / "site-clash"
    _pip_install(FIXTURES / "stepbus_plugin_example", example)
    _pip_install(FIXTURES / "stepbus_plugin_clash", clash)
    assert sorted(p.name for p in example.iterdir() if "__pycache__" not in p.name) == [
        "stepbus_plugin_example",
        "stepbus_plugin_example-0.1.0.dist-info",
    ]
    points = (example / "stepbus_plugin_example-0.1.0.dist-info" / "entry_points.txt").read_text(encoding="utf-8")
    assert points.split() == [
        "[stepbus.callbacks]",
        "sample_logger",
        "=",
        "stepbus_plugin_example:SampleLogger",
        "[stepbus.trainers]",
        "tiny",
        "=",
        "stepbus_plugin_example:tiny_trainer",
    ]
    return Sites(example, clash)


def _block(stdout: str, name: str) -> list[str]:
    """The lines ``stepbus callbacks`` prints for callback ``name``: its title line, then its table, stripped."""
    blocks = stdout.split("\n\n")
    found = [b for b in blocks if b.startswith(f"{name}: ")]
    assert len(found) == 1, stdout
    return [re.sub(r"\s{2,}", " | ", line.strip()) for line in found[0].splitlines()]


def test_callbacks_lists_the_built_ins_and_the_plugin_with_its_source_and_parameters(
    tmp_path: Path, sites: Sites
) -> None:
    result = _run(tmp_path, "callbacks", paths=[sites.example])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    titles = re.findall(r"^([a-z_]+): (\w+) \((built-in|plugin [^)]*\))\)", result.stdout, re.MULTILINE)
    assert [name for name, _, _ in titles] == [*BUILT_IN, "sample_logger"]  # built-ins first, then plugins
    assert [source for _, _, source in titles] == ["built-in"] * len(BUILT_IN) + [SAMPLE]
    assert _block(result.stdout, "sample_logger") == [
        f"sample_logger: SampleLogger ({SAMPLE}) Write one line per scheduled step (iteration and epoch) to a file "
        "in the run directory.",
        "key | default | accepts",
        "path | 'sample.log' | a string",
        f"every | '10it' | {SCHEDULE}",
        "label | 'step' | a string",
    ]
    assert (
        result.stdout.rstrip().splitlines()[-1]
        == f"Trainers (config: trainer.name): demo (built-in), gan (built-in), image_field (built-in), tiny ({TINY})"
    )

    # installed into its own folder only: this process (the venv) does not see the plugin
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides=["callbacks.sample_logger.every=2it"])
    assert [str(p) for p in info.value.problems] == [
        "callbacks.sample_logger: unknown callback 'sample_logger'; known: " + ", ".join(sorted(BUILT_IN))
    ]


def test_a_plugin_callback_from_set_writes_its_lines_and_is_saved_in_the_config(tmp_path: Path, sites: Sites) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--config", DEMO, "--run-dir", str(run_dir), "--epochs", "1"]
    args += ["--set", "trainer.samples=256", "--set", "trainer.batch_size=16"]  # 16 iterations
    args += ["--set", "callbacks.sample_logger.every=2it"]
    args += ["--set", "callbacks.sample_logger@second.every=5it", "--set", "callbacks.sample_logger@second.label=other"]
    args += ["--set", "callbacks.sample_logger@second.path=logs/second.log"]
    result = _run(tmp_path, *args, paths=[sites.example])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"stepbus demo run in {run_dir}"
    assert "training completed: 16 iterations" in result.stdout
    assert _lines(run_dir / "sample.log") == [f"step {i} epoch 1" for i in range(2, 17, 2)]
    assert _lines(run_dir / "logs" / "second.log") == ["other 5 epoch 1", "other 10 epoch 1", "other 15 epoch 1"]

    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert list(saved["callbacks"]) == [
        "lr_decay",
        "validator",
        "checkpointer",
        "tensorboard",
        "wandb",
        "progress",
        "sample_logger",
        "sample_logger@second",
    ]
    assert saved["callbacks"]["sample_logger"] == {
        "enabled": True,
        "path": "sample.log",
        "every": "2it",
        "label": "step",
    }
    assert saved["callbacks"]["sample_logger@second"] == {
        "enabled": True,
        "path": "logs/second.log",
        "every": "5it",
        "label": "other",
        "state_key": "SampleLogger@second",
    }
    assert saved["trainer"] == {
        "name": "demo",
        "max_epochs": 1,
        "batch_size": 16,
        "samples": 256,
        "report_every": "128it",
        "precision": "32",
        "accumulate": 1,
        "compile": False,
        "threads": 1,
        "strategy": "ddp",
        "fsdp": None,
        "optimizer": {"name": "adam", "lr": 0.01},
    }
    assert read_metadata(run_dir / "checkpoints" / _step(16))["config"] == saved


def test_a_plugin_trainer_named_in_a_config_file_trains_with_the_plugin_callback(tmp_path: Path, sites: Sites) -> None:
    config = _write(
        tmp_path / "tiny.yaml",
        "trainer: {name: tiny, max_epochs: 2, samples: 12, batch_size: 4, lr: 0.05}\n"
        "callbacks:\n"
        "  sample_logger: {every: 1it, label: tiny}\n"
        "  checkpointer: {every: 1ep, keep_last: 5}\n",
    )
    run_dir = tmp_path / "run"
    result = _run(tmp_path, "train", "--config", str(config), "--run-dir", str(run_dir), paths=[sites.example])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"stepbus tiny run in {run_dir}\n"
    assert _lines(run_dir / "sample.log") == [f"tiny {i} epoch {(i - 1) // 3 + 1}" for i in range(1, 7)]
    assert _steps(run_dir / "checkpoints") == [_step(3), _step(6)]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["run"] == {"name": "tiny", "dir": "runs", "seed": 0}  # run.name defaults to the trainer's
    assert saved["trainer"] == {"name": "tiny", "max_epochs": 2, "samples": 12, "batch_size": 4, "lr": 0.05}
    assert list(saved["callbacks"]) == ["sample_logger", "checkpointer"]


def test_bad_keys_of_plugin_parts_are_reported_with_did_you_mean(tmp_path: Path, sites: Sites) -> None:
    config = _write(
        tmp_path / "tiny.yaml",
        "trainer: {name: tiny, lrr: 0.1}\n"
        "callbacks:\n"
        "  sample_logger: {pth: x.log}\n"
        "  sample_logger@abs: {path: /tmp/x.log}\n",
    )
    result = _run(
        tmp_path, "config", "validate", str(config), "--set", "callbacks.sample_logger.label=[1]", paths=[sites.example]
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == _config_error(
        f"{config} with --set",
        "trainer.lrr: unknown key for trainer 'tiny' (did you mean 'lr'?); valid keys: max_epochs, samples, "
        "batch_size, lr, max_time",
        "callbacks.sample_logger.pth: unknown key for sample_logger (SampleLogger) (did you mean 'path'?); valid keys: "
        "path, every, label, priority, state_key",
        "callbacks.sample_logger.label: got [1] (list); input should be a valid string",
        "callbacks.sample_logger@abs: SampleLogger path must be a relative file name, got '/tmp/x.log'",
    )


def test_two_plugins_registering_one_name_exit_2_naming_both(tmp_path: Path, sites: Sites) -> None:
    for args in (["callbacks"], ["train", "--dry-run"], ["config", "show"]):
        result = _run(tmp_path, *args, paths=[sites.example, sites.clash])
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr == _config_error(
            "the installed plugins (entry points stepbus.callbacks)",
            f"sample_logger: callback name 'sample_logger' is registered twice: by {SAMPLE} and by {CLASH}; rename "
            "one (names must be unique)",
        )
    assert not (tmp_path / "runs").exists()


def test_a_plugin_shadowing_a_built_in_exits_2_naming_both(tmp_path: Path, sites: Sites) -> None:
    result = _run(tmp_path, "callbacks", paths=[sites.clash])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == _config_error(
        "the installed plugins (entry points stepbus.trainers)",
        f"demo: trainer name 'demo' is registered twice: by built-in and by {CLASH_DEMO}; rename one (names must be "
        "unique)",
    )


# ---------------------------------------------------------------------------------------------- train and dry run

CONFIG = """\
run: {name: cfg, seed: 7}
trainer:
  name: demo
  max_epochs: 3
  batch_size: 32
  samples: 128
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  report_every: 2it
callbacks:
  lr_decay: {milestones: [0.5], gamma: 0.5}
  validator: {every: 2it, prefix: holdout}
  early_stopping: {monitor: holdout/mse, patience: 10}
  checkpointer: {every: 2it, keep_last: 2, monitor: holdout/mse}
  tensorboard: false
"""


def test_train_with_a_config_file_and_set_trains_and_saves_the_resolved_config(tmp_path: Path) -> None:
    config = _write(tmp_path / "cfg.yaml", CONFIG)
    run_dir = tmp_path / "run"
    overrides = ["--set", "callbacks.checkpointer.keep_last=3", "--set", "trainer.optimizer.lr=0.02"]
    result = _run(tmp_path, "train", "--config", str(config), *overrides, "--epochs", "1", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout.splitlines()
    assert out[0] == f"stepbus demo run in {run_dir}"
    assert [line.split("  loss")[0] for line in out if line.startswith("epoch 1/1")] == [
        "epoch 1/1  iteration     2/4",
        "epoch 1/1  iteration     4/4",
    ]
    assert out[-1] == "training completed: 4 iterations"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt", _step(2), _step(4)]

    expected = load_config(config, overrides=["callbacks.checkpointer.keep_last=3", "trainer.optimizer.lr=0.02"])
    expected = load_config(expected, overrides=["trainer.max_epochs=1"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved == expected.data
    assert saved["trainer"]["optimizer"] == {"name": "sgd", "lr": 0.02, "momentum": 0.9}
    assert saved["callbacks"]["checkpointer"]["keep_last"] == 3
    assert saved["callbacks"]["tensorboard"]["enabled"] is False
    assert read_metadata(run_dir / "checkpoints" / _step(4))["config"] == saved


def _table_rows(stdout: str) -> list[tuple[str, ...]]:
    """The rows of a rich table (the header row first), each a tuple of its stripped cells."""
    rows = []
    for line in stdout.splitlines():
        if line[:1] in ("┃", "│"):
            rows.append(tuple(cell.strip() for cell in re.split("[┃│]", line)[1:-1]))
    return rows


def test_dry_run_prints_the_resolved_config_and_the_handlers_and_trains_nothing(tmp_path: Path) -> None:
    config = _write(tmp_path / "cfg.yaml", CONFIG)
    run_dir = tmp_path / "run"
    result = _run(tmp_path, "train", "--config", str(config), "--dry-run", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert not run_dir.exists()  # no config.yaml, no checkpoints: nothing ran
    assert not (tmp_path / "runs").exists()

    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[0] == f"# resolved config ({config}); run directory {run_dir}"
    table = lines.index("handlers, in the order each event calls them")
    assert yaml.safe_load("\n".join(lines[1:table])) == load_config(config).data
    assert lines[-1] == "dry run: nothing was trained"
    assert _table_rows(result.stdout)[0] == ("event", "handler", "priority", "schedule", "enabled")
    rows = _table_rows(result.stdout)[1:]
    assert rows == [
        ("pre_training", "build.write_config", "10000", "always", "yes"),
        ("pre_training", "LRDecay.pre_training", "300", "always", "yes"),
        ("pre_training", "Validator.pre_training", "200", "always", "yes"),
        ("pre_training", "EarlyStopping.pre_training", "100", "always", "yes"),
        ("pre_epoch", "ReportProgress.pre_epoch", "-200", "always", "yes"),
        ("pre_step", "LRDecay.pre_step", "300", "always", "yes"),
        ("step", "ReportProgress.step", "-200", "always", "yes"),
        ("post_step", "Validator.post_step", "200", "2it", "yes"),
        ("post_step", "ReportProgress.post_step", "-200", "2it", "yes"),
        ("post_step", "Checkpointer.post_step", "-1000", "2it", "yes"),
        ("post_epoch", "ReportProgress.post_epoch", "-200", "always", "yes"),
        ("post_epoch", "Checkpointer.post_epoch", "-1000", "always", "yes"),
        ("post_training", "Validator.post_training", "200", "always", "yes"),
        ("post_training", "ReportProgress.post_training", "-200", "always", "yes"),
        ("post_training", "Checkpointer.post_training", "-1000", "always", "yes"),
        ("post_validation", "EarlyStopping.post_validation", "100", "always", "yes"),
        ("post_validation", "ReportProgress.post_validation", "-200", "always", "yes"),
        ("exception", "Checkpointer.exception", "-1000", "always", "yes"),
    ]
    for event in dict.fromkeys(row[0] for row in rows):  # each event's handlers in priority order
        priorities = [int(row[2]) for row in rows if row[0] == event]
        assert priorities == sorted(priorities, reverse=True), event


def test_a_bad_config_exits_2_with_every_problem_on_stderr_and_nothing_on_stdout(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "bad.yaml",
        "run: {name: demo, seed: -1}\n"
        "trainer: {name: demo, max_epochs: 1, batch_size: big, optimizer: {name: adamm}}\n"
        "callbacks:\n"
        "  checkpointer: {keep_lats: 2}\n"
        "  validator: {every: often}\n"
        "  chekpointer: {}\n"
        "  tensorboard: {every: 0it}\n"
        "calbacks: {}\n",
    )
    result = _run(tmp_path, "train", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == f"config error in {config}:"
    assert result.stderr == _config_error(
        str(config),
        "calbacks: unknown section (did you mean 'callbacks'?); valid: run, trainer, callbacks",
        "run.seed: got -1; expected an integer >= 0",
        "trainer.optimizer.name: got 'adamm' (did you mean 'adam'?); expected one of "
        + ", ".join(sorted(_optimizers())),
        "trainer.batch_size: got 'big'; input should be a valid integer, unable to parse string as an integer",
        "callbacks.checkpointer.keep_lats: unknown key for checkpointer (Checkpointer) (did you mean 'keep_last'?); "
        "valid keys: dir, every, at_end, on_interrupt, on_exception, keep_last, monitor, mode, keep_best, on_error, "
        "priority, state_key",
        # a bad schedule is reported at its key, in the schedule's own words
        "callbacks.validator.every: " + _constructor_error("validator", every="often").split(": ", 1)[1],
        "callbacks.chekpointer: unknown callback 'chekpointer' (did you mean 'checkpointer'?); known: checkpointer, "
        "csv, early_stopping, ema, gradient_guard, grid_pruning, lr_decay, metrics_file, mlflow, model_summary, "
        "pipeline_export, preview, profiler, progress, ray_report, tensorboard, time_limit, validator, wandb",
        "callbacks.tensorboard.every: " + _constructor_error("tensorboard", every="0it").split(": ", 1)[1],
    )
    assert not (tmp_path / "run").exists()


def _optimizers() -> list[str]:
    from trainers.config.optimizer import optimizer_classes

    return list(optimizer_classes())


def _constructor_error(name: str, **kwargs: Any) -> str:
    """The message of the ValueError the callback's own constructor raises for ``kwargs``."""
    from trainers.config.registry import Registry

    cls = Registry.default(plugins=False).entry("callback", name, name).load()
    with pytest.raises(ValueError) as info:  # noqa: PT011 - the constructor's own message is what the CLI shows
        cls(**kwargs)
    return str(info.value)


def test_an_unknown_trainer_key_lists_optimizer_among_the_valid_keys(tmp_path: Path) -> None:
    """The demo trainer takes ``optimizer`` (a block checked against torch.optim): a typo's message lists it."""
    config = _write(tmp_path / "typo.yaml", "trainer: {name: demo, optimiser: {name: sgd, lr: 0.1}}\n")
    result = _run(tmp_path, "config", "validate", str(config))
    assert result.returncode == 2
    assert result.stderr == _config_error(
        str(config),
        "trainer.optimiser: unknown key for trainer 'demo' (did you mean 'optimizer'?); valid keys: max_epochs, "
        "batch_size, samples, optimizer, report_every, precision, accumulate, compile, threads, strategy, fsdp, "
        "max_time",
    )


def test_the_demo_trains_with_lr_decay_disabled(tmp_path: Path) -> None:
    """A valid config without lr_decay (the only callback that publishes metrics["lr"]) must train: the demo's
    validation report may not need the ``lr`` metric."""
    run_dir = tmp_path / "run"
    args = ["train", "--config", DEMO, "--set", "callbacks.lr_decay.enabled=false", "--set", "trainer.samples=128"]
    args += ["--epochs", "1"]
    result = _run(tmp_path, *args, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "training completed: 2 iterations" in result.stdout
    assert _steps(run_dir / "checkpoints") == [_step(2)]


def test_config_validate_answers_valid_or_exit_2(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.yaml", CONFIG)
    result = _run(tmp_path, "config", "validate", str(good))
    assert (result.returncode, result.stderr) == (0, "")
    assert (
        result.stdout == f"{good}: valid; trainer demo, callbacks: lr_decay, validator, early_stopping, checkpointer\n"
    )

    result = _run(tmp_path, "config", "validate", str(good), "--set", "callbacks.early_stopping.patience=0.5")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == _config_error(
        f"{good} with --set",
        "callbacks.early_stopping.patience: got 0.5; input should be a valid integer, got a number with a "
        "fractional part",
    )


def test_a_malformed_set_is_a_config_error_of_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "trainer.max_epochs"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == _config_error(
        "--set", "--set 'trainer.max_epochs': expected KEY=VALUE with a dotted key, e.g. trainer.max_epochs=5"
    )
    assert main(["config", "show", DEMO, "--set", "trainer.max_epochs.x=1"]) == 2
    assert capsys.readouterr().err == _config_error(
        "--set",
        "trainer.max_epochs: --set 'trainer.max_epochs.x=1': trainer.max_epochs is 5, not a mapping to set keys in",
    )


def test_config_show_prints_the_resolved_config_with_set_applied(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        "config",
        "show",
        "--set",
        "callbacks.wandb.enabled=true",
        "--set",
        "callbacks.grid_pruning.enabled=false",
        "--set",
        "run.seed=5",
    )
    assert (result.returncode, result.stderr) == (0, "")
    shown = yaml.safe_load(result.stdout)
    expected = load_config(
        None, overrides=["callbacks.wandb.enabled=true", "callbacks.grid_pruning.enabled=false", "run.seed=5"]
    )
    assert shown == expected.data
    assert shown["run"] == {"name": "image_field", "dir": "runs", "seed": 5}
    assert shown["callbacks"]["wandb"]["enabled"] is True
    assert shown["callbacks"]["grid_pruning"] == {
        "enabled": False,
        "every": "100it",
        "start": 300,
        "prune": "prune",
        "metric": "occupancy",
    }


#: the callbacks of the default app (image_field.yaml), in config order, and whether each is enabled
DEFAULT_CALLBACKS = {
    "lr_decay": True,
    "grid_pruning": True,
    "validator": True,
    "checkpointer": True,
    "tensorboard": True,
    "wandb": False,
    "progress": True,
    "metrics_file": True,
}


def test_config_show_without_a_file_prints_the_image_field_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The built-in default is the reference app: ``stepbus config show`` prints image_field.yaml, resolved."""
    assert default_config_path() == IMAGE_FIELD
    result = _run(tmp_path, "config", "show")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == dump_yaml(load_config(IMAGE_FIELD).data)  # byte for byte
    shown = yaml.safe_load(result.stdout)
    assert shown["run"] == {"name": "image_field", "dir": "runs", "seed": 0}
    trainer = {k: shown["trainer"][k] for k in ("name", "image", "size", "max_epochs", "batch_size")}
    assert trainer == {"name": "image_field", "image": None, "size": 512, "max_epochs": 10, "batch_size": 16384}
    assert (shown["trainer"]["batches_per_epoch"], shown["trainer"]["grid_lr_weight"]) == (300, 10.0)
    assert shown["trainer"]["optimizer"] == {"name": "adam", "lr": 0.01, "eps": 1e-15}
    assert {key: block["enabled"] for key, block in shown["callbacks"].items()} == DEFAULT_CALLBACKS
    assert list(shown["callbacks"]) == list(DEFAULT_CALLBACKS)
    assert shown["callbacks"]["checkpointer"]["monitor"] == "val/psnr"
    assert (shown["callbacks"]["grid_pruning"]["every"], shown["callbacks"]["grid_pruning"]["start"]) == ("100it", 300)
    # the same in this process
    assert main(["config", "show"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (result.stdout, "")


def test_train_dry_run_without_config_lists_the_image_field_apps_handlers(tmp_path: Path) -> None:
    result = _run(tmp_path, "train", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert re.fullmatch(
        rf"# resolved config \({re.escape(str(IMAGE_FIELD))}\); run directory runs/image_field-\d{{8}}-\d{{6}}",
        lines[0],
    ), lines[0]
    table = lines.index("handlers, in the order each event calls them")
    shown = yaml.safe_load("\n".join(lines[1:table]))
    assert shown == load_config(IMAGE_FIELD).data
    assert {key: block["enabled"] for key, block in shown["callbacks"].items()} == DEFAULT_CALLBACKS
    assert lines[-1] == "dry run: nothing was trained"
    rows = _table_rows(result.stdout)[1:]
    assert rows == [
        ("pre_training", "build.write_config", "10000", "always", "yes"),
        ("pre_training", "LRDecay.pre_training", "300", "always", "yes"),
        ("pre_training", "GridPruning.pre_training", "300", "always", "yes"),
        ("pre_training", "Validator.pre_training", "200", "always", "yes"),
        ("pre_training", "TensorBoardLogger.pre_training", "-100", "always", "yes"),
        ("pre_training", "ProgressBar.pre_training", "-200", "always", "yes"),
        ("pre_training", "MetricsFile.pre_training", "-2000", "always", "yes"),
        ("pre_epoch", "TensorBoardLogger.pre_epoch", "-100", "always", "yes"),
        ("pre_epoch", "ProgressBar.pre_epoch", "-200", "always", "yes"),
        ("pre_step", "LRDecay.pre_step", "300", "always", "yes"),
        ("post_step", "GridPruning.post_step", "300", "100it, start=300it", "yes"),
        ("post_step", "TensorBoardLogger.post_step", "-100", "50it", "yes"),
        ("post_step", "ProgressBar.post_step", "-200", "always", "yes"),
        ("post_epoch", "Validator.post_epoch", "200", "1ep", "yes"),
        ("post_epoch", "TensorBoardLogger.post_epoch", "-100", "always", "yes"),
        ("post_epoch", "ProgressBar.post_epoch", "-200", "always", "yes"),
        ("post_epoch", "Checkpointer.post_epoch", "-1000", "1ep", "yes"),
        ("post_epoch", "Checkpointer.post_epoch", "-1000", "always", "yes"),
        ("post_training", "Validator.post_training", "200", "always", "yes"),
        ("post_training", "TensorBoardLogger.post_training", "-100", "always", "yes"),
        ("post_training", "Checkpointer.post_training", "-1000", "always", "yes"),
        ("post_training", "ProgressBar.post_training", "-2000", "always", "yes"),
        ("post_training", "MetricsFile.post_training", "-2000", "always", "yes"),
        ("post_validation", "TensorBoardLogger.post_validation", "-100", "always", "yes"),
        ("post_validation", "ProgressBar.post_validation", "-200", "always", "yes"),
        ("exception", "Checkpointer.exception", "-1000", "always", "yes"),
    ]
    # every enabled block of the config has handlers; the disabled W&B logger has none
    classes = {row[1].split(".")[0] for row in rows} - {"build"}
    assert classes == {
        "LRDecay",
        "GridPruning",
        "Validator",
        "Checkpointer",
        "TensorBoardLogger",
        "ProgressBar",
        "MetricsFile",
    }


def test_config_show_piped_without_columns_is_valid_yaml_for_long_values(tmp_path: Path) -> None:
    """``stepbus config show > run.yaml`` must give the config back, whatever the terminal width: a long value
    must not be folded onto a new line (which is not YAML any more)."""
    long_dir = "runs/" + "d" * 120
    config = _write(tmp_path / "long.yaml", f"run: {{dir: {long_dir}}}\ntrainer: {{name: demo}}\n")
    result = _run(tmp_path, "config", "show", str(config), columns=None)
    assert (result.returncode, result.stderr) == (0, "")
    assert yaml.safe_load(result.stdout) == load_config(config).data
    assert f"  dir: {long_dir}" in result.stdout.splitlines()


# ---------------------------------------------------------------------------------------------- SIGINT and --resume


class Stepbus(LiveProcess):
    """``python -m MODULE ARGS`` with this file's environment (see live_process.py)."""

    def __init__(self, cwd: Path, module: str, *args: str) -> None:
        super().__init__(cwd, module, *args, env=_env())


RESUME_CONFIG = """\
run: {name: resumable, seed: 1}
trainer: {name: demo, max_epochs: 2, batch_size: 64, samples: 256, report_every: 4it}
callbacks:
  lr_decay: {milestones: [0.5]}
  validator: {every: 1ep}
  checkpointer: {every: 2it, keep_last: 3}
"""


def test_sigint_in_a_config_run_exits_130_and_resume_reuses_the_saved_config(tmp_path: Path) -> None:
    config = _write(tmp_path / "cfg.yaml", RESUME_CONFIG)
    run_dir = tmp_path / "run"
    first = ["--set", "callbacks.checkpointer.keep_last=5", "--set", "trainer.max_epochs=4"]  # 4 epochs of 4 steps
    # the interrupt lands at iteration 6 (epoch 2, step 2): Hold waits there for it
    with Stepbus(
        tmp_path, APP, "--hold-at", "6", "train", "--config", str(config), *first, "--run-dir", str(run_dir)
    ) as run:
        run.wait_for(r"^HOLD 6$")
        run.proc.send_signal(signal.SIGINT)
        code, out, err = run.finish()
    assert code == 130, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err
    assert err == (
        "interrupted by SIGINT at epoch 2/4, step 2/4, iteration 6; continue with: "
        f"{Path(sys.executable).name} -m {APP} train --epochs 4 --resume auto --run-dir {run_dir}\n"
    )
    assert "training interrupted: 6 iterations" in out
    folder = run_dir / "checkpoints"
    assert _steps(folder) == [_step(2), _step(4), _step(6)]
    saved = read_metadata(folder / _step(6))["config"]
    expected = load_config(config, overrides=["callbacks.checkpointer.keep_last=5", "trainer.max_epochs=4"]).data
    assert saved == expected

    # no --config, no --set: the saved config (keep_last 5, 4 epochs), not the built-in default, is what resumes
    dry = _run(tmp_path, "train", "--resume", "auto", "--run-dir", str(run_dir), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    lines = [line.rstrip() for line in dry.stdout.splitlines()]
    assert lines[0] == f"# resolved config (the config saved in {folder / _step(6)}); run directory {run_dir}"
    assert yaml.safe_load("\n".join(lines[1 : lines.index("handlers, in the order each event calls them")])) == saved

    with Stepbus(tmp_path, CLI, "train", "--resume", "auto", "--run-dir", str(run_dir)) as resumed:
        code, out, err = resumed.finish()
    assert code == 0, f"exit {code}\n{out}\n{err}"
    # the plain command has no Hold callback: its state in the checkpoint is left alone, with a warning
    assert err == f"resume: {folder / _step(6)} holds state for callbacks ['Hold'], which are not registered now\n"
    assert RESUMED.findall(out) == [(str(folder / _step(6)), "epoch 2/4, step 2/4, iteration 6")]
    assert "training completed: 16 iterations" in out
    assert yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) == expected
    assert _steps(folder) == [_step(i) for i in (8, 10, 12, 14, 16)]  # keep_last 5 (the file said 3)

    # --set on a resume overrides the saved value: two more epochs
    more = _run(tmp_path, "train", "--resume", "auto", "--run-dir", str(run_dir), "--set", "trainer.max_epochs=6")
    assert more.returncode == 0, more.stdout + more.stderr
    assert RESUMED.findall(more.stdout) == [(str(folder / _step(16)), "epoch 4/6, step 4/4, iteration 16")]
    assert "training completed: 24 iterations" in more.stdout
    config_yaml = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config_yaml == load_config(expected, overrides=["trainer.max_epochs=6"]).data
    assert config_yaml["trainer"]["max_epochs"] == 6
    assert config_yaml["callbacks"]["checkpointer"]["keep_last"] == 5
    assert _steps(folder) == [_step(i) for i in (16, 18, 20, 22, 24)]
    assert read_metadata(folder / _step(24))["config"] == config_yaml
