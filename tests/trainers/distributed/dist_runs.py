"""Runs of ``dist_train.py`` for the distributed tests: a JSON spec written beside its output folder, run under
``torchrun`` (2 ranks), in one process, or as ranks started by hand; and what each rank left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tests.trainers.distributed.ranks import start_ranks, torchrun

__all__ = ["APP", "by_hand", "report", "single", "spec_file", "two_ranks", "weights"]

APP = Path(__file__).resolve().parent / "dist_train.py"


def spec_file(tmp: Path, name: str, **spec: Any) -> tuple[Path, Path]:
    """``tmp/<name>.json`` holding ``spec`` with ``out`` = the new folder ``tmp/<name>``; both paths."""
    out = tmp / name
    out.mkdir()
    file = tmp / f"{name}.json"
    file.write_text(json.dumps({"out": str(out), **spec}), encoding="utf-8")
    return file, out


#: a finished run and its output folder
Run = tuple[subprocess.CompletedProcess[str], Path]


def two_ranks(tmp: Path, name: str, env: Mapping[str, str], **spec: Any) -> Run:
    file, out = spec_file(tmp, name, **spec)
    return torchrun([str(APP), str(file)], tmp, env=env), out


def single(tmp: Path, name: str, env: Mapping[str, str], **spec: Any) -> Run:
    file, out = spec_file(tmp, name, **spec)
    alone = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, str(APP), str(file)], env=alone, capture_output=True, text=True, timeout=240, cwd=tmp
    )
    return result, out


def by_hand(tmp: Path, name: str, env: Mapping[str, str], **spec: Any) -> tuple[list[subprocess.Popen[str]], Path]:
    """Two ranks started directly, without torchrun's agent (nothing kills the survivor for us)."""
    file, out = spec_file(tmp, name, **spec)
    return start_ranks([str(APP), str(file)], tmp, env=env), out


def report(out: Path, rank: int) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / f"report-{rank}.json").read_text(encoding="utf-8"))
    return found


def weights(out: Path, rank: int) -> dict[str, Any]:
    found: dict[str, Any] = torch.load(out / f"weights-{rank}.pt", weights_only=True)
    return found
