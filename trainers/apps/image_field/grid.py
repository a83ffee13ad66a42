"""A multi-resolution 2-D feature grid: dense levels sampled bilinearly with ``grid_sample``, and hashed levels
(Instant-NGP's spatial hash) for resolutions whose dense grid would not fit the parameter budget.

Each level maps a point in [0, 1]^2 to ``features`` numbers; the levels are concatenated for the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

__all__ = ["MultiResGrid"]

_PRIME = 2654435761  # Instant-NGP's second hashing prime (the first is 1)


class MultiResGrid(nn.Module):
    """Dense levels at ``dense`` resolutions, hashed levels at ``hashed`` resolutions into tables of ``table``
    entries. Parameters: ``features * (sum(r * r for r in dense) + len(hashed) * table)``."""

    def __init__(
        self, dense: Sequence[int], hashed: Sequence[int], *, features: int = 2, table: int = 2**13, scale: float = 1e-2
    ) -> None:
        super().__init__()
        if not dense and not hashed:
            raise ValueError("the grid needs at least one level (dense or hashed)")
        for r in (*dense, *hashed):
            if isinstance(r, bool) or not isinstance(r, int) or r < 2:
                raise ValueError(f"grid resolutions must be integers >= 2, got {r!r}")
        self.dense_resolutions, self.hashed_resolutions = tuple(dense), tuple(hashed)
        self.features, self.table = features, table
        self.dense = nn.ParameterList([nn.Parameter(torch.randn(1, features, r, r) * scale) for r in dense])
        self.hashed = nn.ParameterList([nn.Parameter(torch.randn(table, features) * scale) for _ in hashed])
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
        self.register_buffer("_corners", offsets, persistent=False)

    @property
    def out_features(self) -> int:
        return self.features * (len(self.dense) + len(self.hashed))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        """``xy``: ``(N, 2)`` points in [0, 1]^2 as (x, y); returns ``(N, out_features)``."""
        grid = (xy * 2 - 1).view(1, -1, 1, 2)
        out = [functional.grid_sample(level, grid, align_corners=False)[0, :, :, 0].t() for level in self.dense]
        corners = self._corners
        assert isinstance(corners, torch.Tensor)
        for resolution, table in zip(self.hashed_resolutions, self.hashed, strict=True):
            position = xy * (resolution - 1)
            base = position.floor()
            frac = position - base
            cells = base.long().unsqueeze(1) + corners  # (N, 4, 2)
            index = (cells[..., 0] ^ (cells[..., 1] * _PRIME)) % self.table  # (N, 4)
            wx = torch.stack([1 - frac[:, 0], frac[:, 0]], 1)[:, corners[:, 0]]
            wy = torch.stack([1 - frac[:, 1], frac[:, 1]], 1)[:, corners[:, 1]]
            # index_select, not table[index]: on the CPU with several threads, advanced indexing's backward
            # (index_put_ with accumulate) sums repeated rows in a run-dependent order, so two runs (or a run and
            # its resume) differ in the last bits and then diverge; index_select's (index_add_) is deterministic
            rows = table.index_select(0, index.reshape(-1)).view(*index.shape, self.features)  # (N, 4, features)
            out.append((rows * (wx * wy).unsqueeze(2)).sum(1))
        return torch.cat(out, 1)
