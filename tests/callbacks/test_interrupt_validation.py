"""The ``Validator`` and an epoch cut short by Ctrl-C or a stop, on real training runs with real signals.

SIGINT (and SIGTERM) during ``train()`` saves the interrupt checkpoint after the current step, then the cut-short
epoch's ``post_epoch`` fires: an epoch schedule does not validate there, so nothing is published that no checkpoint
holds -- the run's ``best/*`` (what the progress summary and ``metrics.json`` report) is the ``best.pt`` score, a
first-epoch interrupt leaves no best value and no ``best.pt``, and Ctrl-C costs no validation. A stop validates at
the end instead (``at_end``), before the end save; a signal or a stop after an epoch's last step leaves that epoch
whole, so it is validated as usual, before the save. Signals are raised with ``signal.raise_signal`` from a handler
on the main thread (see tests/trainers/engine/test_interrupt.py), and sent to a real ``stepbus train`` process.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from callbacks import Checkpointer, MetricsFile, Validator
from lifecycle import Status
from tests.stray_signals import SIGNALS, outer_handlers  # noqa: F401 - an autouse fixture
from tests.support import Recorder, make_trainer
from tests.trainers.engine.live_process import LiveProcess
from trainers import BaseTrainer
from trainers.checkpoint.format import list_checkpoints, read_metadata

ROOT = Path(__file__).resolve().parents[2]


def loss_by_iteration(trainer: BaseTrainer) -> dict[str, Any]:
    """Better at every later iteration: a validation after the save would always be a new best."""
    return {"loss": 1.0 / trainer.state.iteration}


def build(run_dir: Path, **validator: Any) -> tuple[BaseTrainer, Recorder]:
    """3 steps per epoch, 3 epochs; the default validator every epoch; checkpoints every epoch ranked by val/loss;
    metrics.json at the end."""
    rec = Recorder()
    callbacks = [
        Validator(loss_by_iteration, **{"every": "1ep", **validator}),
        rec,
        Checkpointer(every="1ep", monitor="val/loss"),
        MetricsFile(),
    ]
    return make_trainer(max_epochs=3, run_dir=run_dir, callbacks=callbacks), rec


def at_post_step(trainer: BaseTrainer, iteration: int, action: Any) -> None:
    @trainer.on("post_step")
    def fire(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == iteration:
            action(t)


def validations(rec: Recorder) -> list[tuple[int, str]]:
    return [
        (row[3], p["reason"]) for row, (name, p) in zip(rec.log, rec.payloads, strict=True) if name == "post_validation"
    ]


def summary(run_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return report


def best_file(run_dir: Path) -> Path | None:
    link = run_dir / "checkpoints" / "best.pt"
    return link.resolve() if link.exists() else None


# ---------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_ctrl_c_mid_epoch_saves_and_validates_nothing_after(tmp_path: Path, signum: int) -> None:
    trainer, rec = build(tmp_path)
    at_post_step(trainer, 5, lambda t: signal.raise_signal(signum))  # epoch 2, step 2 of 3

    assert trainer.train() is Status.INTERRUPTED
    assert trainer.interrupted_by == signum
    assert validations(rec) == [(3, "schedule")]  # none on the cut-short epoch's post_epoch
    assert rec.log[-2:] == [("post_epoch", 2, 2, 5, None), ("post_training", 2, 2, 5, Status.INTERRUPTED)]
    interrupt = read_metadata(tmp_path / "checkpoints" / "step-00000005.pt")
    assert interrupt["reason"] == "interrupt"
    # nothing was published after the interrupt checkpoint: it holds the run's final values
    final = {k: v for k, v in trainer.state.metrics.items() if k.startswith(("val/", "best/"))}
    assert final == {"val/loss": 1 / 3, "best/loss": 1 / 3}
    assert {k: interrupt["metrics"][k] for k in final} == final
    # the summary's best is best.pt's score (step 5 ties with step 3: the earlier file stays best)
    assert best_file(tmp_path) == tmp_path / "checkpoints" / "step-00000003.pt"
    assert read_metadata(tmp_path / "checkpoints" / "best.pt")["metrics"]["val/loss"] == 1 / 3
    report = summary(tmp_path)
    assert (report["status"], report["best"], report["final"]) == (
        "interrupted",
        {"best/loss": 1 / 3},
        final_val(final),
    )


def final_val(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("val/")}


def test_ctrl_c_in_the_first_epoch_validates_nothing_and_leaves_no_best(tmp_path: Path) -> None:
    trainer, rec = build(tmp_path)
    at_post_step(trainer, 2, lambda t: signal.raise_signal(signal.SIGINT))

    assert trainer.train() is Status.INTERRUPTED
    assert validations(rec) == []
    assert not [k for k in trainer.state.metrics if k.startswith(("val/", "best/"))]
    assert [f.path.name for f in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002.pt"]
    assert best_file(tmp_path) is None  # no validated value: nothing to rank, and none is claimed anywhere
    report = summary(tmp_path)
    assert (report["best"], report["final"]) == ({}, {})


def test_ctrl_c_at_an_epochs_last_step_validates_that_epoch_before_the_save(tmp_path: Path) -> None:
    """The epoch is whole: its validation runs at its post_epoch, then the interrupt's save (which holds it)."""
    trainer, rec = build(tmp_path, every="1ep")
    at_post_step(trainer, 6, lambda t: signal.raise_signal(signal.SIGINT))

    assert trainer.train() is Status.INTERRUPTED
    assert validations(rec) == [(3, "schedule"), (6, "schedule")]
    assert best_file(tmp_path) == tmp_path / "checkpoints" / "step-00000006.pt"
    assert read_metadata(tmp_path / "checkpoints" / "best.pt")["metrics"]["val/loss"] == 1 / 6
    assert summary(tmp_path)["best"] == {"best/loss": 1 / 6}


# ---------------------------------------------------------------------------------------------- stop


def test_a_mid_epoch_stop_validates_once_at_the_end_before_the_end_save(tmp_path: Path) -> None:
    trainer, rec = build(tmp_path)
    at_post_step(trainer, 5, lambda t: t.stop())

    assert trainer.train() is Status.STOPPED
    assert validations(rec) == [(3, "schedule"), (5, "end")]
    assert rec.names()[-5:] == [
        "post_step",
        "post_epoch",  # cut short: not validated here ...
        "pre_validation",  # ... but at the end, before the checkpointer's end save
        "post_validation",
        "post_training",
    ]
    end = read_metadata(tmp_path / "checkpoints" / "step-00000005.pt")
    assert (end["reason"], end["metrics"]["val/loss"]) == ("end (stopped)", 1 / 5)
    assert best_file(tmp_path) == tmp_path / "checkpoints" / "step-00000005.pt"
    assert summary(tmp_path)["best"] == {"best/loss": 1 / 5}


def test_a_mid_epoch_stop_without_at_end_does_not_validate(tmp_path: Path) -> None:
    trainer, rec = build(tmp_path, at_end=False)
    at_post_step(trainer, 5, lambda t: t.stop())
    assert trainer.train() is Status.STOPPED
    assert validations(rec) == [(3, "schedule")]


def test_a_stop_after_an_epochs_last_step_validates_that_epoch_on_schedule(tmp_path: Path) -> None:
    trainer, rec = build(tmp_path)
    at_post_step(trainer, 3, lambda t: t.stop())
    assert trainer.train() is Status.STOPPED
    assert validations(rec) == [(3, "schedule")]  # the whole epoch; at_end deduped at the same iteration


def test_a_stop_from_outside_mid_epoch_validates_at_the_end(tmp_path: Path) -> None:
    trainer, rec = build(tmp_path)
    for _ in range(4):
        assert trainer.iterate()
    trainer.stop()  # a GUI button between ticks: the run finishes at once
    assert trainer.status is Status.STOPPED
    assert validations(rec) == [(3, "schedule"), (4, "end")]


# ---------------------------------------------------------------------------------------------- the command line


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.parametrize("hold_at", [64, 150])  # epoch 1 step 64, epoch 2 step 22 (128 steps per epoch)
def test_cli_ctrl_c_mid_epoch_best_matches_best_pt(tmp_path: Path, hold_at: int) -> None:
    """``stepbus train`` (the demo: validator every epoch, checkpoints ranked by val/mse) gets a real SIGINT in the
    middle of an epoch: exit 130, and metrics.json reports exactly what the checkpoints hold."""
    run_dir = tmp_path / "run"
    demo = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")
    args = ["--hold-at", str(hold_at), "train", "--config", demo, "--epochs", "200", "--run-dir", str(run_dir)]
    args += ["--set", "callbacks.metrics_file.path=metrics.json"]
    with LiveProcess(tmp_path, "tests.trainers.engine.interrupt_app", *args, env=_env()) as app:
        app.wait_for(rf"^HOLD {hold_at}$")
        app.proc.send_signal(signal.SIGINT)
        code, out, err = app.finish()
    assert code == 130, f"exit {code}\n{out}\n{err}"
    report = summary(run_dir)
    assert (report["status"], report["iterations"]) == ("interrupted", hold_at)
    folder = run_dir / "checkpoints"
    interrupt = read_metadata(folder / f"step-{hold_at:08d}.pt")
    assert interrupt["reason"] == "interrupt"
    if hold_at < 128:  # nothing validated: no best anywhere
        assert (report["best"], report["final"]) == ({}, {})
        assert best_file(run_dir) is None
        return
    epoch_end = read_metadata(folder / "step-00000128.pt")  # the only validation: at the end of epoch 1
    assert report["final"] == {"val/mse": epoch_end["metrics"]["val/mse"]}
    assert report["best"] == {"best/mse": epoch_end["metrics"]["val/mse"]}
    assert read_metadata(folder / "best.pt")["metrics"]["val/mse"] == report["best"]["best/mse"]
    assert {k: v for k, v in interrupt["metrics"].items() if k.startswith(("val/", "best/"))} == {
        **report["final"],
        **report["best"],
    }
