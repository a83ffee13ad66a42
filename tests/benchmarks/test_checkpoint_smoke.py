"""The checkpoint benchmark still runs (tiny size). No timing is asserted: speed is reported, never tested."""

from __future__ import annotations

from pathlib import Path

from benchmarks import checkpoint


def test_checkpoint_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    assert checkpoint.main(["--quick", "--out", str(out), "--dir", str(tmp_path)]) == 0
    lines = out.read_text().splitlines()
    rows = [line.split("|")[1:4] for line in lines if line.startswith("| ") and "---" not in line]
    cases = [(case.strip(), variant.strip()) for case, _, variant in rows[1:]]
    assert cases == [
        ("save", "torch.save (no fsync, not atomic)"),
        ("save", "trainer.save_checkpoint (checked, atomic, fsynced)"),
        ("load", "torch.load(weights_only=True)"),
        ("load", "load_checkpoint (CRC-32 verified)"),
        ("load", "read_metadata (memory-mapped)"),
        ("resume + 1 step", "early in the epoch (iteration 10)"),
        ("resume + 1 step", "late in the epoch (iteration 24990)"),
    ]
    assert list(tmp_path.iterdir()) == [out]  # its temporary files are gone
