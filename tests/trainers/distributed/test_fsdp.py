"""``strategy="fsdp"`` with real processes: 2 gloo ranks under ``torchrun``, sharded checkpoints on disk.

One uninterrupted FSDP run (module fixture) is the reference: it trains like one process (within float tolerance:
the ranks reduce-scatter partial gradient sums), its checkpoints are complete DCP directories, retention and
``last.pt`` work on them, and its export is the whole model. Against it: a run SIGKILLed in the middle of writing a
checkpoint and resumed with ``restore("auto")`` (bit-identical, the half-written directory never chosen and removed),
a single process resuming a 2-rank checkpoint (resharded), and an FSDP job resuming a single process's checkpoint
file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainers.distributed import dist_runs
from tests.trainers.distributed.dist_train import build
from tests.trainers.distributed.identical import assert_identical
from tests.trainers.distributed.ranks import torchrun
from trainers.checkpoint.format import CheckpointError, list_checkpoints, load_checkpoint, read_metadata
from trainers.checkpoint.shard_files import STATE_FILE

pytestmark = pytest.mark.slow  # several torchrun jobs: about a minute on 2 cores

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "tests" / "trainers" / "distributed" / "dist_train.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
#: 512 samples in global batches of 32 over 2 epochs: 32 iterations; a checkpoint every 4, the last 2 kept; the
#: gradient guard clips at a norm the run reaches (its norm is over all shards)
BASE = {
    "epochs": 2,
    "checkpoint_every": "4it",
    "keep_last": 2,
    "export": "model.pth",
    "strategy": "fsdp",
    "clip_norm": 0.05,
}


def _torchrun(tmp: Path, name: str, **spec: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    return dist_runs.two_ranks(tmp, name, ENV, **spec)


def _single(tmp: Path, name: str, **spec: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    return dist_runs.single(tmp, name, ENV, **spec)


_report, _weights = dist_runs.report, dist_runs.weights


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr


def _whole(out: Path) -> dict[str, torch.Tensor]:
    whole: dict[str, torch.Tensor] = torch.load(out / "whole.pt", weights_only=True)
    return whole


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 2-rank FSDP run."""
    result, out = _torchrun(tmp_path_factory.mktemp("fsdp"), "reference", **BASE)
    _ok(result)
    return out


def test_fsdp_trains_like_one_process_and_writes_sharded_checkpoints(reference: Path, tmp_path: Path) -> None:
    single, alone = _single(tmp_path, "alone", epochs=2, clip_norm=0.05)
    _ok(single)
    _close(_whole(reference), _whole(alone))
    assert _report(reference, 0)["metrics"]["grad_norm"] > 0.05  # the clip acts: the norm before clipping is above
    assert _report(reference, 0)["metrics"]["grad_norm"] == pytest.approx(_report(alone, 0)["metrics"]["grad_norm"])
    for rank in (0, 1):
        report = _report(reference, rank)
        assert (report["status"], report["iteration"], report["world_size"]) == ("completed", 32, 2)
    # each rank holds half of every parameter (dimension 0), not a replica
    shards = [_weights(reference, rank)["model"] for rank in (0, 1)]
    for key, whole in _whole(reference).items():
        assert torch.equal(torch.cat([shards[0][key], shards[1][key]]), whole), key
    # retention on directories: the last 2 of the 8 saves, last.pt a link to the newest
    folder = reference / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step-00000028.pt", "step-00000032.pt"]
    assert os.readlink(folder / "last.pt") == "step-00000032.pt"
    newest = folder / "step-00000032.pt"
    assert sorted(p.name for p in newest.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", STATE_FILE]
    assert [c.path.name for c in list_checkpoints(folder)] == ["step-00000032.pt", "step-00000028.pt"]
    meta = read_metadata(folder / "last.pt")
    assert (meta["iteration"], meta["world_size"], meta["sharded"]) == (32, 2, True)
    assert sorted(meta["shards"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    loaded = load_checkpoint(newest)
    assert len(loaded["rank_rng"]) == 2
    assert {key: tuple(t.shape) for key, t in loaded["model"].items()} == {
        key: tuple(t.shape) for key, t in _whole(reference).items()
    }
    # the PipelineExport at the end: the whole model, gathered from the shards
    exported = torch.load(reference / "model.pth", weights_only=True)
    assert_identical(exported, _whole(reference))


def test_stepbus_export_reads_the_shards_into_a_plain_state_dict(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported.pt"
    result = subprocess.run(
        [sys.executable, "-m", "trainers", "export", str(reference / "checkpoints" / "last.pt"), str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "6 entries, 1,185 values" in result.stdout
    state = torch.load(out, weights_only=True)
    assert_identical(state, _whole(reference))
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    )
    model.load_state_dict(state, strict=True)


def test_a_kill_while_saving_leaves_no_checkpoint_and_resume_is_bit_identical(reference: Path, tmp_path: Path) -> None:
    # rank 0 dies at iteration 20 after both ranks wrote their shards and before stepbus.pt and the rename
    killed, out = _torchrun(tmp_path, "killed", **BASE, kill_when_saved=20)
    assert killed.returncode != 0
    assert "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    folder = out / "checkpoints"
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".step-00000020.pt.")]
    assert len(leftovers) == 1, sorted(p.name for p in folder.iterdir())
    assert leftovers[0].is_dir()
    assert not (folder / "step-00000020.pt").exists()
    assert {p.name for p in leftovers[0].iterdir()} >= {"__0_0.distcp", "__1_0.distcp"}
    assert [c.iteration for c in list_checkpoints(folder)] == [16, 12]
    with pytest.raises(CheckpointError, match=r"without stepbus\.pt"):
        load_checkpoint(leftovers[0])
    resumed, again = _resume(tmp_path, out)
    _ok(resumed)
    assert not leftovers[0].exists()  # the dead writer's directory is removed under the run's lock
    for rank in (0, 1):
        assert_identical(_weights(again, rank), _weights(reference, rank), f"rank {rank}")
        assert _report(again, rank)["steps"] == list(range(17, 33))
    assert_identical(_whole(again), _whole(reference))


def _resume(tmp: Path, out: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    file = tmp / "resume.json"
    file.write_text(json.dumps({"out": str(out), **BASE, "resume": "auto"}), encoding="utf-8")
    return torchrun([str(APP), str(file)], tmp, env=ENV), out


def test_a_two_rank_checkpoint_resumes_in_one_process(reference: Path, tmp_path: Path) -> None:
    checkpoint = reference / "checkpoints" / "step-00000028.pt"
    result, out = _single(tmp_path, "one", epochs=2, clip_norm=0.05, resume=str(checkpoint))
    _ok(result)
    assert "was saved by 2 ranks, this run has 1" in result.stderr
    assert _report(out, 0)["steps"] == [29, 30, 31, 32]
    _close(_whole(out), _whole(reference))


def test_an_fsdp_job_resumes_a_single_process_checkpoint_file(reference: Path, tmp_path: Path) -> None:
    single, alone = _single(tmp_path, "alone", epochs=2, clip_norm=0.05, checkpoint_every="8it")
    _ok(single)
    checkpoint = alone / "checkpoints" / "step-00000016.pt"
    assert checkpoint.is_file()
    result, out = _torchrun(tmp_path, "sharded", epochs=2, strategy="fsdp", clip_norm=0.05, resume=str(checkpoint))
    _ok(result)
    assert _report(out, 1)["steps"] == list(range(17, 33))
    _close(_whole(out), _whole(alone))


#: the reference app, small: 4 epochs of 10 steps on a 64x64 image, pruning from step 5, a checkpoint per epoch
CLI = [
    "--set", "trainer.strategy=fsdp", "--set", "callbacks.validator.ranks=all", "--set", "trainer.size=64",
    "--set", "trainer.batches_per_epoch=10", "--set", "trainer.batch_size=2048",
    "--set", "callbacks.grid_pruning.start=5", "--set", "callbacks.grid_pruning.every=5it", "--epochs", "4",
]  # fmt: skip


def _cli(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "trainers", "train", "--nproc", "2", *CLI, "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(
        command, env=ENV, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _export(checkpoint: Path, out: Path) -> dict[str, torch.Tensor]:
    result = subprocess.run(
        [sys.executable, "-m", "trainers", "export", str(checkpoint), str(out)], env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    state: dict[str, torch.Tensor] = torch.load(out, weights_only=True)
    return state


def test_the_cli_trains_the_reference_app_sharded_and_resumes_it_after_a_kill(tmp_path: Path) -> None:
    whole = _cli(tmp_path / "whole")
    output = whole.communicate(timeout=300)[0]
    assert whole.returncode == 0, output[-3000:]
    folder = tmp_path / "whole" / "checkpoints"
    assert (folder / "step-00000040.pt" / STATE_FILE).is_file()
    # the same run, every process of the job SIGKILLed (as when its machine dies) once epoch 1's checkpoint exists
    killed = _cli(tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "step-00000010.pt" / STATE_FILE
    deadline = time.monotonic() + 240
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    resumed = _cli(tmp_path / "killed", "--resume", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert "resumed from" in output
    again = tmp_path / "killed" / "checkpoints"
    assert_identical(_export(again / "last.pt", tmp_path / "a.pt"), _export(folder / "last.pt", tmp_path / "b.pt"))
    metrics = [
        json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8")) for name in ("whole", "killed")
    ]
    assert metrics[0]["final"]["val/psnr"] == metrics[1]["final"]["val/psnr"]


def test_a_damaged_shard_is_named_and_the_next_newest_checkpoint_is_resumed(
    reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", folder, symlinks=True)
    shard = folder / "step-00000032.pt" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    exported = subprocess.run(
        [sys.executable, "-m", "trainers", "export", str(folder / "last.pt"), str(tmp_path / "model.pt")],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 2
    assert exported.stderr.strip() == (
        f"error: checkpoint {folder / 'step-00000032.pt'}: corrupted: shard file __1_0.distcp fails its CRC-32 "
        "check (bytes changed on disk)"
    )
    assert not (tmp_path / "model.pt").exists()
    trainer, _ = build({**BASE, "out": str(tmp_path)}, tmp_path)  # one process, the same trainer
    with caplog.at_level(logging.WARNING, logger="stepbus"):
        assert trainer.restore("auto") == folder / "step-00000028.pt"
    assert (
        f"resume: skipping checkpoint {folder / 'step-00000032.pt'}: corrupted: shard file __1_0.distcp fails its "
        "CRC-32 check (bytes changed on disk); trying the next newest checkpoint"
    ) in caplog.messages
    assert trainer.state.iteration == 28
    trainer.close()


def test_mixed_precision_and_accumulation_compose_with_fsdp(tmp_path: Path) -> None:
    # "16-mixed": autocast and a GradScaler over sharded gradients; accumulate=2: the first micro-batch of each
    # window keeps its gradients unreduced
    spec = {"epochs": 2, "precision": "16-mixed", "accumulate": 2}
    sharded, out = _torchrun(tmp_path, "sharded", **spec, strategy="fsdp")
    _ok(sharded)
    single, alone = _single(tmp_path, "alone", **spec)
    _ok(single)
    assert _report(out, 0)["optimizer_step"] == _report(alone, 0)["optimizer_step"] == 16
    a, b = _whole(out), _whole(alone)
    for key in a:  # float16 forward passes over other splits of the batch: 8.6e-5 apart here
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-3, msg=key)
    assert max((a[key] - b[key]).abs().max().item() for key in a) > 0  # not the same numbers by accident
