"""Distributed training with real processes: 2 ranks on gloo, under ``torchrun`` or launched by hand (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT -- as on two machines, with no agent to clean up after a dead rank).

Each run is ``tests/trainers/distributed/dist_train.py`` with a JSON spec; each rank reports what it saw and saves its
weights.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tb_events import events as tb_events
from tests.tb_events import series
from tests.trainers.distributed import dist_runs
from tests.trainers.distributed.ranks import wait_ranks
from trainers.checkpoint.format import load_checkpoint, read_metadata

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
#: 512 samples in global batches of 32: 16 steps per epoch
STEPS = 16


def _spec(tmp: Path, name: str, **spec: Any) -> tuple[Path, Path]:
    return dist_runs.spec_file(tmp, name, **spec)


def _torchrun(tmp: Path, name: str, **spec: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    return dist_runs.two_ranks(tmp, name, ENV, **spec)


def _single(tmp: Path, name: str, **spec: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    return dist_runs.single(tmp, name, ENV, **spec)


def _by_hand(tmp: Path, name: str, **spec: Any) -> tuple[list[subprocess.Popen[str]], Path]:
    return dist_runs.by_hand(tmp, name, ENV, **spec)


_report, _weights = dist_runs.report, dist_runs.weights


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert "[ERROR]" not in log


def test_two_ranks_train_in_lockstep_like_one_process(tmp_path: Path) -> None:
    spec = {"epochs": 2, "validate_every": "1ep", "checkpoint_every": "1ep", "tensorboard": True, "wandb": True}
    two, out = _torchrun(tmp_path, "two", **spec)
    _ok(two)
    one, single = _single(tmp_path, "one", **{**spec, "wandb": False})
    _ok(one)
    ranks = [_weights(out, 0), _weights(out, 1)]
    alone = _weights(single, 0)
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key  # DDP: the same weights on both ranks, bit for bit
        # the same global batches, the gradient averaged over the two halves: the single process's weights
        torch.testing.assert_close(value, alone["model"][key], rtol=1e-5, atol=1e-6)
    assert ranks[0]["model"]["0.weight"].abs().sum() > 0
    reports = [_report(out, 0), _report(out, 1)]
    for report in reports:
        assert (report["status"], report["iteration"], report["world_size"]) == ("completed", 2 * STEPS, 2)
        assert report["steps"] == list(range(1, 2 * STEPS + 1))
    # validation ran on rank 0 and was broadcast: both ranks published the very same value
    assert reports[0]["metrics"]["val/mse"] == reports[1]["metrics"]["val/mse"]
    assert reports[0]["metrics"]["val/mse"] == pytest.approx(_report(single, 0)["metrics"]["val/mse"], rel=1e-4)
    # only rank 0 wrote: one TensorBoard event file, one W&B run, checkpoints by rank 0's process
    events = list((out / "tb").rglob("events.out.tfevents.*"))  # the scalars, and add_hparams' file at the end
    assert len(events) == 2
    assert {p.name.split(".")[-2] for p in events} == {str(reports[0]["pid"])}
    assert [step for step, _ in series(tb_events(out / "tb"), "val/mse")] == [STEPS, 2 * STEPS]
    assert len([d for d in (out / "wandb" / "wandb").glob("offline-run-*") if d.is_dir()]) == 1
    names = sorted(p.name for p in (out / "checkpoints").glob("step-*.pt"))
    assert names == [f"step-{STEPS:08d}.pt", f"step-{2 * STEPS:08d}.pt"]
    meta = read_metadata(out / "checkpoints" / names[-1])
    assert meta["writer"]["pid"] == reports[0]["pid"]
    assert meta["writer"]["rank"] == 0
    assert meta["world_size"] == 2
    saved = load_checkpoint(out / "checkpoints" / names[-1])
    assert len(saved["rank_rng"]) == 2  # every rank's RNG state, for an exact resume of each
    assert (out / "config.yaml").exists() is False  # this app is not built from a config (the CLI's is)


def test_accumulating_4_micro_batches_of_8_on_two_ranks_is_one_process_at_batch_32(tmp_path: Path) -> None:
    """Each rank computes 4 items of each global micro-batch of 8; the window's first three backward passes run in
    no_sync and the fourth all-reduces the sum: the gradient of the global batch of 32."""
    two, out = _torchrun(tmp_path, "two", epochs=1, batch_size=8, accumulate=4)
    _ok(two)
    one, single = _single(tmp_path, "one", epochs=1, batch_size=32)
    _ok(one)
    for rank in (0, 1):
        report = _report(out, rank)
        assert (report["iteration"], report["optimizer_step"]) == (4 * STEPS, STEPS)
    alone = _weights(single, 0)["model"]
    for key, value in _weights(out, 0)["model"].items():
        assert torch.equal(value, _weights(out, 1)["model"][key]), key
        torch.testing.assert_close(value, alone[key], rtol=1e-5, atol=1e-6)


def test_bf16_accumulation_ema_and_clipping_compose_on_two_ranks(tmp_path: Path) -> None:
    """bf16 autocast, windows of 2 micro-batches (no_sync on the first), an EMA of the weights, GradientGuard clipping
    every step's unscaled norm and a validation every epoch: both ranks end with the same weights and average."""
    spec = {"epochs": 2, "precision": "bf16-mixed", "accumulate": 2, "ema": 0.9, "clip_norm": 0.5}
    two, out = _torchrun(tmp_path, "two", validate_every="1ep", **spec)
    _ok(two)
    reports = [_report(out, 0), _report(out, 1)]
    for report in reports:
        assert (report["status"], report["iteration"], report["optimizer_step"]) == ("completed", 2 * STEPS, STEPS)
        assert 0.0 < report["metrics"]["grad_norm"] < 1e3
    assert reports[0]["metrics"]["val/mse"] == reports[1]["metrics"]["val/mse"]
    for key, value in _weights(out, 0)["model"].items():
        assert torch.equal(value, _weights(out, 1)["model"][key]), key
    averages = [torch.load(out / f"ema-{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*averages, strict=True))
    final = [value for key, value in _weights(out, 0)["model"].items() if key.endswith(("weight", "bias"))]
    assert not all(torch.equal(a, w) for a, w in zip(averages[0], final, strict=True))  # an average, not a copy


def test_resume_on_two_ranks_is_bit_identical(tmp_path: Path) -> None:
    # dropout draws from each rank's own RNG: a resume restores each rank's state, or the weights would differ
    spec = {"epochs": 2, "dropout": 0.2, "checkpoint_every": "5it"}
    full, out = _torchrun(tmp_path, "full", **spec)
    _ok(full)
    checkpoint = out / "checkpoints" / "step-00000015.pt"
    resumed, again = _torchrun(tmp_path, "resumed", **spec, resume=str(checkpoint))
    _ok(resumed)
    for rank in (0, 1):
        before, after = _weights(out, rank), _weights(again, rank)
        for key, value in before["model"].items():
            assert torch.equal(value, after["model"][key]), (rank, key)
        exp_avg = before["optimizer"]["state"][0]["exp_avg"]
        assert torch.equal(exp_avg, after["optimizer"]["state"][0]["exp_avg"])
        report = _report(again, rank)
        assert report["steps"] == list(range(16, 2 * STEPS + 1))  # exactly the steps after the checkpoint
        assert report["event_iterations"][0] == ["pre_training", 15]


def test_a_stop_on_one_rank_stops_both_at_the_same_iteration(tmp_path: Path) -> None:
    # rank 1 alone calls stop() in post_step of iteration 5: the ranks agree on it after the next step
    result, out = _torchrun(tmp_path, "stop", epochs=2, stop=[1, 5], checkpoint_every="1ep")
    _ok(result)
    for rank in (0, 1):
        report = _report(out, rank)
        assert (report["status"], report["iteration"]) == ("stopped", 6)
        assert report["events"] == ["pre_training", "post_epoch", "post_training"]
        assert report["steps"] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*.pt")) == ["step-00000006.pt"]  # the end save


def test_a_sparser_vote_still_stops_both_ranks_together(tmp_path: Path) -> None:
    # vote_every=4: rounds start after steps 4, 8, 12 and are read one round later; rank 1's stop() at step 5 is in
    # the round of step 8, read after step 12
    result, out = _torchrun(tmp_path, "sparse", epochs=2, stop=[1, 5], vote_every=4)
    _ok(result)
    for rank in (0, 1):
        report = _report(out, rank)
        assert (report["status"], report["iteration"]) == ("stopped", 12)
        assert report["events"] == ["pre_training", "post_epoch", "post_training"]


def test_early_stopping_on_a_validated_metric_stops_both_ranks_at_the_epoch_end(tmp_path: Path) -> None:
    result, out = _torchrun(tmp_path, "early", epochs=6, validate_every="1ep", stop_below=0.3)
    _ok(result)
    reports = [_report(out, 0), _report(out, 1)]
    # stopped from post_epoch (after the validation there): at that epoch's end, on both ranks
    assert reports[0]["iteration"] == reports[1]["iteration"]
    assert reports[0]["iteration"] % STEPS == 0
    assert reports[0]["iteration"] < 6 * STEPS
    for report in reports:
        assert report["status"] == "stopped"
        assert report["metrics"]["val/mse"] <= 0.3
        assert report["events"].count("post_epoch") == report["iteration"] // STEPS
    assert reports[0]["metrics"]["val/mse"] == reports[1]["metrics"]["val/mse"]


def test_sigint_on_one_rank_interrupts_both_and_rank_zero_saves(tmp_path: Path) -> None:
    result, out = _torchrun(tmp_path, "sigint", epochs=2, sigint=[1, 5], checkpoint_every="1ep")
    assert result.returncode != 0  # the workers exit 130: torchrun reports them as failed
    reports = [_report(out, 0), _report(out, 1)]
    for report in reports:
        assert (report["status"], report["iteration"]) == ("interrupted", 6)
        assert report["events"] == ["pre_training", "post_epoch", "post_training"]
    assert (reports[0]["interrupted_by"], reports[1]["interrupted_by"]) == (None, 2)  # only rank 1 got the signal
    saved = sorted((out / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in saved] == ["step-00000006.pt"]
    meta = read_metadata(saved[0])
    assert (meta["reason"], meta["resumable"], meta["iteration"]) == ("interrupt", True, 6)


def test_a_killed_rank_is_named_by_the_survivor_at_once(tmp_path: Path) -> None:
    processes, out = _by_hand(tmp_path, "kill", epochs=3, kill=[1, 5], checkpoint_every="1ep")
    outputs, seconds = wait_ranks(processes, 120)
    assert processes[1].returncode == -9
    assert processes[0].returncode == 1, outputs[0][-3000:]
    report = _report(out, 0)
    assert report["error_type"] == "PeerFailure"
    assert report["ranks"] == [1]
    assert report["error"].startswith("PeerFailure: rank 0: lost rank 1 (")
    # rank 1 dies in post_step of iteration 5: rank 0 notices in that step's vote round if the connection is
    # already gone when the round starts, else in step 6's gradient all-reduce -- a race, both right
    assert ("at iteration 5 (" in report["error"]) != ("at iteration 6 (" in report["error"]), report["error"]
    assert report["status_enum"] == "failed"
    assert seconds < 60  # a closed connection is noticed at once (the timeout is 60 s)


def test_a_hung_rank_is_named_after_the_timeout(tmp_path: Path) -> None:
    processes, out = _by_hand(tmp_path, "hang", epochs=3, hang=[1, 5], timeout=3)
    try:
        out0, _ = processes[0].communicate(timeout=120)
    finally:
        processes[1].kill()
        processes[1].communicate()
    assert processes[0].returncode == 1, out0[-3000:]
    report = _report(out, 0)
    assert report["error_type"] == "PeerFailure"
    assert report["ranks"] == [1]
    assert "Timed out" in report["error"]
    assert "within 3 s" in report["error"]


def test_an_error_on_one_rank_fails_both(tmp_path: Path) -> None:
    processes, out = _by_hand(tmp_path, "error", epochs=3, error=[1, 5])
    outputs, _ = wait_ranks(processes, 120)
    assert [p.returncode for p in processes] == [1, 1]
    failed = _report(out, 1)
    assert failed["error"] == (
        "CallbackError: handler 'Mishap-error.post_step' (priority 0) failed during event 'post_step' at iteration 5 "
        "(epoch 1/3, step 5/16): ValueError: a bad batch on rank 1 at iteration 5"
    )
    survivor = _report(out, 0)
    assert survivor["error_type"] == "PeerFailure"
    assert survivor["ranks"] == [1]
    assert "Traceback" in outputs[1]
    assert "ValueError: a bad batch" in outputs[1]


def test_torchrun_reports_the_killed_rank(tmp_path: Path) -> None:
    started = time.monotonic()
    result, out = _torchrun(tmp_path, "torchrun-kill", epochs=3, kill=[1, 5])
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    log = result.stdout + result.stderr
    assert "rank      : 1 (local_rank: 1)" in log
    assert "Signal 9 (SIGKILL)" in log
    assert not (out / "report-1.json").exists()
