"""``ProgressBar`` on a real training, its output captured from rich consoles: plain lines when the console is not
a terminal, bars on a terminal, validation tables, the final summary, and the refresh throttle."""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from callbacks import Checkpointer, ProgressBar, Validator
from lifecycle import Status
from tests.support import make_dataset, make_trainer


def run(tmp_path: Path, *, terminal: bool, **options: Any) -> tuple[str, ProgressBar, list[float], float]:
    """The shared tiny trainer on 400 rows, 2 epochs of 100 steps with a validator and a checkpointer, its progress
    on a captured console; returns the output, the callback, every step's loss and the training time."""
    dataset = make_dataset(400, offset=0.0)
    x, y = dataset.tensors
    losses: list[torch.Tensor] = []

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        losses.append(loss.detach().clone())
        return loss

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=120, color_system=None)
    progress = ProgressBar(console=console, **options)
    trainer = make_trainer(
        batch_size=4,
        max_epochs=2,
        dataset=dataset,
        run_dir=tmp_path,
        loss_fn=loss_fn,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=[Validator(lambda t: {"mse": nn.functional.mse_loss(t.pipeline(x), y)}), progress, Checkpointer()],
    )
    start = time.perf_counter()
    assert trainer.train() is Status.COMPLETED
    elapsed = time.perf_counter() - start
    return buffer.getvalue(), progress, [float(v) for v in losses], elapsed


def test_plain_lines_when_the_console_is_not_a_terminal(tmp_path: Path) -> None:
    out, progress, losses, _ = run(tmp_path, terminal=False, plain_every=3600)
    lines = out.splitlines()
    assert "\x1b" not in out  # no cursor movement, no bar
    epoch_lines = [line for line in lines if line.startswith("epoch ") and " done at " in line]
    assert [line.rsplit(" ", 1)[0] for line in epoch_lines] == [
        "epoch 1/2 done at iteration 100  epoch/loss",
        "epoch 2/2 done at iteration 200  epoch/loss",
    ]
    # the epoch means (summed in float32 on the device), printed with 5 significant digits
    shown = [float(line.rsplit(" ", 1)[1]) for line in epoch_lines]
    assert shown == pytest.approx([sum(losses[:100]) / 100, sum(losses[100:]) / 100], rel=1e-4)
    assert [line for line in lines if line.startswith("validation at iteration")] == [
        "validation at iteration 100",
        "validation at iteration 200",
    ]
    assert sum(1 for line in lines if re.match(r"^ val/mse\s+│\s+[\d.]+\s+│\s+[\d.]+\s*$", line)) == 2
    summary = out[out.index("training completed") :]
    assert re.search(r"iterations\s+│\s+200/200", summary)
    assert re.search(r"epochs\s+│\s+2/2", summary)
    assert re.search(r"best/mse\s+│\s+[\d.]+", summary)
    assert str(tmp_path / "checkpoints" / "step-00000200.pt") in summary
    assert progress.refreshes == 2  # one per epoch end: the plain interval never elapsed


def test_plain_lines_every_interval_carry_the_window_loss(tmp_path: Path) -> None:
    out, progress, _, _ = run(tmp_path, terminal=False, plain_every=1e-9)
    periodic = [line for line in out.splitlines() if re.match(r"^epoch \d/2  iteration \d+/200", line)]
    assert len(periodic) == 200  # a line after every step: nothing was throttled away
    assert progress.refreshes == 202  # and the two epoch ends, whose windows were already empty
    assert all(re.search(r"it/s  loss [\d.e+-]+$", line) for line in periodic)


def test_bars_on_a_terminal_refresh_at_most_ten_times_a_second(tmp_path: Path) -> None:
    out, progress, _, elapsed = run(tmp_path, terminal=True)
    assert "training" in out
    assert "200/200" in out
    assert "━" in out  # the bar itself
    assert "training completed" in out
    # throttled, epoch ends included: at most one refresh per 0.1 s of training, plus the final one at the end
    assert progress.refreshes <= int(elapsed / 0.1) + 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metrics": "lr"}, "metrics must be a list of metric names, got 'lr'"),
        ({"refresh_per_second": 0}, "refresh_per_second must be a finite number > 0, got 0"),
        ({"refresh_per_second": math.inf}, "refresh_per_second must be a finite number > 0, got inf"),
        ({"plain_every": -1}, "plain_every must be a finite number > 0, got -1"),
        ({"plain_every": math.inf}, "plain_every must be a finite number > 0, got inf"),
    ],
)
def test_constructor_errors_name_the_parameter(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ProgressBar(**options)


def validation_output(*results: dict[str, Any], prefix: str = "val", run_dir: Path | None = None) -> str:
    """What the progress display prints for validations returning ``results`` in turn (requested between steps)."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120, color_system=None)
    answers = iter(results)
    validator = Validator(lambda t: next(answers), every=None, at_end=False, prefix=prefix, state_key=prefix)
    trainer = make_trainer(run_dir=run_dir, callbacks=[validator, ProgressBar(console=console, plain_every=3600)])
    for _ in results:
        trainer.iterate()
        trainer.request_validation()
    return buffer.getvalue()


def test_a_validation_with_only_images_prints_one_line_and_no_table(tmp_path: Path) -> None:
    image = torch.zeros(2, 3, 3)
    out = validation_output({"images": {"rgb": image, "depth": image}}, prefix="render", run_dir=tmp_path)
    assert out.splitlines() == [f"validation 'render' at iteration 1: images rgb, depth in {tmp_path / 'render'}"]
    out = validation_output({"images": {"rgb": image}}, prefix="render")  # not written anywhere: the names only
    assert out.splitlines() == ["validation 'render' at iteration 1: images rgb"]
    assert validation_output({}).splitlines() == ["validation at iteration 1: no metrics and no images"]


def test_the_table_shows_each_validators_own_best(tmp_path: Path) -> None:
    out = validation_output({"psnr": 20.0}, {"psnr": 18.0, "images": {"rgb": torch.zeros(2, 3, 3)}}, prefix="test")
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("validation")] == [
        "validation 'test' at iteration 1",
        "validation 'test' at iteration 2",
    ]
    assert [line.split() for line in lines if line.startswith(" test/psnr")] == [
        ["test/psnr", "│", "20", "│", "20"],
        ["test/psnr", "│", "18", "│", "20"],  # best/test/psnr, never another validator's best/psnr
    ]
    assert lines[-1] == "images rgb"


def test_a_post_validation_without_a_prefix_is_named_by_its_metrics() -> None:
    """A custom validator emitting post_validation itself, without the payload's prefix: its metrics' namespace."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120, color_system=None)
    trainer = make_trainer(callbacks=[ProgressBar(console=console, plain_every=3600)])
    trainer.state.metrics["best/holdout/acc"] = 0.9
    trainer.post_validation({"holdout/acc": 0.8})
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "validation 'holdout' at iteration 0"
    assert [line.split() for line in lines if line.startswith(" holdout/acc")] == [
        ["holdout/acc", "│", "0.8", "│", "0.9"]
    ]
