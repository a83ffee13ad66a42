"""The image field's validation render split over ranks (``trainers.apps.image_field.shard_render``), in one
process: each shard ``index`` of ``count`` renders the rows ``index::count`` of the full render, pruned blocks
black, with as many field evaluations as the busiest shard needs -- the same number for every shard, however the
occupied pixels are spread (what FSDP needs: every forward is a collective). The assembly over real ranks and the
validated values: ``tests/trainers/distributed/test_distributed_reductions.py``."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support import small_field
from trainers.apps.image_field import ImageField
from trainers.apps.image_field.shard_render import render_rows
from trainers.apps.image_field.trainer import psnr_of


@pytest.fixture(scope="module")
def field() -> ImageField:
    """A trained 45x45 field with the top three rows of occupancy blocks (18 pixel rows) pruned."""
    trainer = small_field(size=45, max_epochs=1, batches_per_epoch=3, threads=1)
    trainer.train()
    trainer.close()
    field = trainer.pipeline
    field.occupancy.density[:3] = 0.0
    field.occupancy.forget()
    return field


def calls_of(field: ImageField, index: int, count: int, chunk: int) -> tuple[torch.Tensor, list[int]]:
    """Rows ``index::count`` and the number of points of each field evaluation that rendered them."""
    calls: list[int] = []
    hook = field.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        return render_rows(field, index, count, chunk), calls
    finally:
        hook.remove()


@pytest.mark.parametrize("count", [1, 2, 3, 64])
def test_each_shard_renders_its_rows_with_as_many_calls_as_every_other(field: ImageField, count: int) -> None:
    full = field.render()
    mask = field.occupancy.pixel_mask()
    chunk = 97
    occupied = [int(mask[index::count].sum()) for index in range(count)]
    calls = max(1, math.ceil(max(occupied) / chunk))
    for index in range(count):
        rows, points = calls_of(field, index, count, chunk)
        assert rows.shape == (len(range(index, 45, count)), 45, 3)
        assert len(points) == calls  # the same for every shard
        assert sum(points) == occupied[index] == field.rendered_samples
        assert points == [min(chunk, max(0, occupied[index] - k * chunk)) for k in range(calls)]  # full calls first
        # a Linear's float32 output for a point may depend on how many points share its batch (BLAS kernels)
        torch.testing.assert_close(rows, full[index::count], rtol=0, atol=1e-6)
        assert torch.equal(rows[~mask[index::count]], torch.zeros(int((~mask[index::count]).sum()), 3))
        # one evaluation of the whole shard, as in a validation of this image: bit for bit the full render's rows
        assert torch.equal(render_rows(field, index, count), full[index::count])
    if count == 64:
        assert occupied[50] == 0  # a shard without rows ...
        assert len(calls_of(field, 50, 64, chunk)[1]) == calls  # ... evaluates as often as the others


def test_the_shards_differ_so_some_evaluate_empty_batches(field: ImageField) -> None:
    mask = field.occupancy.pixel_mask()
    assert [int(mask[i::3].sum()) for i in range(3)] == [405, 405, 405]  # rows 18..44 stay: 9 per shard
    _, points = calls_of(field, 0, 2, 300)  # shard 0: rows 18, 20, ..., 44 (14 rows); shard 1: 13 rows
    assert points == [300, 300, 30]
    _, points = calls_of(field, 1, 2, 300)
    assert points == [300, 285, 0]  # the busiest shard needs 3 calls: the last one is empty here


@pytest.mark.parametrize(
    ("index", "count", "chunk", "message"),
    [
        (2, 2, 10, "render_rows: shard index must be in [0, 2), got 2"),
        (-1, 2, 10, "render_rows: shard index must be in [0, 2), got -1"),
        (0, 2, 0, "render_rows: chunk must be >= 1, got 0"),
    ],
)
def test_bad_shards_are_refused(field: ImageField, index: int, count: int, chunk: int, message: str) -> None:
    with pytest.raises(ValueError, match=r"^render_rows: ") as caught:
        render_rows(field, index, count, chunk)
    assert str(caught.value) == message


def test_the_psnr_of_an_mse() -> None:
    assert psnr_of(0.01) == 20.0
    assert psnr_of(1.0) == 0.0
    assert psnr_of(0.0) == psnr_of(1e-13) == 120.0  # as the float32 formula's clamp_min(1e-12) did
