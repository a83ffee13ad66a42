"""The coarse occupancy grid over the image that pruning updates (Wisp's pruning, in 2-D).

The image is split into ``cells x cells`` blocks. Each prune measures every block's content -- the largest colour
value the field predicts in it: at every pixel centre of an occupied block (so no detail, however thin, is missed
there), at a few fixed probe points of an unoccupied one (enough to notice content coming back) -- and smooths it
over prunes (``density = max(content,
decay * density)``, starting at 1), so a block is dropped only after it has looked empty for several prunes in a
row, and comes back if the field ever predicts content there again. Blocks whose density is below ``threshold`` are
unoccupied: training draws no samples there and rendering paints them black without evaluating the field.

The densities are buffers, so the model's ``state_dict`` (and a checkpoint) carries them; the list of occupied
pixels is derived from them on demand.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Occupancy"]


class Occupancy(nn.Module):
    """Occupancy of an ``height x width`` image in ``cells`` blocks per side (fewer for a smaller image)."""

    density: torch.Tensor

    def __init__(
        self, height: int, width: int, *, cells: int = 32, decay: float = 0.5, threshold: float = 0.02
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"occupancy decay must be in [0, 1), got {decay!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"occupancy threshold must be in (0, 1), got {threshold!r}")
        self.height, self.width = height, width
        self.cells_y, self.cells_x = min(cells, height), min(cells, width)
        self.cell_h, self.cell_w = math.ceil(height / self.cells_y), math.ceil(width / self.cells_x)
        self.decay, self.threshold = decay, threshold
        self.register_buffer("density", torch.ones(self.cells_y, self.cells_x))
        self._pixels: torch.Tensor | None = None  # occupied pixel indices, derived from density
        self.register_load_state_dict_post_hook(_forget)  # type: ignore[no-untyped-call]

    def forget(self) -> None:
        """Drop what is derived from the densities (after they changed)."""
        self._pixels = None

    def occupied_cells(self) -> torch.Tensor:
        """``(cells_y, cells_x)`` bool."""
        return self.density >= self.threshold

    def fraction(self) -> float:
        """The occupied fraction of the image's pixels (one host read)."""
        return len(self.pixels()) / (self.height * self.width)

    def pixel_mask(self) -> torch.Tensor:
        """``(height, width)`` bool: pixels in occupied blocks."""
        cells = self.occupied_cells()
        rows = cells.repeat_interleave(self.cell_h, 0)[: self.height]
        return rows.repeat_interleave(self.cell_w, 1)[:, : self.width]

    def pixels(self) -> torch.Tensor:
        """Indices (``y * width + x``) of the pixels in occupied blocks, ascending; computed once per change."""
        if self._pixels is None:
            self._pixels = self.pixel_mask().reshape(-1).nonzero().squeeze(1)
        return self._pixels

    def block_of(self, pixel: torch.Tensor) -> torch.Tensor:
        """The block index (``row * cells_x + column``) of each pixel index (``y * width + x``)."""
        y = torch.div(pixel, self.width, rounding_mode="floor")
        x = pixel - y * self.width
        return torch.div(y, self.cell_h, rounding_mode="floor") * self.cells_x + torch.div(
            x, self.cell_w, rounding_mode="floor"
        )

    def probe_points(self, per_side: int = 4) -> torch.Tensor:
        """``(cells_y * cells_x * per_side**2, 2)`` fixed points (x, y) in [0, 1]^2, block by block."""
        device = self.density.device
        offsets = (torch.arange(per_side, device=device, dtype=torch.float32) + 0.5) / per_side
        cy = torch.arange(self.cells_y, device=device, dtype=torch.float32)
        cx = torch.arange(self.cells_x, device=device, dtype=torch.float32)
        y = ((cy.view(-1, 1, 1, 1) + offsets.view(1, 1, -1, 1)) * self.cell_h / self.height).clamp(max=1.0)
        x = ((cx.view(1, -1, 1, 1) + offsets.view(1, 1, 1, -1)) * self.cell_w / self.width).clamp(max=1.0)
        shape = (self.cells_y, self.cells_x, per_side, per_side)
        return torch.stack([x.expand(shape).reshape(-1), y.expand(shape).reshape(-1)], 1)

    @torch.no_grad()
    def update(self, content: torch.Tensor) -> float:
        """Fold one prune's per-block ``content`` (``(cells_y, cells_x)``) into the densities; returns the occupied
        fraction of the pixels."""
        self.density.copy_(torch.maximum(content.to(self.density), self.density * self.decay))
        self.forget()
        return self.fraction()


def _forget(module: nn.Module, keys: object) -> None:
    if isinstance(module, Occupancy):
        module.forget()
