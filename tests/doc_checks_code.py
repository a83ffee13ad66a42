"""Checks of the pages' Python blocks that drive a trainer: each block runs as the page shows it, with the names a
fragment uses (``trainer``, ``MyTrainer``, ``field``) supplied by real objects, and its effect is asserted."""

from __future__ import annotations

import ast
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lifecycle import Event, Status
from tests.doc_checks import check, points, run, small_trainer
from tests.doc_pages import ROOT, Block
from trainers import BaseTrainer

# --- the guide ---------------------------------------------------------------------------------------------------


@check("bus-handles")
def _bus_handles(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler is removed again; the plain blinker receiver gets every post_step."""
    calls: list[int] = []
    received: list[object] = []
    trainer = small_trainer()
    namespace = run(
        block,
        {
            "trainer": trainer,
            "Event": Event,
            "fn": lambda trainer, **payload: calls.append(trainer.state.iteration),
            "plain_blinker_receiver": lambda sender, **payload: received.append(sender),
        },
    )
    handle = namespace["handle"]
    assert handle.removed  # type: ignore[attr-defined]
    assert handle not in trainer.bus.handles(Event.POST_STEP)
    assert (handle.name, handle.priority) == ("my-logger", 10)  # type: ignore[attr-defined]
    assert trainer.train() == Status.COMPLETED
    assert calls == []
    assert received == [trainer] * trainer.state.max_iterations == [trainer] * 16


class _Field(nn.Module):
    """A pipeline with a ``grid`` and a ``prune()``: what the guide's example trains."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = nn.Linear(2, 8)
        self.decoder = nn.Linear(8, 1)
        self.prunes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.grid(x)))

    def prune(self) -> float:
        self.prunes += 1
        return 1.0


class _MyTrainer(BaseTrainer):
    def compute_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(self.pipeline(batch[0]), batch[1])

    def validate(self) -> dict[str, float]:
        return {"psnr": 20.0 + self.state.epoch}  # better every epoch: early stopping never fires


@check("callbacks-together")
def _callbacks_together(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wisp's set of callbacks on one trainer: 20 epochs of 60 steps, three prunes from iteration 1000 on."""
    monkeypatch.chdir(tmp_path)
    field = _Field()
    data = points(4096 * 60)
    namespace = run(block, {"torch": torch, "field": field, "data": data, "MyTrainer": _MyTrainer})
    trainer = namespace["trainer"]
    assert isinstance(trainer, _MyTrainer)
    assert sorted(group["lr"] for group in trainer.optimizer.param_groups) == [0.001, 0.5]
    names = ["LRDecay", "GridPruning", "GradientGuard", "Validator", "EarlyStopping"]
    assert [type(callback).__name__ for callback in trainer.callbacks] == names
    assert trainer.train() == Status.COMPLETED
    assert (trainer.state.iteration, field.prunes, trainer.state.metrics["prune/count"]) == (1200, 3, 3)
    assert trainer.state.metrics["best/psnr"] == 40.0


# --- checkpoints, metrics ------------------------------------------------------------------------------


@check("checkpoint-restore")
def _checkpoint_restore(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first run saves; the same lines again resume from its last checkpoint, which ended the run."""
    from callbacks import Validator

    monkeypatch.chdir(tmp_path)

    def my_trainer(*placeholders: object, run_dir: str, callbacks: list[object]) -> BaseTrainer:
        assert placeholders == (...,)  # the page's "..." stands for the trainer's own arguments
        validator = Validator(fn=lambda trainer: {"psnr": 20.0 + trainer.state.epoch})
        kept = [validator if callback is ... else callback for callback in callbacks]
        return small_trainer(run_dir=run_dir, callbacks=kept)

    first = run(block, {"MyTrainer": my_trainer})["trainer"]
    assert isinstance(first, BaseTrainer)
    assert first.resumed_from is None
    assert first.state.iteration == 16
    saved = sorted(path.name for path in (tmp_path / "runs/a/checkpoints").iterdir())
    assert saved == ["best.pt", "last.pt", "step-00000008.pt", "step-00000016.pt"]
    first.close()
    again = run(block, {"MyTrainer": my_trainer})["trainer"]
    assert isinstance(again, BaseTrainer)
    assert again.resumed_from is not None
    assert Path(again.resumed_from).resolve() == (tmp_path / "runs/a/checkpoints/step-00000016.pt").resolve()
    assert again.state.iteration == 16


@check("metric-flow")
def _metric_flow(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = small_trainer()
    namespace = run(block, {"trainer": trainer})
    assert trainer.state.iteration == 2
    assert set(namespace["means"]) == {"train/loss", "time/iter_ms", "time/samples_per_s"}  # type: ignore[arg-type]
    assert set(namespace["epoch"]) == {"epoch/loss"}  # type: ignore[arg-type]


# --- the trainer ---------------------------------------------------------------------------------------------------


@check("basetrainer-signature")
def _basetrainer_signature(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signature shown is the constructor's: the same names, in order, positional or keyword-only alike, with the
    same defaults."""
    (shown,) = ast.parse(f"def {block.text.strip()}: pass").body
    assert isinstance(shown, ast.FunctionDef)
    assert shown.name == "BaseTrainer"
    page = [(arg.arg, "positional", None) for arg in shown.args.args]
    for arg, default in zip(shown.args.kwonlyargs, shown.args.kw_defaults, strict=True):
        page.append((arg.arg, "keyword", None if default is None else repr(ast.literal_eval(default))))
    real = []
    for parameter in list(inspect.signature(BaseTrainer.__init__).parameters.values())[1:]:
        kind = "keyword" if parameter.kind is inspect.Parameter.KEYWORD_ONLY else "positional"
        default = None if parameter.default is inspect.Parameter.empty else repr(parameter.default)
        real.append((parameter.name, kind, default))
    assert page == real


@check("gan-update")
def _gan_update(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``optimization_step`` shown trains the GAN app's pipeline to the app's own weights, bit for bit."""
    from trainers.apps.gan import GAN, gan_trainer

    def adam(part: str) -> object:
        return lambda p: torch.optim.Adam(p.get_submodule(part).parameters(), lr=1e-3, betas=(0.5, 0.9))

    gan = run(block, {})["GANTrainer"]
    app = gan_trainer(max_epochs=2)
    torch.manual_seed(0)
    shown = gan(  # type: ignore[operator]
        GAN(),
        app.dataset,
        max_epochs=2,
        batch_size=128,
        device="cpu",
        optimizer={"discriminator": adam("discriminator"), "generator": adam("generator")},
    )
    app.train()
    shown.train()
    ours, theirs = app.pipeline.state_dict(), shown.pipeline.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert not torch.equal(ours["generator.0.weight"], gan_trainer().pipeline.state_dict()["generator.0.weight"])


@check("resample-recipe")
def _resample_recipe(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``pre_epoch`` resample runs on a real trainer: each epoch trains on that epoch's points, whose number
    changes."""

    class Points:
        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []
            self.resample(seed=0, epoch=0)

        def resample(self, *, seed: int, epoch: int) -> None:
            self.calls.append((seed, epoch))
            generator = torch.Generator().manual_seed(seed * 1000 + epoch)
            self.x = torch.randn(4 + 4 * epoch, 2, generator=generator)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, index: int) -> torch.Tensor:
            return self.x[index]

    dataset = Points()
    trainer = BaseTrainer(
        nn.Linear(2, 1),
        dataset,
        max_epochs=3,
        batch_size=4,
        seed=5,
        device="cpu",
        loss_fn=lambda model, x: model(x).pow(2).mean(),
    )
    run(block, {"trainer": trainer})
    trainer.train()
    assert dataset.calls == [(0, 0), (5, 1), (5, 2), (5, 3)]
    assert trainer.state.iteration == 2 + 3 + 4


# --- the GUI -------------------------------------------------------------------------------------------------------

#: run before the page's lines: SIGUSR1 closes the window the way its close button does
_GUI_PRELUDE = """\
import signal
import tkinter


def _close(signum, frame):
    root = tkinter._default_root
    root.after(0, lambda: root.tk.call(root.wm_protocol("WM_DELETE_WINDOW")))


signal.signal(signal.SIGUSR1, _close)
"""
_GUI_RESULT = '\nprint("iterations:", trainer.state.iteration)\n'


@check("gui-from-python")
def _gui_from_python(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines run in a real window (on Xvfb) and train the reference app until the window is closed; the run
    ends stopped, with its end checkpoint and metrics.json."""
    import json
    import signal
    import time

    from trainers.gui import virtual_display

    work = tmp_path / "work"
    (work / "trainers/apps/configs").mkdir(parents=True)
    shutil.copy(ROOT / "trainers/apps/configs/image_field.yaml", work / "trainers/apps/configs/image_field.yaml")
    script = tmp_path / "gui_block.py"
    script.write_text(_GUI_PRELUDE + block.text + _GUI_RESULT)
    run_dir = work / "runs/gui-1"
    with virtual_display() as display:
        env = {**os.environ, "DISPLAY": display, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "WANDB_MODE": "offline"}
        process = subprocess.Popen(
            [sys.executable, str(script)], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while not (run_dir / ".stepbus.lock").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # training in the window
        process.send_signal(signal.SIGUSR1)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("iterations: ")]
    iterations = int(line.split()[1])
    assert iterations >= 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["iterations"]) == ("stopped", iterations)
    assert (run_dir / "checkpoints/last.pt").exists()
