"""The default app end to end: ``stepbus train`` without ``--config`` runs the image-field reference app in a real
process, and everything it writes is read back -- ``config.yaml``, the TensorBoard events (with tensorboard's own
``EventAccumulator``), the checkpoints and their links, the validation PNGs (with Pillow), ``metrics.json``. Then a
second process resumed from the epoch-1 checkpoint into another directory ends bit-identical to the uninterrupted run.

Kept short with ``--set``: 2 epochs of 60 batches (the config says 10 of 300), and pruning every 10 iterations from
iteration 10 (the config: every 100 from 300). A block's occupancy halves at each prune that finds it empty and it is
dropped below 0.02, so the background goes at the 6th prune, iteration 60: the epoch-1 checkpoint the resume starts
from is already pruned. Everything else is the default config: the built-in 512x512 image, batches of 16384 pixels,
LR decay at 0.5, 0.75 and 0.9 of the run, TensorBoard every 50 iterations, a checkpoint per epoch (``keep_last: 3``,
the best by ``val/psnr``), the progress display, ``metrics.json``; W&B present but disabled.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.tb_events import events as read_events
from tests.tb_events import series
from trainers.apps.image_field.image import default_image
from trainers.checkpoint.format import read_metadata
from trainers.config.builder import load_config

ROOT = Path(__file__).resolve().parents[3]
EPOCH = 60  # iterations per epoch
LAST = 2 * EPOCH
SETS = [
    "trainer.max_epochs=2",
    f"trainer.batches_per_epoch={EPOCH}",
    "callbacks.grid_pruning.every=10it",
    "callbacks.grid_pruning.start=10",
]
GAMMA = 0.333  # lr_decay in image_field.yaml; milestones 0.5, 0.75, 0.9 of 120 iterations: 60, 90, 108
GRID_LR, DECODER_LR = 0.01 * 10.0, 0.01  # optimizer lr 0.01; the grid's is grid_lr_weight (10) times it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: scalars that are a pure function of the training (not of the clock) and of the steps before them in the same
#: epoch -- not ``train/*``: those are means over the steps since the previous write, and a resumed process writes
#: its first one (at 100) over the steps it ran (61-100), where the uninterrupted run's covers 51-100
EXACT_TAGS = (
    "lr/grid",
    "lr/decoder",
    "prune/occupancy",
    "prune/count",
    "val/psnr",
    "best/psnr",
    "val/mse",
    "best/mse",
    "epoch/loss",
    "epoch/samples",
)


def _step(iteration: int) -> str:
    return f"step-{iteration:08d}.pt"


def _f32(value: float) -> float:
    """``value`` as TensorBoard stores a scalar (a 32-bit float)."""
    return float(np.float32(value))


def _stepbus(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000", "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env
    )


@dataclass(frozen=True)
class Runs:
    run: Path  #: the uninterrupted run
    resumed: Path  #: resumed from run's epoch-1 checkpoint
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("app")
    run, resumed = base / "run", base / "resumed"
    sets = [arg for value in SETS for arg in ("--set", value)]
    first = _stepbus(base, "train", *sets, "--run-dir", str(run))  # no --config: the built-in default
    assert first.returncode == 0, first.stdout + first.stderr
    checkpoint = run / "checkpoints" / _step(EPOCH)
    second = _stepbus(
        base, "train", "--resume", str(checkpoint), "--set", "trainer.max_epochs=2", "--run-dir", str(resumed)
    )
    assert not (base / "runs").exists()  # everything went to the --run-dir directories
    return Runs(run, resumed, first, second)


def _pixels(png: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        return np.array(image, dtype=np.uint8)


def _metrics(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return data


def _same(a: Any, b: Any) -> bool:
    """Equal, tensors bit for bit (same dtype, shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


# ---------------------------------------------------------------------------------------------- the uninterrupted run
def test_the_default_app_trains_and_writes_its_run_directory(runs: Runs) -> None:
    out = runs.first.stdout
    assert runs.first.stderr == ""
    assert out.splitlines()[0] == f"stepbus image_field run in {runs.run}"  # the image-field app, not the demo
    for line in ("validation at iteration 60", "validation at iteration 120", "epoch 2/2 done at iteration 120"):
        assert any(printed.startswith(line) for printed in out.splitlines()), (line, out)
    assert "training completed" in out
    assert sorted(p.name for p in runs.run.iterdir()) == ["checkpoints", "config.yaml", "metrics.json", "tb", "val"]

    saved = yaml.safe_load((runs.run / "config.yaml").read_text(encoding="utf-8"))
    assert saved == load_config(None, overrides=SETS).data  # the resolved default with the --set values
    assert saved["trainer"]["name"] == "image_field"
    assert (saved["trainer"]["max_epochs"], saved["trainer"]["batches_per_epoch"]) == (2, EPOCH)
    assert saved["callbacks"]["wandb"]["enabled"] is False
    assert read_metadata(runs.run / "checkpoints" / _step(LAST))["config"] == saved


def test_tensorboard_holds_loss_lr_pruning_and_validation_at_their_steps(runs: Runs) -> None:
    events = read_events(runs.run / "tb")
    scalars = set(events.Tags()["scalars"])
    assert scalars >= {*EXACT_TAGS, "train/loss", "train/samples", "time/iter_ms", "time/epoch_s"}
    assert [step for step, _ in series(events, "train/loss")] == [50, 100]  # tensorboard: every 50it
    assert all(0.0 < loss < 0.1 for _, loss in series(events, "train/loss"))
    # the LR each logged step used: the grid's is 10x the decoder's; decayed at 60 and 90 before step 100
    assert series(events, "lr/grid") == [(50, _f32(GRID_LR)), (100, _f32(GRID_LR * GAMMA**2))]
    assert series(events, "lr/decoder") == [(50, _f32(DECODER_LR)), (100, _f32(DECODER_LR * GAMMA**2))]
    # prunes at 10, 20, ...: after 5 an empty block is still at 0.5**5 >= 0.02 (kept); by 100 the background is gone
    assert series(events, "prune/count") == [(50, 5.0), (100, 10.0)]
    (step, kept), (later, occupancy) = series(events, "prune/occupancy")
    assert (step, kept, later) == (50, 1.0, 100)
    assert 0.25 < occupancy < 1.0
    assert series(events, "train/samples")[0] == (50, 16384.0)  # the whole batch before pruning ...
    assert series(events, "train/samples")[1][1] < 16384.0  # ... the occupied share after it
    # one validation per epoch (at_end does not repeat the last one), PSNR rising
    (first_step, first_psnr), (second_step, second_psnr) = series(events, "val/psnr")
    assert (first_step, second_step) == (EPOCH, LAST)
    assert second_psnr > first_psnr > 15.0
    assert series(events, "best/psnr") == series(events, "val/psnr")
    assert [(e.step, e.width, e.height) for e in events.Images("val/render")] == [(60, 512, 512), (120, 512, 512)]


def test_checkpoints_keep_every_epoch_and_link_last_and_best_by_psnr(runs: Runs) -> None:
    folder = runs.run / "checkpoints"
    # keep_last 3 of 2 saves (one per epoch; the end save rewrites the epoch-2 file): both kept, no temporary left
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt", _step(EPOCH), _step(LAST)]
    assert (os.readlink(folder / "last.pt"), os.readlink(folder / "best.pt")) == (_step(LAST), _step(LAST))
    psnr = dict(series(read_events(runs.run / "tb"), "val/psnr"))
    first, last = read_metadata(folder / _step(EPOCH)), read_metadata(folder / _step(LAST))
    assert (first["iteration"], first["epoch"], first["reason"], first["resumable"]) == (60, 1, "schedule", True)
    assert (last["iteration"], last["epoch"], last["reason"]) == (120, 2, "end (completed)")
    # each file is scored by the val/psnr of its time; best.pt names the highest score
    assert (_f32(first["score"]), _f32(last["score"])) == (psnr[EPOCH], psnr[LAST])
    assert last["score"] > first["score"]
    assert first["metrics"]["prune/occupancy"] < 1.0  # the resume below starts from a pruned field
    state = torch.load(folder / _step(EPOCH), weights_only=True)
    assert float(state["model"]["occupancy.density"].min()) < 0.02


def test_validation_pngs_are_the_rendered_field_with_pruned_blocks_black(runs: Runs) -> None:
    folder = runs.run / "val"
    assert sorted(p.name for p in folder.iterdir()) == ["render-00000060.png", "render-00000120.png"]
    events = read_events(runs.run / "tb")
    logged = {e.step: e.encoded_image_string for e in events.Images("val/render")}
    psnr = dict(series(events, "val/psnr"))
    target = default_image(512).permute(1, 2, 0).numpy().astype(np.float64)
    for iteration in (EPOCH, LAST):
        data = (folder / f"render-{iteration:08d}.png").read_bytes()
        assert data[:8] == PNG_SIGNATURE
        pixels = _pixels(data)
        assert pixels.shape == (512, 512, 3)
        assert np.array_equal(pixels, _pixels(logged[iteration]))  # the same image as TensorBoard's
        # the PNG is the validated render: its PSNR (8-bit rounding aside) is val/psnr
        mse = float(np.mean((pixels / 255.0 - target) ** 2))
        assert abs(-10.0 * np.log10(mse) - psnr[iteration]) < 0.05, (iteration, mse, psnr[iteration])
    # blocks pruned at the end are painted black without evaluating the field
    density = torch.load(runs.run / "checkpoints" / _step(LAST), weights_only=True)["model"]["occupancy.density"]
    occupied = (density >= 0.02).repeat_interleave(16, 0).repeat_interleave(16, 1).numpy()  # 32x32 blocks of 16
    final = _pixels((folder / "render-00000120.png").read_bytes())
    assert not occupied.all()
    assert int(final[~occupied].max()) == 0
    assert int(final[occupied].max()) > 0


def test_metrics_json_has_the_final_and_best_values_tensorboard_recorded(runs: Runs) -> None:
    metrics = _metrics(runs.run)
    psnr = dict(series(read_events(runs.run / "tb"), "val/psnr"))
    assert (metrics["status"], metrics["iterations"], metrics["epochs"]) == ("completed", 120, 2)
    assert metrics["seconds"] > 0.0
    assert metrics["seconds_total"] == metrics["seconds"]  # nothing resumed
    assert set(metrics["final"]) == {"val/psnr", "val/mse"}
    assert _f32(metrics["final"]["val/psnr"]) == psnr[LAST]
    assert metrics["best"]["best/psnr"] == metrics["final"]["val/psnr"]  # rising: the last is the best
    assert metrics["metrics"]["prune/count"] == 12.0  # 10, 20, ..., 120
    assert 0.25 < metrics["metrics"]["prune/occupancy"] < 1.0  # the default image's background is empty
    assert metrics["metrics"]["lr/grid"] == GRID_LR * GAMMA**3  # the LR of the last step (after 108)
    assert metrics["metrics"]["lr/decoder"] == DECODER_LR * GAMMA**3
    step = str(runs.run / "checkpoints" / _step(LAST))
    assert metrics["checkpoints"] == {"last": step, "best": step}
    density = torch.load(step, weights_only=True)["model"]["occupancy.density"]
    assert metrics["metrics"]["prune/occupancy"] == float((density >= 0.02).float().mean())  # whole blocks


# ---------------------------------------------------------------------------------------------- the resumed run
def test_a_resume_from_the_epoch_1_checkpoint_ends_bit_identical(runs: Runs) -> None:
    assert runs.second.returncode == 0, runs.second.stdout + runs.second.stderr
    assert runs.second.stderr == ""
    checkpoint = runs.run / "checkpoints" / _step(EPOCH)
    assert runs.second.stdout.splitlines()[:2] == [
        f"stepbus image_field run in {runs.resumed}",
        f"resumed from {checkpoint} at epoch 1/2, step 60/60, iteration 60",
    ]
    # the config saved in the checkpoint ran (the --set of the first run included), not the built-in default
    assert (runs.resumed / "config.yaml").read_text(encoding="utf-8") == (runs.run / "config.yaml").read_text(
        encoding="utf-8"
    )
    assert sorted(p.name for p in (runs.resumed / "checkpoints").iterdir()) == ["best.pt", "last.pt", _step(LAST)]

    straight = torch.load(runs.run / "checkpoints" / _step(LAST), weights_only=True)
    resumed = torch.load(runs.resumed / "checkpoints" / _step(LAST), weights_only=True)
    assert list(resumed["model"]) == list(straight["model"])
    for key, tensor in straight["model"].items():  # parameters and the occupancy grid, bit for bit
        assert _same(tensor, resumed["model"][key]), key
    assert _same(resumed["optimizer"], straight["optimizer"])  # Adam's moments, step counts and LRs
    for key in ("LRDecay", "GridPruning", "Validator"):
        assert _same(resumed["callbacks"][key], straight["callbacks"][key]), key
    assert resumed["stepbus"]["metrics"] == straight["stepbus"]["metrics"]

    # val/psnr of epoch 2 (and everything else the training decides) is the same, in metrics.json and TensorBoard
    first, second = _metrics(runs.run), _metrics(runs.resumed)
    assert second["final"] == first["final"]
    assert second["best"] == first["best"]
    assert second["metrics"] == first["metrics"]
    assert (second["status"], second["iterations"], second["epochs"]) == ("completed", 120, 2)
    before = float(torch.load(checkpoint, weights_only=True)["callbacks"]["MetricsFile"]["seconds"])
    assert abs(second["seconds_total"] - (second["seconds"] + before)) <= 0.002  # the first run's time carried
    straight_tb, resumed_tb = read_events(runs.run / "tb"), read_events(runs.resumed / "tb")
    for tag in EXACT_TAGS:
        assert series(resumed_tb, tag) == [(s, v) for s, v in series(straight_tb, tag) if s > EPOCH], tag
    assert [step for step, _ in series(resumed_tb, "train/loss")] == [100]  # nothing at or before the resume point
    # the final validation image, byte for byte
    assert sorted(p.name for p in (runs.resumed / "val").iterdir()) == ["render-00000120.png"]
    png = (runs.resumed / "val" / "render-00000120.png").read_bytes()
    assert png == (runs.run / "val" / "render-00000120.png").read_bytes()
