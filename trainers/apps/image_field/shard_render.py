"""The image field's validation render split over ranks (``Validator(ranks="all")``): each rank renders its share
of the rows, and the image is put together on every rank.

Rank ``index`` of ``count`` renders the rows ``index, index + count, ...``: interleaved rows spread the pruned
(black, free) blocks about evenly over the ranks. Each field evaluation must be made by every rank the same number
of times -- under FSDP every forward is a collective over the ranks' parameter shards -- so every rank works out
every rank's number of occupied pixels (the occupancy is the same on every rank) and makes as many calls as the
busiest one needs; a rank with fewer pixels evaluates an empty batch in its last calls. The rows come back together
with one ``all_gather`` of equally long (padded) shards.
"""

from __future__ import annotations

import math

import torch

from trainers.apps.image_field.field import ImageField

__all__ = ["gather_rows", "render_rows"]


@torch.no_grad()
def render_rows(field: ImageField, index: int, count: int, chunk: int = 65536) -> torch.Tensor:
    """Rows ``index::count`` of :meth:`ImageField.render`'s image, ``(len(range(index, height, count)), width, 3)``
    in [0, 1], pruned blocks black; ``ceil(most occupied pixels of any rank / chunk)`` field evaluations (at least
    one), the same on every rank."""
    if not 0 <= index < count:
        raise ValueError(f"render_rows: shard index must be in [0, {count}), got {index}")
    if chunk < 1:
        raise ValueError(f"render_rows: chunk must be >= 1, got {chunk}")
    mask = field.occupancy.pixel_mask()
    per_row = mask.sum(1)
    occupied = [int(n) for n in torch.stack([per_row[r::count].sum() for r in range(count)]).tolist()]  # one sync
    calls = max(1, math.ceil(max(occupied) / chunk))
    mine = mask[index::count]
    grid = torch.arange(field.height * field.width, device=mask.device).view(field.height, field.width)
    kept = mine.reshape(-1).nonzero().squeeze(1)  # indices into this shard's rows
    pixels = grid[index::count].reshape(-1)[kept]  # ... and the same pixels' indices in the image
    out = torch.zeros(mine.numel(), 3, device=mask.device)
    for call in range(calls):
        part = slice(call * chunk, (call + 1) * chunk)  # empty for this rank once its pixels are done
        out[kept[part]] = field(field.coords(pixels[part])).clamp(0, 1)
    field.rendered_samples = len(pixels)
    return out.view(mine.shape[0], field.width, 3)


def gather_rows(rows: torch.Tensor, count: int, height: int) -> torch.Tensor:
    """The whole ``(height, width, 3)`` image from every rank's :func:`render_rows` (``rows``: this rank's); a
    collective over the default process group (``count`` its world size), on every rank."""
    import torch.distributed as dist

    longest = math.ceil(height / count)
    padded = rows.new_zeros(longest, *rows.shape[1:])
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(count)]
    dist.all_gather(parts, padded)
    image = rows.new_empty(height, *rows.shape[1:])
    for rank, part in enumerate(parts):
        image[rank::count] = part[: len(range(rank, height, count))]
    return image
