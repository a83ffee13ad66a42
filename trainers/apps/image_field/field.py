"""``ImageField``: multi-resolution grid + a small MLP decoder to RGB, with an occupancy grid for pruning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainers.apps.image_field.grid import MultiResGrid
from trainers.apps.image_field.occupancy import Occupancy

__all__ = ["ImageField"]


class ImageField(nn.Module):
    """A neural field for an ``height x width`` image: ``grid`` (features) -> ``decoder`` (RGB), and ``occupancy``.

    ``grid`` and ``decoder`` are separate submodules so they can be separate optimizer groups (Wisp's
    ``grid_lr_weight``).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        dense: Sequence[int] = (16, 32, 64, 128),
        hashed: Sequence[int] = (256, 512),
        features: int = 2,
        table: int = 2**13,
        hidden: int = 64,
        cells: int = 32,
        decay: float = 0.5,
        threshold: float = 0.02,
    ) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.grid = MultiResGrid(dense, hashed, features=features, table=table)
        self.decoder = nn.Sequential(
            nn.Linear(self.grid.out_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 3),
        )
        self.occupancy = Occupancy(height, width, cells=cells, decay=decay, threshold=threshold)
        self.rendered_samples = 0  #: field evaluations of the last render (pruned pixels cost none)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` points (x, y) in [0, 1]^2 -> ``(N, 3)`` RGB (not clamped)."""
        rgb: torch.Tensor = self.decoder(self.grid(xy))
        return rgb

    def coords(self, pixel: torch.Tensor) -> torch.Tensor:
        """Pixel indices (``y * width + x``) -> their centres in [0, 1]^2."""
        y = torch.div(pixel, self.width, rounding_mode="floor")
        x = pixel - y * self.width
        return torch.stack([(x.float() + 0.5) / self.width, (y.float() + 0.5) / self.height], 1)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def prune(self, chunk: int = 65536) -> float:
        """Re-measure each occupancy block from the field's predictions and drop the ones that stayed empty;
        returns the occupied fraction of the image (published as ``prune/occupancy``). Occupied blocks are
        measured at every pixel centre (what training and rendering see), unoccupied ones at probe points."""
        occupancy = self.occupancy
        blocks = occupancy.cells_y * occupancy.cells_x
        content = torch.zeros(blocks, device=occupancy.density.device)
        pixels = occupancy.pixels()
        for start in range(0, len(pixels), chunk):
            part = pixels[start : start + chunk]
            values = self(self.coords(part)).abs().amax(1)
            content.scatter_reduce_(0, occupancy.block_of(part), values, reduce="amax")
        empty = (~occupancy.occupied_cells()).reshape(-1).nonzero().squeeze(1)
        if len(empty):
            points = occupancy.probe_points().view(blocks, -1, 2)[empty]
            content[empty] = self(points.reshape(-1, 2)).abs().amax(1).view(len(empty), -1).amax(1)
        return occupancy.update(content.view(occupancy.cells_y, occupancy.cells_x))

    @torch.no_grad()
    def render(self, chunk: int = 65536, *, stride: int = 1) -> torch.Tensor:
        """The image the field predicts, ``(height, width, 3)`` in [0, 1]; pruned blocks are black and cost
        nothing. ``stride`` > 1 renders every ``stride``-th pixel of every ``stride``-th row (a preview at
        1/stride² of the cost): ``(ceil(height / stride), ceil(width / stride), 3)``."""
        if stride < 1:
            raise ValueError(f"render: stride must be >= 1, got {stride}")
        if stride == 1:
            rows, columns = self.height, self.width
            kept = pixels = self.occupancy.pixels()  # cached between prunes
        else:
            mask = self.occupancy.pixel_mask()[::stride, ::stride]
            rows, columns = mask.shape
            kept = mask.reshape(-1).nonzero().squeeze(1)  # indices into the strided output
            index = torch.arange(self.height * self.width, device=mask.device).view(self.height, self.width)
            pixels = index[::stride, ::stride].reshape(-1)[kept]  # ... and the same pixels' indices in the image
        out = torch.zeros(rows * columns, 3, device=pixels.device)
        for start in range(0, len(pixels), chunk):
            out[kept[start : start + chunk]] = self(self.coords(pixels[start : start + chunk])).clamp(0, 1)
        self.rendered_samples = len(pixels)
        return out.view(rows, columns, 3)
