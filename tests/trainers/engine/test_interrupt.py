"""SIGINT / SIGTERM during ``train()`` (``trainers.engine.signals``, ``BaseTrainer.train`` / ``_on_signal``, the
``"interrupt"`` request a :class:`~callbacks.Checkpointer` serves, the CLI's exit codes).

Every signal here is real: ``signal.raise_signal`` from a handler on the main thread (Python runs the handler
before ``raise_signal`` returns, so the signal lands exactly where the test puts it), or ``send_signal`` to a real
``python -m trainers train`` subprocess. While a test runs, SIGINT and SIGTERM outside ``train()`` go to a handler
that raises :class:`tests.stray_signals.StraySignal`, so a signal the trainer fails to catch fails that test
instead of ending pytest.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import Callback, Checkpointer, Validator
from lifecycle import CallbackError, Loop, Status
from tests.stray_signals import SIGNALS, outer_handlers, stray  # noqa: F401 - outer_handlers: an autouse fixture
from tests.support import Recorder, Row, full_run, make_trainer, params_of, same_params
from tests.trainers.engine.live_process import LiveProcess
from trainers import BaseTrainer
from trainers.checkpoint.format import list_checkpoints, load_checkpoint, read_metadata
from trainers.engine.signals import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[3]
STEPS = 3  # make_trainer: 6 items in batches of 2


def handlers() -> dict[signal.Signals, Any]:
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


class Watch(Recorder):
    """A Recorder that also notes, with every row, which step checkpoints exist in ``directory`` at that moment."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory = directory
        self.seen: list[tuple[str, ...]] = []

    def _add(self, trainer: BaseTrainer, event: str, payload: dict[str, Any], selected: Any = None) -> None:
        super()._add(trainer, event, payload, selected)
        self.seen.append(tuple(sorted(p.name for p in self.directory.glob("step-*.pt"))))

    def steps(self) -> list[int]:
        return [row[3] for row in self.log if row[0] == "post_step"]


def build(
    directory: Path, *, max_epochs: int = 3, first: tuple[Callback, ...] = (), model: nn.Module | None = None
) -> tuple[BaseTrainer, Watch, Checkpointer]:
    """A real trainer whose only checkpoints are interrupt checkpoints, with a Watch registered before any
    handler a test adds (same priority: the Watch logs an event before the test's handler raises a signal)."""
    watch = Watch(directory)
    checkpointer = Checkpointer(directory, every=None, at_end=False, on_interrupt=True)
    trainer = make_trainer(max_epochs=max_epochs, callbacks=[*first, watch, checkpointer], model=model)
    return trainer, watch, checkpointer


def raise_at(trainer: BaseTrainer, event: str, when: Callable[[BaseTrainer], bool], *signums: int) -> list[int]:
    """From an ``event`` handler, the first time ``when(trainer)``: ``signal.raise_signal`` each of ``signums``
    in turn. Returns the list of the signals raised so far (one entry per delivered-and-returned signal)."""
    raised: list[int] = []
    fired: list[bool] = []

    @trainer.on(event)
    def fire(t: BaseTrainer, **_: Any) -> None:
        if fired or not when(t):
            return
        fired.append(True)
        for signum in signums:
            signal.raise_signal(signum)
            raised.append(signum)

    return raised


def at_iteration(iteration: int) -> Callable[[BaseTrainer], bool]:
    return lambda t: t.state.iteration == iteration


def at_epoch(epoch: int) -> Callable[[BaseTrainer], bool]:
    return lambda t: t.state.epoch == epoch


@contextmanager
def signal_between_iterate_calls(trainer: BaseTrainer, iteration: int, signum: int) -> Iterator[list[int]]:
    """Raise ``signum`` as ``Loop.iterate`` returns the call that took step ``iteration`` -- after its ``finally``,
    before ``train()`` calls it again -- by watching returns with ``sys.setprofile`` (observation only)."""
    code = Loop.iterate.__code__
    fired: list[int] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is code and not fired and trainer.state.iteration == iteration:
            fired.append(signum)
            signal.raise_signal(signum)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield fired
    finally:
        sys.setprofile(previous)


def step_file(iteration: int) -> str:
    return f"step-{iteration:08d}.pt"


def index_of(rows: list[Row], event: str, iteration: int) -> int:
    return next(i for i, row in enumerate(rows) if row[0] == event and row[3] == iteration)


def params_after(steps: int) -> list[torch.Tensor]:
    """The parameters of an uninterrupted run of the same trainer after ``steps`` optimizer steps."""
    trainer = make_trainer(max_epochs=3)
    for _ in range(steps):
        assert trainer.iterate()
    return params_of(trainer.pipeline)


def check_interrupt_checkpoint(
    directory: Path, trainer: BaseTrainer, *, iteration: int, epoch: int, epoch_iteration: int
) -> dict[str, Any]:
    path = directory / step_file(iteration)
    assert sorted(p.name for p in directory.glob("step-*.pt")) == [path.name]
    meta = read_metadata(path)
    assert (meta["reason"], meta["resumable"]) == ("interrupt", True)
    assert (meta["iteration"], meta["epoch"], meta["epoch_iteration"]) == (iteration, epoch, epoch_iteration)
    loaded = load_checkpoint(path)
    assert loaded["trainer"]["counters"]["iteration"] == iteration
    # taken after the step's optimizer update and nothing changed the model afterwards
    assert same_params(list(loaded["model"].values()), params_of(trainer.pipeline))
    return meta


# ---------------------------------------------------------------------------------------- where the run ends


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("event", ["pre_step", "step", "post_step"])
def test_a_signal_mid_epoch_finishes_the_step_saves_and_ends_the_epoch(tmp_path: Path, event: str, signum: int) -> None:
    """Raised before the forward pass, with gradients ready (optimizer not stepped) or after the step: the step
    completes -- its optimizer update included --, post_step(2) fires, the interrupt checkpoint is written, then
    the cut-short post_epoch and post_training(status="interrupted"); nothing else, no further step."""
    directory = tmp_path / "ckpt"
    trainer, watch, checkpointer = build(directory)
    before = handlers()
    raised = raise_at(trainer, event, at_iteration(2), signum)

    status = trainer.train()

    assert status is Status.INTERRUPTED
    assert trainer.status is Status.INTERRUPTED
    assert raised == [signum]  # delivered and returned: no exception, no SystemExit
    assert trainer.interrupted_by == signum
    run = full_run(3, STEPS)
    cut = index_of(run, "post_step", 2) + 1
    assert watch.log == [*run[:cut], ("post_epoch", 1, 2, 2, None), ("post_training", 1, 2, 2, "interrupted")]
    assert watch.seen == [()] * cut + [(step_file(2),)] * 2  # saved between post_step(2) and post_epoch
    assert watch.payloads[-1][1]["status"] is Status.INTERRUPTED
    check_interrupt_checkpoint(directory, trainer, iteration=2, epoch=1, epoch_iteration=2)
    assert checkpointer.last_path == directory / step_file(2)
    assert same_params(params_of(trainer.pipeline), params_after(2))  # the interrupted step was applied
    assert handlers() == before
    assert not trainer.iterate()  # the run is over


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("event", ["pre_step", "step", "post_step"])
def test_a_signal_at_an_epochs_last_step_saves_after_the_full_post_epoch(
    tmp_path: Path, event: str, signum: int
) -> None:
    """At an epoch's last step the only resumable point is after post_epoch: the epoch's validation runs once,
    then the checkpoint (which already holds the validation's metric), then post_training."""
    directory = tmp_path / "ckpt"
    calls: list[int] = []
    validator = Validator(lambda t: {"loss": float(calls.append(t.state.iteration) or len(calls))})
    trainer, watch, _ = build(directory, first=(validator,))
    raise_at(trainer, event, at_iteration(3), signum)

    assert trainer.train() is Status.INTERRUPTED
    assert trainer.interrupted_by == signum
    run = full_run(3, STEPS)
    cut = index_of(run, "post_step", 3) + 1
    assert watch.log == [
        *run[:cut],
        ("pre_validation", 1, 3, 3, None),
        ("post_validation", 1, 3, 3, None),
        ("post_epoch", 1, 3, 3, None),
        ("post_training", 1, 3, 3, "interrupted"),
    ]
    assert watch.seen == [()] * (cut + 3) + [(step_file(3),)]
    assert calls == [3]  # validated once, at the epoch; not again at the interrupted end
    meta = check_interrupt_checkpoint(directory, trainer, iteration=3, epoch=1, epoch_iteration=3)
    assert meta["metrics"]["val/loss"] == 1.0


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_from_pre_epoch_takes_no_step_of_the_new_epoch(tmp_path: Path, signum: int) -> None:
    directory = tmp_path / "ckpt"
    trainer, watch, _ = build(directory)
    raise_at(trainer, "pre_epoch", at_epoch(2), signum)

    assert trainer.train() is Status.INTERRUPTED
    run = full_run(3, STEPS)
    cut = index_of(run, "post_epoch", 3) + 1
    assert watch.log == [
        *run[:cut],
        ("pre_epoch", 2, 0, 3, None),
        ("post_epoch", 2, 0, 3, None),
        ("post_training", 2, 0, 3, "interrupted"),
    ]
    assert watch.seen == [()] * (cut + 1) + [(step_file(3),)] * 2
    check_interrupt_checkpoint(directory, trainer, iteration=3, epoch=2, epoch_iteration=0)
    assert same_params(params_of(trainer.pipeline), params_after(3))


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_from_post_epoch_ends_the_run_after_it(tmp_path: Path, signum: int) -> None:
    directory = tmp_path / "ckpt"
    trainer, watch, _ = build(directory)
    raise_at(trainer, "post_epoch", at_epoch(1), signum)

    assert trainer.train() is Status.INTERRUPTED
    run = full_run(3, STEPS)
    cut = index_of(run, "post_epoch", 3) + 1
    assert watch.log == [*run[:cut], ("post_training", 1, 3, 3, "interrupted")]
    assert watch.seen == [()] * cut + [(step_file(3),)]
    check_interrupt_checkpoint(directory, trainer, iteration=3, epoch=1, epoch_iteration=3)


@pytest.mark.parametrize("iteration", [2, 3])
def test_a_signal_between_two_iterate_calls_is_honoured_at_the_start_of_the_next(
    tmp_path: Path, iteration: int
) -> None:
    """Landing in train()'s own loop (iterate returned, the next call not yet made): the next call steps nothing;
    it saves, closes an open epoch and ends the run."""
    directory = tmp_path / "ckpt"
    trainer, watch, _ = build(directory)
    with signal_between_iterate_calls(trainer, iteration, signal.SIGTERM) as fired:
        status = trainer.train()
    assert fired == [signal.SIGTERM]
    assert status is Status.INTERRUPTED
    assert trainer.interrupted_by == signal.SIGTERM
    run = full_run(3, STEPS)
    if iteration == 2:
        cut = index_of(run, "post_step", 2) + 1
        tail = [("post_epoch", 1, 2, 2, None), ("post_training", 1, 2, 2, "interrupted")]
    else:  # the epoch had closed with that call: no second post_epoch
        cut = index_of(run, "post_epoch", 3) + 1
        tail = [("post_training", 1, 3, 3, "interrupted")]
    assert watch.log == [*run[:cut], *tail]
    assert watch.seen == [()] * cut + [(step_file(iteration),)] * len(tail)
    check_interrupt_checkpoint(directory, trainer, iteration=iteration, epoch=1, epoch_iteration=iteration)


def test_a_signal_at_the_runs_last_step_does_not_change_a_completed_run(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    trainer, watch, _ = build(directory, max_epochs=1)
    raise_at(trainer, "post_step", at_iteration(3), signal.SIGINT)
    assert trainer.train() is Status.COMPLETED
    assert watch.log == full_run(1, STEPS)
    assert handlers() == {sig: stray for sig in SIGNALS}


# ---------------------------------------------------------------------------------------- exact resume


class Preview(Callback):
    """Draws from torch's global RNG at every pre_epoch (say, which sample to preview this epoch) and keeps it."""

    def __init__(self) -> None:
        super().__init__()
        self.picks: list[int] = []

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.picks.append(int(torch.randint(0, 1000, ())))


def dropout_model(init_seed: int = 0) -> nn.Module:
    """Training consumes torch's RNG at every step (dropout masks), so an exact resume needs the RNG state."""
    torch.manual_seed(init_seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 1))


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


INTERRUPT_POINTS = {
    # name: (how, the checkpoint's iteration)
    "post_step mid-epoch": ("post_step", 5),
    "step mid-epoch": ("step", 4),
    "post_step at an epoch's last step": ("post_step", 6),
    "between iterate calls mid-epoch": ("between", 2),
    "between iterate calls at an epoch's end": ("between", 3),
    "pre_epoch": ("pre_epoch", 3),
}


@pytest.mark.parametrize("point", list(INTERRUPT_POINTS))
def test_the_interrupt_checkpoint_resumes_bit_exactly(tmp_path: Path, point: str) -> None:
    how, saved_at = INTERRUPT_POINTS[point]
    directory = tmp_path / "run" / "checkpoints"

    # the uninterrupted run
    straight, straight_log, _ = build(tmp_path / "straight", model=dropout_model(), first=(Preview(),))
    assert straight.train() is Status.COMPLETED
    straight_rng = torch.get_rng_state()

    # interrupted ...
    first, first_log, _ = build(directory, model=dropout_model(), first=(Preview(),))
    if how == "between":
        with signal_between_iterate_calls(first, saved_at, signal.SIGINT):
            assert first.train() is Status.INTERRUPTED
    elif how == "pre_epoch":
        raise_at(first, "pre_epoch", at_epoch(2), signal.SIGINT)
        assert first.train() is Status.INTERRUPTED
    else:
        raise_at(first, how, at_iteration(saved_at), signal.SIGINT)
        assert first.train() is Status.INTERRUPTED
    assert [p.name for p in directory.glob("step-*.pt")] == [step_file(saved_at)]

    # ... and resumed by a new trainer (another model init: everything must come from the checkpoint)
    second, second_log, _ = build(directory, model=dropout_model(1234), first=(Preview(),))
    assert second.restore("auto") == directory / step_file(saved_at)
    assert second.resumed_from == directory / step_file(saved_at)
    assert second.train() is Status.COMPLETED

    assert same_params(params_of(second.pipeline), params_of(straight.pipeline))
    assert same_state(second.optimizer.state_dict(), straight.optimizer.state_dict())
    assert torch.equal(torch.get_rng_state(), straight_rng)
    # every step exactly once over the two processes' logs, and the resumed run continues the straight log
    assert first_log.steps() + second_log.steps() == list(range(1, 3 * STEPS + 1))
    run = straight_log.log
    rest = index_of(run, "post_step", saved_at) + 1
    epoch, step = run[rest - 1][1:3]
    if run[rest][0] == "post_epoch":  # saved at an epoch's last step: after its post_epoch
        rest += 1
    head: list[Row] = [("pre_training", epoch, step, saved_at, True)]
    if step < STEPS:
        head.append(("pre_epoch", epoch, step, saved_at, None))  # the open epoch is re-opened
    assert second_log.log == [*head, *run[rest:]]


# ---------------------------------------------------------------------------------------- a second signal


def test_a_second_signal_while_finishing_aborts_at_once(tmp_path: Path) -> None:
    """First SIGINT after step 2 (the checkpoint is written), second one from the cut-short post_epoch: train()
    raises TrainingInterrupted (a KeyboardInterrupt); exception and post_training(interrupted) fire once."""
    directory = tmp_path / "ckpt"
    trainer, watch, _ = build(directory)
    before = handlers()
    raise_at(trainer, "post_step", at_iteration(2), signal.SIGTERM)
    second = raise_at(trainer, "post_epoch", at_iteration(2), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()

    error = info.value
    assert isinstance(error, KeyboardInterrupt)
    assert error.signum == signal.SIGINT
    assert str(error) == "SIGINT received twice: training aborted at once"
    assert second == []  # raised from inside raise_signal: the handler did not go on
    run = full_run(3, STEPS)
    cut = index_of(run, "post_step", 2) + 1
    assert watch.log == [
        *run[:cut],
        ("post_epoch", 1, 2, 2, None),
        ("exception", 1, 2, 2, error),
        ("post_training", 1, 2, 2, "interrupted"),
    ]
    assert watch.seen == [()] * cut + [(step_file(2),)] * 3  # the first signal's checkpoint, nothing more
    assert trainer.status is Status.INTERRUPTED
    assert trainer.interrupted_by == signal.SIGTERM
    check_interrupt_checkpoint(directory, trainer, iteration=2, epoch=1, epoch_iteration=2)
    assert handlers() == before
    assert not trainer.iterate()


@pytest.mark.parametrize("event", ["post_step", "step"])
def test_a_second_signal_before_the_interrupt_checkpoint_was_taken_writes_none(tmp_path: Path, event: str) -> None:
    """Both signals inside step 2 (from post_step: a consistent state; from the step event: gradients computed,
    optimizer not stepped). The second aborts at once, so the interrupt checkpoint asked for by the first must not
    be written on the way out -- least of all a resumable one of a half-done step."""
    directory = tmp_path / "ckpt"
    trainer, watch, checkpointer = build(directory)
    before = handlers()
    raise_at(trainer, event, at_iteration(2), signal.SIGINT, signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()

    error = info.value
    run = full_run(3, STEPS)
    cut = index_of(run, event, 2) + 1
    assert watch.log == [*run[:cut], ("exception", 1, 2, 2, error), ("post_training", 1, 2, 2, "interrupted")]
    assert trainer.status is Status.INTERRUPTED
    assert handlers() == before
    assert sorted(p.name for p in directory.glob("*.pt")) == []
    assert checkpointer.last_path is None


# ---------------------------------------------------------------------------------------- the handlers


def test_handlers_are_installed_only_during_train_and_restored_after_every_ending(tmp_path: Path) -> None:
    before = handlers()
    during: list[dict[signal.Signals, Any]] = []

    def spy(trainer: BaseTrainer) -> None:
        trainer.on("post_step")(lambda t, **_: during.append(handlers()))

    completed = make_trainer(max_epochs=1)
    spy(completed)
    assert completed.train() is Status.COMPLETED
    assert handlers() == before
    assert len(during) == STEPS
    for seen in during:
        for sig in SIGNALS:
            assert seen[sig] is not before[sig]
            assert callable(seen[sig])

    failing = make_trainer(max_epochs=1)

    @failing.on("post_step")
    def boom(t: BaseTrainer, **_: Any) -> None:
        raise ValueError("boom")

    with pytest.raises(CallbackError, match="boom"):
        failing.train()
    assert failing.status is Status.FAILED
    assert handlers() == before

    interrupted, _, _ = build(tmp_path / "interrupted")
    raise_at(interrupted, "post_step", at_iteration(1), signal.SIGINT)
    assert interrupted.train() is Status.INTERRUPTED
    assert handlers() == before

    aborted, _, _ = build(tmp_path / "aborted")
    raise_at(aborted, "post_step", at_iteration(1), signal.SIGINT)
    raise_at(aborted, "post_epoch", at_iteration(1), signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        aborted.train()
    assert handlers() == before


def test_train_without_handle_signals_installs_nothing(tmp_path: Path) -> None:
    """Then SIGINT is Python's KeyboardInterrupt mid-run: the run ends interrupted, no graceful checkpoint."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    directory = tmp_path / "ckpt"
    trainer, watch, _ = build(directory)
    during: list[dict[signal.Signals, Any]] = []
    trainer.on("post_step")(lambda t, **_: during.append(handlers()))
    raise_at(trainer, "post_step", at_iteration(2), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as info:
        trainer.train(handle_signals=False)

    assert type(info.value) is KeyboardInterrupt
    assert during == [{signal.SIGINT: signal.default_int_handler, signal.SIGTERM: stray}] * 2
    run = full_run(3, STEPS)
    cut = index_of(run, "post_step", 2) + 1
    assert watch.log == [*run[:cut], ("exception", 1, 2, 2, info.value), ("post_training", 1, 2, 2, "interrupted")]
    assert trainer.status is Status.INTERRUPTED
    assert trainer.interrupted_by is None
    assert list(directory.glob("*.pt")) == []
    assert handlers() == {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: stray}


def test_train_on_another_thread_installs_nothing_and_completes() -> None:
    trainer = make_trainer(max_epochs=2)
    rec = Recorder()
    trainer.add_callback(rec)
    during: list[dict[signal.Signals, Any]] = []
    trainer.on("post_step")(lambda t, **_: during.append(handlers()))
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(trainer.train()))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert result == [Status.COMPLETED]
    assert during == [{sig: stray for sig in SIGNALS}] * (2 * STEPS)
    assert rec.log == full_run(2, STEPS)
    assert handlers() == {sig: stray for sig in SIGNALS}


def test_an_ignored_sigterm_stays_ignored(tmp_path: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    trainer, watch, _ = build(tmp_path / "ckpt", max_epochs=2)
    during: list[dict[signal.Signals, Any]] = []
    trainer.on("post_step")(lambda t, **_: during.append(handlers()))
    raised = raise_at(trainer, "post_step", at_iteration(2), signal.SIGTERM)

    assert trainer.train() is Status.COMPLETED
    assert raised == [signal.SIGTERM]
    assert trainer.interrupted_by is None
    assert watch.log == full_run(2, STEPS)
    assert all(seen[signal.SIGTERM] is signal.SIG_IGN for seen in during)
    assert all(seen[signal.SIGINT] is not stray and callable(seen[signal.SIGINT]) for seen in during)
    assert list((tmp_path / "ckpt").glob("step-*.pt")) == []
    assert handlers() == {signal.SIGINT: stray, signal.SIGTERM: signal.SIG_IGN}


# ---------------------------------------------------------------------------------------- the CLI, for real

CLI = "trainers"  # python -m trainers: the stepbus command
APP = "tests.trainers.engine.interrupt_app"  # the same command with a Hold callback (see interrupt_app.py)
#: the fast MLP demo (128 iterations per epoch; the built-in default is the image-field app). A resume without
#: --config (the command the interrupted run prints) continues with the config saved in the checkpoint: the demo
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")
INTERRUPTED = re.compile(
    r"interrupted by (SIGINT|SIGTERM) at epoch (\d+)/(\d+), step (\d+)/128, iteration (\d+); continue with: "
    r"\S+ -m \S+ train --epochs (\d+) --resume auto --run-dir (\S+)$",
    re.MULTILINE,
)
RESUMED = re.compile(r"^resumed from (\S+) at epoch (\d+)/\d+, step (\d+)/128, iteration (\d+)$", re.MULTILINE)
PROGRESS = re.compile(r"^epoch (\d+)/\d+\s+iteration\s+(\d+)/\d+\s+loss", re.MULTILINE)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000", "WANDB_MODE": "offline"})
    # one intra-op thread: with several, the BLAS may pick its thread count by the machine's load, and runs that are
    # to be compared bit for bit (a resumed one against a straight one) would then sum in different orders
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Stepbus(LiveProcess):
    """``python -m MODULE ARGS`` with this file's environment (see live_process.py)."""

    def __init__(self, cwd: Path, module: str, *args: str) -> None:
        super().__init__(cwd, module, *args, env=_env())


def check_interrupted_exit(
    code: int, out: str, err: str, run_dir: Path, signum: int, epochs: int
) -> tuple[int, int, int]:
    """The exit of an interrupted run: 128 + signum, the message with the command that continues it, no
    traceback, and its newest checkpoint at the interrupted iteration. Returns (epoch, step, iteration)."""
    assert code == 128 + signum, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, err
    found = INTERRUPTED.search(err)
    assert found is not None, err
    name = signal.Signals(signum).name
    assert (found[1], found[3], found[6], found[7]) == (name, str(epochs), str(epochs), str(run_dir))
    epoch, step, iteration = int(found[2]), int(found[4]), int(found[5])
    assert iteration == (epoch - 1) * 128 + step
    assert f"training interrupted: {iteration} iterations" in out
    # the newest checkpoint is at the interrupted iteration: written for the interrupt, or -- when the signal landed
    # at an epoch's end or in the next pre_epoch -- the epoch's own save at that same iteration
    folder = run_dir / "checkpoints"
    newest = list_checkpoints(folder)[0]
    meta = read_metadata(newest.path)
    assert (newest.iteration, meta["iteration"], meta["epoch_iteration"] % 128) == (iteration, iteration, step % 128)
    assert meta["reason"] == ("interrupt" if 0 < step < 128 else "schedule")
    assert (folder / "last.pt").resolve() == newest.path.resolve()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    return epoch, step, iteration


def check_resumed(tmp_path: Path, run_dir: Path, iteration: int, epochs: int) -> str:
    """``stepbus train --epochs EPOCHS --resume auto --run-dir RUN_DIR`` continues from ``iteration`` to the end."""
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    args = ("train", "--epochs", str(epochs), "--resume", "auto", "--run-dir", str(run_dir))
    with Stepbus(tmp_path, CLI, *args) as resumed:
        code, out, err = resumed.finish()
    assert code == 0, out + err
    assert "Traceback" not in out + err
    found = RESUMED.search(out)
    assert found is not None, out
    assert Path(found[1]) == newest.path
    assert int(found[4]) == iteration
    # progress goes on after the resume point: one report per epoch end, none repeated, none skipped
    reports = [int(it) for _, it in PROGRESS.findall(out)]
    assert reports == [it for it in range(128, epochs * 128 + 1, 128) if it > iteration]
    assert f"training completed: {epochs * 128} iterations" in out
    assert read_metadata(list_checkpoints(run_dir / "checkpoints")[0].path)["iteration"] == epochs * 128
    return out


def test_cli_sigint_exits_130_with_a_checkpoint_and_resume_auto_continues_from_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with Stepbus(tmp_path, CLI, "train", "--config", DEMO, "--epochs", "200", "--run-dir", str(run_dir)) as demo:
        demo.wait_for(r"^epoch 1/200 ")
        demo.proc.send_signal(signal.SIGINT)
        code, out, err = demo.finish()
    epoch, _, iteration = check_interrupted_exit(code, out, err, run_dir, signal.SIGINT, 200)
    assert iteration >= 128
    # continue with the printed command, with fewer epochs to keep the test short
    check_resumed(tmp_path, run_dir, iteration, epoch + 1)


def test_cli_sigterm_mid_epoch_exits_143_and_the_run_resumes_exactly(tmp_path: Path) -> None:
    """SIGTERM landing at iteration 150 (epoch 2, step 22): the interrupt checkpoint, exit 143; the resumed run
    ends with the very weights and optimizer state of an uninterrupted run."""
    run_dir = tmp_path / "run"
    args = ("--hold-at", "150", "train", "--config", DEMO, "--epochs", "200", "--run-dir", str(run_dir))
    with Stepbus(tmp_path, APP, *args) as demo:
        demo.wait_for(r"^HOLD 150$")
        demo.proc.send_signal(signal.SIGTERM)
        code, out, err = demo.finish()
    assert check_interrupted_exit(code, out, err, run_dir, signal.SIGTERM, 200) == (2, 22, 150)
    assert read_metadata(run_dir / "checkpoints" / step_file(150))["reason"] == "interrupt"

    found = RESUMED.search(check_resumed(tmp_path, run_dir, 150, 3))
    assert found is not None
    assert found.group(2, 3) == ("2", "22")  # the open epoch is continued at its 23rd step

    straight_args = ("train", "--config", DEMO, "--epochs", "3", "--run-dir", str(tmp_path / "straight"))
    with Stepbus(tmp_path, CLI, *straight_args) as uninterrupted:  # in a process like the others (same threads)
        assert uninterrupted.finish()[0] == 0
    resumed = load_checkpoint(run_dir / "checkpoints" / step_file(384))
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / step_file(384))
    assert same_state(resumed["model"], straight["model"])
    assert same_state(resumed["optimizer"], straight["optimizer"])


def test_cli_a_second_sigint_while_finishing_aborts_with_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ("--hold-finishing", "train", "--config", DEMO, "--epochs", "200", "--run-dir", str(run_dir))
    with Stepbus(tmp_path, APP, *args) as demo:
        demo.wait_for(r"^epoch 1/200 ")
        demo.proc.send_signal(signal.SIGINT)
        demo.wait_for(r"^HOLD finishing$")
        demo.proc.send_signal(signal.SIGINT)
        code, out, err = demo.finish()
    assert code == 130, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, err
    assert err.strip() == "aborted: SIGINT received twice: training aborted at once"
    assert "training interrupted" not in out  # post_training was cut short where the second signal landed
    folder = run_dir / "checkpoints"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert read_metadata(list_checkpoints(folder)[0].path)["resumable"] is True  # the first signal's


def test_cli_two_quick_sigints_exit_130_without_a_traceback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # 2000 epochs take minutes: only the signals can end it within the timeout
    with Stepbus(tmp_path, CLI, "train", "--config", DEMO, "--epochs", "2000", "--run-dir", str(run_dir)) as demo:
        demo.wait_for(r"^epoch 1/2000 ")
        demo.proc.send_signal(signal.SIGINT)
        demo.proc.send_signal(signal.SIGINT)
        code, out, err = demo.finish(timeout=60)
    assert code == 130, f"exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, err
    # two signals are one when the second arrives before Python ran the handler for the first: then the run ends
    # gracefully; otherwise the second aborts it
    assert "aborted: SIGINT received twice: training aborted at once" in err or "interrupted by SIGINT" in err, err
    folder = run_dir / "checkpoints"
    # an abort that lands before the first save leaves no folder at all; whatever exists must be complete
    assert not [p.name for p in folder.glob("*") if p.name.endswith(".tmp")]
    for file in list_checkpoints(folder):
        assert read_metadata(file.path)["resumable"] is True  # every file written is complete
