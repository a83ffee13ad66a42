"""A small real 2-D feature-grid model with an occupancy grid, for the pruning tests (not a test module).

``GridModel`` holds a dense grid of learnable features (``C x R x R``) sampled bilinearly with ``grid_sample`` at
input coordinates in ``[-1, 1]^2`` (``x`` along the width, ``y`` along the height), and a tiny MLP decoder. A coarse
``R_o x R_o`` occupancy grid (a boolean buffer) decides where the decoder runs at all: samples in unoccupied cells
output exactly 0 without being decoded, so pruning really removes work. :meth:`GridModel.prune` measures each
cell's density (mean ``|decoder output|`` over fixed sample points of the cell), keeps a decaying maximum of it in a
buffer (Instant-NGP's ``max(density * decay, new)``), marks cells below ``threshold`` unoccupied (for good: it only
carves) and returns the occupied fraction as a 0-d tensor.

``image_data`` builds the training set: the pixel centres of an image whose right half (``x > 0``) is empty
(target 0), and whose left half is a smooth pattern in ``[0.3, 0.9]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

__all__ = ["GridModel", "decoder_flops", "grid_loss", "image_data", "pixel_coords"]


class GridModel(nn.Module):
    def __init__(
        self,
        *,
        channels: int = 4,
        resolution: int = 8,
        occupancy_resolution: int = 4,
        hidden: int = 16,
        dropout: float = 0.0,
        threshold: float = 0.1,
        decay: float = 0.5,
        samples_per_cell: int = 4,
    ) -> None:
        super().__init__()
        self.features = nn.Parameter(0.5 * torch.randn(1, channels, resolution, resolution))
        self.decoder = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.occupancy_resolution = occupancy_resolution
        self.threshold = threshold
        self.decay = decay
        self.samples_per_cell = samples_per_cell
        self.register_buffer("occupancy", torch.ones(occupancy_resolution, occupancy_resolution, dtype=torch.bool))
        self.register_buffer("density", torch.zeros(occupancy_resolution, occupancy_resolution))
        #: how many times prune() ran, and how many samples the decoder evaluated in forward passes
        self.prune_calls = 0
        self.decoder_evals = 0

    def cells(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) of the occupancy cell of each coordinate ``(x, y)``."""
        r = self.occupancy_resolution
        col = ((coords[:, 0] + 1) * 0.5 * r).long().clamp(0, r - 1)
        row = ((coords[:, 1] + 1) * 0.5 * r).long().clamp(0, r - 1)
        return row, col

    def decode(self, coords: torch.Tensor) -> torch.Tensor:
        """Decoder output at ``coords`` (``M x 2``) regardless of occupancy: ``M x 1``."""
        grid = coords.view(1, -1, 1, 2)
        sampled = F.grid_sample(self.features, grid, mode="bilinear", align_corners=False)  # 1 x C x M x 1
        return self.decoder(sampled[0, :, :, 0].t())

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        row, col = self.cells(coords)
        mask = self.occupancy[row, col]
        selected = coords[mask]
        self.decoder_evals += selected.shape[0]
        out = coords.new_zeros(coords.shape[0], 1)
        if selected.shape[0]:
            out = out.index_put((mask,), self.decode(selected))
        return out

    def cell_samples(self) -> torch.Tensor:
        """``samples_per_cell**2`` evenly spaced points per cell, cells row-major: ``(R_o^2 * S^2) x 2``."""
        r, s = self.occupancy_resolution, self.samples_per_cell
        offsets = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        starts = torch.arange(r, dtype=torch.float32)
        # position along one axis, per (cell, sample): (start + offset) / r * 2 - 1
        axis = ((starts[:, None] + offsets[None, :]) / r * 2 - 1).to(self.features.device)  # r x s
        ys = axis[:, None, :, None].expand(r, r, s, s)  # row cell, col cell, sample y, sample x
        xs = axis[None, :, None, :].expand(r, r, s, s)
        return torch.stack([xs, ys], dim=-1).reshape(-1, 2)

    @torch.no_grad()
    def prune(self) -> torch.Tensor:
        was_training = self.training
        self.eval()  # no dropout: the density is a deterministic function of the weights
        try:
            values = self.decode(self.cell_samples()).abs()
        finally:
            self.train(was_training)
        r, s = self.occupancy_resolution, self.samples_per_cell
        new = values.view(r, r, s * s).mean(dim=-1)
        self.density.copy_(torch.maximum(self.density * self.decay, new))
        self.occupancy &= self.density > self.threshold  # carving only: an empty cell stays empty
        self.prune_calls += 1
        return self.occupancy.float().mean()


def pixel_coords(size: int = 16) -> torch.Tensor:
    """The pixel centres of a ``size x size`` image in ``[-1, 1]^2``, row-major, as ``(x, y)``: ``size^2 x 2``."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def image_data(size: int = 16) -> TensorDataset:
    """Coordinates and targets of an image whose right half is empty (0) and left half lies in ``[0.3, 0.9]``."""
    coords = pixel_coords(size)
    x, y = coords[:, 0], coords[:, 1]
    left = 0.6 + 0.3 * torch.sin(3 * x) * torch.cos(2 * y)
    target = torch.where(x < 0, left, torch.zeros_like(left))
    return TensorDataset(coords, target[:, None])


def grid_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def decoder_flops(samples: int, channels: int = 4, hidden: int = 16) -> int:
    """FLOPs ``FlopCounterMode`` counts for decoding ``samples`` points (two matmuls, 2 FLOPs per multiply-add)."""
    return 2 * samples * channels * hidden + 2 * samples * hidden
