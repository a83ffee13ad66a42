"""The benchmark still runs (tiny size). No timing is asserted: speed is reported, never tested."""

from __future__ import annotations

from pathlib import Path

from benchmarks import overhead


def test_overhead_benchmark_smoke(tmp_path: Path, capsys: object) -> None:
    out = tmp_path / "results.md"
    assert overhead.main(["--iterations", "100", "--repeats", "1", "--out", str(out)]) == 0
    report = out.read_text()
    variants = [
        row.split("|")[2].strip()
        for row in report.splitlines()
        if row.startswith(("| train", "| scheduled", "| logging", "| engine"))
    ]
    assert variants == [
        "raw PyTorch loop",
        "stepbus, 0 callbacks",
        "stepbus, 10 no-op callbacks",
        "raw loop + LR decay, clip, finite check, prune hook, validation",
        "stepbus + LRDecay, GradientGuard, GridPruning, Validator, EarlyStopping",
        "stepbus, 0 callbacks (again, the baseline here)",
        "stepbus + metric flow (a window read every 50 it)",
        "stepbus + ProgressBar (terminal, 10 Hz)",
        "stepbus + TensorBoardLogger every 50 it",
        "stepbus + WandbLogger every 50 it (offline; its ~0.5 s start and finish excluded)",
        "raw Python loop over the batches",
        "stepbus engine, 0 callbacks",
        "stepbus engine, 10 no-op callbacks",
        "stepbus engine + ProgressBar (terminal, 10 Hz)",
    ]


def test_ten_noop_callbacks_have_distinct_keys_and_mixed_events() -> None:
    callbacks = overhead.ten_noop_callbacks()
    assert len(callbacks) == 10
    assert len({cb.state_key for cb in callbacks}) == 10
    events = {event.value for cb in callbacks for event, _, _ in cb.handlers()}
    assert events == {"pre_training", "pre_epoch", "pre_step", "step", "post_step", "post_epoch", "post_training"}
