"""``ImageFieldTrainer``: the only app-specific code is ``compute_loss`` and ``validate``; the factory
``image_field_trainer`` is what ``trainer: {name: image_field}`` builds.

Data: an epoch is ``batches_per_epoch`` batches of ``batch_size`` random pixels. The dataset is a range of
``batches_per_epoch * batch_size`` positions (each pixel about equally often), shuffled by the engine's
``(seed, epoch)`` rule, so a resumed run sees the very same batches. A position maps to a pixel among the occupied
ones, and the batch is cut to the occupied share of the image: after pruning, each step trains on
``batch_size * occupied fraction`` samples -- the same density per kept pixel, proportionally less work -- and the
cut is known on the host, so no step synchronises with the device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from callbacks.reductions import Mean
from callbacks.validation_sharding import validation_shard
from trainers.apps.checks import check_counts, check_positive_finite
from trainers.apps.image_field.field import ImageField
from trainers.apps.image_field.image import default_image, load_image
from trainers.apps.image_field.shard_render import gather_rows, render_rows
from trainers.apps.threads import apply_threads
from trainers.engine.optim_groups import param_groups
from trainers.engine.optimization import Precision, Strategy
from trainers.engine.trainer import BaseTrainer

__all__ = ["ImageFieldTrainer", "image_field_trainer", "psnr_of"]


def psnr_of(mse: float) -> float:
    """The PSNR in dB of an image in [0, 1] with this MSE (an MSE under 1e-12 counts as 1e-12: 120 dB)."""
    return -10.0 * math.log10(max(mse, 1e-12))


class ImageFieldTrainer(BaseTrainer):
    """Fits an :class:`ImageField` to ``target`` (``(3, H, W)`` in [0, 1])."""

    pipeline: ImageField

    def __init__(
        self,
        field: ImageField,
        target: torch.Tensor,
        *,
        batch_size: int = 16384,
        batches_per_epoch: int = 300,
        **kwargs: Any,
    ) -> None:
        if batches_per_epoch < 1 or batch_size < 1:
            raise ValueError(f"batch_size and batches_per_epoch must be >= 1, got {batch_size}, {batches_per_epoch}")
        pixels = target.shape[1] * target.shape[2]
        positions = torch.arange(batches_per_epoch * batch_size, dtype=torch.int32) % pixels
        super().__init__(field, TensorDataset(positions), batch_size=batch_size, **kwargs)
        self.target = target.to(self.device).permute(1, 2, 0).reshape(-1, 3).contiguous()
        self.target_image = target.permute(1, 2, 0).contiguous()  #: (H, W, 3), for previews and PNGs
        self.preview_stride = 2  #: :meth:`preview` renders every 2nd pixel of every 2nd row

    def compute_loss(self, batch: Any) -> dict[str, Any]:
        (positions,) = batch
        field = self.pipeline
        occupied = field.occupancy.pixels()
        kept = len(occupied)
        total = field.height * field.width
        if kept == 0:
            raise RuntimeError(
                f"pruning left no occupied pixel at iteration {self.state.iteration}: lower the occupancy threshold "
                f"(now {field.occupancy.threshold}) or start pruning later"
            )
        if kept < total:  # the occupied share of the batch, drawn among occupied pixels
            positions = positions[: max(1, math.ceil(len(positions) * kept / total))]
            pixels = occupied[positions.long() % kept]
        else:
            pixels = positions.long()
        prediction = field(field.coords(pixels))
        loss = nn.functional.mse_loss(prediction, self.target[pixels])
        return {"loss": loss, "samples": float(len(pixels))}

    def validate(self) -> Mapping[str, Any]:
        """The rendered image, its MSE against the target over every pixel and channel, and the PSNR of that MSE.

        Under ``Validator(ranks="all")`` each rank renders its share of the rows (``shard_render``) and returns its
        squared errors' sum and count, which the ranks add up before dividing; every rank gets the whole image. In
        one process (and with ``ranks="zero"``) the shard is the whole image. The MSE is summed in float64 (each
        squared difference of two float32 values is exact there)."""
        field = self.pipeline
        index, count = validation_shard(self)
        if count == 1:
            image = rows = field.render()
        else:
            rows = render_rows(field, index, count)
            image = gather_rows(rows, count, field.height)
        target = self.target.view(field.height, field.width, 3)[index::count]
        mse = Mean(((rows.double() - target.double()) ** 2).sum(), rows.numel())
        return {"psnr": mse.then(psnr_of), "mse": mse, "images": {"render": image}}

    @torch.no_grad()
    def preview(self, stride: int | None = None) -> dict[str, Any]:
        """A cheap picture for a live display (the :class:`~callbacks.Preview` callback, the GUI): the field rendered
        at every ``stride``-th pixel (``preview_stride``, 2 by default: a quarter of a validation's cost), the target
        at the same pixels, and their PSNR. Reads no random numbers, so previews never change the training result."""
        stride = self.preview_stride if stride is None else stride
        image = self.pipeline.render(stride=stride)
        target = self.target_image[::stride, ::stride]
        mse = nn.functional.mse_loss(image, target.to(image.device))
        return {"image": image, "target": target, "psnr": float(-10.0 * torch.log10(mse.clamp_min(1e-12)))}


def image_field_trainer(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    image: str | None = None,
    size: int = 512,
    max_epochs: int = 10,
    batch_size: int = 16384,
    batches_per_epoch: int = 300,
    dense: Sequence[int] = (16, 32, 64, 128),
    hashed: Sequence[int] = (256, 512),
    features: int = 2,
    table: int = 2**13,
    hidden: int = 64,
    occupancy_cells: int = 32,
    occupancy_decay: float = 0.5,
    occupancy_threshold: float = 0.02,
    grid_lr_weight: float = 10.0,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    device: str = "cpu",
    threads: int | Literal["auto"] | None = "auto",
    precision: Precision = "32",
    accumulate: int = 1,
    compile: bool | dict[str, Any] = False,
    strategy: Strategy = "ddp",
    fsdp: dict[str, Any] | None = None,
) -> ImageFieldTrainer:
    """The reference app: fit a neural field to an image (the built-in one, or ``image``: a PNG path).

    The grid and the decoder are separate optimizer groups; the grid's LR is ``grid_lr_weight`` times the
    optimizer's (Wisp's ``grid_lr_weight``). ``threads`` is torch's thread count (``auto``: see
    ``trainers.apps.threads``; ``None``: torch's setting, left alone). ``precision``, ``accumulate``, ``compile``,
    ``strategy`` and ``fsdp`` are ``BaseTrainer``'s.
    """
    check_counts(features=features, table=table, hidden=hidden, occupancy_cells=occupancy_cells)
    check_positive_finite(grid_lr_weight=grid_lr_weight)
    apply_threads(threads)
    target = load_image(image) if image is not None else default_image(size, seed=0)
    torch.manual_seed(seed)
    field = ImageField(
        target.shape[1],
        target.shape[2],
        dense=dense,
        hashed=hashed,
        features=features,
        table=table,
        hidden=hidden,
        cells=occupancy_cells,
        decay=occupancy_decay,
        threshold=occupancy_threshold,
    )
    make = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-2, eps=1e-15))
    built = make(param_groups(field, {"grid": {}, "decoder": {}}))  # groups named "grid" and "decoder"
    built.param_groups[0]["lr"] *= grid_lr_weight  # before any LR scheduler records the initial LRs
    return ImageFieldTrainer(
        field,
        target,
        batch_size=batch_size,
        batches_per_epoch=batches_per_epoch,
        max_epochs=max_epochs,
        seed=seed,
        device=device,
        optimizer=built,
        run_dir=run_dir,
        precision=precision,
        accumulate=accumulate,
        compile=compile,
        strategy=strategy,
        fsdp=fsdp,
    )
