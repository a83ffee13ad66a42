"""``python -m benchmarks.gpu`` runs its CPU path at a tiny size (this machine has no GPU; on one, the same script
counts host syncs under ``torch.cuda.set_sync_debug_mode`` and writes benchmarks/results-gpu.md). No timing is
asserted: the report's rows are."""

from __future__ import annotations

from pathlib import Path

from benchmarks.gpu import RESULTS, main


def test_the_gpu_script_runs_its_cpu_path_and_reports_every_row(tmp_path: Path) -> None:
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    out = tmp_path / "gpu.md"
    assert main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Device: the CPU (no CUDA: syncs not checked)" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    sync = [row[0].lstrip("| ") for row in rows if "not checked" in row[2]]
    assert sync == [
        "tiny MLP, no callback",
        "tiny MLP, default set",
        "tiny MLP, default set, Adam(fused=True)",
        "tiny MLP, default set, GradientGuard(on_nonfinite=None)",
        'tiny MLP, default set, precision="16-mixed"',
        'tiny MLP, default set, precision="bf16-mixed"',
        "image field, its default config",
    ]
    speed = [(row[0].lstrip("| "), row[1]) for row in rows if row[0].lstrip("| ") in ("32", "bf16-mixed")]
    variants = [
        "raw PyTorch loop",
        "stepbus, 0 callbacks",
        "stepbus, full default set",
        "Lightning Trainer, extras off",
    ]
    assert speed == [(p, v) for p in ("32", "bf16-mixed") for v in variants]
    assert "Fewer than two: not measured." in text
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before
