"""``python -m benchmarks`` still runs every case (tiny sizes), peers included, and its report has every row the
docs/benchmarks.md quotes. No timing is asserted: speed is reported, never tested."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import memory, overhead, peers
from benchmarks.__main__ import main
from benchmarks.raw_loops import raw_accumulate, raw_autocast, window_lengths
from benchmarks.workload import Discard, make_batches, make_model, mse
from trainers.engine.trainer import BaseTrainer

NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?(x| µs/it| ns)?$")

TRAIN = [
    "raw PyTorch loop",
    "stepbus, 0 callbacks",
    "stepbus, 10 no-op callbacks",
    "stepbus, full default set",
    "raw loop doing the default set's work by hand",
    "the same by-hand loop, run again (the noise floor)",
    "raw loop doing less by hand (latest loss every 50 it, one bar)",
    "Ignite Engine, bare",
    "Ignite Engine + comparable handlers",
    "Lightning Trainer, extras off",
    "Lightning Trainer, defaults on",
]
ENGINE = [
    "raw Python loop over the batches",
    "stepbus, 0 callbacks",
    "stepbus, 10 no-op callbacks",
    "Ignite Engine, bare",
    "Ignite Engine, 10 no-op handlers",
    "Lightning Trainer, extras off",
    "Lightning Trainer, extras off, 10 no-op callbacks",
]
STEP_OPTIONS = {
    "accumulate": [
        "raw loop accumulating by hand (loss / 4, a step every 4 batches)",
        "stepbus, 0 callbacks, accumulate=4",
        "Ignite create_supervised_trainer, gradient_accumulation_steps=4",
        "Lightning Trainer, extras off, accumulate_grad_batches=4",
    ],
    "bf16": [
        "raw loop, forward and loss under torch.autocast(cpu, bfloat16)",
        'stepbus, 0 callbacks, precision="bf16-mixed"',
        "Ignite Engine, bare, its update under torch.autocast(cpu, bfloat16)",
        'Lightning Trainer, extras off, precision="bf16-mixed"',
    ],
}


def _rows(section: str) -> list[list[str]]:
    """The cells of every table row of a markdown section, header rows and separators left out."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _section(report: str, case: int) -> str:
    start = report.index(f"## Case {case}:")
    end = report.find("## Case", start + 1)
    return report[start : end if end != -1 else None]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("bench") / "results.md"
    assert main(["--quick", "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8")


def test_the_peers_are_installed_for_the_suite() -> None:
    # CI installs stepbus[bench]: a missing peer would turn its rows into "not installed" and the smoke test blind
    assert all(version is not None for version in peers.versions().values()), peers.versions()


def test_case_1_has_the_headline_and_every_variant_measured(report: str) -> None:
    section = _section(report, 1)
    versions = peers.versions()
    assert f"pytorch-ignite {versions['ignite']}, lightning {versions['lightning']}." in section
    rows = _rows(section)
    headline = [row for row in rows if len(row) == 4 and row[0] != "claim"]
    targets = ["≤ 3 µs/it", "≤ 1.10x", "≤ 1.05x", "≥ 3x", "≥ 3x", "≥ 40x", "≥ 40x", "≤ 5 µs/it"]
    assert [row[1] for row in headline] == targets
    for claim, _, measured, verdict in headline:
        assert NUMBER.match(measured), (claim, measured)
        assert verdict in ("met", "**missed**")
    table = [row for row in rows if len(row) == 8 and row[0] != "case"]
    assert [row[1] for row in table if row[0] == "train"] == TRAIN
    assert [row[1] for row in table if row[0] == "engine"] == ENGINE
    others = [row[0] for row in table if row[0] not in ("train", "engine")]
    assert others == ["callbacks"] * 16 + ["scheduled"] * 2 + ["accumulate"] * 4 + ["bf16"] * 4
    for group, names in STEP_OPTIONS.items():
        assert [row[1] for row in table if row[0] == group] == names
    for row in table:
        assert all(NUMBER.match(cell) or cell == "n/a" for cell in row[2:]), row
    first = {row[0]: row for row in reversed(table)}  # the first row of each group is its baseline
    assert all(
        row[4] == "+0.00" and row[6] == ("n/a" if group == "engine" else "1.000x") for group, row in first.items()
    )
    assert re.search(
        r"Noise floor of this run: .* a paired ratio of \d+\.\d{3}x \(a ratio of medians of \d+\.\d{3}x\)", section
    )


def test_paired_ratios_cancel_a_drift_between_repeats() -> None:
    # the machine twice as slow in the second repeat: each repeat's ratio is 1.1, the medians' ratio is not
    assert overhead.paired_ratio([110.0, 220.0, 330.0], [100.0, 200.0, 300.0]) == pytest.approx(1.1)
    assert overhead.paired_ratio([1.0, 5.0, 2.0], [1.0, 1.0, 1.0]) == 2.0  # the median, not the mean
    with pytest.raises(ValueError, match="zip"):
        overhead.paired_ratio([1.0], [1.0, 2.0])  # rows of different repeats are never paired
    rows = [
        {
            "group": "train",
            "variant": overhead.BY_HAND,
            "missing": False,
            "samples": [100.0, 200.0],
            "median_us": 150.0,
        },
        {
            "group": "train",
            "variant": overhead.BY_HAND_AGAIN,
            "missing": False,
            "samples": [101.0, 204.0],
            "median_us": 152.5,
        },
    ]
    floor = overhead.noise_floor(rows)
    assert floor is not None
    assert floor == (pytest.approx(1.015), pytest.approx(152.5 / 150.0))


def test_case_2_scales_over_0_1_10_100_callbacks_and_silent_events(report: str) -> None:
    rows = _rows(_section(report, 2))
    counts = [(row[0], row[1]) for row in rows if len(row) == 5 and row[0] != "registered post_step callbacks"]
    registered = [("0", "0"), ("1", "1"), ("10", "10"), ("100", "100")]
    assert counts == [*registered, ("100", "0"), ("100", "1"), ("100", "10"), ("100", "100")]
    silent = [row for row in rows if len(row) == 2 and row[0] != "emitting an event nobody listens to"]
    assert [row[0] for row in silent] == [
        "empty Python function call (the floor)",
        "trainer hot path: if channel.active: channel.emit(...)",
        "Bus.emit(event, sender, ...)",
        "blinker Signal.send(sender, ...) with no receivers",
    ]
    assert all(float(row[1]) > 0 for row in silent)


def test_case_3_runs_the_reference_app_against_the_hand_written_loop(report: str) -> None:
    rows = _rows(_section(report, 3))
    assert [row[0] for row in rows[1:]] == [
        "hand-written PyTorch loop",
        "stepbus, same work (LR decay, pruning, validation)",
        "stepbus, the default app (+ TensorBoard, checkpoints, metrics.json, PNGs)",
    ]


def test_case_4_reports_rss_and_tracemalloc_growth(report: str) -> None:
    section = _section(report, 4)
    assert "RSS over 2000 iterations, tracemalloc over 1000" in section
    variants = [
        "raw PyTorch loop",
        "stepbus, full default set",
        "stepbus, full default set + W&B, MLflow and CSV loggers",
    ]
    rows = [row for row in _rows(section) if row[0] in variants]
    assert [row[0] for row in rows] == variants
    for row in rows:
        start, end = row[1].split(" → ")
        assert float(start) > 0
        assert float(end) > 0
        float(row[2])
        float(row[4])
    sites = [line for line in section.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0] for line in sites] == [f"- {variant}" for variant in variants]


def test_case_5_times_a_log_point_of_each_logger_on_both_threads(report: str) -> None:
    section = _section(report, 5)
    loggers = ["TensorBoardLogger", "WandbLogger (offline)", "MLflowLogger (SQLite)"]
    rows = [row for row in _rows(section) if row[0] in loggers]
    assert [(row[0], row[1].split(" (")[0]) for row in rows] == [
        (logger, where) for logger in loggers for where in ("the training thread", "its own thread")
    ]
    for row in rows:
        assert all(float(cell) > 0 for cell in row[2:4]), row  # a log point and an epoch end were timed
        assert float(row[5]) > 0
    assert [line.split(":")[0] for line in section.splitlines() if line.startswith("- ")] == [
        f"- {logger}" for logger in loggers
    ]


def test_a_quick_run_without_out_leaves_the_results_file_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = Path(overhead.__file__).with_name("results.md")
    before = results.read_bytes() if results.exists() else None
    assert main(["--quick", "--case", "scaling"]) == 0
    assert (results.read_bytes() if results.exists() else None) == before


def test_a_missing_peer_is_reported_not_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overhead, "versions", lambda: {"ignite": None, "lightning": None})
    rows = overhead.run(20, 1)
    text = overhead.table(rows, 20, 1)
    peer_rows = [(row["group"], row["variant"]) for row in rows if row["missing"]]
    groups = {"train": TRAIN, "engine": ENGINE, **STEP_OPTIONS}
    assert peer_rows == [
        (group, name) for group, names in groups.items() for name in names if name.startswith(("Ignite", "Lightning"))
    ]
    for group, name in peer_rows:
        assert f"| {group} | {name} | not installed (`pip install stepbus[bench]`) | | | | | |" in text
    assert text.count("n/a (not measured: a peer is not installed)") == 4  # the four peer ratios
    assert all(not row["missing"] for row in rows if row["variant"].startswith(("raw", "stepbus")))


def test_slope_is_the_least_squares_slope() -> None:
    assert memory.slope([(0, 10), (10, 30), (20, 50)]) == 2.0
    assert memory.slope([(0, 5), (1, 5)]) == 0.0
    assert memory.slope([(3, 7)]) == 0.0


def test_discard_keeps_nothing() -> None:
    sink = Discard()
    assert sink.write("frame" * 1000) == 5000
    assert sink.getvalue() == ""


def test_ten_noop_callbacks_have_distinct_keys_and_mixed_events() -> None:
    callbacks = overhead.ten_noop_callbacks()
    assert len(callbacks) == 10
    assert len({cb.state_key for cb in callbacks}) == 10
    events = {event.value for cb in callbacks for event, _, _ in cb.handlers()}
    assert events == {"pre_training", "pre_epoch", "pre_step", "step", "post_step", "post_epoch", "post_training"}


def _weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize(
    ("options", "by_hand"),
    [
        ({"accumulate": 4}, lambda batches, net: raw_accumulate(batches, 2, 4, model=net)),
        ({"precision": "bf16-mixed"}, lambda batches, net: raw_autocast(batches, 2, model=net)),
    ],
    ids=["accumulate", "bf16"],
)
def test_the_raw_loops_do_what_the_trainer_options_do(options: dict[str, Any], by_hand: Any) -> None:
    # 10 batches an epoch: windows of 4, 4 and a cut-short 2 -- the same weights, bit for bit, after two epochs
    batches = make_batches(10)
    net = make_model(0)
    trainer = BaseTrainer(
        net,
        batches,
        max_epochs=2,
        batch_size=None,
        shuffle=False,
        device="cpu",
        loss_fn=mse,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
        **options,
    )
    trainer.train()
    trainer.close()
    raw = make_model(0)
    by_hand(batches, raw)
    assert all(torch.equal(a, b) for a, b in zip(_weights(net), _weights(raw), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(raw), _weights(make_model(0)), strict=True))


def test_window_lengths_never_cross_an_epoch() -> None:
    assert window_lengths(10, 4) == [4] * 8 + [2] * 2
    assert window_lengths(8, 4) == [4] * 8
    assert window_lengths(3, 1) == [1, 1, 1]
