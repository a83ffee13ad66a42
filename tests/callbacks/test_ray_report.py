"""``RayReport`` and the checkpoint staging it uses, without a Ray cluster: the refusals (a bad schedule, a run that
is not on a Ray Train worker), and a stepbus checkpoint -- a file or a sharded checkpoint's directory -- put into a
Ray checkpoint directory and found there again. The reports themselves, on real Ray workers, are in
``tests/trainers/distributed/test_ray.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callbacks.ray_report import RayReport
from lifecycle import CallbackError
from tests.support import make_trainer
from trainers.config.builder import load_config
from trainers.config.errors import ConfigError
from trainers.distributed.ray_checkpoint import checkpoint_in, staged


@pytest.mark.parametrize("every", ["0it", "-1ep", "often"])
def test_a_bad_schedule_is_refused_naming_the_callback(every: str) -> None:
    with pytest.raises(ValueError, match=rf"^callback RayReport 'RayReport': invalid schedule '{every}'"):
        RayReport(every=every)


def test_a_config_checks_the_schedule_at_its_key() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"trainer": {"name": "demo"}, "callbacks": {"ray_report": {"every": "0ep"}}})
    assert "callbacks.ray_report.every: invalid schedule '0ep'" in str(raised.value)
    checked = load_config({"trainer": {"name": "demo"}, "callbacks": {"ray_report": {"every": "100it"}}})
    assert [(spec.key, spec.kwargs) for spec in checked.callbacks] == [("ray_report", {"every": "100it"})]


def test_a_run_outside_a_ray_train_worker_is_refused_before_its_first_step() -> None:
    report = RayReport()
    trainer = make_trainer(callbacks=[report])
    with pytest.raises(CallbackError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "'RayReport.pre_training'" in message
    assert "RayReport 'RayReport': this process is not a Ray Train worker" in message
    assert "run_with_ray" in message
    assert trainer.state.iteration == 0
    assert report.reports == 0


def test_a_checkpoint_file_is_staged_as_a_hard_link(tmp_path: Path) -> None:
    source = tmp_path / "checkpoints" / "step-00000016.pt"
    source.parent.mkdir()
    source.write_bytes(b"stepbus checkpoint bytes")
    with staged(source) as folder:
        staged_file = folder / "step-00000016.pt"
        assert sorted(p.name for p in folder.iterdir()) == ["step-00000016.pt"]
        assert staged_file.read_bytes() == b"stepbus checkpoint bytes"
        assert os.stat(staged_file).st_ino == os.stat(source).st_ino  # linked, not copied
        assert checkpoint_in(folder) == staged_file
    assert not folder.exists()  # removed after the report
    assert source.read_bytes() == b"stepbus checkpoint bytes"


def test_a_sharded_checkpoint_directory_is_staged_whole(tmp_path: Path) -> None:
    source = tmp_path / "step-00000016"
    (source / "model").mkdir(parents=True)
    (source / "state.pt").write_bytes(b"state")
    (source / "model" / "__0_0.distcp").write_bytes(b"shard 0")
    (source / "model" / "__1_0.distcp").write_bytes(b"shard 1")
    with staged(source) as folder:
        copy = folder / "step-00000016"
        files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
        assert files == ["model/__0_0.distcp", "model/__1_0.distcp", "state.pt"]
        assert (copy / "model" / "__1_0.distcp").read_bytes() == b"shard 1"
        assert os.stat(copy / "state.pt").st_ino == os.stat(source / "state.pt").st_ino
        assert checkpoint_in(folder) == copy
    assert not folder.exists()


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match=r"the checkpoint .*step-00000099\.pt to hand to Ray does not exist"),
        staged(tmp_path / "step-00000099.pt"),
    ):
        pass


def test_a_ray_checkpoint_must_hold_one_stepbus_checkpoint(tmp_path: Path) -> None:
    (tmp_path / ".metadata.json").write_text("{}", encoding="utf-8")  # Ray's own, hidden: not counted
    with pytest.raises(ValueError, match=r"should hold one stepbus checkpoint .* it holds nothing$"):
        checkpoint_in(tmp_path)
    (tmp_path / "step-00000008.pt").write_bytes(b"a")
    assert checkpoint_in(tmp_path) == tmp_path / "step-00000008.pt"
    (tmp_path / "notes.txt").write_text("b", encoding="utf-8")
    with pytest.raises(ValueError, match=r"it holds notes\.txt, step-00000008\.pt$"):
        checkpoint_in(tmp_path)
