"""Checks of ``docs/ray.md``: its two Python blocks run on a real local Ray cluster (two CPU workers), with the
page's ``/shared`` paths under the test's directory, and their results are read back; its config block is a
valid config whose ``ray_report`` block builds the callback it describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from callbacks.ray_report import RayReport
from lifecycle import Event
from tests.doc_checks import check, run
from tests.doc_pages import ROOT, Block
from trainers import load_config
from trainers.checkpoint.format import load_checkpoint

#: the demo config, small: 512 samples in batches of 64 (8 steps per epoch), no progress lines
_SMALL = {"samples": 512, "report_every": "never"}


def _on_ray(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, start: bool) -> dict[str, Any]:
    """Run ``block`` with ``/shared`` under ``tmp_path``, in ``tmp_path``, on a local Ray cluster it starts itself
    (``ray.init()`` in the block) or that is started for it; the cluster is shut down afterwards."""
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    text = block.text.replace("/shared", str(tmp_path / "shared"))
    if start:
        ray.init(num_cpus=2, include_dashboard=False)
    try:
        return run(Block(block.page, block.line, block.language, block.marker, text), {"__name__": "ray_page"})
    finally:
        ray.shutdown()


@check("ray-run", slow=True)
def _ray_run(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``my.yaml`` is the demo config, small; the block trains it for 3 epochs on 2 workers and loads Ray's copy of
    the final checkpoint, which is the run directory's final checkpoint."""
    config = yaml.safe_load((ROOT / "trainers" / "apps" / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    config["trainer"].update(_SMALL)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    namespace = _on_ray(block, tmp_path, monkeypatch, start=False)
    run_dir = tmp_path / "shared" / "runs" / "demo"
    result = namespace["result"]
    assert result.return_value == {
        "status": "completed",
        "iteration": 24,
        "run_dir": str(run_dir),
        "resumed_from": None,
    }
    final = namespace["final"]
    assert (final["stepbus"]["iteration"], final["stepbus"]["world_size"]) == (24, 2)
    written = load_checkpoint(run_dir / "checkpoints" / "step-00000024.pt")
    for key, value in written["model"].items():
        assert value.equal(final["model"][key]), key
    assert list(result.metrics_dataframe["iteration"]) == [8, 16, 24]
    assert result.metrics["iteration"] == 24
    assert 0.0 < result.metrics["val/mse"] < 1.0
    assert Path(result.checkpoint.path).is_relative_to(tmp_path / "shared" / "ray_results" / "demo")


@check("ray-config")
def _ray_config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid config; its ``ray_report`` block builds a ``RayReport`` that reports after each epoch."""
    config = load_config({"trainer": {"name": "demo"}, **yaml.safe_load(block.text)})
    specs = {spec.key: spec for spec in config.callbacks}
    assert specs["ray_report"].kwargs == {"every": "1ep"}
    report = specs["ray_report"].entry.load()(**specs["ray_report"].kwargs)
    assert isinstance(report, RayReport)
    events = {event: schedule for event, _, schedule in report.handlers()}
    assert set(events) == {Event.PRE_TRAINING, Event.POST_EPOCH, Event.POST_TRAINING}
    assert str(events[Event.POST_EPOCH]) == str(RayReport().schedule)  # the page's value is the default


@check("ray-own", slow=True)
def _ray_own(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training function of the page on 2 workers: 3 epochs of 8 steps, a report with its checkpoint after each;
    Ray's final checkpoint is the run directory's."""
    namespace = _on_ray(block, tmp_path, monkeypatch, start=True)
    result = namespace["result"]
    assert list(result.metrics_dataframe["iteration"]) == [8, 16, 24]
    assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3]
    with result.checkpoint.as_directory() as folder:
        names = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
        assert names == ["step-00000024.pt"]
        final = load_checkpoint(Path(folder) / names[0])
    written = load_checkpoint(tmp_path / "shared" / "runs" / "mine" / "checkpoints" / "step-00000024.pt")
    for key, value in written["model"].items():
        assert value.equal(final["model"][key]), key
    assert final["stepbus"]["world_size"] == 2
