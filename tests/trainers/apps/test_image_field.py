"""The reference app ``trainers/image_field``: the built-in target and PNG loading, the multi-resolution grid, the
occupancy grid and its smoothing, pruning that really removes work (counted with forward hooks, never timed), the
compression rule of the default config, the optimizer groups, ``validate()``, bit-exact resume with pruning, and the
app built from its YAML config and trained end to end in small configurations on the CPU."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import Checkpointer, GridPruning, LRDecay, Validator
from callbacks.reductions import Mean
from tests.support import SMALL_FIELD, small_field
from trainers.apps.image_field import ImageField, ImageFieldTrainer, image_field_trainer
from trainers.apps.image_field.grid import _PRIME, MultiResGrid
from trainers.apps.image_field.image import default_image, load_image
from trainers.apps.image_field.occupancy import Occupancy
from trainers.checkpoint.format import load_checkpoint
from trainers.config.builder import build, load_config
from trainers.config.errors import ConfigError
from trainers.config.optimizer import optimizer_factory
from trainers.config.schema import load_yaml

ROOT = Path(__file__).resolve().parents[3]
YAML = ROOT / "trainers" / "apps" / "configs" / "image_field.yaml"

#: the small configuration every training test uses (``tests.support.SMALL_FIELD``): a 64x64 image in 8x8 blocks of
#: 8x8 pixels
SMALL = SMALL_FIELD
SIZE, CELLS = SMALL["size"], SMALL["occupancy_cells"]
BLOCK = SIZE // CELLS


def small_trainer(**overrides: Any) -> ImageFieldTrainer:
    return small_field(**{"max_epochs": 3, **overrides})


def grid_parameters(dense: tuple[int, ...], hashed: tuple[int, ...], features: int, table: int) -> int:
    """The grid's documented formula: ``features * (sum(r * r for r in dense) + len(hashed) * table)``."""
    return features * (sum(r * r for r in dense) + len(hashed) * table)


def decoder_parameters(inputs: int, hidden: int) -> int:
    """Linear(inputs, hidden), Linear(hidden, hidden), Linear(hidden, 3), with biases."""
    return (inputs * hidden + hidden) + (hidden * hidden + hidden) + (hidden * 3 + 3)


def shape_regions(size: int) -> dict[str, torch.Tensor]:
    """The four shapes of the built-in image, from its documented geometry (independently of its code)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return {
        "disk": (xs - 0.3) ** 2 + (ys - 0.32) ** 2 < 0.18**2,
        "ring": (((xs - 0.7) ** 2 + (ys - 0.3) ** 2).sqrt() - 0.15).abs() < 0.03,
        "rect": (xs > 0.55) & (xs < 0.9) & (ys > 0.55) & (ys < 0.85),
        "triangle": (ys > 0.6) & (ys < 0.92) & ((xs - 0.3).abs() < (ys - 0.6) * 0.7),
    }


def per_block(mask: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``(H, W)`` bool -> ``(H / block, W / block)``: whether each block holds any True pixel."""
    h, w = mask.shape
    return mask.view(h // block, block, w // block, block).any(3).any(1)


@pytest.fixture
def count_rows() -> Iterator[Any]:
    """``watch(field) -> list``: the number of input rows of every forward call of ``field``, until the test ends."""
    handles: list[Any] = []

    def watch(field: ImageField) -> list[int]:
        rows: list[int] = []
        handles.append(field.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0])))
        return rows

    yield watch
    for handle in handles:
        handle.remove()


# ---------------------------------------------------------------------------------------------- the built-in image
@pytest.fixture(scope="module")
def image512() -> torch.Tensor:
    return default_image(512)


def test_default_image_shape_range_and_determinism(image512: torch.Tensor) -> None:
    assert image512.shape == (3, 512, 512)
    assert image512.dtype == torch.float32
    assert image512.is_contiguous()
    assert float(image512.min()) == 0.0
    assert float(image512.max()) == 1.0  # clamped: some texture saturates
    assert torch.equal(default_image(512), image512)  # the same tensor for the same (size, seed)
    assert torch.equal(default_image(512, seed=0), image512)
    assert not torch.equal(default_image(512, seed=1), image512)  # the seed is the texture's


def test_default_image_background_is_exactly_black_and_two_thirds(image512: torch.Tensor) -> None:
    regions = shape_regions(512)
    shapes = regions["disk"] | regions["ring"] | regions["rect"] | regions["triangle"]
    background = ~shapes
    assert torch.count_nonzero(image512[:, background]) == 0  # exactly 0: pruning can discard it
    assert abs(float(background.float().mean()) - 2 / 3) < 0.01
    black = (image512 == 0).all(0)
    assert torch.equal(black, background)  # and nothing inside a shape is fully black
    for name, region in regions.items():  # every shape is painted
        assert float(image512[:, region].amax(0).min()) > 0.0, name


def test_default_image_has_pixel_scale_detail(image512: torch.Tensor) -> None:
    disk = shape_regions(512)["disk"]
    inside = disk[:, 1:] & disk[:, :-1]  # horizontally adjacent pairs both in the disk
    horizontal = (image512[:, :, 1:] - image512[:, :, :-1]).abs()[:, inside]
    assert float(horizontal.mean()) > 0.015  # the 2-pixel noise octave: neighbours differ
    inside_v = disk[1:, :] & disk[:-1, :]
    vertical = (image512[:, 1:, :] - image512[:, :-1, :]).abs()[:, inside_v]
    assert float(vertical.mean()) > 0.015
    # the stripes (6 px) and the checkerboard (12 px): sharp edges of a large step inside the shapes
    rect = shape_regions(512)["rect"]
    pairs = rect[:, 1:] & rect[:, :-1]
    assert float((image512[:, :, 1:] - image512[:, :, :-1]).abs().amax(0)[pairs].max()) > 0.5


@pytest.mark.parametrize("size", [31, 0, -64, 64.0, "512", True, None])
def test_default_image_refuses_bad_sizes(size: Any) -> None:
    with pytest.raises(ValueError, match="size >= 32"):
        default_image(size)


def test_default_image_smallest_size() -> None:
    image = default_image(32)
    assert image.shape == (3, 32, 32)
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0


# ---------------------------------------------------------------------------------------------- PNG loading
def test_load_image_rgb_png_exact_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)  # H != W: catches a transposition
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels, mode="RGB").save(path)
    loaded = load_image(path)
    assert loaded.shape == (3, 10, 14)
    assert loaded.dtype == torch.float32
    expected = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 255.0
    assert torch.equal(loaded, expected)
    assert torch.equal(load_image(str(path)), expected)  # a str path too
    assert float(loaded.min()) >= 0.0
    assert float(loaded.max()) <= 1.0


def test_load_image_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(9, 12, 4), dtype=np.uint8)
    pixels[0, 0] = [200, 100, 50, 0]  # fully transparent: black
    pixels[0, 1] = [200, 100, 50, 255]  # opaque: the colour itself
    pixels[0, 2] = [200, 100, 50, 51]  # 20 % opaque
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    loaded = load_image(path)
    assert loaded.shape == (3, 9, 12)
    values = torch.from_numpy(pixels.astype(np.float32))
    expected = (values[..., :3] / 255.0 * (values[..., 3:] / 255.0)).permute(2, 0, 1)
    assert torch.equal(loaded, expected)
    assert loaded[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(loaded[:, 0, 1], torch.tensor([200.0, 100.0, 50.0]) / 255.0)
    assert torch.allclose(loaded[:, 0, 2], torch.tensor([200.0, 100.0, 50.0]) / 255.0 * 0.2, atol=1e-7, rtol=0)


def test_load_image_grayscale_png_gives_three_equal_channels(tmp_path: Path) -> None:
    pixels = np.arange(8 * 16, dtype=np.uint8).reshape(8, 16) * 2
    path = tmp_path / "gray.png"
    Image.fromarray(pixels, mode="L").save(path)
    loaded = load_image(path)
    expected = torch.from_numpy(pixels.astype(np.float32)) / 255.0
    for channel in range(3):
        assert torch.equal(loaded[channel], expected)


def test_load_image_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit PNG (Pillow mode ``I;16``) holds 0..65535: the value v * 257 is the 8-bit value v, so it must load as
    about v / 255 -- not be clipped to 255 (every pixel but the darkest coming out white)."""
    eight_bit = (np.arange(8 * 16).reshape(8, 16) * 2).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(eight_bit * 257).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
    loaded = load_image(path)
    assert loaded.shape == (3, 8, 16)
    expected = torch.from_numpy(eight_bit.astype(np.float32)) / 255.0
    for channel in range(3):
        assert torch.allclose(loaded[channel], expected, atol=0.5 / 255, rtol=0), (
            f"16-bit PNG loaded as {loaded[channel, 0, :6].tolist()} instead of {expected[0, :6].tolist()}"
        )


def test_load_image_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.png"
    with pytest.raises(ValueError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_load_image_non_image_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a PNG\n")
    with pytest.raises(ValueError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)
    directory = tmp_path / "a-directory.png"
    directory.mkdir()
    with pytest.raises(ValueError, match="not an image") as info:
        load_image(directory)
    assert str(directory) in str(info.value)


def test_load_image_too_small_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 20, 3), dtype=np.uint8), mode="RGB").save(path)
    with pytest.raises(ValueError, match="too small") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_factory_trains_on_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    path = tmp_path / "target.png"
    Image.fromarray(pixels, mode="RGB").save(path)
    trainer = image_field_trainer(**{**SMALL, "image": str(path), "max_epochs": 1, "batches_per_epoch": 2})
    field = trainer.pipeline
    assert (field.height, field.width) == (24, 40)
    assert torch.equal(trainer.target_image, load_image(path).permute(1, 2, 0))
    assert (field.occupancy.cells_y, field.occupancy.cells_x) == (CELLS, CELLS)
    assert trainer.train() is not None
    assert trainer.state.iteration == 2
    trainer.close()


# ---------------------------------------------------------------------------------------------- compression rule
def test_default_factory_compresses_the_image_eightfold() -> None:
    trainer = image_field_trainer()
    field = trainer.pipeline
    assert (field.height, field.width) == (512, 512)
    grid = grid_parameters((16, 32, 64, 128), (256, 512), 2, 2**13)
    assert grid == 76288
    decoder = decoder_parameters(2 * 6, 64)
    assert sum(p.numel() for p in field.grid.parameters()) == grid
    assert sum(p.numel() for p in field.decoder.parameters()) == decoder
    assert field.parameter_count == grid + decoder == 81475
    assert field.parameter_count * 8 <= 3 * 512 * 512
    assert list(field.occupancy.parameters()) == []  # occupancy is buffers only
    trainer.close()


def test_yaml_config_builds_the_compressed_default_field(tmp_path: Path) -> None:
    resolved = load_config(YAML)
    kwargs = dict(resolved.trainer_kwargs)
    assert resolved.trainer.name == "image_field"
    kwargs["optimizer"] = optimizer_factory(kwargs["optimizer"])
    factory = resolved.trainer.load()
    assert factory is image_field_trainer
    trainer = factory(run_dir=tmp_path, seed=int(resolved.run["seed"]), **kwargs)
    field = trainer.pipeline
    assert (field.height, field.width) == (512, 512)
    expected = grid_parameters(field.grid.dense_resolutions, field.grid.hashed_resolutions, 2, field.grid.table)
    expected += decoder_parameters(field.grid.out_features, field.decoder[0].out_features)
    assert field.parameter_count == expected == 81475
    assert field.parameter_count <= 3 * 512 * 512 / 8
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["grid", "decoder"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.1, rel=1e-12), 0.01]
    assert all(g["eps"] == 1e-15 for g in groups)
    assert (trainer.batch_size, trainer.state.iterations_per_epoch, trainer.state.max_epochs) == (16384, 300, 10)
    trainer.close()


# ---------------------------------------------------------------------------------------------- optimizer groups
def test_grid_and_decoder_are_separate_named_groups() -> None:
    trainer = small_trainer()
    field = trainer.pipeline
    grid, decoder = trainer.optimizer.param_groups
    assert (grid["name"], decoder["name"]) == ("grid", "decoder")
    assert [id(p) for p in grid["params"]] == [id(p) for p in field.grid.parameters()]
    assert [id(p) for p in decoder["params"]] == [id(p) for p in field.decoder.parameters()]
    everything = {id(p) for p in field.parameters()}
    assert {id(p) for p in grid["params"]} | {id(p) for p in decoder["params"]} == everything
    assert decoder["lr"] == 1e-2
    assert grid["lr"] == 1e-2 * 10.0  # grid_lr_weight (10 by default) x the optimizer's lr
    trainer.close()


def test_grid_lr_weight_multiplies_the_given_optimizers_lr() -> None:
    trainer = small_trainer(grid_lr_weight=3.0, optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    grid, decoder = trainer.optimizer.param_groups
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert (grid["name"], grid["lr"]) == ("grid", 1.5)
    assert (decoder["name"], decoder["lr"]) == ("decoder", 0.5)
    trainer.close()


def test_lr_decay_keeps_the_grid_weight() -> None:
    trainer = small_trainer(max_epochs=1, batches_per_epoch=4)
    trainer.add_callback(LRDecay(milestones=[0.5], gamma=0.5))
    lrs: list[tuple[float, float]] = []
    trainer.on("post_step")(lambda t, **_: lrs.append(tuple(g["lr"] for g in t.optimizer.param_groups)))
    trainer.train()
    assert lrs == [(0.1, 0.01), (0.1, 0.01), (0.05, 0.005), (0.05, 0.005)]
    trainer.close()


# ---------------------------------------------------------------------------------------------- the grid
def test_grid_output_width_is_features_times_levels() -> None:
    torch.manual_seed(0)
    grid = MultiResGrid((4, 8, 16), (32,), features=3, table=64)
    assert grid.out_features == 3 * 4
    xy = torch.rand(37, 2)
    assert grid(xy).shape == (37, 12)
    assert sum(p.numel() for p in grid.parameters()) == grid_parameters((4, 8, 16), (32,), 3, 64)
    only_hashed = MultiResGrid((), (8, 16), features=2, table=32)
    assert only_hashed.out_features == 4
    assert only_hashed(xy).shape == (37, 4)
    only_dense = MultiResGrid((8,), (), features=5)
    assert only_dense(xy).shape == (37, 5)


def test_gradients_reach_every_level() -> None:
    torch.manual_seed(0)
    grid = MultiResGrid((4, 8), (16, 32), features=2, table=128)
    xy = torch.rand(500, 2)
    out = grid(xy)
    (out * torch.randn_like(out)).sum().backward()
    levels = [*grid.dense, *grid.hashed]
    assert len(levels) == 4
    for index, level in enumerate(levels):
        assert level.grad is not None, index
        assert level.grad.shape == level.shape
        assert torch.count_nonzero(level.grad) > 0, index
    # each level's features feed exactly its own columns: a column's gradient lands on one level only
    for column, level in enumerate(levels):
        for p in levels:
            p.grad = None
        grid(xy)[:, 2 * column].sum().backward()
        assert torch.count_nonzero(level.grad) > 0
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in levels if p is not level)


def test_a_hashed_level_indexes_within_its_table() -> None:
    table, resolution = 97, 64  # a prime-sized table, far fewer entries than the level's 65 x 65 cells
    torch.manual_seed(0)
    grid = MultiResGrid((), (resolution,), features=2, table=table)
    corners = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    xy = torch.cat([corners, torch.rand(300, 2)])
    out = grid(xy)
    assert out.shape == (len(xy), 2)
    assert torch.isfinite(out).all()
    out.sum().backward()
    # the documented hash: (x ^ y * prime) % table over the 4 corners of the point's cell
    base = (xy * (resolution - 1)).floor().long()
    cells = base.unsqueeze(1) + torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
    index = (cells[..., 0] ^ (cells[..., 1] * _PRIME)) % table
    assert int(index.min()) >= 0
    assert int(index.max()) < table
    touched = grid.hashed[0].grad.abs().sum(1) > 0
    expected = torch.zeros(table, dtype=torch.bool)
    position = xy * (resolution - 1)
    frac = position - position.floor()
    wx = torch.stack([1 - frac[:, 0], frac[:, 0]], 1)[:, [0, 1, 0, 1]]
    wy = torch.stack([1 - frac[:, 1], frac[:, 1]], 1)[:, [0, 0, 1, 1]]
    weights = (wx * wy) > 0  # a corner with zero weight gets no gradient
    expected[index[weights]] = True
    assert torch.equal(touched, expected)
    # the value at a point is the bilinear blend of its 4 corners' entries
    point = torch.tensor([[0.25, 0.75]])
    position = point[0] * (resolution - 1)  # (15.75, 47.25)
    x0, y0 = int(position[0]), int(position[1])
    fx, fy = float(position[0] - x0), float(position[1] - y0)
    entries = grid.hashed[0].detach()
    blend = sum(
        entries[((x0 + dx) ^ ((y0 + dy) * _PRIME)) % table] * ((fx if dx else 1 - fx) * (fy if dy else 1 - fy))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))
    )
    assert torch.allclose(grid(point)[0].detach(), blend, atol=1e-7, rtol=1e-6)


def test_a_dense_level_returns_its_cell_at_the_cell_centre() -> None:
    torch.manual_seed(0)
    grid = MultiResGrid((4,), (), features=2)
    level = grid.dense[0].detach()
    centres = torch.tensor([[(i + 0.5) / 4, (j + 0.5) / 4] for j in range(4) for i in range(4)])
    out = grid(centres).detach()
    expected = torch.stack([level[0, :, j, i] for j in range(4) for i in range(4)])
    assert torch.allclose(out, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    ("dense", "hashed"),
    [((), ()), ((1,), ()), ((8, 0), ()), ((), (-4,)), ((8.0,), ()), ((), (True,)), (("16",), ()), ((8,), (None,))],
)
def test_grid_refuses_bad_resolutions(dense: tuple[Any, ...], hashed: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="grid"):
        MultiResGrid(dense, hashed)


def test_factory_refuses_a_bad_grid() -> None:
    with pytest.raises(ValueError, match=r"grid resolutions must be integers >= 2, got 1"):
        image_field_trainer(**{**SMALL, "dense": (1, 8)})


# ---------------------------------------------------------------------------------------------- occupancy smoothing
def test_an_empty_block_is_dropped_only_after_several_prunes() -> None:
    occupancy = Occupancy(16, 16, cells=2, decay=0.5, threshold=0.1)  # 4 blocks of 8x8 pixels
    assert torch.equal(occupancy.density, torch.ones(2, 2))
    assert occupancy.fraction() == 1.0
    empty_corner = torch.tensor([[0.0, 0.7], [0.3, 0.05]])
    densities, fractions = [], []
    for _ in range(5):
        fractions.append(occupancy.update(empty_corner))
        densities.append(occupancy.density.clone())
    # density = max(content, decay * density), starting at 1: exact values (float32, like the buffer)
    expected = [torch.tensor([[0.5**k, 0.7], [max(0.5**k, 0.3), max(0.5**k, 0.05)]]) for k in range(1, 6)]
    for k, (density, wanted) in enumerate(zip(densities, expected, strict=True)):
        assert torch.equal(density, wanted), (k, density)
    assert float(densities[-1][0, 0]) == 0.03125
    # occupied means density >= threshold: both fade-outs cross 0.1 at the 4th prune, not the 1st
    assert fractions == [1.0, 1.0, 1.0, 0.5, 0.5]
    assert torch.equal(occupancy.occupied_cells(), torch.tensor([[False, True], [True, False]]))


def test_a_block_comes_back_as_soon_as_content_returns() -> None:
    occupancy = Occupancy(16, 16, cells=2, decay=0.5, threshold=0.1)
    zeros = torch.zeros(2, 2)
    for _ in range(4):
        occupancy.update(zeros)
    assert occupancy.fraction() == 0.0
    assert len(occupancy.pixels()) == 0
    assert occupancy.update(torch.tensor([[0.0, 0.0], [0.0, 0.2]])) == 0.25
    assert float(occupancy.density[1, 1]) == pytest.approx(0.2)
    assert occupancy.pixels().tolist() == [y * 16 + x for y in range(8, 16) for x in range(8, 16)]
    # it then fades again from its new density: 0.1 (kept: at the threshold), 0.05 (dropped)
    assert occupancy.update(zeros) == 0.25
    assert occupancy.update(zeros) == 0.0


def test_decay_zero_drops_at_the_first_empty_prune_and_threshold_is_inclusive() -> None:
    occupancy = Occupancy(8, 8, cells=2, decay=0.0, threshold=0.25)
    assert occupancy.update(torch.tensor([[0.25, 0.2499], [1.0, 0.0]])) == 0.5
    assert torch.equal(occupancy.occupied_cells(), torch.tensor([[True, False], [True, False]]))


def test_occupancy_pixels_and_mask() -> None:
    occupancy = Occupancy(6, 10, cells=3, decay=0.5, threshold=0.5)  # blocks of 2 x 4 (the last column: 2 wide)
    assert (occupancy.cells_y, occupancy.cells_x, occupancy.cell_h, occupancy.cell_w) == (3, 3, 2, 4)
    occupancy.density.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    occupancy.forget()
    mask = occupancy.pixel_mask()
    expected = torch.zeros(6, 10, dtype=torch.bool)
    expected[0:2, 0:4] = True
    expected[2:4, 8:10] = True
    assert torch.equal(mask, expected)
    assert occupancy.pixels().tolist() == expected.reshape(-1).nonzero().squeeze(1).tolist()
    assert occupancy.fraction() == 12 / 60
    small = Occupancy(4, 6, cells=8)  # fewer blocks for a smaller image
    assert (small.cells_y, small.cells_x, small.cell_h, small.cell_w) == (4, 6, 1, 1)


def test_probe_points_lie_in_their_blocks() -> None:
    occupancy = Occupancy(64, 64, cells=8)
    points = occupancy.probe_points()
    assert points.shape == (8 * 8 * 16, 2)
    assert float(points.min()) > 0.0
    assert float(points.max()) < 1.0
    block = points.view(8, 8, 16, 2)
    for cy in range(8):
        for cx in range(8):
            x, y = block[cy, cx, :, 0], block[cy, cx, :, 1]
            assert ((x > cx / 8) & (x < (cx + 1) / 8)).all()
            assert ((y > cy / 8) & (y < (cy + 1) / 8)).all()


@pytest.mark.parametrize(("decay", "threshold"), [(1.0, 0.02), (-0.1, 0.02), (0.5, 0.0), (0.5, 1.0)])
def test_occupancy_refuses_bad_settings(decay: float, threshold: float) -> None:
    with pytest.raises(ValueError, match="occupancy"):
        Occupancy(16, 16, decay=decay, threshold=threshold)


# ---------------------------------------------------------------------------------------------- occupancy state
def test_occupancy_travels_in_the_state_dict_and_the_pixel_list_is_recomputed() -> None:
    torch.manual_seed(0)
    field = ImageField(32, 32, dense=(8,), hashed=(), hidden=8, cells=4, threshold=0.5)
    assert "occupancy.density" in field.state_dict()
    before = field.occupancy.pixels()  # cached: all 1024 pixels
    assert len(before) == 32 * 32
    state = copy.deepcopy(field.state_dict())
    state["occupancy.density"] = torch.zeros(4, 4)
    state["occupancy.density"][1, 2] = 1.0
    field.load_state_dict(state)
    assert torch.equal(field.occupancy.density, state["occupancy.density"])
    pixels = field.occupancy.pixels()  # no stale cache
    assert pixels.tolist() == [y * 32 + x for y in range(8, 16) for x in range(16, 24)]
    assert field.occupancy.fraction() == 64 / 1024
    field.render()
    assert field.rendered_samples == 64
    # a fresh field loading it gets the same occupancy, and an update after load still works
    torch.manual_seed(1)
    other = ImageField(32, 32, dense=(8,), hashed=(), hidden=8, cells=4, threshold=0.5)
    assert len(other.occupancy.pixels()) == 1024
    other.load_state_dict(field.state_dict())
    assert torch.equal(other.occupancy.pixels(), pixels)
    assert other.occupancy.update(torch.ones(4, 4)) == 1.0


# ---------------------------------------------------------------------------------------------- pruning in training
PRUNE_EVERY, PRUNED_STEPS = 10, 200


@pytest.fixture(scope="module")
def pruned() -> Iterator[ImageFieldTrainer]:
    """A small field trained for 200 steps with GridPruning every 10 iterations; left right after its 20th prune."""
    trainer = small_trainer(max_epochs=20)
    trainer.add_callback(GridPruning(f"{PRUNE_EVERY}it"))
    for _ in range(PRUNED_STEPS):
        assert trainer.iterate()
    assert trainer.state.iteration == PRUNED_STEPS
    yield trainer
    trainer.close()


def test_pruning_drops_background_blocks(pruned: ImageFieldTrainer) -> None:
    occupancy = pruned.pipeline.occupancy
    fraction = occupancy.fraction()
    assert fraction < 0.85  # well below 1: background blocks are gone
    assert fraction > 0.0
    assert pruned.state.metrics["prune/occupancy"] == fraction
    assert pruned.state.metrics["prune/count"] == PRUNED_STEPS // PRUNE_EVERY
    # the occupied pixels are exactly those of the occupied blocks
    assert len(occupancy.pixels()) == int(occupancy.occupied_cells().sum()) * BLOCK * BLOCK


def test_pruning_never_drops_a_block_holding_target_pixels(pruned: ImageFieldTrainer) -> None:
    field = pruned.pipeline
    occupancy = field.occupancy
    target = pruned.target_image  # (H, W, 3)
    shape_blocks = per_block((target != 0).any(2))  # blocks with any nonzero target pixel
    assert int(shape_blocks.sum()) < CELLS * CELLS  # there is pure background to prune
    with torch.no_grad():
        predicted = field(field.coords(torch.arange(SIZE * SIZE))).abs().amax(1).view(SIZE, SIZE)
    lost = []
    for cy, cx in (shape_blocks & ~occupancy.occupied_cells()).nonzero().tolist():
        rows, columns = slice(cy * BLOCK, (cy + 1) * BLOCK), slice(cx * BLOCK, (cx + 1) * BLOCK)
        content = (target[rows, columns] != 0).any(2)
        lost.append(
            f"block ({cy}, {cx}): {int(content.sum())} target pixel(s) up to {float(target[rows, columns].max()):.3f}"
            f", the field predicts up to {float(predicted[rows, columns][content].max()):.3f} there, its density "
            f"is {float(occupancy.density[cy, cx]):.4f} < {occupancy.threshold}"
        )
    assert lost == [], "pruned blocks that hold target pixels:\n" + "\n".join(lost)


def test_prune_sees_content_between_its_probe_points() -> None:
    """A field (real weights, set by hand) that renders one pixel of a 64x64 image at 1.0 and everything else at 0:
    pruning must not drop that pixel's block -- the prune measures the field at its 4x4 probe points per block, but
    ``render()`` and training evaluate it at pixel centres."""
    torch.manual_seed(0)
    field = ImageField(SIZE, SIZE, dense=(256,), hashed=(), features=2, hidden=2, cells=CELLS)
    with torch.no_grad():
        for parameter in field.parameters():
            parameter.zero_()
        field.decoder[0].weight.copy_(torch.eye(2))
        field.decoder[2].weight.copy_(torch.eye(2))
        field.decoder[4].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
        # pixel (row 55, column 7) has its centre at grid coordinate (29.5, 221.5) of the 256-cell level
        field.grid.dense[0][0, 0, 221:223, 29:31] = 1.0
    image = field.render()
    assert float(image[55, 7, 0]) == 1.0
    assert torch.count_nonzero(image) == 3  # that one pixel, in its three channels
    for _ in range(10):  # far more prunes than the smoothing needs to drop a block that stays empty
        field.prune()
    assert bool(field.occupancy.occupied_cells()[55 // BLOCK, 7 // BLOCK]), (
        f"the block of pixel (55, 7) was pruned (density {float(field.occupancy.density[6, 0]):.4f}) "
        "although the field renders that pixel at 1.0"
    )
    assert float(field.render()[55, 7, 0]) == 1.0


def test_render_evaluates_only_the_occupied_pixels(pruned: ImageFieldTrainer, count_rows: Any) -> None:
    field = pruned.pipeline
    occupancy = field.occupancy
    rows = count_rows(field)
    image = field.render()
    kept = len(occupancy.pixels())
    assert kept < SIZE * SIZE
    assert sum(rows) == kept == field.rendered_samples
    assert image.shape == (SIZE, SIZE, 3)
    mask = occupancy.pixel_mask()
    assert torch.count_nonzero(image[~mask]) == 0  # pruned blocks are black
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0
    rows.clear()
    chunked = field.render(chunk=100)
    assert torch.equal(chunked, image)
    assert rows == [100] * (kept // 100) + ([kept % 100] if kept % 100 else [])
    assert field.rendered_samples == kept


def test_training_steps_sample_only_the_occupied_share(pruned: ImageFieldTrainer, count_rows: Any) -> None:
    field = pruned.pipeline
    occupancy = field.occupancy
    fraction = occupancy.fraction()
    expected = math.ceil(512 * fraction)
    assert expected < 512
    rows = count_rows(field)
    samples: list[float] = []
    pruned.on("post_step")(lambda t, *, outputs, **_: samples.append(outputs["samples"]))
    before = occupancy.density.clone()
    for _ in range(PRUNE_EVERY - 1):  # steps 201..209: no prune among them
        assert pruned.iterate()
    assert torch.equal(occupancy.density, before)
    assert samples == [float(expected)] * (PRUNE_EVERY - 1)
    assert rows == [expected] * (PRUNE_EVERY - 1)  # the field really evaluated fewer points
    # the samples are drawn among occupied pixels only
    batch = (torch.arange(512, dtype=torch.int32),)
    rows.clear()
    seen: list[torch.Tensor] = []
    handle = field.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().clone()))
    try:
        outputs = pruned.compute_loss(batch)
    finally:
        handle.remove()
    assert outputs["samples"] == float(expected)
    assert rows == [expected]
    (coords,) = seen
    x = (coords[:, 0] * SIZE - 0.5).round().long()
    y = (coords[:, 1] * SIZE - 0.5).round().long()
    assert occupancy.pixel_mask()[y, x].all()


def test_an_unpruned_step_uses_the_whole_batch(count_rows: Any) -> None:
    trainer = small_trainer(max_epochs=1, batches_per_epoch=2)
    rows = count_rows(trainer.pipeline)
    samples: list[float] = []
    trainer.on("post_step")(lambda t, *, outputs, **_: samples.append(outputs["samples"]))
    trainer.train()
    assert samples == [512.0, 512.0]
    assert rows == [512, 512]
    trainer.close()


def test_prune_returns_the_occupied_fraction() -> None:
    trainer = small_trainer(occupancy_decay=0.0, occupancy_threshold=0.5)
    field = trainer.pipeline
    fraction = field.prune()  # an untrained field predicts almost nothing: with no smoothing it all goes
    assert fraction == field.occupancy.fraction()
    assert fraction == len(field.occupancy.pixels()) / (SIZE * SIZE)
    with torch.no_grad():  # every block was occupied: measured at each of its pixel centres
        every = torch.arange(SIZE * SIZE)
        values = field(field.coords(every)).abs().amax(1).view(CELLS, SIZE // CELLS, CELLS, SIZE // CELLS)
        content = values.amax(dim=(1, 3))
    assert torch.allclose(field.occupancy.density, content, rtol=0, atol=1e-6)
    trainer.close()


def test_a_step_with_nothing_occupied_is_refused() -> None:
    trainer = small_trainer(max_epochs=1, batches_per_epoch=2)
    trainer.pipeline.occupancy.density.zero_()
    trainer.pipeline.occupancy.forget()
    with pytest.raises(RuntimeError, match="no occupied pixel"):
        trainer.train()
    trainer.close()


# ---------------------------------------------------------------------------------------------- validate
def test_validate_returns_consistent_psnr_mse_and_image() -> None:
    trainer = small_trainer(max_epochs=1, batches_per_epoch=5)
    trainer.train()
    with torch.no_grad():
        result = trainer.validate()
    assert set(result) == {"psnr", "mse", "images"}
    image = result["images"]["render"]
    assert image.shape == (SIZE, SIZE, 3)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0
    # a sum and a count over every pixel and channel, which ranks would add up (callbacks.reductions)
    assert isinstance(result["mse"], Mean)
    assert result["mse"].parts[1] == SIZE * SIZE * 3
    squared = ((image.double() - trainer.target_image.double()) ** 2).sum()
    assert float(result["mse"].parts[0]) == pytest.approx(float(squared), rel=1e-12)  # float64 sums, other order
    # the value as before: float32's mean of the same squared errors, to float32's precision
    mse = torch.mean((image - trainer.target_image) ** 2)
    assert float(result["mse"]) == pytest.approx(float(mse), rel=1e-6)
    assert float(result["psnr"]) == -10 * math.log10(float(result["mse"]))
    assert float(result["psnr"]) == pytest.approx(float(-10.0 * torch.log10(mse)), rel=1e-6)
    trainer.close()


def test_psnr_rises_over_short_epochs() -> None:
    trainer = small_trainer(max_epochs=3)
    trainer.add_callback(Validator(every="1ep", at_end=False))
    psnr: list[float] = []
    trainer.on("post_validation")(lambda t, *, metrics, **_: psnr.append(metrics["val/psnr"]))
    trainer.train()
    assert len(psnr) == 3
    assert psnr[0] < psnr[1] < psnr[2]
    assert psnr[2] - psnr[0] > 2.0  # dB
    assert trainer.state.metrics["best/psnr"] == psnr[2]
    trainer.close()


# ---------------------------------------------------------------------------------------------- exact resume
def resume_trainer(run_dir: Path) -> ImageFieldTrainer:
    """3 epochs of 20 steps, pruning every 2 iterations from 4 (threshold 0.05: blocks drop before epoch 1 ends),
    LR decay, a validator and a checkpoint every epoch."""
    trainer = small_trainer(max_epochs=3, occupancy_threshold=0.05, run_dir=run_dir)
    trainer.add_callback(LRDecay(milestones=[0.5, 0.75], gamma=0.333))
    trainer.add_callback(GridPruning("2it", start=4))
    trainer.add_callback(Validator(every="1ep"))
    trainer.add_callback(Checkpointer(every="1ep", keep_last=None))
    return trainer


def test_resume_after_pruning_is_bit_exact(tmp_path: Path) -> None:
    reference = resume_trainer(tmp_path / "reference")
    fractions: dict[int, float] = {}
    reference.on("post_step")(lambda t, **_: fractions.__setitem__(t.state.iteration, t.pipeline.occupancy.fraction()))
    assert str(reference.train()) == "completed"
    assert fractions[20] < 1.0  # pruned before the checkpoint the resume starts from
    assert fractions[60] < fractions[20]  # and pruning goes on changing things after it

    interrupted = resume_trainer(tmp_path / "run")
    for _ in range(20 + 3):  # epoch 1, then 3 steps of epoch 2 that are lost
        assert interrupted.iterate()
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000020.pt"
    assert checkpoint.is_file()
    saved = load_checkpoint(checkpoint)
    saved_density = saved["model"]["occupancy.density"]
    assert float(saved_density.min()) < 0.05  # the checkpoint carries pruned blocks
    interrupted.close()

    resumed = resume_trainer(tmp_path / "run")
    assert resumed.restore(checkpoint) == checkpoint
    assert torch.equal(resumed.pipeline.occupancy.density, saved_density)
    assert len(resumed.pipeline.occupancy.pixels()) == round(fractions[20] * SIZE * SIZE)
    assert str(resumed.train()) == "completed"
    assert resumed.state.iteration == reference.state.iteration == 60

    ref_state, res_state = reference.pipeline.state_dict(), resumed.pipeline.state_dict()
    assert list(ref_state) == list(res_state)
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key
    assert torch.equal(resumed.pipeline.occupancy.density, reference.pipeline.occupancy.density)
    assert torch.equal(resumed.pipeline.occupancy.pixels(), reference.pipeline.occupancy.pixels())
    ref_opt, res_opt = reference.optimizer.state_dict(), resumed.optimizer.state_dict()
    for index, state in ref_opt["state"].items():
        for key, value in state.items():
            assert torch.equal(value, res_opt["state"][index][key]), (index, key)
    assert [g["lr"] for g in ref_opt["param_groups"]] == [g["lr"] for g in res_opt["param_groups"]]
    for key in ("val/psnr", "best/psnr", "prune/occupancy", "prune/count"):
        assert resumed.state.metrics[key] == reference.state.metrics[key], key
    reference.close()
    resumed.close()


# ---------------------------------------------------------------------------------------------- build() from config
def small_config(**callbacks: Any) -> dict[str, Any]:
    """The YAML config with the small trainer, tensorboard and progress off, pruning early enough to matter."""
    data = load_yaml(YAML)
    trainer = data["trainer"]
    trainer.update({k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()})
    trainer.update(max_epochs=2, occupancy_threshold=0.05)
    blocks = data["callbacks"]
    blocks["tensorboard"] = {"enabled": False}
    blocks["progress"] = {"enabled": False}
    blocks["grid_pruning"] = {"every": "5it", "start": 10}
    blocks.update(callbacks)
    return data


def test_build_from_the_yaml_trains_and_writes_its_outputs(tmp_path: Path) -> None:
    data = small_config()
    assert set(data["callbacks"]) >= {"validator", "checkpointer", "grid_pruning", "lr_decay", "metrics_file"}
    assert data["callbacks"]["checkpointer"]["monitor"] == "val/psnr"
    assert data["callbacks"]["checkpointer"]["mode"] == "max"
    trainer = build(data, run_dir=tmp_path)
    assert isinstance(trainer, ImageFieldTrainer)
    names = sorted(type(c).__name__ for c in trainer.callbacks)
    assert names == ["Checkpointer", "GridPruning", "LRDecay", "MetricsFile", "Validator"]
    validations: list[tuple[int, float]] = []
    trainer.on("post_validation")(
        lambda t, *, metrics, **_: validations.append((t.state.iteration, metrics["val/psnr"]))
    )
    assert str(trainer.train()) == "completed"
    trainer.close()

    assert [it for it, _ in validations] == [20, 40]  # once per epoch; at_end does not repeat iteration 40
    (_, first), (_, second) = validations
    assert second > first

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert (metrics["iterations"], metrics["epochs"]) == (40, 2)
    assert metrics["final"]["val/psnr"] == second
    assert metrics["best"]["best/psnr"] == max(first, second)
    assert metrics["metrics"]["prune/count"] == 7  # 10, 15, ..., 40
    assert 0.0 < metrics["metrics"]["prune/occupancy"] < 1.0

    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "step-00000020.pt").is_file()
    assert (checkpoints / "step-00000040.pt").is_file()
    assert (checkpoints / "last.pt").resolve() == (checkpoints / "step-00000040.pt").resolve()
    assert (checkpoints / "best.pt").resolve() == (checkpoints / "step-00000040.pt").resolve()
    assert Path(metrics["checkpoints"]["last"]).resolve() == (checkpoints / "step-00000040.pt").resolve()
    last = load_checkpoint(checkpoints / "last.pt")
    assert torch.equal(last["model"]["occupancy.density"], trainer.pipeline.occupancy.density)

    pngs = sorted(p.name for p in (tmp_path / "val").iterdir())  # Validator's image_dir: <run_dir>/<prefix>
    assert pngs == ["render-00000020.png", "render-00000040.png"]
    with Image.open(tmp_path / "val" / "render-00000040.png") as png:
        assert png.size == (SIZE, SIZE)
        rendered = torch.from_numpy(np.asarray(png.convert("RGB")).copy())
    expected = (trainer.pipeline.render() * 255).round().to(torch.uint8)
    assert int((rendered.int() - expected.int()).abs().max()) <= 1
    assert (tmp_path / "config.yaml").is_file()
    assert load_yaml(tmp_path / "config.yaml")["trainer"]["size"] == SIZE


def test_a_missing_image_is_a_config_error_at_trainer_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = small_config()
    data["trainer"]["image"] = "missing.png"
    with pytest.raises(ConfigError) as info:
        build(data, run_dir=tmp_path / "run")
    (problem,) = info.value.problems
    assert (problem.path, problem.message) == ("trainer.image", "missing.png: no such file")
    assert not (tmp_path / "run").exists()


def test_a_bad_trainer_param_is_a_config_error_at_trainer(tmp_path: Path) -> None:
    data = small_config()
    data["trainer"]["size"] = 16
    with pytest.raises(ConfigError) as info:
        build(data, run_dir=tmp_path / "run")
    (problem,) = info.value.problems
    assert problem.path == "trainer"
    assert "size >= 32" in problem.message
