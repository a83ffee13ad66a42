"""The DDP/FSDP benchmark still runs (tiny sizes, real 2-rank gloo jobs). No timing is asserted: speed is reported,
never tested. What is asserted is exact: the bytes of model state each rank holds, which FSDP halves."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import strategies


@pytest.mark.slow  # four jobs of fresh processes
def test_strategies_benchmark_smoke(tmp_path: Path) -> None:  # four jobs of fresh processes: ~16 s on 2 cores
    out = tmp_path / "results.md"
    work = tmp_path / "work"
    work.mkdir()
    assert strategies.main(["--quick", "--out", str(out), "--dir", str(work)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    table = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines if line.startswith("| ")]
    assert table[0] == [
        "variant",
        "µs/it",
        "vs DDP",
        "save ms",
        "checkpoint",
        "model state per rank",
        "bytes",
        "vs DDP",
        "peak RSS growth, build",
        "peak RSS growth, steps",
        "vs DDP",
    ]
    rows = {row[0]: row for row in table[1:]}
    assert list(rows) == [
        "one process (context)",
        "DDP, 2 ranks",
        "FSDP, 2 ranks, units 'children' (default)",
        "FSDP, 2 ranks, units 'root'",
    ]
    for row in rows.values():  # every job measured something: a time per iteration, a save and its size
        assert [float(row[1]) > 0, float(row[3]) > 0, float(row[4].removesuffix(" MiB")) > 0] == [True] * 3, row
    # model state per rank, exact: parameters + gradients + Adam's two moments (4 bytes each per parameter, the
    # parameters, gradients and moments sharded along dimension 0 under FSDP) + Adam's step counter per tensor (a
    # 4-byte scalar every rank keeps whole: two tensors per linear layer)
    params, counters = strategies.model_parameters(strategies.QUICK), 2 * strategies.QUICK.depth * 4
    state = {label: int(row[6]) for label, row in rows.items()}
    assert state["one process (context)"] == state["DDP, 2 ranks"] == 16 * params + counters
    assert state["FSDP, 2 ranks, units 'children' (default)"] == 16 * params // 2 + counters
    assert state["FSDP, 2 ranks, units 'root'"] == 16 * params // 2 + counters
    assert [row[7] for row in rows.values()] == ["1.00x", "1.00x", "0.50x", "0.50x"]
    assert rows["DDP, 2 ranks"][2] == "1.00x"
    assert list(work.iterdir()) == []  # the jobs' files are gone
