"""Checks of the MLflow section of ``docs/loggers.md``: the Python block trains and its run is read back with
``MlflowClient``; the config block builds and trains a real trainer whose run carries the config as params; the
``mlflow ui`` line goes through MLflow's own command-line parser and names the store a run in ``runs/demo`` writes;
the reading block runs against such a store."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lifecycle import Status
from tests.doc_checks import check, run, small_trainer
from tests.doc_pages import Block
from trainers import BaseTrainer


def _trained_demo(run_dir: Path) -> BaseTrainer:
    """A small trainer in ``run_dir`` with a validator (``val/mse``), after the page's Python block ran on it."""
    from callbacks import Validator

    trainer = small_trainer(run_dir=run_dir, callbacks=[Validator(fn=lambda t: {"mse": 1.0 / t.state.iteration})])
    return trainer


def _only_run(database: Path, experiment: str) -> Any:
    client = MlflowClient(f"sqlite:///{database}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    [only] = client.search_runs([found.experiment_id])
    return client, only


@check("mlflow-python")
def _mlflow_python(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run is in the experiment the block names, finished, with a row every 5 iterations and the checkpoint."""
    trainer = _trained_demo(tmp_path / "run")
    run(block, {"trainer": trainer})
    assert trainer.status is Status.COMPLETED
    client, logged = _only_run(tmp_path / "run" / "mlruns" / "mlflow.db", "field")
    assert logged.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")]
    assert steps == [5, 10, 15]  # 2 epochs of 8 steps
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val/mse")] == [8, 16]
    best = trainer.state.best_checkpoint
    assert best is not None
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "checkpoint")] == [f"checkpoint/{best.path.name}"]


def _config(block: Block) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(block.text)
    return data


@check("mlflow-config")
def _mlflow_config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config builds the demo with the logger as written, trains, and the run holds the config as params; a bad
    value of one of its keys is refused by the config check."""
    from callbacks import MLflowLogger
    from trainers.config.builder import build
    from trainers.config.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    trainer = build(_config(block), run_dir=tmp_path / "runs" / "demo")
    [logger] = [cb for cb in trainer.callbacks if isinstance(cb, MLflowLogger)]
    assert (logger.experiment, logger.run_name, logger.tags, logger.log_checkpoint) == (
        "field",
        "demo-1",
        {"team": "vision"},
        True,
    )
    assert trainer.train() is Status.COMPLETED
    client, logged = _only_run(tmp_path / "runs" / "demo" / "mlruns" / "mlflow.db", "field")
    assert (logged.info.run_name, logged.info.status, logged.data.tags["team"]) == ("demo-1", "FINISHED", "vision")
    params = logged.data.params
    assert (params["trainer.max_epochs"], params["callbacks.mlflow.every"], params["run.name"]) == ("2", "2it", "demo")
    steps = [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")]
    assert steps == [2, 4, 6, 8]  # 256 samples in batches of 64: 4 steps an epoch
    for bad, where in (("every=0it", "every"), ("tags=[a]", "tags"), ("log_images=maybe", "log_images")):
        with pytest.raises(ConfigError, match=rf"callbacks\.mlflow\.{where}"):
            build(_config(block), overrides=[f"callbacks.mlflow.{bad}"], run_dir=tmp_path / "bad")


@check("mlflow-ui")
def _mlflow_ui(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow ui`` is MLflow's command (an alias of ``mlflow server``) and takes the options shown; the URI, read
    from the folder that holds ``runs/``, is the store of a run in ``runs/demo``."""
    import click
    from mlflow.cli import cli

    from callbacks import MLflowLogger

    [line] = block.text.strip().splitlines()
    program, command, *arguments = shlex.split(line)
    assert (program, command) == ("mlflow", "ui")
    context = click.Context(cli)
    ui = cli.get_command(context, command)  # type: ignore[no-untyped-call]  # MLflow's group, untyped
    assert ui is not None
    assert ui.name == "server"
    parsed = ui.make_context(command, list(arguments))  # MLflow's own parser: an unknown option raises
    uri = parsed.params["backend_store_uri"]
    monkeypatch.chdir(tmp_path)
    logger = MLflowLogger(experiment="field", every="8it")
    trainer = small_trainer(run_dir=Path("runs/demo"), callbacks=[logger])
    assert trainer.train() is Status.COMPLETED
    assert logger.tracking_uri == f"sqlite:///{(tmp_path / 'runs/demo/mlruns/mlflow.db').resolve()}"
    # the page's URI, relative to the folder that holds runs/ (opened by its absolute form: MLflow caches a store
    # per URI, and the reading block opens the relative one from another folder)
    assert uri.startswith("sqlite:///")
    database = (tmp_path / uri.removeprefix("sqlite:///")).resolve()
    assert logger.tracking_uri == f"sqlite:///{database}"
    client = MlflowClient(f"sqlite:///{database}")
    found = client.get_experiment_by_name("field")
    assert found is not None
    assert [r.info.run_id for r in client.search_runs([found.experiment_id])] == [logger.run_id]


@check("mlflow-read")
def _mlflow_read(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block reads a run logged in ``runs/demo`` (from the folder that holds ``runs/``)."""
    from callbacks import MLflowLogger

    monkeypatch.chdir(tmp_path)
    trainer = small_trainer(run_dir=Path("runs/demo"), callbacks=[MLflowLogger(experiment="field", every="4it")])
    trainer.config = {"trainer": {"max_epochs": 2}}
    assert trainer.train() is Status.COMPLETED
    namespace = run(block, {})
    assert namespace["run"].info.status == "FINISHED"  # type: ignore[attr-defined]
    assert [step for step, _ in namespace["losses"]] == [4, 8, 12, 16]  # type: ignore[attr-defined]
