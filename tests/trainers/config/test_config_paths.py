"""Where a config's callbacks write (``trainers.config.output_paths``) and what a preflight leaves behind
(``trainers.config.preflight``): real configs built into real trainers, real training, files read back.

The rule: a relative path is taken from the run directory; ``..`` and symbolic links are followed and must end inside
the run directory or inside a directory ``run.allow_outside`` lists; a file path may not name a directory nor a
directory path a file; what is missing must be creatable. A preflight builds and sets up everything ``train`` does
and writes nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from callbacks.checkpointer import Checkpointer
from callbacks.loggers.metrics_file import MetricsFile
from lifecycle import Status
from trainers.config.builder import build, load_config
from trainers.config.errors import ConfigError
from trainers.config.preflight import preflight, preflight_trainer

ROOT = Path(__file__).resolve().parents[3]
OUTSIDE = (
    "outside the run directory; give a path inside it (a relative path is taken from the run directory, e.g. {!r}), "
    "or allow the folder with run.allow_outside: [{}]"
)


def _config(callbacks: dict[str, Any], **run: Any) -> dict[str, Any]:
    """The demo, small: 2 iterations of one epoch."""
    return {
        "run": {"seed": 0, **run},
        "trainer": {"name": "demo", "samples": 64, "batch_size": 32, "max_epochs": 1},
        "callbacks": callbacks,
    }


def _build(config: dict[str, Any], run_dir: Path) -> Any:
    return build(config, run_dir=run_dir, objects={"console": Console(file=io.StringIO())})


def _problems(config: dict[str, Any], run_dir: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        _build(config, run_dir)
    return [(p.path, p.message) for p in info.value.problems]


def _tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# ---------------------------------------------------------------------------------------------------- the rule
def test_relative_paths_are_taken_from_the_run_directory_and_saved_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative checkpointer dir used to be taken from here
    run_dir = Path("runs") / "r"
    config = _config({"checkpointer": {"dir": "ckpt", "keep_last": 1}, "metrics_file": {"path": "out/m.json"}})
    trainer = _build(config, run_dir)
    checkpointer = next(c for c in trainer.callbacks if isinstance(c, Checkpointer))
    assert checkpointer.checkpoint_dir == work / "runs" / "r" / "ckpt"
    assert trainer.config["callbacks"]["checkpointer"]["dir"] == "ckpt"  # the config keeps the path as written
    assert trainer.config["callbacks"]["metrics_file"]["path"] == "out/m.json"
    assert trainer.train() is Status.COMPLETED
    trainer.close()
    assert _tree(work) == [
        "runs",
        "runs/r",
        "runs/r/ckpt",
        "runs/r/ckpt/last.pt",
        "runs/r/ckpt/step-00000002.pt",
        "runs/r/config.yaml",
        "runs/r/out",
        "runs/r/out/m.json",
    ]
    assert json.loads((work / "runs" / "r" / "out" / "m.json").read_text(encoding="utf-8"))["status"] == "completed"


def test_an_absolute_path_inside_the_run_directory_needs_no_permission(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trainer = _build(_config({"metrics_file": {"path": str(run_dir / "m.json")}}), run_dir)
    assert trainer.train() is Status.COMPLETED
    trainer.close()
    assert json.loads((run_dir / "m.json").read_text(encoding="utf-8"))["iterations"] == 2


def test_a_path_leaving_the_run_directory_is_refused_unless_its_folder_is_allowed(tmp_path: Path) -> None:
    run_dir, shared = tmp_path / "run", tmp_path / "shared"
    escaping = {"metrics_file": {"path": "../shared/m.json"}}
    assert _problems(_config(escaping), run_dir) == [
        (
            "callbacks.metrics_file.path",
            f"'../shared/m.json' resolves to {shared / 'm.json'}, " + OUTSIDE.format("metrics.json", shared),
        )
    ]
    elsewhere = tmp_path / "elsewhere"
    absolute = {"checkpointer": {"dir": str(elsewhere / "ck")}}
    assert _problems(_config(absolute, allow_outside=[str(shared)]), run_dir) == [
        (
            "callbacks.checkpointer.dir",
            f"'{elsewhere / 'ck'}' resolves to {elsewhere / 'ck'}, "
            + OUTSIDE.format("ck", elsewhere / "ck")
            + f" (it lists {shared})",
        )
    ]
    assert not run_dir.exists()
    assert not shared.exists()
    assert not elsewhere.exists()

    trainer = _build(_config(escaping, allow_outside=[str(shared)]), run_dir)
    assert trainer.train() is Status.COMPLETED
    trainer.close()
    assert json.loads((shared / "m.json").read_text(encoding="utf-8"))["status"] == "completed"


def test_a_symbolic_link_that_leads_outside_is_refused(tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    (run_dir / "link").symlink_to(elsewhere)
    assert _problems(_config({"checkpointer": {"dir": "link/ck"}}), run_dir) == [
        (
            "callbacks.checkpointer.dir",
            f"'link/ck' resolves to {elsewhere / 'ck'}, " + OUTSIDE.format("ck", elsewhere / "ck"),
        )
    ]
    assert _tree(elsewhere) == []


def test_files_and_directories_where_the_other_is_needed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "taken").write_text("a file\n", encoding="utf-8")
    (run_dir / "folder").mkdir()
    config = _config(
        {
            "tensorboard": {"dir": "taken"},
            "checkpointer": {"dir": "taken/ck"},
            "metrics_file": {"path": "folder"},
            "pipeline_export": {"path": "taken/model.pth"},
        }
    )
    assert _problems(config, run_dir) == [
        (
            "callbacks.tensorboard.dir",
            f"'taken' resolves to {run_dir / 'taken'}, which is a file; a directory is needed here",
        ),
        (
            "callbacks.checkpointer.dir",
            f"'taken/ck' resolves to {run_dir / 'taken' / 'ck'}, which cannot be created: {run_dir / 'taken'} is a "
            "file, not a directory",
        ),
        (
            "callbacks.metrics_file.path",
            f"'folder' names the directory {run_dir / 'folder'}; a file name is needed here, e.g. 'metrics.json'",
        ),
        (
            "callbacks.pipeline_export.path",
            f"'taken/model.pth' resolves to {run_dir / 'taken' / 'model.pth'}, whose folder {run_dir / 'taken'} is a "
            "file, not a directory",
        ),
    ]
    assert _tree(run_dir) == ["folder", "taken"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (["relative/dir"], "'relative/dir'"),
        ("/one/path", "'/one/path'"),
        ([1], "1"),
        ({"a": "/x"}, "{'a': '/x'} (dict)"),
    ],
)
def test_allow_outside_is_a_list_of_absolute_paths(value: Any, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config({}, allow_outside=value))
    assert [(p.path, p.message) for p in info.value.problems] == [
        (
            "run.allow_outside",
            f"got {shown}; expected a list of absolute directory paths outside the run directory where the "
            "callbacks' paths may also lie, e.g. [/data/exports]",
        )
    ]


def test_allow_outside_is_kept_in_the_resolved_config() -> None:
    assert load_config(_config({}, allow_outside=["/data/exports"])).data["run"] == {
        "seed": 0,
        "allow_outside": ["/data/exports"],
        "name": "demo",
        "dir": "runs",
    }


# ---------------------------------------------------------------------------------------------------- preflight
def _everything(tmp_path: Path) -> dict[str, Any]:
    """The image-field app, small, with every callback that writes (W&B offline)."""
    return {
        "trainer": {"name": "image_field", "size": 32, "dense": [4, 8], "hashed": [16], "table": 64},
        "callbacks": {
            "lr_decay": {},
            "grid_pruning": {"every": "1it"},
            "validator": {"every": "1ep"},
            "checkpointer": {"every": "1ep"},
            "tensorboard": {},
            "wandb": {"mode": "offline"},
            "metrics_file": {"path": "out/metrics.json"},
            "pipeline_export": {"path": "exports/model-{iteration}.pth", "every": "1ep"},
            "ema": {},
            "preview": {},
        },
    }


def test_a_preflight_sets_everything_up_writes_nothing_and_tears_it_down(tmp_path: Path) -> None:
    config = load_config(_everything(tmp_path))
    before = _tree(tmp_path)
    run_dir = tmp_path / "runs" / "r"
    with preflight_trainer(config, run_dir, objects={"console": Console(file=io.StringIO())}) as trainer:
        names = [type(c).__name__ for c in trainer.callbacks]
        assert names == [
            "LRDecay",
            "GridPruning",
            "Validator",
            "Checkpointer",
            "TensorBoardLogger",
            "WandbLogger",
            "MetricsFile",
            "PipelineExport",
            "EMA",
            "Preview",
        ]
        metrics_file = next(c for c in trainer.callbacks if isinstance(c, MetricsFile))
        assert metrics_file.path == run_dir / "out" / "metrics.json"
        assert trainer.handles_of(trainer.callbacks[0])  # connected, as for training
    assert trainer.callbacks == ()  # every callback removed (its teardown ran)
    assert _tree(tmp_path) == before  # no run directory, no event file, no W&B folder
    preflight(config, run_dir, objects={"console": Console(file=io.StringIO())})
    assert _tree(tmp_path) == before


def test_a_preflight_refuses_a_run_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file\n", encoding="utf-8")
    config = load_config(_config({}))
    with pytest.raises(ConfigError) as info:
        preflight(config, tmp_path / "taken" / "run")
    assert str(info.value) == (
        f"<dict>: the run directory {tmp_path / 'taken' / 'run'} cannot be created: {tmp_path / 'taken'} is a file, "
        "not a directory; choose another --run-dir (or run.dir in the config)"
    )


def test_a_preflight_refuses_a_fresh_run_into_earlier_checkpoints_unless_resuming(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trainer = _build(_config({"checkpointer": {"every": "1ep"}}), run_dir)
    assert trainer.train() is Status.COMPLETED
    trainer.close()
    saved = _tree(run_dir)
    config = load_config(_config({"checkpointer": {"every": "1ep"}}))
    console = {"console": Console(file=io.StringIO())}
    with pytest.raises(ConfigError) as info:
        preflight(config, run_dir, objects=console)
    assert [(p.path, p.message) for p in info.value.problems] == [
        (
            "callbacks.checkpointer",
            f"{run_dir / 'checkpoints'} holds 1 checkpoint(s) of an earlier run (newest step-00000002.pt, iteration "
            "2); continue that run with --resume auto, or choose another run directory",
        )
    ]
    preflight(config, run_dir, resume="auto", objects=console)
    assert _tree(run_dir) == saved


_PROBE = """
import os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from trainers.config.writable import unwritable
if os.geteuid() == 0:  # file modes do not bind root: look as a user they bind
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
for path in sys.argv[2:]:
    print(unwritable(Path(path)))
"""


def test_a_directory_this_process_cannot_write_is_refused_without_writing() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # searchable by any user, unlike pytest's folders
        base = Path(top)
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, str(ROOT), str(locked), str(locked / "new" / "deeper"), str(base / "new")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "is not writable by this process",
            f"cannot be created: {locked} is not writable by this process",
            f"cannot be created: {base} is not writable by this process" if os.geteuid() == 0 else "None",
        ]
        assert os.listdir(locked) == []
        locked.chmod(0o755)
