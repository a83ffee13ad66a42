"""``PipelineExport`` on real training runs of a tiny ``nn.Linear`` writing real files: the state dict loads with
``weights_only=True`` and ``strict=True`` and equals the pipeline exactly; the schedule (iterations, epochs, a step
schedule at an epoch's last step written after that epoch's ``post_epoch``) and ``at_end``; requests; atomic writes
(no temporary file left, a failed write leaves the previous file intact, ``on_error``); the EMA's average when an
EMA serves export; paths that escape the run directory; ``format="full"``; and the config and CLI routes."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from callbacks import EMA, Checkpointer, ExportError, PipelineExport
from lifecycle import CallbackError, Priority, Status
from tests.support import make_model, make_trainer, params_of, same_params
from trainers import BaseTrainer, ConfigError
from trainers.cli import main
from trainers.config.builder import build

# make_trainer: 6 items in batches of 2 -> 3 iterations per epoch, 2 epochs
STEPS = 3


def loaded(path: Path, init_seed: int = 7) -> nn.Linear:
    """A freshly built pipeline (other initial weights) with the exported state dict loaded strictly."""
    state = torch.load(path, weights_only=True)
    fresh = make_model(init_seed)
    fresh.load_state_dict(state, strict=True)
    return fresh


def same_state(a: nn.Module, b: nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return list(left) == list(right) and all(torch.equal(left[k], right[k]) for k in left)


def weights_at(trainer: BaseTrainer, event: str = "post_step") -> dict[int, list[torch.Tensor]]:
    """The pipeline's weights after each ``event``, by iteration, recorded before the export's handler runs."""
    seen: dict[int, list[torch.Tensor]] = {}
    trainer.on(event, priority=Priority.DEFAULT)(
        lambda t, **_: seen.__setitem__(t.state.iteration, params_of(t.pipeline))
    )
    return seen


def files(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden (temporary) ones included."""
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------------------------------- the file
def test_the_state_dict_loads_weights_only_and_strictly_and_equals_the_pipeline_exactly(tmp_path: Path) -> None:
    export = PipelineExport()
    trainer = make_trainer(items=6, batch_size=2, max_epochs=2, run_dir=tmp_path, callbacks=[export])
    before = params_of(trainer.pipeline)
    assert trainer.train() is Status.COMPLETED
    assert export.last_path == tmp_path / "model.pth"
    assert files(tmp_path) == ["model.pth"]  # no temporary file left, nothing else written
    fresh = loaded(tmp_path / "model.pth")
    assert same_state(fresh, trainer.pipeline)
    assert not same_params(params_of(fresh), before)  # trained weights, not the initial ones
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert list(state) == ["weight", "bias"]
    assert all(value.device.type == "cpu" for value in state.values())


def test_format_full_saves_the_module_which_loads_with_weights_only_false(tmp_path: Path) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[PipelineExport(path="full.pth", format="full")])
    trainer.train()
    module = torch.load(tmp_path / "full.pth", weights_only=False)
    assert isinstance(module, nn.Linear)
    assert same_state(module, trainer.pipeline)
    with pytest.raises(Exception, match="weights_only"):  # torch's own unpickling error
        torch.load(tmp_path / "full.pth", weights_only=True)


def test_a_checkpointer_with_keep_last_never_deletes_the_exports(tmp_path: Path) -> None:
    exports = PipelineExport(path="checkpoints/model-{iteration:04d}.pth", every="1it")
    trainer = make_trainer(run_dir=tmp_path, callbacks=[Checkpointer(every="1it", keep_last=1), exports])
    trainer.train()
    names = files(tmp_path / "checkpoints")
    assert [n for n in names if n.startswith("model-")] == [f"model-{i:04d}.pth" for i in range(1, 2 * STEPS + 1)]
    assert [n for n in names if n.startswith("step-")] == [f"step-{2 * STEPS:08d}.pt"]
    resumed = make_trainer(run_dir=tmp_path, callbacks=[Checkpointer(every="1it", keep_last=1)])
    assert (
        resumed.restore("auto") == tmp_path / "checkpoints" / f"step-{2 * STEPS:08d}.pt"
    )  # exports are no checkpoints


# ---------------------------------------------------------------------------------------------------- when
def test_an_iteration_schedule_writes_the_weights_of_each_iteration_and_at_end_writes_the_last(tmp_path: Path) -> None:
    export = PipelineExport(path="exports/model-{iteration:08d}.pth", every="2it")
    trainer = make_trainer(run_dir=tmp_path, callbacks=[export])
    seen = weights_at(trainer)
    ended: list[bool] = []  # whether the final file existed before post_training
    trainer.on("post_training", priority=Priority.DEFAULT)(
        lambda t, **_: ended.append((tmp_path / "exports" / "model-00000006.pth").exists())
    )
    trainer.train()
    assert files(tmp_path / "exports") == [f"model-{i:08d}.pth" for i in (2, 4, 6)]
    for iteration in (2, 4, 6):
        assert same_params(params_of(loaded(tmp_path / "exports" / f"model-{iteration:08d}.pth")), seen[iteration])
    assert ended == [True]  # iteration 6 is an epoch's last step: exported after its post_epoch, then again at end


def test_a_step_schedule_at_an_epochs_last_step_exports_after_that_epochs_post_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[PipelineExport(path="m-{iteration}.pth", every="3it")])

    @trainer.on("post_epoch", priority=Priority.STATE)
    def halve(t: BaseTrainer, **_: Any) -> None:  # something an epoch's end does to the weights
        with torch.no_grad():
            for param in t.pipeline.parameters():
                param.mul_(0.5)

    after = weights_at(trainer, "post_epoch")
    trainer.train()
    for iteration in (3, 6):
        assert same_params(params_of(loaded(tmp_path / f"m-{iteration}.pth")), after[iteration])


def test_an_epoch_schedule_names_files_by_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(
        run_dir=tmp_path, callbacks=[PipelineExport(path="ep{epoch}.pth", every="1ep", at_end=False)]
    )
    after = weights_at(trainer, "post_epoch")
    trainer.train()
    assert files(tmp_path) == ["ep1.pth", "ep2.pth"]
    assert same_params(params_of(loaded(tmp_path / "ep1.pth")), after[STEPS])
    assert same_params(params_of(loaded(tmp_path / "ep2.pth")), after[2 * STEPS])


@pytest.mark.parametrize(
    ("at_end", "stop_at", "written"),
    [(True, None, True), (False, None, False), (True, 2, True), (True, -1, False)],
    ids=["completed", "at_end-false", "stopped", "failed"],
)
def test_at_end_exports_a_completed_or_stopped_run_only(
    tmp_path: Path, at_end: bool, stop_at: int | None, written: bool
) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[PipelineExport(at_end=at_end)])

    @trainer.on("post_step")
    def finish(t: BaseTrainer, **_: Any) -> None:
        if stop_at is not None and stop_at > 0 and t.state.iteration == stop_at:
            t.stop()
        if stop_at == -1 and t.state.iteration == 2:
            raise ValueError("boom")

    if stop_at == -1:
        with pytest.raises(CallbackError, match="boom"):
            trainer.train()
    else:
        trainer.train()
    assert (tmp_path / "model.pth").exists() is written
    if written:
        assert same_state(loaded(tmp_path / "model.pth"), trainer.pipeline)


def test_export_requests_are_served_at_once_between_steps_and_after_the_step_inside_one(tmp_path: Path) -> None:
    export = PipelineExport(path="req-{iteration}.pth", at_end=False, state_key="mine")
    trainer = make_trainer(run_dir=tmp_path, callbacks=[export])
    initial = params_of(trainer.pipeline)
    assert trainer.servers("export") == ("mine.request",)
    trainer.request("export")  # before training: the initial weights, at once
    assert same_params(params_of(loaded(tmp_path / "req-0.pth")), initial)
    seen = weights_at(trainer)
    trainer.on("post_step", priority=Priority.STATE)(
        lambda t, **_: t.request("export:mine") if t.state.iteration == 2 else None
    )
    trainer.train()
    assert files(tmp_path) == ["req-0.pth", "req-2.pth"]
    assert same_params(params_of(loaded(tmp_path / "req-2.pth")), seen[2])
    assert export.export(trainer) == tmp_path / "req-6.pth"  # after the run, in code
    trainer.remove_callback(export)
    assert trainer.servers("export") == ()


# ---------------------------------------------------------------------------------------------------- EMA
def test_the_ema_average_is_exported_when_an_ema_serves_export(tmp_path: Path) -> None:
    ema = EMA(decay=0.9)
    trainer = make_trainer(run_dir=tmp_path, callbacks=[ema, PipelineExport(every="2it", path="m-{iteration}.pth")])
    averages: dict[int, dict[str, torch.Tensor]] = {}
    trainer.on("post_step", priority=Priority.DEFAULT)(
        lambda t, **_: averages.__setitem__(t.state.iteration, ema.average_state_dict(device="cpu"))
    )
    seen = weights_at(trainer)
    trainer.train()
    for iteration in (2, 4, 6):
        exported = torch.load(tmp_path / f"m-{iteration}.pth", weights_only=True)
        assert list(exported) == list(averages[iteration])
        assert all(torch.equal(exported[k], averages[iteration][k]) for k in exported), iteration
        assert not same_params(list(exported.values()), seen[iteration])  # the average, not the training weights
    assert same_params(params_of(trainer.pipeline), seen[2 * STEPS])  # the training weights are back, bit for bit


def test_an_ema_that_does_not_serve_export_leaves_the_training_weights_exported(tmp_path: Path) -> None:
    ema = EMA(decay=0.9, use_for=["validation", "preview"])
    trainer = make_trainer(run_dir=tmp_path, callbacks=[ema, PipelineExport(format="full")])
    trainer.train()
    module = torch.load(tmp_path / "model.pth", weights_only=False)
    assert same_state(module, trainer.pipeline)
    assert not same_params(params_of(module), ema.average)


def test_format_full_with_an_ema_pickles_the_average(tmp_path: Path) -> None:
    ema = EMA(decay=0.9)
    trainer = make_trainer(run_dir=tmp_path, callbacks=[ema, PipelineExport(format="full")])
    trainer.train()
    module = torch.load(tmp_path / "model.pth", weights_only=False)
    assert same_params(params_of(module), ema.average)
    assert not same_params(params_of(module), params_of(trainer.pipeline))


# ---------------------------------------------------------------------------------------------------- failures
@pytest.fixture
def broken_save(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """``torch.save`` that, once broken, writes a few bytes and fails like a full disk."""
    real = torch.save
    state = {"broken": False}

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if state["broken"]:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return lambda broken: state.__setitem__("broken", broken)


def test_a_failed_write_raises_naming_the_path_and_leaves_the_previous_file_intact(
    tmp_path: Path, broken_save: Callable[[bool], None]
) -> None:
    trainer = make_trainer(run_dir=tmp_path, callbacks=[PipelineExport(every="2it")])
    seen = weights_at(trainer)
    trainer.on("post_step", priority=Priority.STATE)(lambda t, **_: broken_save(t.state.iteration >= 3))
    with pytest.raises(CallbackError, match=r"pipeline export .*model\.pth: could not be written \(OSError") as info:
        trainer.train()
    assert isinstance(info.value.__cause__, ExportError)
    assert info.value.__cause__.path == tmp_path / "model.pth"
    assert trainer.state.iteration == 4
    assert files(tmp_path) == ["model.pth"]  # the temporary file is gone
    assert same_params(params_of(loaded(tmp_path / "model.pth")), seen[2])


def test_on_error_warn_logs_counts_and_trains_on(
    tmp_path: Path, broken_save: Callable[[bool], None], caplog: pytest.LogCaptureFixture
) -> None:
    export = PipelineExport(every="2it", on_error="warn")
    trainer = make_trainer(run_dir=tmp_path, callbacks=[export])
    seen = weights_at(trainer)
    trainer.on("post_step", priority=Priority.STATE)(lambda t, **_: broken_save(t.state.iteration >= 3))
    with caplog.at_level(logging.ERROR, logger="stepbus.pipeline_export"):
        assert trainer.train() is Status.COMPLETED
    assert export.failures == 3  # iterations 4, 6 and the end
    assert export.last_path == tmp_path / "model.pth"  # from iteration 2
    assert files(tmp_path) == ["model.pth"]
    assert same_params(params_of(loaded(tmp_path / "model.pth")), seen[2])
    assert str(tmp_path / "model.pth") in caplog.text
    assert "No space left on device" in caplog.text


@pytest.mark.parametrize("blocker", ["directory", "file-parent"])
def test_a_path_that_cannot_be_a_file_fails_clearly(tmp_path: Path, blocker: str) -> None:
    if blocker == "directory":
        (tmp_path / "model.pth").mkdir()
        export, message = PipelineExport(), r"model\.pth: could not be written: it is a directory"
    else:
        (tmp_path / "exports").write_text("not a folder")
        export, message = PipelineExport("exports/model.pth"), r"exports is a file, not a directory"
    trainer = make_trainer(run_dir=tmp_path, callbacks=[export])
    with pytest.raises(CallbackError, match=message):
        trainer.train()
    warned = PipelineExport(export.template, on_error="warn", state_key="warned")
    trainer = make_trainer(run_dir=tmp_path, callbacks=[warned])
    assert trainer.train() is Status.COMPLETED
    assert warned.failures == 1
    assert warned.last_path is None
    assert files(tmp_path) == ["exports" if blocker == "file-parent" else "model.pth"]  # no temporary file


def test_a_state_dict_that_would_not_load_weights_only_is_refused_when_writing(tmp_path: Path) -> None:
    class WithExtra(nn.Linear):
        def get_extra_state(self) -> Any:
            return Console  # an object: torch.load(weights_only=True) would refuse it

        def set_extra_state(self, state: Any) -> None:
            pass

    trainer = make_trainer(model=WithExtra(3, 1), run_dir=tmp_path, callbacks=[PipelineExport()])
    with pytest.raises(CallbackError, match=r"not written: state_dict\['_extra_state'\] is a"):
        trainer.train()
    assert files(tmp_path) == []


def test_stale_temporary_files_of_a_killed_writer_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    stale = [".model-00000002.pth.999999.0123abcd.tmp", ".model-00000004.pth.999998.deadbeef.tmp"]
    kept = [".other.pth.999999.0123abcd.tmp", "notes.txt"]
    for name in stale + kept:
        (tmp_path / "exports" / name).write_bytes(b"x")
    trainer = make_trainer(run_dir=tmp_path, callbacks=[PipelineExport("exports/model-{iteration:08d}.pth")])
    trainer.train()
    assert files(tmp_path / "exports") == sorted([*kept, "model-00000006.pth"])


# ---------------------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("path", ["../model.pth", "exports/../../model.pth", ".."])
def test_a_relative_path_that_escapes_the_run_directory_is_refused_at_once(path: str) -> None:
    with pytest.raises(ValueError, match=r"escapes the run directory|must name a file"):
        PipelineExport(path)


def test_an_absolute_or_symlinked_path_outside_the_run_directory_is_refused_when_added(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(ValueError, match=r"path '.*elsewhere/model\.pth' escapes the run directory"):
        make_trainer(run_dir=run, callbacks=[PipelineExport(outside / "model.pth")])
    (run / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes the run directory"):
        make_trainer(run_dir=run, callbacks=[PipelineExport("link/model.pth")])
    with pytest.raises(ValueError, match="writes inside the run directory: give the trainer run_dir"):
        make_trainer(callbacks=[PipelineExport()])
    inside = PipelineExport(run / "sub" / "model.pth")  # an absolute path inside is fine
    make_trainer(run_dir=run, callbacks=[inside]).train()
    assert (run / "sub" / "model.pth").is_file()
    assert not any(outside.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": ""}, "path must be a file name"),
        ({"path": "exports/"}, "path must be a file name"),
        ({"path": "model-{step}.pth"}, r"unknown placeholder\(s\) \['step'\]"),
        ({"path": "model-{}.pth"}, "unknown placeholder"),
        ({"path": "model-{iteration:s}.pth"}, "not a valid template"),
        ({"path": "model-{iteration.real}.pth"}, "unknown placeholder"),
        ({"path": "{iteration}/model.pth"}, "placeholders may only appear in the file name"),
        ({"path": "checkpoints/step-{iteration:08d}.pt"}, "the Checkpointer's file names"),
        ({"path": 3}, "path must be a file name"),
        ({"format": "zip"}, "format must be 'state_dict' or 'full'"),
        ({"on_error": "ignore"}, "on_error must be 'raise' or 'warn'"),
        ({"at_end": "yes"}, "at_end must be true or false"),
        ({"every": "often"}, "callback PipelineExport 'PipelineExport'"),
    ],
)
def test_bad_arguments_are_refused_naming_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineExport(**kwargs)


# ---------------------------------------------------------------------------------------------------- config, CLI
def _demo(tmp_path: Path, name: str, block: dict[str, Any], seed: int = 0) -> BaseTrainer:
    config = {
        "run": {"seed": seed},
        "trainer": {"name": "demo", "samples": 64, "max_epochs": 2},
        "callbacks": {"pipeline_export": block},
    }
    return build(config, run_dir=tmp_path / name, objects={"console": Console(file=io.StringIO())})


def test_the_config_route_builds_and_exports(tmp_path: Path) -> None:
    trainer = _demo(tmp_path, "run", {"every": "1ep", "path": "exports/ep{epoch}.pth"})
    exports = [c for c in trainer.callbacks if isinstance(c, PipelineExport)]
    assert len(exports) == 1
    assert (exports[0].at_end, exports[0].format, exports[0].on_error) == (True, "state_dict", "raise")
    assert trainer.config is not None
    assert trainer.config["callbacks"]["pipeline_export"] == {
        "enabled": True,
        "path": "exports/ep{epoch}.pth",
        "every": "1ep",
        "at_end": True,
        "format": "state_dict",
        "on_error": "raise",
    }
    trainer.train()
    assert files(tmp_path / "run" / "exports") == ["ep1.pth", "ep2.pth"]
    fresh = _demo(tmp_path, "fresh", {}, seed=1).pipeline  # the same architecture, other initial weights
    assert not same_state(fresh, trainer.pipeline)
    fresh.load_state_dict(torch.load(tmp_path / "run" / "exports" / "ep2.pth", weights_only=True), strict=True)
    assert same_state(fresh, trainer.pipeline)
    trainer.close()


@pytest.mark.parametrize(
    ("block", "where", "message"),
    [
        ({"format": "zip"}, "callbacks.pipeline_export.format", "'state_dict' or 'full'"),
        ({"on_error": "ignore"}, "callbacks.pipeline_export.on_error", "'raise' or 'warn'"),
        ({"at_end": "sometimes"}, "callbacks.pipeline_export.at_end", "got 'sometimes'"),
        ({"paht": "m.pth"}, "callbacks.pipeline_export.paht", "did you mean 'path'?"),
        ({"path": "../m.pth"}, "callbacks.pipeline_export", "escapes the run directory"),
    ],
)
def test_the_config_refuses_bad_values_with_the_key_path(
    tmp_path: Path, block: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _demo(tmp_path, "bad", block)
    assert [p.path for p in info.value.problems] == [where]
    assert message in info.value.problems[0].message
    assert not (tmp_path / "bad").exists()


def test_stepbus_config_validate_and_stepbus_callbacks_know_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per row
    good = tmp_path / "good.yaml"
    good.write_text("trainer: {name: demo}\ncallbacks:\n  pipeline_export: {every: 1ep, path: model.pth}\n")
    assert main(["config", "validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {name: demo}\ncallbacks:\n  pipeline_export: {every: 1ep, format: zip}\n")
    assert main(["config", "validate", str(bad)]) == 2
    assert "callbacks.pipeline_export.format: got 'zip'" in capsys.readouterr().err
    assert main(["callbacks"]) == 0
    out = capsys.readouterr().out
    block = next(b for b in out.split("\n\n") if b.startswith("pipeline_export: ")).splitlines()
    assert block[0] == (
        "pipeline_export: PipelineExport (built-in) Write the pipeline alone (its state_dict or the whole module) "
        "atomically, on a schedule and at the end."
    )
    rows = [line.split()[:2] for line in block[2:]]
    assert rows == [
        ["path", "'model.pth'"],
        ["every", "None"],
        ["at_end", "True"],
        ["format", "'state_dict'"],
        ["on_error", "'raise'"],
    ]
