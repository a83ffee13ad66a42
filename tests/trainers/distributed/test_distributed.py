"""Rank awareness under a real ``torchrun`` (2 processes, gloo on the CPU): ``trainer.rank``, ``world_size``,
``is_global_zero``, and ``rank_zero_only`` callbacks that only rank 0 sets up and runs. A single process is rank 0
of 1 and runs them all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support import EVENT_METHODS
from tests.trainers.distributed.dist_app import main as run_app
from tests.trainers.distributed.ranks import torchrun

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "tests" / "trainers" / "distributed" / "dist_app.py"
#: every event of one epoch of 256 samples in batches of 32
EVENTS = ["pre_training", "pre_epoch", *["pre_step", "step", "post_step"] * 8, "post_epoch", "post_training"]


def test_two_ranks_under_torchrun(tmp_path: Path) -> None:
    result = torchrun([str(APP), str(tmp_path)], tmp_path, env={"WANDB_MODE": "offline"}, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["distributed"] is True
        assert report["rank"] == rank
        assert report["world_size"] == 2
        assert report["is_global_zero"] is (rank == 0)
        assert report["everywhere"] == EVENTS
        assert report["registered"] == ["ReportProgress", "Everywhere", "ZeroOnly"]  # registered on every rank
    assert reports[0]["zero_only"] == EVENTS
    assert (reports[0]["zero_only_set_up"], reports[0]["zero_only_handles"]) == (True, len(EVENT_METHODS))
    assert reports[1]["zero_only"] == []  # never ran on rank 1
    assert (reports[1]["zero_only_set_up"], reports[1]["zero_only_handles"]) == (False, 0)


def test_a_single_process_is_rank_zero_of_one(tmp_path: Path) -> None:
    for key in ("WORLD_SIZE", "RANK"):
        assert key not in os.environ
    run_app(tmp_path)
    report = json.loads((tmp_path / "rank-0.json").read_text(encoding="utf-8"))
    facts = (report["distributed"], report["rank"], report["world_size"], report["is_global_zero"])
    assert facts == (False, 0, 1, True)
    assert report["zero_only"] == report["everywhere"] == EVENTS


def test_the_loggers_progress_and_metrics_file_are_rank_zero_only() -> None:
    from callbacks import Checkpointer, LRDecay, MetricsFile, ProgressBar, TensorBoardLogger, Validator, WandbLogger

    assert [c.rank_zero_only for c in (TensorBoardLogger, WandbLogger, ProgressBar, MetricsFile)] == [True] * 4
    assert [c.rank_zero_only for c in (LRDecay, Validator, Checkpointer)] == [False] * 3
