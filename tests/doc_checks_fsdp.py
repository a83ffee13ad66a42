"""The check of docs/distributed.md's FSDP example: the block is run as a script under ``torchrun`` with 2 ranks
(gloo, CPU), then its sharded checkpoint and the whole model it gathered are read back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.doc_checks import check
from tests.doc_pages import Block
from tests.trainers.distributed.ranks import torchrun
from trainers.checkpoint.format import read_metadata

_AFTER = """
if trainer.rank == 0:
    torch.save(whole, "whole.pt")
trainer.close()
"""


@check("fsdp-python", slow=True)
def _fsdp_python(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "script.py"
    script.write_text(block.text + _AFTER, encoding="utf-8")
    result = torchrun([str(script)], tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    last = tmp_path / "runs" / "fsdp" / "checkpoints" / "last.pt"
    assert last.resolve().is_dir()
    assert os.readlink(last) == "step-00000016.pt"  # 512 items in batches of 64: 8 per epoch, a save per epoch
    meta = read_metadata(last)
    assert (meta["world_size"], meta["sharded"], meta["iteration"]) == (2, True, 16)
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    assert {key: tuple(value.shape) for key, value in whole.items()} == {
        "0.weight": (64, 16), "0.bias": (64,), "2.weight": (64, 64), "2.bias": (64,), "4.weight": (1, 64),
        "4.bias": (1,),
    }  # fmt: skip
