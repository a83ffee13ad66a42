"""``Checkpointer`` on real training runs of a tiny ``nn.Linear`` writing real files: when it saves (epoch, iteration
and wall-time schedules, at the end, a step-schedule save at an epoch's last step taken after that epoch's
``post_epoch``), the exact event contract of a run resumed from its checkpoints, ``trainer.request_checkpoint()``,
retention (``keep_last``, ``keep_best`` with ``monitor``, ties) with ``last.pt``/``best.pt`` checked after every
save, safety (a fresh run refusing another run's directory, files it does not own, stale temporary files, a resume
from another directory), failed writes under ``on_error``, crash dumps, constructor validation and state."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import Callback, Checkpointer, Validator
from lifecycle import CallbackError, Status
from tests.support import Recorder, full_run, make_trainer, mse, params_of, same_params
from trainers import BaseTrainer
from trainers.checkpoint.format import (
    CheckpointError,
    EarlierRunCheckpoints,
    check_plain,
    list_checkpoints,
    load_checkpoint,
    read_metadata,
)

# make_trainer: 6 items in batches of 2 -> 3 iterations per epoch
STEPS = 3


def step(iteration: int) -> str:
    return f"step-{iteration:08d}.pt"


def crash(iteration: int) -> str:
    return f"crash-{iteration:08d}.pt"


def snapshot(directory: Path) -> dict[str, Any]:
    """Every entry of ``directory``: a regular file as its inode (an atomic rewrite changes it), a symlink as
    ``"-> target"`` (with ``" (dangling)"`` when the target is not a file), a directory as ``"dir"``."""
    out: dict[str, Any] = {}
    if not directory.exists():
        return out
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                target = os.readlink(entry.path)
                out[entry.name] = f"-> {target}" + ("" if (directory / target).is_file() else " (dangling)")
            elif entry.is_dir():
                out[entry.name] = "dir"
            else:
                out[entry.name] = entry.inode()
    return out


def contents(directory: Path) -> dict[str, Any]:
    """Every entry of ``directory`` with its bytes and mtime (files), its target (links), or ``"dir"``."""
    out: dict[str, Any] = {}
    for path in sorted(directory.iterdir()):
        if path.is_symlink():
            out[path.name] = ("link", os.readlink(path))
        elif path.is_dir():
            out[path.name] = "dir"
        else:
            out[path.name] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def step_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("step-") and p.is_file())


def links(directory: Path) -> dict[str, str]:
    """Where ``last.pt`` and ``best.pt`` point, for those that exist; asserts they are symlinks to existing files."""
    found = {}
    for name in ("last.pt", "best.pt"):
        path = directory / name
        if path.exists() or path.is_symlink():
            assert path.is_symlink(), f"{name} is not a symlink"
            target = os.readlink(path)
            assert (directory / target).is_file(), f"{name} -> {target} dangles"
            found[name] = target
    return found


Look = tuple[str, str, int, dict[str, Any]]


class Probe(Callback):
    """Appends ``(tag, event, iteration, snapshot(directory))`` to ``log`` on every training event, at its own
    priority: one above the checkpointer's (-1000) and one below tell on which event, before or after which
    handlers, a file was written."""

    def __init__(self, directory: Path, log: list[Look], tag: str, *, priority: int) -> None:
        super().__init__(priority=priority, state_key=f"probe-{tag}")
        self.directory, self.log, self.tag = directory, log, tag

    def _look(self, trainer: BaseTrainer, event: str) -> None:
        self.log.append((self.tag, event, trainer.state.iteration, snapshot(self.directory)))

    def pre_training(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "pre_training")

    def pre_epoch(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "pre_epoch")

    def pre_step(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "pre_step")

    def post_step(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "post_step")

    def post_epoch(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "post_epoch")

    def post_training(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "post_training")

    def exception(self, trainer: BaseTrainer, **_: Any) -> None:
        self._look(trainer, "exception")


def probes(directory: Path) -> tuple[list[Look], Probe, Probe]:
    """A shared log and two probes: ``"hi"`` runs before the checkpointer, ``"lo"`` after it (priority -2000)."""
    log: list[Look] = []
    return log, Probe(directory, log, "hi", priority=-500), Probe(directory, log, "lo", priority=-2000)


def writes(log: Sequence[Look]) -> list[tuple[str, str, int, str]]:
    """``(tag, event, iteration, name)`` of the first look that saw each write of a ``step-``/``crash-`` file (a new
    name, or a new inode under an old name)."""
    found = []
    previous: dict[str, Any] = {}
    for tag, event, iteration, snap in log:
        for name, value in snap.items():
            if name.startswith(("step-", "crash-")) and previous.get(name) != value:
                found.append((tag, event, iteration, name))
        previous = snap
    return found


def saves_seen(log: Sequence[Look], tag: str, event: str) -> list[tuple[int, list[str], dict[str, str]]]:
    """At each look of ``tag`` on ``event``: (iteration, step files, link targets)."""
    out = []
    for t, e, iteration, snap in log:
        if t == tag and e == event:
            files = sorted(n for n, v in snap.items() if n.startswith("step-") and isinstance(v, int))
            targets = {n: v for n, v in snap.items() if n in ("last.pt", "best.pt")}
            out.append((iteration, files, targets))
    return out


class Counter(Callback):
    """Counts post_step and post_epoch emissions; its count is part of every checkpoint, so a checkpoint shows which
    of these events had already happened when it was taken."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"post_step": 0, "post_epoch": 0}

    def post_step(self, trainer: BaseTrainer, **_: Any) -> None:
        self.counts["post_step"] += 1

    def post_epoch(self, trainer: BaseTrainer, **_: Any) -> None:
        self.counts["post_epoch"] += 1

    def state_dict(self) -> dict[str, Any]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = dict(state)


class Script:
    """A validation function returning the next value of ``values`` as ``{key: value}``."""

    def __init__(self, values: Sequence[float], key: str) -> None:
        self.values, self.key = list(values), key
        self.calls = 0

    def __call__(self, trainer: BaseTrainer) -> dict[str, Any]:
        self.calls += 1
        return {self.key: self.values[self.calls - 1]}


class Boom(Exception):
    pass


def failing_loss(at: int, error: BaseException) -> Any:
    """``mse`` that raises ``error`` on its ``at``-th call."""
    calls = [0]

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == at:
            raise error
        return mse(model, batch)

    return loss


# ---------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("every", "max_epochs", "expected"),
    [
        # after each epoch's post_epoch; the end save rewrites 9 (post_training handlers may have changed state)
        (
            "1ep",
            3,
            [
                ("lo", "post_epoch", 3, step(3)),
                ("lo", "post_epoch", 6, step(6)),
                ("lo", "post_epoch", 9, step(9)),
                ("lo", "post_training", 9, step(9)),
            ],
        ),
        ("2ep", 3, [("lo", "post_epoch", 6, step(6)), ("lo", "post_training", 9, step(9))]),
        # multiples of 5 after that post_step; the end at 9 saves in post_training
        ("5it", 3, [("lo", "post_step", 5, step(5)), ("lo", "post_training", 9, step(9))]),
        # 2, 4 mid-epoch after post_step; 6 is epoch 2's last step: after its post_epoch; 8; the end 9
        (
            "2it",
            3,
            [
                ("lo", "post_step", 2, step(2)),
                ("lo", "post_step", 4, step(4)),
                ("lo", "post_epoch", 6, step(6)),
                ("lo", "post_step", 8, step(8)),
                ("lo", "post_training", 9, step(9)),
            ],
        ),
        # every save is at an epoch's last step: all after post_epoch, never at post_step
        (
            "3it",
            2,
            [("lo", "post_epoch", 3, step(3)), ("lo", "post_epoch", 6, step(6)), ("lo", "post_training", 6, step(6))],
        ),
        (None, 2, [("lo", "post_training", 6, step(6))]),
    ],
)
def test_saves_on_its_schedule_between_the_right_handlers(
    tmp_path: Path, every: str | None, max_epochs: int, expected: list[tuple[str, str, int, str]]
) -> None:
    log, hi, lo = probes(tmp_path)
    checkpointer = Checkpointer(tmp_path, every=every, keep_last=None)
    trainer = make_trainer(max_epochs=max_epochs, callbacks=[hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    # each file appeared between the probe above the checkpointer and the one below it, on the expected event
    assert writes(log) == expected
    assert step_files(tmp_path) == sorted({name for *_, name in expected})
    assert links(tmp_path) == {"last.pt": expected[-1][3]}
    assert checkpointer.last_path == tmp_path / expected[-1][3]
    assert checkpointer.best_path is None
    for *_, name in expected:
        meta = read_metadata(tmp_path / name)
        iteration = int(name[5:13])
        assert (meta["iteration"], meta["resumable"], meta["score"]) == (iteration, True, None)
        # a save at an epoch's last step says so: the epoch is complete, not "step 0 of the next one"
        assert (meta["epoch"], meta["epoch_iteration"]) == ((iteration - 1) // STEPS + 1, (iteration - 1) % STEPS + 1)


def test_a_step_schedule_save_at_an_epochs_last_step_follows_every_post_epoch_handler_above_it(
    tmp_path: Path,
) -> None:
    rec = Recorder(priority=-999)  # just above the checkpointer
    counter = Counter()
    log, hi, lo = probes(tmp_path)
    checkpointer = Checkpointer(tmp_path, every="5it", keep_last=None)
    # 10 items in batches of 2: 5 iterations per epoch, so "5it" always falls on an epoch's last step
    trainer = make_trainer(items=10, max_epochs=2, callbacks=[counter, rec, hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    assert rec.log == full_run(2, 5)
    assert writes(log) == [
        ("lo", "post_epoch", 5, step(5)),
        ("lo", "post_epoch", 10, step(10)),
        ("lo", "post_training", 10, step(10)),  # the end save, always written
    ]
    # nothing at post_step 5: not even the probe below the checkpointer saw it there
    assert saves_seen(log, "lo", "post_step")[4] == (5, [], {})
    for iteration, epoch in ((5, 1), (10, 2)):
        loaded = load_checkpoint(tmp_path / step(iteration))
        meta = loaded["stepbus"]
        assert (meta["epoch"], meta["epoch_iteration"], meta["iteration"], meta["reason"]) == (
            epoch,
            5,
            iteration,
            "schedule" if iteration == 5 else "end (completed)",  # the end save rewrote the last one
        )
        # this epoch's post_epoch had run (in the handlers above the checkpointer) when the state was taken
        assert loaded["callbacks"]["Counter"] == {"post_step": iteration, "post_epoch": epoch}


def test_at_end_false_with_no_schedule_saves_nothing_and_at_end_alone_saves_once(tmp_path: Path) -> None:
    nothing = Checkpointer(tmp_path / "a", every=None, at_end=False)
    trainer = make_trainer(max_epochs=2, callbacks=[nothing])
    assert trainer.train() is Status.COMPLETED
    assert not (tmp_path / "a").exists()
    assert nothing.last_path is None

    schedule_only = Checkpointer(tmp_path / "b", every="4it", at_end=False, keep_last=None)
    trainer = make_trainer(max_epochs=3, callbacks=[schedule_only])
    assert trainer.train() is Status.COMPLETED
    assert step_files(tmp_path / "b") == [step(4), step(8)]  # no end save at 9
    assert links(tmp_path / "b") == {"last.pt": step(8)}


def test_a_stopped_run_saves_at_the_end(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, every=None, keep_last=None)
    trainer = make_trainer(max_epochs=3, callbacks=[checkpointer])

    @trainer.on("post_step")
    def stop_at_4(trainer: BaseTrainer, **_: Any) -> None:
        if trainer.state.iteration == 4:
            trainer.stop()

    assert trainer.train() is Status.STOPPED
    assert step_files(tmp_path) == [step(4)]
    assert read_metadata(tmp_path / step(4))["reason"] == "end (stopped)"


def test_a_wall_time_schedule_saves(tmp_path: Path) -> None:
    def slow(model: nn.Module, batch: Any) -> torch.Tensor:
        time.sleep(0.06)  # each step outlasts the 0.05 s period
        return mse(model, batch)

    log, hi, lo = probes(tmp_path)
    checkpointer = Checkpointer(tmp_path, every="0.05s", at_end=False, keep_last=None)
    # 8 items in batches of 2: one epoch of 4 steps
    trainer = make_trainer(items=8, max_epochs=1, loss_fn=slow, callbacks=[hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    # the first post_step starts the clock; every later one is due, the last step's save after post_epoch
    assert writes(log) == [
        ("lo", "post_step", 2, step(2)),
        ("lo", "post_step", 3, step(3)),
        ("lo", "post_epoch", 4, step(4)),
    ]
    assert [read_metadata(tmp_path / step(i))["reason"] for i in (2, 3, 4)] == ["schedule"] * 3


# ---------------------------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    ("every", "k"),
    [
        ("1ep", 3),  # epoch boundaries
        ("1ep", 6),
        ("3it", 3),  # a step schedule on an epoch's last step: saved after post_epoch
        ("3it", 6),
        ("2it", 4),  # mid-epoch (epoch 2, step 1)
        ("2it", 8),  # mid-epoch (epoch 3, step 2)
    ],
)
def test_a_run_resumed_from_its_checkpoint_neither_repeats_nor_skips_events(tmp_path: Path, every: str, k: int) -> None:
    epochs = 3
    reference_rec, reference_counter = Recorder(), Counter()
    reference = make_trainer(
        max_epochs=epochs,
        callbacks=[reference_counter, reference_rec, Checkpointer(tmp_path / "ref", every=every, keep_last=None)],
    )
    assert reference.train() is Status.COMPLETED
    full = full_run(epochs, STEPS)
    assert reference_rec.log == full

    directory = tmp_path / "run"
    first_rec = Recorder()
    first = make_trainer(
        max_epochs=epochs, callbacks=[Counter(), first_rec, Checkpointer(directory, every=every, keep_last=None)]
    )
    for _ in range(k):
        assert first.iterate()
    first.close()  # abandoned at iteration k, as if the process had been killed right after the save
    meta = read_metadata(directory / step(k))
    epoch, offset = (k - 1) // STEPS + 1, (k - 1) % STEPS + 1
    assert (meta["iteration"], meta["epoch"], meta["epoch_iteration"]) == (k, epoch, offset)

    second_rec, second_counter = Recorder(), Counter()
    second = make_trainer(
        max_epochs=epochs,
        callbacks=[second_counter, second_rec, Checkpointer(directory, every=every, keep_last=None)],
    )
    assert second.restore(directory / step(k)) == directory / step(k)
    assert second.train() is Status.COMPLETED

    # the rows the first run logged: up to iteration k's post_step, and its post_epoch at an epoch's last step
    done = 1 + epoch + 3 * k + (epoch if offset == STEPS else epoch - 1)
    assert first_rec.log == full[:done]
    extra = [("pre_training", epoch, offset, k, True)]
    if offset < STEPS:
        extra.append(("pre_epoch", epoch, offset, k, None))  # the open epoch is re-opened
    assert second_rec.log == extra + full[done:]
    assert first_rec.log + second_rec.log == full[:done] + extra + full[done:]
    # the state other callbacks keep, and the model, are those of the uninterrupted run
    assert second_counter.counts == reference_counter.counts == {"post_step": 9, "post_epoch": 3}
    assert same_params(params_of(second.pipeline), params_of(reference.pipeline))


# ---------------------------------------------------------------------------------------------- requests


def test_request_checkpoint_between_iterate_calls_saves_at_once_even_at_a_saved_iteration(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, every="1ep", at_end=False, keep_last=None)
    trainer = make_trainer(max_epochs=2, callbacks=[checkpointer])
    trainer.request_checkpoint()  # before the first step: iteration 0
    assert step_files(tmp_path) == [step(0)]
    assert read_metadata(tmp_path / step(0))["reason"] == "request"
    for _ in range(3):
        assert trainer.iterate()
    assert step_files(tmp_path) == [step(0), step(3)]  # the iteration-0 file is its own: no refusal
    scheduled = tmp_path / step(3)
    before = (scheduled.stat().st_ino, read_metadata(scheduled)["reason"])
    assert before[1] == "schedule"
    trainer.request_checkpoint()  # the same iteration: written again
    after = (scheduled.stat().st_ino, read_metadata(scheduled)["reason"])
    assert after[0] != before[0]
    assert after[1] == "request"
    assert trainer.iterate()
    trainer.request_checkpoint()  # mid-epoch
    meta = read_metadata(tmp_path / step(4))
    assert (meta["iteration"], meta["epoch"], meta["epoch_iteration"], meta["reason"]) == (4, 2, 1, "request")
    assert links(tmp_path) == {"last.pt": step(4)}
    assert checkpointer.save(trainer) == tmp_path / step(4)
    assert read_metadata(tmp_path / step(4))["reason"] == "manual"


def test_request_checkpoint_from_a_handler_is_served_after_the_step_or_after_post_epoch(tmp_path: Path) -> None:
    log, hi, lo = probes(tmp_path)
    counter = Counter()
    checkpointer = Checkpointer(tmp_path, every=None, at_end=False, keep_last=None)
    trainer = make_trainer(max_epochs=2, callbacks=[counter, hi, checkpointer, lo])

    @trainer.on("post_step")
    def ask(trainer: BaseTrainer, **_: Any) -> None:
        if trainer.state.iteration in (2, 3):
            trainer.request_checkpoint()

    assert trainer.train() is Status.COMPLETED
    # 2: after every post_step handler (even the one below the checkpointer), before the next pre_step;
    # 3 (epoch 1's last step): after every post_epoch handler, before epoch 2's pre_epoch
    assert writes(log) == [("hi", "pre_step", 3, step(2)), ("hi", "pre_epoch", 3, step(3))]
    two, three = load_checkpoint(tmp_path / step(2)), load_checkpoint(tmp_path / step(3))
    assert (two["stepbus"]["epoch"], two["stepbus"]["epoch_iteration"], two["stepbus"]["reason"]) == (1, 2, "request")
    assert two["callbacks"]["Counter"] == {"post_step": 2, "post_epoch": 0}
    assert (three["stepbus"]["epoch"], three["stepbus"]["epoch_iteration"]) == (1, 3)
    assert three["callbacks"]["Counter"] == {"post_step": 3, "post_epoch": 1}


def test_request_checkpoint_without_a_checkpointer_names_the_missing_server() -> None:
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(RuntimeError, match="nothing on this trainer serves 'checkpoint' requests"):
        trainer.request_checkpoint()
    assert trainer.iterate()
    with pytest.raises(RuntimeError, match="nothing on this trainer serves 'checkpoint' requests"):
        trainer.request_checkpoint()


# ---------------------------------------------------------------------------------------------- retention


def test_keep_last_keeps_the_newest_and_links_follow_every_save(tmp_path: Path) -> None:
    log, hi, lo = probes(tmp_path)
    checkpointer = Checkpointer(tmp_path, every="2it", keep_last=2)
    trainer = make_trainer(max_epochs=3, callbacks=[hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    seen = [(i, files, targets) for i, files, targets in saves_seen(log, "lo", "post_step") if i in (2, 4, 8)]
    assert seen == [
        (2, [step(2)], {"last.pt": f"-> {step(2)}"}),
        (4, [step(2), step(4)], {"last.pt": f"-> {step(4)}"}),
        (8, [step(6), step(8)], {"last.pt": f"-> {step(8)}"}),
    ]
    assert saves_seen(log, "lo", "post_epoch")[1] == (6, [step(4), step(6)], {"last.pt": f"-> {step(6)}"})
    assert saves_seen(log, "lo", "post_training") == [(9, [step(8), step(9)], {"last.pt": f"-> {step(9)}"})]
    assert step_files(tmp_path) == [step(8), step(9)]
    assert links(tmp_path) == {"last.pt": step(9)}
    assert [f.path.name for f in list_checkpoints(tmp_path)] == [step(9), step(8)]


def test_keep_last_none_keeps_everything(tmp_path: Path) -> None:
    trainer = make_trainer(max_epochs=3, callbacks=[Checkpointer(tmp_path, every="2it", keep_last=None)])
    assert trainer.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(i) for i in (2, 4, 6, 8, 9)]


@pytest.mark.parametrize(
    ("key", "values", "keep_best", "expected"),
    [
        # val/loss: min inferred. Files after each save (iterations; one step per epoch) and where best.pt points.
        (
            "loss",
            [5.0, 1.0, 3.0, 1.0, 4.0, 6.0],
            1,
            [([1], 1), ([1, 2], 2), ([2, 3], 2), ([2, 3, 4], 2), ([2, 4, 5], 2), ([2, 5, 6], 2)],
        ),
        # the tie at 4 goes to the earlier file 2, so 4 is only kept while it is among the last two
        (
            "loss",
            [5.0, 1.0, 3.0, 1.0, 4.0, 6.0, 7.0],
            1,
            [([1], 1), ([1, 2], 2), ([2, 3], 2), ([2, 3, 4], 2), ([2, 4, 5], 2), ([2, 5, 6], 2), ([2, 6, 7], 2)],
        ),
        # val/psnr: max inferred; the two best are kept
        (
            "psnr",
            [20.0, 30.0, 25.0, 30.0, 10.0, 28.0, 5.0],
            2,
            [
                ([1], 1),
                ([1, 2], 2),
                ([2, 3], 2),
                ([2, 3, 4], 2),
                ([2, 4, 5], 2),
                ([2, 4, 5, 6], 2),
                ([2, 4, 6, 7], 2),
            ],
        ),
        # a better one later moves best.pt; the old best then goes once it is neither best nor among the last
        (
            "psnr",
            [20.0, 21.0, 19.0, 35.0, 18.0, 17.0],
            1,
            [([1], 1), ([1, 2], 2), ([2, 3], 2), ([3, 4], 4), ([4, 5], 4), ([4, 5, 6], 4)],
        ),
    ],
)
def test_keep_best_keeps_the_best_scoring_files_and_best_pt_follows(
    tmp_path: Path, key: str, values: list[float], keep_best: int, expected: list[tuple[list[int], int]]
) -> None:
    log, hi, lo = probes(tmp_path)
    validator = Validator(Script(values, key), every="1ep")
    checkpointer = Checkpointer(tmp_path, every="1ep", keep_last=2, monitor=f"val/{key}", keep_best=keep_best)
    assert checkpointer.mode == ("min" if key == "loss" else "max")
    # 2 items in one batch: one step per epoch, so iteration == epoch
    trainer = make_trainer(items=2, max_epochs=len(values), callbacks=[validator, hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    seen = saves_seen(log, "lo", "post_epoch")
    assert seen == [
        (i + 1, [step(n) for n in files], {"best.pt": f"-> {step(best)}", "last.pt": f"-> {step(i + 1)}"})
        for i, (files, best) in enumerate(expected)
    ]
    final_files, final_best = expected[-1]
    assert step_files(tmp_path) == [step(n) for n in final_files]
    assert links(tmp_path) == {"last.pt": step(len(values)), "best.pt": step(final_best)}
    assert checkpointer.best_path == tmp_path / step(final_best)
    assert checkpointer.last_path == tmp_path / step(len(values))
    for n in final_files:  # the score is the metric at save time
        meta = read_metadata(tmp_path / step(n))
        assert meta["score"] == values[n - 1]
        assert meta["metrics"][f"val/{key}"] == values[n - 1]
    assert checkpointer.state_dict()["files"] == [[step(n), n, values[n - 1]] for n in final_files]


def test_unscored_checkpoints_are_never_best_and_a_score_is_the_latest_value(tmp_path: Path) -> None:
    # validation every 2 epochs: the first save has no val/loss yet; save 3 scores the value published at 2
    log, hi, lo = probes(tmp_path)
    validator = Validator(Script([3.0, 2.0], "loss"), every="2ep")
    checkpointer = Checkpointer(tmp_path, every="1ep", keep_last=None, monitor="val/loss")
    trainer = make_trainer(items=2, max_epochs=4, callbacks=[validator, hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    assert [(i, targets) for i, _, targets in saves_seen(log, "lo", "post_epoch")] == [
        (1, {"last.pt": f"-> {step(1)}"}),
        (2, {"best.pt": f"-> {step(2)}", "last.pt": f"-> {step(2)}"}),
        (3, {"best.pt": f"-> {step(2)}", "last.pt": f"-> {step(3)}"}),  # a tie: the earlier file stays best
        (4, {"best.pt": f"-> {step(4)}", "last.pt": f"-> {step(4)}"}),
    ]
    assert checkpointer.state_dict()["files"] == [
        [step(1), 1, None],
        [step(2), 2, 3.0],
        [step(3), 3, 3.0],
        [step(4), 4, 2.0],
    ]
    assert [read_metadata(tmp_path / step(i))["score"] for i in (1, 2, 3, 4)] == [None, 3.0, 3.0, 2.0]


def test_a_non_finite_score_is_never_best(tmp_path: Path) -> None:
    log, hi, lo = probes(tmp_path)
    validator = Validator(Script([3.0, float("nan"), 4.0, 2.0], "loss"), every="1ep")
    checkpointer = Checkpointer(tmp_path, every="1ep", keep_last=1, monitor="val/loss")
    trainer = make_trainer(items=2, max_epochs=4, callbacks=[validator, hi, checkpointer, lo])
    assert trainer.train() is Status.COMPLETED
    assert saves_seen(log, "lo", "post_epoch") == [
        (1, [step(1)], {"best.pt": f"-> {step(1)}", "last.pt": f"-> {step(1)}"}),
        (2, [step(1), step(2)], {"best.pt": f"-> {step(1)}", "last.pt": f"-> {step(2)}"}),
        (3, [step(1), step(3)], {"best.pt": f"-> {step(1)}", "last.pt": f"-> {step(3)}"}),
        (4, [step(4)], {"best.pt": f"-> {step(4)}", "last.pt": f"-> {step(4)}"}),
    ]


def test_best_pt_never_dangles_when_a_resumed_run_no_longer_monitors(tmp_path: Path) -> None:
    validator = Validator(Script([1.0, 2.0, 3.0], "loss"), every="1ep")
    first = make_trainer(
        items=2, max_epochs=3, callbacks=[validator, Checkpointer(tmp_path, keep_last=1, monitor="val/loss")]
    )
    assert first.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(1), step(3)]
    assert links(tmp_path) == {"last.pt": step(3), "best.pt": step(1)}

    log, hi, lo = probes(tmp_path)
    validator = Validator(Script([5.0, 5.0], "loss"), every="1ep")
    second = make_trainer(items=2, max_epochs=5, callbacks=[validator, hi, Checkpointer(tmp_path, keep_last=1), lo])
    assert second.restore("auto") == tmp_path / step(3)
    assert second.train() is Status.COMPLETED
    # after every save, no link names a missing file (best.pt goes, or keeps its file, but never dangles)
    for _, event, iteration, snap in log:
        dangling = {name: value for name, value in snap.items() if str(value).endswith("(dangling)")}
        assert dangling == {}, f"at {event} of iteration {iteration}"
    assert step_files(tmp_path) in ([step(5)], [step(1), step(5)])


# ---------------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize("on_exception", [False, True])
def test_a_fresh_run_refuses_a_directory_with_another_runs_checkpoints_and_changes_nothing(
    tmp_path: Path, on_exception: bool
) -> None:
    earlier = make_trainer(max_epochs=3, callbacks=[Checkpointer(tmp_path, every="1ep")])
    assert earlier.train() is Status.COMPLETED
    (tmp_path / "notes.txt").write_text("mine")
    before = contents(tmp_path)
    assert sorted(before) == ["last.pt", "notes.txt", step(3), step(6), step(9)]

    rec = Recorder()
    fresh = make_trainer(max_epochs=3, callbacks=[rec, Checkpointer(tmp_path, every="1ep", on_exception=on_exception)])
    status = fresh.status
    # refused as the run starts, before any event: nothing of the refused run is written anywhere
    with pytest.raises(EarlierRunCheckpoints) as info:
        fresh.iterate()
    cause = info.value
    assert cause.path == tmp_path
    assert "holds 3 checkpoint(s) of an earlier run (newest step-00000009.pt, iteration 9)" in cause.reason
    assert "restore('auto')" in cause.reason
    assert str(tmp_path) in str(cause)
    assert fresh.status is status
    assert rec.names() == []
    # nothing modified, nothing added (not even a crash dump of the refused run's untrained state)
    assert contents(tmp_path) == before
    # the trainer is as it was: with the earlier run's files moved away, the same trainer runs
    for name in (step(3), step(6), step(9), "last.pt"):
        (tmp_path / name).unlink()
    assert fresh.train() is Status.COMPLETED
    assert rec.names()[0] == "pre_training"


def test_a_run_resumed_from_a_checkpoint_taken_before_the_first_step_is_not_refused(tmp_path: Path) -> None:
    first = make_trainer(max_epochs=1, callbacks=[Checkpointer(tmp_path, keep_last=None)])
    first.request_checkpoint()  # iteration 0: a valid, resumable checkpoint
    assert first.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(0), step(3)]
    assert read_metadata(tmp_path / step(0))["resumable"] is True

    second = make_trainer(max_epochs=2, callbacks=[Checkpointer(tmp_path, keep_last=None)])
    assert second.restore(tmp_path / step(0)) == tmp_path / step(0)
    # a resumed run, not a fresh one: step-3 is the abandoned future, replaced by this run's own save at 3
    assert second.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(0), step(3), step(6)]


def test_files_it_does_not_own_survive_a_resumed_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = make_trainer(items=2, max_epochs=3, callbacks=[Checkpointer(tmp_path, keep_last=2)])
    assert first.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(2), step(3)]
    # placed by hand before the resume: one from before this run began, one from the "future", another file
    shutil.copyfile(tmp_path / step(2), tmp_path / step(0))
    shutil.copyfile(tmp_path / step(2), tmp_path / step(100))
    (tmp_path / "notes.txt").write_text("mine")
    foreign = {name: (tmp_path / name).read_bytes() for name in (step(0), step(100), "notes.txt")}

    second = make_trainer(items=2, max_epochs=7, callbacks=[Checkpointer(tmp_path, keep_last=2)])
    assert second.restore(tmp_path / step(3)) == tmp_path / step(3)
    with caplog.at_level(logging.WARNING, logger="stepbus.checkpointer"):
        assert second.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(0), step(6), step(7), step(100)]
    assert {name: (tmp_path / name).read_bytes() for name in foreign} == foreign
    assert links(tmp_path) == {"last.pt": step(7)}
    warnings = [r.getMessage() for r in caplog.records if r.name == "stepbus.checkpointer"]
    assert len(warnings) == 1
    assert "beyond the resume point (step-00000100.pt)" in warnings[0]


def test_a_file_deleted_right_after_a_checkpoint_is_not_owned_by_a_run_resumed_from_it(tmp_path: Path) -> None:
    first = make_trainer(items=2, max_epochs=3, callbacks=[Checkpointer(tmp_path, keep_last=2)])
    assert first.train() is Status.COMPLETED
    # step-1 was deleted by the retention that followed the save of step-3: step-3 must not claim it
    assert step_files(tmp_path) == [step(2), step(3)]
    shutil.copyfile(tmp_path / step(2), tmp_path / step(1))  # another run's file, placed before the resume
    foreign = (tmp_path / step(1)).read_bytes()

    second = make_trainer(items=2, max_epochs=5, callbacks=[Checkpointer(tmp_path, keep_last=2)])
    assert second.restore(tmp_path / step(3)) == tmp_path / step(3)
    assert second.train() is Status.COMPLETED
    assert step_files(tmp_path) == [step(1), step(4), step(5)]
    assert (tmp_path / step(1)).read_bytes() == foreign


def test_stale_temporary_files_are_removed_as_the_run_starts_and_nothing_else(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    other = ended.pid  # a writer that is gone (a live process's temporaries are never removed)
    stale = [
        f".step-00000005.pt.{other}.deadbeef.tmp",
        f".last.pt.{other}.0badf00d.tmp",
        f".best.pt.{other}.01234567.tmp",
        f".crash-00000002.pt.{other}.89abcdef.tmp",
    ]
    unrelated = [
        f".step-00000005.pt.{os.getpid()}.deadbeef.tmp",  # this process's own write in progress
        f".step-00000005.pt.{other}.deadbeef.tmp.keep",
        f".step-00000005.pt.{other}.DEADBEEF.tmp",
        f".step-00000005.pt.{other}.deadbee.tmp",
        f".other.pt.{other}.deadbeef.tmp",
        f"step-00000005.pt.{other}.deadbeef.tmp",
        "notes.tmp",
        "model.pt",
    ]
    for name in stale + unrelated:
        (tmp_path / name).write_bytes(b"x")
    log, hi, lo = probes(tmp_path)
    trainer = make_trainer(max_epochs=1, callbacks=[hi, Checkpointer(tmp_path), lo])
    assert trainer.iterate()
    (hi_tag, _, _, hi_snap), (lo_tag, _, _, lo_snap) = log[0], log[1]
    assert (hi_tag, lo_tag) == ("hi", "lo")
    # removed as the run started, under the directory's lock (.stepbus.lock), before any pre_training handler
    assert sorted(hi_snap) == sorted([*unrelated, ".stepbus.lock"])
    assert sorted(lo_snap) == sorted([*unrelated, ".stepbus.lock"])
    assert trainer.train() is Status.COMPLETED
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*unrelated, "last.pt", step(3)])


def test_a_resume_from_another_directory_deletes_nothing_in_the_new_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    first = make_trainer(items=2, max_epochs=3, callbacks=[Checkpointer(old, keep_last=None)])
    assert first.train() is Status.COMPLETED
    old_before = contents(old)
    new.mkdir()
    for n in (1, 2):  # same names as files the old run owns
        shutil.copyfile(old / step(n), new / step(n))
    new_before = {name: (new / name).read_bytes() for name in (step(1), step(2))}

    second = make_trainer(items=2, max_epochs=6, callbacks=[Checkpointer(new, keep_last=1)])
    assert second.restore(old / step(3)) == old / step(3)
    assert second.train() is Status.COMPLETED
    assert step_files(new) == [step(1), step(2), step(6)]
    assert {name: (new / name).read_bytes() for name in new_before} == new_before
    assert links(new) == {"last.pt": step(6)}
    assert contents(old) == old_before


# ---------------------------------------------------------------------------------------------- failed writes


def blocked(directory: Path, iteration: int) -> Path:
    """Make the checkpoint path of ``iteration`` a directory, so that the atomic rename onto it fails (also as
    root)."""
    path = directory / step(iteration)
    path.mkdir(parents=True)
    (path / "inside").write_text("keep")
    return path


def test_a_failed_write_under_on_error_raise_fails_the_run_and_keeps_earlier_checkpoints(tmp_path: Path) -> None:
    target = blocked(tmp_path, 6)
    kept: dict[str, bytes] = {}
    trainer = make_trainer(max_epochs=3, callbacks=[Checkpointer(tmp_path, every="1ep")])

    @trainer.on("post_epoch", priority=-2000)
    def remember(trainer: BaseTrainer, **_: Any) -> None:
        if trainer.state.iteration == 3:
            kept[step(3)] = (tmp_path / step(3)).read_bytes()

    with pytest.raises(CallbackError) as info:
        trainer.train()
    message = str(info.value)
    assert "'Checkpointer.post_epoch'" in message
    assert f"checkpoint {target}: could not be written" in message
    assert isinstance(info.value.__cause__, CheckpointError)
    assert info.value.__cause__.path == target
    assert info.value.iteration == 6
    assert trainer.status is Status.FAILED
    # the earlier checkpoint is intact and still the latest; no end save after the failure; no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", step(3), step(6)]
    assert (tmp_path / step(3)).read_bytes() == kept[step(3)]
    assert load_checkpoint(tmp_path / step(3))["stepbus"]["iteration"] == 3
    assert links(tmp_path) == {"last.pt": step(3)}
    assert sorted(p.name for p in target.iterdir()) == ["inside"]


def test_a_failed_write_under_on_error_warn_is_logged_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = blocked(tmp_path, 6)
    log, hi, lo = probes(tmp_path)
    checkpointer = Checkpointer(tmp_path, every="1ep", on_error="warn")
    trainer = make_trainer(max_epochs=3, callbacks=[hi, checkpointer, lo])
    with caplog.at_level(logging.ERROR, logger="stepbus.checkpointer"):
        assert trainer.train() is Status.COMPLETED
    assert checkpointer.failures == 1
    errors = [r for r in caplog.records if r.name == "stepbus.checkpointer"]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert (
        errors[0].getMessage().startswith("Checkpointer 'Checkpointer': save at iteration 6 failed; training goes on")
    )
    assert f"checkpoint {target}: could not be written" in errors[0].getMessage()
    # right after the failed save last.pt still named the previous good file
    assert saves_seen(log, "lo", "post_epoch") == [
        (3, [step(3)], {"last.pt": f"-> {step(3)}"}),
        (6, [step(3)], {"last.pt": f"-> {step(3)}"}),
        (9, [step(3), step(9)], {"last.pt": f"-> {step(9)}"}),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", step(3), step(6), step(9)]
    assert checkpointer.state_dict()["files"] == [[step(3), 3, None], [step(9), 9, None]]


def test_a_failed_end_save_under_warn_keeps_the_previous_last(tmp_path: Path) -> None:
    blocked(tmp_path, 6)
    checkpointer = Checkpointer(tmp_path, every="4it", on_error="warn")
    trainer = make_trainer(max_epochs=2, callbacks=[checkpointer])
    assert trainer.train() is Status.COMPLETED
    assert checkpointer.failures == 1  # the end save at 6
    assert checkpointer.last_path == tmp_path / step(4)
    assert links(tmp_path) == {"last.pt": step(4)}


def test_save_returns_none_when_the_write_fails_under_warn(tmp_path: Path) -> None:
    blocked(tmp_path, 0)
    checkpointer = Checkpointer(tmp_path, on_error="warn")
    trainer = make_trainer(max_epochs=1, callbacks=[checkpointer])
    assert checkpointer.save(trainer) is None
    assert (checkpointer.failures, checkpointer.last_path) == (1, None)
    assert checkpointer.save(trainer) is None
    assert checkpointer.failures == 2
    assert trainer.train() is Status.COMPLETED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", step(0), step(3)]
    assert links(tmp_path) == {"last.pt": step(3)}

    raising = Checkpointer(tmp_path / "other", on_error="raise")
    blocked(tmp_path / "other", 0)
    trainer = make_trainer(max_epochs=1, callbacks=[raising])
    with pytest.raises(CheckpointError, match="could not be written"):
        raising.save(trainer)
    with pytest.raises(CallbackError, match=r"'Checkpointer\.request' failed serving a 'checkpoint' request"):
        trainer.request_checkpoint()


# ---------------------------------------------------------------------------------------------- crash dumps


def test_on_exception_writes_a_non_resumable_crash_dump_and_the_error_propagates(tmp_path: Path) -> None:
    error = Boom("loss exploded")
    checkpointer = Checkpointer(tmp_path, every="1ep", on_exception=True)
    trainer = make_trainer(max_epochs=3, loss_fn=failing_loss(5, error), callbacks=[checkpointer])
    with pytest.raises(Boom) as info:
        trainer.train()
    assert info.value is error
    assert str(info.value) == "loss exploded"
    assert trainer.status is Status.FAILED
    # no end save after the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == [crash(5), "last.pt", step(3)]
    assert links(tmp_path) == {"last.pt": step(3)}
    meta = read_metadata(tmp_path / crash(5))
    assert (meta["resumable"], meta["iteration"], meta["epoch"], meta["epoch_iteration"]) == (False, 5, 2, 2)
    assert meta["reason"] == "exception: Boom: loss exploded"
    assert checkpointer.state_dict()["files"] == [[step(3), 3, None]]  # never counted

    again = make_trainer(max_epochs=3, callbacks=[Checkpointer(tmp_path, every="1ep")])
    assert again.restore("auto") == tmp_path / step(3)
    with pytest.raises(CheckpointError, match="not resumable: it was written at iteration 5") as refused:
        make_trainer(max_epochs=3, callbacks=[Checkpointer(tmp_path)]).restore(tmp_path / crash(5))
    assert refused.value.path == tmp_path / crash(5)
    assert "exception: Boom: loss exploded" in refused.value.reason


def test_without_on_exception_a_failure_writes_nothing(tmp_path: Path) -> None:
    trainer = make_trainer(
        max_epochs=3, loss_fn=failing_loss(5, Boom("no")), callbacks=[Checkpointer(tmp_path, every="1ep")]
    )
    with pytest.raises(Boom) as info:
        trainer.train()
    assert str(info.value) == "no"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", step(3)]


def test_a_failure_before_any_save_leaves_only_the_crash_dump(tmp_path: Path) -> None:
    trainer = make_trainer(
        max_epochs=2,
        loss_fn=failing_loss(1, Boom("first")),
        callbacks=[Checkpointer(tmp_path, every=None, on_exception=True)],
    )
    with pytest.raises(Boom):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == [crash(1)]
    fresh = make_trainer(max_epochs=2, callbacks=[Checkpointer(tmp_path)])
    assert fresh.restore("auto") is None  # the crash dump is not a checkpoint to continue from
    assert fresh.train() is Status.COMPLETED
    assert sorted(p.name for p in tmp_path.iterdir()) == [crash(1), "last.pt", step(3), step(6)]


# ---------------------------------------------------------------------------------------------- construction, state


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_last": 0}, "keep_last must be an int >= 1 or None (keep all), got 0"),
        ({"keep_last": -1}, "keep_last must be an int >= 1 or None (keep all), got -1"),
        ({"keep_last": True}, "keep_last must be an int >= 1 or None (keep all), got True"),
        ({"keep_last": 2.0}, "keep_last must be an int >= 1 or None (keep all), got 2.0"),
        ({"keep_best": 2}, "keep_best=2 needs monitor='<metric>' to rank checkpoints by"),
        ({"monitor": "val/psnr", "keep_best": -1}, "keep_best must be an int >= 0, got -1"),
        ({"monitor": "val/acc"}, "metric 'val/acc' has no known direction"),
        ({"monitor": "val/psnr", "mode": "up"}, "mode must be 'min' or 'max', got 'up'"),
        ({"monitor": ""}, "monitor must be a metric name such as 'val/psnr', got ''"),
        ({"on_error": "ignore"}, "on_error must be 'raise' or 'warn', got 'ignore'"),
        ({"at_end": 1}, "at_end must be true or false, got 1"),
        ({"on_exception": "yes"}, "on_exception must be true or false, got 'yes'"),
        ({"every": "5 bananas"}, "invalid schedule '5 bananas'"),
        ({"every": "0it"}, "invalid schedule '0it'"),
    ],
)
def test_constructor_errors_name_the_parameter_and_the_value(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        Checkpointer(tmp_path, **kwargs)
    assert "Checkpointer 'Checkpointer'" in str(info.value)


def test_an_unknown_metric_is_accepted_with_an_explicit_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pass mode="):
        Checkpointer(tmp_path, monitor="val/acc")
    checkpointer = Checkpointer(tmp_path, monitor="val/acc", mode="max")
    assert (checkpointer.mode, checkpointer.keep_best) == ("max", 1)
    assert (Checkpointer(tmp_path).monitor, Checkpointer(tmp_path).keep_best) == (None, 0)


def test_directory_defaults_to_run_dir_checkpoints_and_is_required(tmp_path: Path) -> None:
    without = Checkpointer()
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(
        ValueError, match=r"needs a directory: pass Checkpointer\(dir=\.\.\.\) or give the trainer run_dir"
    ):
        trainer.add_callback(without)
    assert trainer.callbacks == ()
    with pytest.raises(RuntimeError, match="nothing on this trainer serves 'checkpoint' requests"):
        trainer.request_checkpoint()

    explicit = Checkpointer(tmp_path / "here")
    assert explicit.checkpoint_dir == tmp_path / "here"
    default = Checkpointer()
    assert default.checkpoint_dir is None
    trainer = make_trainer(max_epochs=1, run_dir=tmp_path / "run", callbacks=[default])
    assert default.checkpoint_dir == tmp_path / "run" / "checkpoints"
    assert trainer.checkpoint_dirs() == [tmp_path / "run" / "checkpoints"]
    assert trainer.train() is Status.COMPLETED
    assert step_files(tmp_path / "run" / "checkpoints") == [step(3)]


def test_state_dict_round_trip(tmp_path: Path) -> None:
    validator = Validator(Script([3.0, 1.0, 2.0], "loss"), every="1ep")
    checkpointer = Checkpointer(tmp_path, every="1ep", keep_last=1, monitor="val/loss")
    trainer = make_trainer(items=2, max_epochs=3, callbacks=[validator, checkpointer])
    assert trainer.train() is Status.COMPLETED
    state = checkpointer.state_dict()
    assert state == {"directory": str(tmp_path), "files": [[step(2), 2, 1.0], [step(3), 3, 2.0]]}
    check_plain(state)
    other = Checkpointer(tmp_path, monitor="val/loss")
    other.load_state_dict(state)
    assert other.state_dict() == state
    # what a checkpoint holds is the state at its save, itself included
    assert load_checkpoint(tmp_path / step(3))["callbacks"]["Checkpointer"] == state
    with pytest.raises(ValueError, match="expected 'files' as a list of \\[name, iteration, score\\]"):
        other.load_state_dict({"directory": None, "files": [["step-1.pt", 1]]})
