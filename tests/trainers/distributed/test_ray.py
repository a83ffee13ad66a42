"""Ray Train: the demo config on two CPU workers of a real local Ray cluster (``ray.init(num_cpus=2)``, shared by
the module's tests), compared with the same config under ``torchrun --standalone --nproc-per-node=2``.

What is checked: the trainer on each worker runs on the process group Ray set up (rank, world size, Ray's
environment, gloo); the final weights and optimizer state equal the torchrun run's bit for bit (the same global
batches split the same way over the same gloo all-reduce); Ray's ``Result`` holds the metrics stepbus published
(the CSV logger's numbers of the same run, exactly) and a loadable stepbus checkpoint; a run continued from Ray's
checkpoint (a new run of the same name and storage, then a worker failure retried by Ray) ends with the same
weights; bad arguments are refused before Ray starts anything.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.train

from tests.trainers.distributed.identical import same_state
from tests.trainers.distributed.ranks import ROOT, torchrun
from trainers.checkpoint.format import list_checkpoints, load_checkpoint
from trainers.config.errors import ConfigError
from trainers.config.ray_train import run_with_ray

DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")
#: 512 samples in batches of 64: 8 steps per epoch; validation, a checkpoint and a CSV row after each epoch
SETTINGS = (
    "trainer.samples=512",
    "trainer.max_epochs=3",
    "trainer.report_every=never",
    "callbacks.csv.every=1ep",
)
STEPS, EPOCHS = 8, 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs for the module (no dashboard, no usage statistics)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
        )
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final checkpoint of the config under ``torchrun --standalone --nproc-per-node=2``."""
    work = tmp_path_factory.mktemp("torchrun")
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    result = torchrun(["-m", "trainers", "train", "--config", DEMO, *sets, "--run-dir", str(work / "run")], work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = load_checkpoint(list_checkpoints(work / "run" / "checkpoints")[0].path)
    assert final["stepbus"]["iteration"] == EPOCHS * STEPS
    return final


@pytest.fixture(scope="module")
def full(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """An uninterrupted run on two Ray workers, with a probe of what each worker's trainer saw."""
    from tests.trainers.distributed.ray_app import registry

    work = tmp_path_factory.mktemp("ray")
    result = run_with_ray(
        DEMO,
        num_workers=2,
        overrides=[*SETTINGS, "callbacks.probe.enabled=true"],
        run_dir=work / "run",
        storage_path=work / "storage",
        name="full",
        registry=registry(),
    )
    return result, work / "run"


def _stepbus_checkpoint(checkpoint: Any) -> tuple[list[str], dict[str, Any]]:
    """The names in a Ray checkpoint's directory and the stepbus checkpoint in it, loaded."""
    with checkpoint.as_directory() as folder:
        names = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
        return names, load_checkpoint(Path(folder) / names[0])


def _probes(run_dir: Path) -> list[dict[str, Any]]:
    """What each worker's trainer saw at ``pre_training``, by rank then process start."""
    files = sorted(run_dir.glob("probe-*.json"), key=lambda p: (p.name.split("-")[1], p.stat().st_mtime))
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


@pytest.mark.slow  # Ray starts in seconds, and so does each run's worker group: ~80 s for the three slow ones
def test_two_workers_train_on_rays_process_group_like_torchrun(
    full: tuple[Any, Path], standalone: dict[str, Any]
) -> None:
    result, run_dir = full
    assert result.error is None
    assert result.return_value == {
        "status": "completed",
        "iteration": EPOCHS * STEPS,
        "run_dir": str(run_dir),
        "resumed_from": None,
    }
    # each trainer is the rank Ray made its worker, in Ray's world of 2, on the gloo group Ray started
    probes = _probes(run_dir)
    assert len(probes) == 2
    for rank, seen in enumerate(probes):
        assert seen["trainer"] == [rank, 2]
        assert seen["ray"] == [rank, 2, rank]
        assert seen["env"] == [str(rank), "2", str(rank)]
        assert (seen["launched_world_size"], seen["backend"]) == (2, "gloo")
    assert probes[0]["pid"] != probes[1]["pid"]
    # Ray's checkpoint is the run's final stepbus checkpoint, written by rank 0 with both ranks' RNG states
    names, final = _stepbus_checkpoint(result.checkpoint)
    assert names == [f"step-{EPOCHS * STEPS:08d}.pt"]
    assert (final["stepbus"]["iteration"], final["stepbus"]["epoch"]) == (EPOCHS * STEPS, EPOCHS)
    assert (final["stepbus"]["world_size"], final["stepbus"]["writer"]["rank"]) == (2, 0)
    assert len(final["rank_rng"]) == 2
    same_state(final, standalone)  # the torchrun job's weights and Adam state, bit for bit
    written = load_checkpoint(run_dir / "checkpoints" / names[0])
    same_state(final, written)


@pytest.mark.slow
def test_ray_result_holds_the_numbers_stepbus_published(full: tuple[Any, Path]) -> None:
    result, run_dir = full
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))

    def column(name: str) -> dict[int, float]:
        return {int(row["step"]): float(row[name]) for row in rows if row.get(name)}

    frame = result.metrics_dataframe
    assert list(frame["iteration"]) == [STEPS * epoch for epoch in range(1, EPOCHS + 1)]
    assert list(frame["epoch"]) == list(range(1, EPOCHS + 1))
    for ray_name, csv_name in (
        ("val/mse", "val/mse"),
        ("best/mse", "best/mse"),
        ("lr", "lr"),
        ("train/loss", "epoch/loss"),
    ):
        published = column(csv_name)
        assert dict(zip(frame["iteration"], frame[ray_name], strict=True)) == published, ray_name
    assert len(set(frame["val/mse"])) == EPOCHS  # a value per epoch, not one repeated
    last = frame.iloc[-1].to_dict()
    assert result.metrics == {k: v for k, v in last.items() if k in result.metrics}
    assert result.metrics["val/mse"] == column("val/mse")[EPOCHS * STEPS]
    # every report carried the checkpoint of its epoch
    assert len(result.best_checkpoints) == EPOCHS
    for epoch, (checkpoint, metrics) in enumerate(result.best_checkpoints, start=1):
        names, loaded = _stepbus_checkpoint(checkpoint)
        assert names == [f"step-{epoch * STEPS:08d}.pt"]
        assert loaded["stepbus"]["iteration"] == metrics["iteration"] == epoch * STEPS


def _failing(tmp_path: Path, name: str, at: int) -> list[str]:
    """Overrides that make rank 1 fail after step ``at``, once (``<tmp_path>/<name>`` records it)."""
    return [
        f"callbacks.fail_once.at={at}",
        "callbacks.fail_once.rank=1",
        f"callbacks.fail_once.marker={tmp_path / name}",
    ]


@pytest.mark.slow
def test_a_run_continues_from_rays_checkpoint_after_failures(
    cluster: None, standalone: dict[str, Any], tmp_path: Path
) -> None:
    """A run fails in epoch 2 (no retries); a new run of the same name and storage continues it from Ray's checkpoint
    of epoch 1; rank 1 fails after step 20 (in epoch 3), Ray restarts the workers once and they continue from the
    checkpoint of epoch 2: the end is the uninterrupted run's, bit for bit."""
    from tests.trainers.distributed.ray_app import registry

    storage = tmp_path / "storage"
    with pytest.raises(ray.train.TrainingFailedError) as failed:
        run_with_ray(
            DEMO,
            overrides=[*SETTINGS, *_failing(tmp_path, "first-failed", STEPS + 4)],
            run_dir=tmp_path / "first",
            storage_path=storage,
            name="continued",
            registry=registry(),
        )
    assert "a planned failure on rank 1 after step 12" in str(failed.value)
    result: Any = run_with_ray(  # Ray Train V2's Result (with return_value); typing sees V1's
        DEMO,
        overrides=[*SETTINGS, "callbacks.probe.enabled=true", *_failing(tmp_path, "second-failed", 2 * STEPS + 4)],
        run_dir=tmp_path / "second",
        storage_path=storage,
        name="continued",
        max_failures=1,
        registry=registry(),
    )
    assert (tmp_path / "first-failed").is_file()  # both failures happened
    assert (tmp_path / "second-failed").is_file()
    assert result.return_value["status"] == "completed"
    assert result.return_value["resumed_from"].endswith(f"step-{2 * STEPS:08d}.pt")
    # first attempt: from Ray's checkpoint of the failed run (epoch 1); the retry: from epoch 2's, on every rank
    probes = _probes(tmp_path / "second")
    starts = [(seen["trainer"][0], seen["iteration"], Path(seen["resumed_from"]).name) for seen in probes]
    assert sorted(starts) == sorted(
        (rank, epoch * STEPS, f"step-{epoch * STEPS:08d}.pt") for rank in (0, 1) for epoch in (1, 2)
    )
    for seen in probes:
        assert Path(seen["resumed_from"]).is_relative_to(storage / "continued")  # Ray's copy, not the run's own
    names, final = _stepbus_checkpoint(result.checkpoint)
    assert names == [f"step-{EPOCHS * STEPS:08d}.pt"]
    same_state(final, standalone)
    # Ray's record of the whole: epoch 1 by the failed run, 2 by the first attempt, 3 after the retry
    assert list(result.metrics_dataframe["iteration"]) == [STEPS, 2 * STEPS, 3 * STEPS]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"num_workers": 0}, ValueError, "num_workers must be an int >= 1 (one stepbus rank each), got 0"),
        ({"num_workers": -2}, ValueError, "num_workers must be an int >= 1 (one stepbus rank each), got -2"),
        ({"num_workers": True}, ValueError, "num_workers must be an int >= 1 (one stepbus rank each), got True"),
        ({"num_workers": 1.5}, ValueError, "got 1.5"),
        ({"use_gpu": "yes"}, TypeError, "use_gpu must be True or False, got 'yes'"),
        ({"resume": None}, TypeError, "resume must be True or False, got None"),
        ({"max_failures": -2}, ValueError, "max_failures must be an int >= 0, or -1 for no limit, got -2"),
        ({"overrides": "trainer.max_epochs=2"}, TypeError, "a list of 'KEY=VALUE' strings, got the string 'trainer"),
        ({"resume_from": "no/such.pt"}, ValueError, "resume_from 'no/such.pt': no such file or directory"),
    ],
)
def test_bad_arguments_are_refused_before_ray_starts(kwargs: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error) as raised:
        run_with_ray(DEMO, **kwargs)
    assert str(raised.value).startswith("run_with_ray: ")
    assert words in str(raised.value)


def test_a_bad_config_is_refused_on_the_driver(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        run_with_ray(DEMO, overrides=["callbacks.ray_report.every=0ep"], storage_path=tmp_path / "storage")
    assert "callbacks.ray_report.every" in str(raised.value)
    assert not (tmp_path / "storage").exists()
