"""Checks of docs/profiling.md's blocks: the config is loaded and builds the callback, the Python blocks run against
a real profiled run (the trace and the table they read are real ones), the TensorBoard command is parsed by
TensorBoard's own flags and points at a folder holding the traces."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbacks import Callback, Profiler
from lifecycle import Status
from tests.doc_checks import check, run, small_trainer
from tests.doc_pages import Block

#: the run directory the page's reading examples use
RUN = Path("runs/demo-20261207-044901")


class _Third(Callback):
    """A handler on a schedule, for the table: ``post_step`` on every fourth iteration."""

    every = "4it"

    def post_step(self, trainer: Any, **payload: Any) -> None:
        pass


def _printed(block: Block, namespace: dict[str, object]) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run(block, namespace)
    return out.getvalue().splitlines()


def _profiled_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real run of 16 iterations profiled with the defaults into ``RUN`` under ``tmp_path`` (the cwd)."""
    monkeypatch.chdir(tmp_path)
    console = io.StringIO()
    from rich.console import Console

    trainer = small_trainer(run_dir=RUN, callbacks=[_Third(), Profiler(console=Console(file=console))])
    assert trainer.train() == Status.COMPLETED
    return tmp_path / RUN


@check("profiling-config")
def _profiling_config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainers import load_config

    data = yaml.safe_load(block.text)
    config = load_config({"trainer": {"name": "demo"}, **data})
    (spec,) = [spec for spec in config.callbacks if spec.key == "profiler"]
    assert spec.enabled
    assert spec.kwargs == {"wait": 5, "warmup": 1, "active": 3, "record_shapes": True}
    profiler = Profiler(**spec.kwargs)
    assert (profiler.wait, profiler.warmup, profiler.active, profiler.record_shapes) == (5, 1, 3, True)


@check("profiling-python")
def _profiling_python(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Iterations 3-5 of 16 are traced; the table is written."""
    trainer = small_trainer(run_dir=tmp_path)
    _printed(block, {"trainer": trainer})
    assert trainer.status == Status.COMPLETED
    (profiler,) = [cb for cb in trainer.callbacks if isinstance(cb, Profiler)]
    (trace,) = tmp_path.glob("profile/*.pt.trace.json")
    assert profiler.traces == {trace: (3, 4, 5)}
    assert (tmp_path / "profile" / "handlers.csv").is_file()


@check("profiling-read-trace")
def _profiling_read_trace(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _profiled_run(tmp_path, monkeypatch)
    assert _printed(block, {}) == ["['ProfilerStep#2', 'ProfilerStep#3', 'ProfilerStep#4']"]


@check("profiling-read-table")
def _profiling_read_table(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _profiled_run(tmp_path, monkeypatch)
    (line,) = _printed(block, {})
    with (directory / "profile" / "handlers.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert {(r["handler"], r["calls"]) for r in rows if r["kind"] == "handler" and r["event"] == "post_step"} == {
        ("_Third.post_step", "4"),
        ("Profiler.post_step", "16"),
    }
    steps = float(next(r for r in rows if r["kind"] == "steps")["total_ms"])
    in_steps = sum(float(r["total_ms"]) for r in rows if r["kind"] == "handler" and r["event"].endswith("step"))
    assert line == f"the step events' handlers took {in_steps / steps:.1%} of 16 steps"


@check("profiling-tensorboard")
def _profiling_tensorboard(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pip install`` names the plugin's package; TensorBoard's own flag parser accepts the command, and the log
    directory it names holds the traces in its ``profile`` folder."""
    install, command = (shlex.split(line) for line in block.text.splitlines())
    assert install == ["pip", "install", "torch-tb-profiler"]
    assert command[:2] == ["tensorboard", "--logdir"]
    assert Path(command[2]) == RUN
    directory = _profiled_run(tmp_path, monkeypatch)
    from tensorboard import program  # type: ignore[import-untyped]

    board = program.TensorBoard()
    board.configure(argv=command)
    assert Path(board.flags.logdir).resolve() == directory.resolve()
    assert [p.parent.name for p in directory.glob("*/*.pt.trace.json")] == ["profile"]
    json.loads(next(directory.glob("profile/*.pt.trace.json")).read_text())


@check("profiling-bus-api")
def _profiling_bus_api(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact calls for every handler of a 16-iteration run, each event's dispatches, and the steps."""
    trainer = small_trainer(callbacks=[_Third()])
    namespace: dict[str, object] = {"trainer": trainer}
    lines = _printed(block, namespace)
    times = namespace["times"]
    assert not times.active  # type: ignore[attr-defined]
    assert [line.split()[:3] for line in lines[:1]] == [["_Third.post_step", "post_step", "4"]]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["pre_step", "16"],
        ["post_step", "16"],
        ["16", "steps,"],
    ]
