"""The reference app's pruning state under 2 real ranks (torchrun, gloo): every rank prunes from the same weights,
with no random numbers, so the occupancy grid -- and the pixels each rank draws its batch from -- stay identical
without being broadcast. What each rank's prune computed is compared *before* the next forward, where DDP would copy
rank 0's buffers over rank 1's and hide a difference in the densities (not in the cached pixel list, which DDP does
not know about)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.trainers.distributed.ranks import torchrun

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "tests" / "trainers" / "distributed" / "dist_field.py"


def test_the_occupancy_grid_stays_identical_across_ranks(tmp_path: Path) -> None:
    result = torchrun([str(APP), str(tmp_path)], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    zero, one = (torch.load(tmp_path / f"field-{rank}.pt", weights_only=True) for rank in (0, 1))
    # six prunes (every 4th of 24 iterations), each published the same occupied fraction on both ranks
    assert zero["prunes"][:, 0].tolist() == [4.0, 8.0, 12.0, 16.0, 20.0, 24.0]
    assert torch.equal(zero["prunes"], one["prunes"])
    occupied = zero["prunes"][:, 1]
    assert occupied[0] == 1.0
    assert occupied[-1] < 0.9  # pruning dropped blocks: the grid is not trivially all-occupied
    assert torch.equal(zero["density"], one["density"])
    assert torch.equal(zero["pixels"], one["pixels"])
    assert len(zero["pixels"]) == round(float(occupied[-1]) * 32 * 32)
    for name, tensor in zero["weights"].items():
        assert torch.equal(tensor, one["weights"][name]), name
