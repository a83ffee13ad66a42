"""The strided render behind the live preview: ``ImageField.render(stride=s)`` is exactly every ``s``-th pixel of
every ``s``-th row of the full render (odd sizes, chunked, before and after pruning, pruned pixels exactly 0, one
field evaluation per occupied pixel of the strided grid), bad strides, ``ImageFieldTrainer.preview()`` (shape,
target, PSNR, no random numbers drawn) and the demo's ``preview()`` (colour maps and mse on its grid).

Real parts only: a 67x50 PNG written with Pillow (black on the left: pruning drops those blocks), a real field
trained with real pruning, the real demo trainer.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from rich.console import Console

from callbacks import GridPruning
from lifecycle import Status
from trainers.apps.demo import demo_trainer
from trainers.apps.image_field import ImageField, ImageFieldTrainer, image_field_trainer

HEIGHT, WIDTH = 67, 50  # divisible by neither 2 nor 3
CELLS = 8  # blocks of ceil(67 / 8) = 9 rows by ceil(50 / 8) = 7 columns
BLACK_COLUMNS = 21  # the three left block columns (0..20) are black
SMALL: dict[str, Any] = {"dense": (8, 16), "hashed": (32, 64), "table": 2**10, "hidden": 16}


def write_png(path: Path) -> Path:
    """A 67x50 RGB image: black left of column 21, smooth colour ramps with a checkerboard on the right."""
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    red = 60 + (xs * 190) // WIDTH
    green = 40 + (ys * 200) // HEIGHT
    blue = torch.where(((xs // 4) + (ys // 4)) % 2 == 0, 220, 90)
    rgb = torch.stack([red, green, blue], -1).to(torch.uint8)
    rgb[:, :BLACK_COLUMNS] = 0
    Image.frombytes("RGB", (WIDTH, HEIGHT), bytes(rgb.reshape(-1).tolist())).save(path)
    return path


def expected_mask(field: ImageField) -> torch.Tensor:
    """``(H, W)`` bool: pixel (y, x) is occupied when its block (y // cell_h, x // cell_w) is, written out here."""
    occupancy = field.occupancy
    cells = occupancy.occupied_cells()
    ys = torch.arange(field.height) // occupancy.cell_h
    xs = torch.arange(field.width) // occupancy.cell_w
    return cells[ys.unsqueeze(1), xs.unsqueeze(0)]


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png(tmp_path_factory.mktemp("render") / "image.png")


@pytest.fixture(scope="module")
def pruned(png: Path) -> Iterator[ImageFieldTrainer]:
    """The field fit to the PNG for 40 steps, pruned every 2 iterations from 4 (threshold 0.05)."""
    trainer = image_field_trainer(
        image=str(png),
        batch_size=512,
        batches_per_epoch=10,
        max_epochs=4,
        occupancy_cells=CELLS,
        occupancy_threshold=0.05,
        **SMALL,
    )
    trainer.add_callback(GridPruning("2it", start=4))
    assert trainer.train() is Status.COMPLETED
    yield trainer
    trainer.close()


def assert_same_but_last_bits(chunked: torch.Tensor, whole: torch.Tensor) -> None:
    """A render in small chunks equals the whole render up to float rounding: a chunk of a few rows takes the BLAS
    small-matrix path (seen: 1 ulp on 1 of 391 pixels for a 3-row tail chunk); a chunk written to the wrong place
    would differ by far more, and a pruned pixel is exactly 0 either way."""
    assert chunked.shape == whole.shape
    assert float((chunked - whole).abs().max()) <= 1e-6
    assert torch.equal(chunked == 0, whole == 0)


def fresh_field() -> ImageField:
    torch.manual_seed(0)
    return ImageField(HEIGHT, WIDTH, cells=CELLS, **SMALL)


# ---------------------------------------------------------------------------------------------- ImageField.render


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_strided_render_is_the_full_render_subsampled(stride: int) -> None:
    field = fresh_field()
    full = field.render()
    assert full.shape == (HEIGHT, WIDTH, 3)
    assert field.rendered_samples == HEIGHT * WIDTH
    strided = field.render(stride=stride)
    rows, columns = math.ceil(HEIGHT / stride), math.ceil(WIDTH / stride)
    assert strided.shape == (rows, columns, 3)
    assert torch.equal(strided, full[::stride, ::stride])
    assert field.rendered_samples == rows * columns  # nothing pruned: every pixel of the strided grid
    assert float(full.min()) >= 0.0
    assert float(full.max()) <= 1.0
    assert int((full > 0).sum()) > 0  # not trivially black
    chunked = field.render(chunk=97, stride=stride)  # many chunks, the last one partial
    assert_same_but_last_bits(chunked, strided)
    assert field.rendered_samples == rows * columns


def test_pruning_really_dropped_blocks(pruned: ImageFieldTrainer) -> None:
    occupancy = pruned.pipeline.occupancy
    cells = occupancy.occupied_cells()
    assert (occupancy.cell_h, occupancy.cell_w) == (9, 7)
    assert cells.shape == (CELLS, CELLS)
    assert int(cells.sum()) < CELLS * CELLS  # some blocks are pruned ...
    assert bool(cells[:, 3:].all())  # ... none holding a coloured pixel (columns 21.. are in block columns 3..)
    assert not bool(cells[:, :3].all())


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_strided_render_after_pruning(pruned: ImageFieldTrainer, stride: int) -> None:
    field = pruned.pipeline
    mask = expected_mask(field)
    assert torch.equal(field.occupancy.pixel_mask(), mask)
    full = field.render()
    assert field.rendered_samples == int(mask.sum())
    assert bool((full[~mask] == 0).all())  # pruned pixels are exactly black
    strided = field.render(stride=stride)
    assert strided.shape == (math.ceil(HEIGHT / stride), math.ceil(WIDTH / stride), 3)
    assert torch.equal(strided, full[::stride, ::stride])
    kept = mask[::stride, ::stride]
    assert bool(kept.any())
    assert not bool(kept.all())
    assert field.rendered_samples == int(kept.sum())  # one evaluation per occupied pixel of the strided grid
    assert bool((strided[~kept] == 0).all())
    assert_same_but_last_bits(field.render(chunk=50, stride=stride), strided)
    assert field.rendered_samples == int(kept.sum())


@pytest.mark.parametrize("stride", [0, -1])
def test_a_stride_below_one_is_refused(stride: int) -> None:
    field = fresh_field()
    with pytest.raises(ValueError, match="stride") as raised:
        field.render(stride=stride)
    assert str(raised.value) == f"render: stride must be >= 1, got {stride}"


# ---------------------------------------------------------------------------------------------- trainer previews


def test_image_field_preview(pruned: ImageFieldTrainer) -> None:
    rng = torch.get_rng_state()
    shown = pruned.preview()
    assert torch.equal(torch.get_rng_state(), rng)  # reads no random numbers
    assert set(shown) == {"image", "target", "psnr"}
    image, target = shown["image"], shown["target"]
    assert image.shape == (34, 25, 3)  # ceil(67 / 2), ceil(50 / 2)
    assert torch.equal(image, pruned.pipeline.render(stride=2))
    assert torch.equal(target, pruned.target_image[::2, ::2])
    mse = float(((image.double() - target.double()) ** 2).mean())
    assert isinstance(shown["psnr"], float)
    assert shown["psnr"] == pytest.approx(-10.0 * math.log10(mse), abs=1e-5)

    full = pruned.preview(stride=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert full["image"].shape == (HEIGHT, WIDTH, 3)
    assert torch.equal(full["target"], pruned.target_image)
    with torch.no_grad():
        validated = pruned.validate()
    assert full["psnr"] == pytest.approx(float(validated["psnr"]), abs=1e-4)

    pruned.preview_stride = 3
    try:
        third = pruned.preview()
    finally:
        pruned.preview_stride = 2
    assert third["image"].shape == (23, 17, 3)
    assert torch.equal(third["target"], pruned.target_image[::3, ::3])


def demo_target(xy: torch.Tensor) -> torch.Tensor:
    """The demo's function, as its docstring states it: sin(x)cos(y) + 0.1xy."""
    x, y = xy[:, 0], xy[:, 1]
    return torch.sin(x) * torch.cos(y) + 0.1 * x * y


def colour_map(values: torch.Tensor) -> torch.Tensor:
    """The documented colour map: about [-2, 2] -> blue (low), green (middle), red (high)."""
    t = ((values + 2.0) / 4.0).clamp(0.0, 1.0)
    return torch.stack([t, 1.0 - (2.0 * t - 1.0).abs(), 1.0 - t], -1)


def test_demo_preview() -> None:
    trainer = demo_trainer(samples=256, batch_size=16, max_epochs=1, console=Console(file=io.StringIO()))
    assert trainer.train() is Status.COMPLETED
    rng = torch.get_rng_state()
    shown = trainer.preview()  # type: ignore[attr-defined]
    assert torch.equal(torch.get_rng_state(), rng)
    assert set(shown) == {"image", "target", "mse"}
    image, target = shown["image"], shown["target"]
    assert image.shape == target.shape == (128, 128, 3)
    for picture in (image, target):
        assert float(picture.min()) >= 0.0
        assert float(picture.max()) <= 1.0
    # the grid over [-pi, pi]^2: x along a row, y down the columns
    axis = torch.linspace(-math.pi, math.pi, 128)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    with torch.no_grad():
        prediction = trainer.pipeline(xy).reshape(128, 128)
    expected = demo_target(xy).reshape(128, 128)
    assert torch.allclose(target, colour_map(expected), rtol=0, atol=1e-6)
    assert torch.allclose(image, colour_map(prediction), rtol=0, atol=1e-6)
    mse = float(((prediction.double() - expected.double()) ** 2).mean())
    assert isinstance(shown["mse"], float)
    assert shown["mse"] == pytest.approx(mse, rel=1e-5)
    assert 0.0 < shown["mse"] < 1.0  # a fitted function, not nothing
    trainer.close()
