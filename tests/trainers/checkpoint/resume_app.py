"""One deterministic training with every resumable part, for the exact-resume tests (not a test module).

Importable (:func:`build`, :func:`snapshot`, :func:`differences`, :func:`same_training`, the kill-trial helpers
:func:`kill_run`, :func:`resume_in_process`, :func:`check_resumed`, :func:`plan_kills`) and runnable as a script::

    python -m tests.trainers.checkpoint.resume_app --run-dir DIR [--num-workers 0|2] [--every 1it|2it|1ep ...]
        [--keep-last N] [--steps-before-exit K] [--resume auto|PATH] [--dump FILE] [--fetch-log FILE]
        [--slow-fsync SECONDS] [--die-in-save ITERATION --die-at write|rename|link] [--die-in-final-validation]

What the run contains, so that every piece of state a resume must carry is exercised:

* the model is the real grid model of ``tests/callbacks/grid_model.py`` with dropout in its decoder (torch's RNG
  matters) and an occupancy grid that :class:`~callbacks.GridPruning` carves (buffers that change during the run);
* the dataset adds Python ``random`` noise to every target it hands out (in-process with ``num_workers=0``, so the
  main process's ``random`` state matters; seeded per batch in the workers with ``num_workers=2``), and the loss is
  weighted by one numpy draw and one ``random`` draw per step (so numpy's and ``random``'s states matter with
  workers too);
* Adam, an ``LRDecay`` wrapping a torch ``ExponentialLR`` with a warmup (scheduler state), ``GridPruning``, a
  ``Validator`` every 3 iterations (mid-epoch validations), ``EarlyStopping`` on ``val/mse`` (its wait counter
  moves, its patience is never exhausted), ``GradientGuard`` (clipping; ``grad_norm`` every 2 iterations) and a
  ``Checkpointer`` (``--every``, ``keep_last`` large, ``monitor="val/mse"``).

4 epochs x 8 iterations = 32 iterations, about 0.1 s of training. The result depends on ``--num-workers`` (with
workers the dataset's noise comes from per-batch seeds instead of the main process's ``random``), not on
``--every`` (apart from the Checkpointer's own list of files) nor on where the run was interrupted and resumed.

Script behaviour: prints ``resumed <path|None>``, then ``step <iteration>`` after every step (flushed: a parent
waits for these lines before killing the process), then ``finished <status> <iteration>``. With
``--steps-before-exit K`` it calls ``iterate()`` until the run reaches iteration ``K`` (counted from the start of
the run, not of this process), asks for a checkpoint with ``trainer.request_checkpoint()`` between two
``iterate()`` calls, prints ``exited <iteration>`` and exits without finishing the run. ``--dump FILE`` writes
:func:`snapshot` (``torch.save``) at the end. ``--fetch-log FILE`` makes the dataset append one line per
``__getitem__``/``__getitems__`` call to FILE (from whichever process fetches).

Fault injection (wrapping ``os`` functions in this process only): ``--slow-fsync S`` makes every ``os.fsync`` sleep
``S`` seconds first (a slow disk: a random kill lands inside a save more often); ``--die-in-save N --die-at ...``
SIGKILLs the process at a chosen point of the save of ``step-N.pt`` (see :func:`_die_in_save`);
``--die-in-final-validation`` SIGKILLs it when the Validator's ``at_end`` validation starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._dynamo  # the first optimizer imports it anyway (~1 s): a preloaded forkserver then has it
from torch.nn import functional as F
from torch.utils.data import Dataset

from callbacks import Checkpointer, EarlyStopping, GradientGuard, GridPruning, LRDecay, Validator
from tests.callbacks.grid_model import GridModel, image_data
from trainers import BaseTrainer
from trainers.checkpoint.format import list_checkpoints

EPOCHS = 4
IMAGE = 8  # 8 x 8 pixels = 64 items
BATCH = 8
ITERATIONS_PER_EPOCH = IMAGE * IMAGE // BATCH  # 8
ITERATIONS = EPOCHS * ITERATIONS_PER_EPOCH  # 32
SEED = 3


class NoisyPixels(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The grid model's image, with Python ``random`` noise on each target; logs every fetch to ``log_path``.

    A log line is ``<kind> <pid> <i>,<j>,...`` with kind ``items`` (one ``__getitems__`` call) or ``item`` (one
    ``__getitem__`` call). Lines are appended with ``O_APPEND``, so worker processes can share the file."""

    def __init__(self, log_path: str | os.PathLike[str] | None = None) -> None:
        self.coords, self.targets = image_data(IMAGE).tensors
        self.log_path = None if log_path is None else str(log_path)

    def __len__(self) -> int:
        return len(self.coords)

    def _log(self, kind: str, indices: Sequence[int]) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as handle:
                handle.write(f"{kind} {os.getpid()} {','.join(str(int(i)) for i in indices)}\n")

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.coords[index], self.targets[index] + random.gauss(0.0, 0.02)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._log("item", [index])
        return self._item(index)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self._log("items", indices)
        return [self._item(i) for i in indices]


def read_fetch_log(path: str | os.PathLike[str]) -> list[tuple[str, list[int]]]:
    """The fetches a ``--fetch-log`` file recorded: ``[(kind, indices), ...]`` in file order."""
    file = Path(path)
    if not file.exists():
        return []
    rows = []
    for line in file.read_text().splitlines():
        kind, _pid, indices = line.split(" ")
        rows.append((kind, [int(i) for i in indices.split(",")]))
    return rows


def noisy_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """MSE weighted by one numpy and one ``random`` draw per step, plus a small penalty on the grid features (which
    keeps a gradient when a whole batch falls into pruned cells, whose output is a constant 0)."""
    weight = 1.0 + 0.1 * float(np.random.random()) + 0.1 * random.random()
    features = model.features
    assert isinstance(features, torch.Tensor)
    return weight * F.mse_loss(model(batch[0]), batch[1]) + 1e-4 * features.square().mean()


def build(
    run_dir: str | os.PathLike[str],
    *,
    num_workers: int = 0,
    every: str = "1it",
    keep_last: int = 1000,
    fetch_log: str | os.PathLike[str] | None = None,
) -> BaseTrainer:
    """The trainer, with fixed initial weights and fixed starting states of torch's, ``random``'s and numpy's
    global RNGs (a resume replaces those states with the checkpoint's)."""
    torch.manual_seed(0)
    model = GridModel(channels=4, resolution=8, occupancy_resolution=4, hidden=16, dropout=0.2, threshold=0.15)
    coords, targets = image_data(IMAGE).tensors

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        return {"mse": F.mse_loss(trainer.pipeline(coords), targets)}

    trainer = BaseTrainer(
        model,
        NoisyPixels(fetch_log),
        max_epochs=EPOCHS,
        batch_size=BATCH,
        seed=SEED,
        device="cpu",
        num_workers=num_workers,
        loss_fn=noisy_loss,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.03),
        run_dir=run_dir,
        callbacks=[
            LRDecay(lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97), warmup=4),
            GridPruning("4it", start=8),
            Validator(validate, every="3it"),
            EarlyStopping("val/mse", patience=50),
            GradientGuard(clip_norm=0.5, every="2it"),
            Checkpointer(every=every, keep_last=keep_last, monitor="val/mse"),
        ],
    )
    torch.manual_seed(11)
    random.seed(12)
    np.random.seed(13)
    return trainer


def checkpointer_of(trainer: BaseTrainer) -> Checkpointer:
    found = [cb for cb in trainer.callbacks if isinstance(cb, Checkpointer)]
    assert len(found) == 1, trainer.callbacks
    return found[0]


def snapshot(trainer: BaseTrainer, *, steps_run: int | None = None) -> dict[str, Any]:
    """Everything that must be identical between an uninterrupted and a resumed run, as plain data + tensors.

    The Checkpointer's directory is made relative to the run directory (runs in different directories are
    compared)."""
    callbacks = {cb.state_key: cb.state_dict() for cb in trainer.callbacks}
    for cb in trainer.callbacks:
        if isinstance(cb, Checkpointer):
            state = dict(callbacks[cb.state_key])
            assert trainer.run_dir is not None
            state["directory"] = os.path.relpath(state["directory"], trainer.run_dir)
            callbacks[cb.state_key] = state
    return {
        "model": {k: v.detach().clone() for k, v in trainer.pipeline.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "trainer": trainer.state_dict(),
        "status": None if trainer.status is None else str(trainer.status),
        "metrics": dict(trainer.state.metrics),
        # the checkpointer publishes its files: relative to the run, like its directory above
        "checkpoints": {
            role: [os.path.relpath(saved.path, trainer.run_dir or "."), saved.iteration, saved.reason, saved.score]
            for role, saved in trainer.state.saved_checkpoints().items()
        },
        "callbacks": callbacks,
        "steps_run": steps_run,
        "resumed_from": None if trainer.resumed_from is None else str(trainer.resumed_from),
    }


def differences(a: Any, b: Any, path: str = "", limit: int = 10) -> list[str]:
    """Where ``a`` and ``b`` differ: tensors by ``torch.equal`` (and dtype), containers by keys/length and then
    element by element, everything else by ``==`` (and type). Empty when bit-identical."""
    found: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                found.append(f"{where}: {type(x).__name__} vs {type(y).__name__}")
            elif x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                found.append(f"{where}: tensors differ ({x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)})")
            return
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                found.append(
                    f"{where}: keys {sorted(map(str, set(x) - set(y)))} vs {sorted(map(str, set(y) - set(x)))}"
                )
                return
            for key in x:
                walk(x[key], y[key], f"{where}[{key!r}]")
            return
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if type(x) is not type(y) or len(x) != len(y):
                found.append(f"{where}: {type(x).__name__}[{len(x)}] vs {type(y).__name__}[{len(y)}]")
                return
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{where}[{i}]")
            return
        if type(x) is not type(y) or x != y:
            found.append(f"{where}: {x!r} vs {y!r}")

    walk(a, b, path or "snapshot")
    return found


def same_training(resumed: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """:func:`differences` of the training results (not ``steps_run`` / ``resumed_from``, which say how the run
    got there). ``metrics`` are published values, not resumable state: a process that resumed from the run's last
    checkpoint steps nothing and emits nothing, so it publishes nothing; they are compared when it stepped."""
    keys = ["model", "optimizer", "trainer", "status", "callbacks"]
    if resumed.get("steps_run") != 0:
        keys.append("metrics")
    return differences({k: resumed[k] for k in keys}, {k: reference[k] for k in keys})


def _slow_fsync(seconds: float) -> None:
    real = os.fsync

    def fsync(fd: Any) -> None:
        time.sleep(seconds)
        real(fd)

    os.fsync = fsync


def _die_in_save(iteration: int, at: str) -> None:
    """Fault injection: SIGKILL this process inside the save of ``step-<iteration>.pt``: ``write`` -- at the fsync of
    its temporary file (fully written, not yet renamed); ``rename`` -- right after it was renamed into place (the
    ``last.pt`` link not yet moved); ``link`` -- when ``last.pt`` is about to be pointed at it (the link's
    temporary file made, not renamed)."""
    name = f"step-{iteration:08d}.pt"
    real_fsync, real_replace = os.fsync, os.replace

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def fsync(fd: Any) -> None:
        if at == "write" and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            die()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if at == "link" and os.path.basename(dst) == "last.pt" and os.readlink(src) == name:
            die()
        real_replace(src, dst, **kwargs)
        if at == "rename" and os.path.basename(dst) == name:
            die()

    os.fsync, os.replace = fsync, replace


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] | None = None) -> int:
    """The script; ``emit`` receives the progress lines (default: printed and flushed)."""
    say = emit if emit is not None else (lambda line: print(line, flush=True))
    parser = argparse.ArgumentParser(prog="resume_app")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--num-workers", type=int, choices=(0, 2), default=0)
    parser.add_argument("--every", default="1it")
    parser.add_argument("--keep-last", type=int, default=1000)
    parser.add_argument("--steps-before-exit", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--dump", default=None)
    parser.add_argument("--fetch-log", default=None)
    parser.add_argument("--slow-fsync", type=float, default=0.0)
    parser.add_argument("--die-in-final-validation", action="store_true")
    parser.add_argument("--die-in-save", type=int, default=None, metavar="ITERATION")
    parser.add_argument("--die-at", choices=("write", "rename", "link"), default="write")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    if args.slow_fsync > 0:
        _slow_fsync(args.slow_fsync)
    if args.die_in_save is not None:
        _die_in_save(args.die_in_save, args.die_at)
    trainer = build(
        args.run_dir,
        num_workers=args.num_workers,
        every=args.every,
        keep_last=args.keep_last,
        fetch_log=args.fetch_log,
    )
    if args.die_in_final_validation:
        # fault injection: the process is killed while the Validator's at_end validation runs (post_training)
        @trainer.on("pre_validation")
        def die(t: BaseTrainer, *, reason: str, **_: Any) -> None:
            if reason == "end":
                say("dying")
                os.kill(os.getpid(), signal.SIGKILL)

    resumed = trainer.restore(args.resume) if args.resume is not None else None
    say(f"resumed {resumed}")
    steps = 0

    @trainer.on("post_step", priority=-10_000)  # after the Checkpointer's save of this step
    def announce(t: BaseTrainer, **_: Any) -> None:
        nonlocal steps
        steps += 1
        say(f"step {t.state.iteration}")

    try:
        if args.steps_before_exit is not None:
            while trainer.state.iteration < args.steps_before_exit and trainer.iterate():
                pass
            trainer.request_checkpoint()  # served at once: we are between two iterate() calls
            say(f"exited {trainer.state.iteration}")
        else:
            status = trainer.train(handle_signals=False)
            say(f"finished {status} {trainer.state.iteration}")
        if args.dump is not None:
            torch.save(snapshot(trainer, steps_run=steps), args.dump)
    finally:
        trainer.close()
    return 0


# ---------------------------------------------------------------------------------------------- kill -9 trials
ROOT = Path(__file__).resolve().parents[3]


def subprocess_env() -> dict[str, str]:
    """The environment of a fresh interpreter running this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["WANDB_MODE"] = "offline"
    return env


def run_script(args: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m tests.trainers.checkpoint.resume_app ARGS`` in a fresh interpreter, to the end."""
    return subprocess.run(
        [sys.executable, "-m", "tests.trainers.checkpoint.resume_app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=ROOT,
    )


@dataclass(frozen=True)
class KillPlan:
    """One kill trial: run the script with ``--every every`` (``--slow-fsync slow_fsync``, plus ``extra``), wait for
    its line ``step <after_step>``, sleep ``delay`` seconds, SIGKILL it (``after_step=None``: let it run until it
    exits -- or kills itself through a ``--die-...`` option in ``extra``). ``fresh``: a fresh interpreter
    (``python -m``); else a child of a forkserver that has imported torch already (the same code, ~2 s cheaper
    per trial)."""

    index: int
    num_workers: int
    every: str
    after_step: int | None
    delay: float = 0.0
    slow_fsync: float = 0.0
    fresh: bool = False
    extra: tuple[str, ...] = ()

    def args(self, run_dir: Path) -> list[str]:
        args = ["--run-dir", str(run_dir), "--num-workers", str(self.num_workers), "--every", self.every]
        return [*args, "--slow-fsync", str(self.slow_fsync), *self.extra]


@dataclass
class KillOutcome:
    plan: KillPlan
    run_dir: Path
    exitcode: int | None
    last_line: str | None  # the last progress line read before the kill
    temporaries: list[str] = field(default_factory=list)  # temporary files the killed process left
    step_files: list[int] = field(default_factory=list)  # iterations of the step-*.pt files after the kill

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL

    @property
    def during_save(self) -> bool:
        """The kill interrupted a checkpoint write or a link update (its temporary file was left behind)."""
        return bool(self.temporaries)


def _child(argv: list[str], conn: Any, stderr: str) -> None:  # the forkserver child's entry point
    # as in a fresh interpreter on Linux: DataLoader workers are forked from this process (so they notice its
    # death), not started by a forkserver of its own, which a child of a forkserver would otherwise use
    multiprocessing.set_start_method("fork", force=True)
    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        main(argv, emit=conn.send)
    finally:
        conn.close()


_context: Any = None


def forkserver() -> Any:
    """The ``forkserver`` multiprocessing context, its server preloaded with this module (and so torch)."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tests.trainers.checkpoint.resume_app"])
        _context = context
    return _context


class _Fresh:
    def __init__(self, argv: list[str], stderr: Path) -> None:
        with open(stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "tests.trainers.checkpoint.resume_app", *argv],
                stdout=subprocess.PIPE,
                stderr=err,
                env=subprocess_env(),
                cwd=ROOT,
            )
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.pid = self.proc.pid

    def next_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError(f"no progress line from pid {self.pid} in {timeout} s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def wait(self) -> int:
        code = self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


class _Forked:
    #: what multiprocessing reports when the forkserver could not hand over a child's exit status (its status pipe
    #: closed without one: ``popen_forkserver.Popen.poll``), a value of the harness, never of the child
    STATUS_LOST = 255

    def __init__(self, argv: list[str], stderr: Path) -> None:
        context = forkserver()
        self.conn, child = context.Pipe(duplex=False)
        self.stderr = stderr
        self.proc = context.Process(target=_child, args=(argv, child, str(stderr)))
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    def next_line(self, timeout: float) -> str | None:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"no progress line from pid {self.pid} in {timeout} s")
        try:
            return str(self.conn.recv())
        except EOFError:
            return None

    def wait(self) -> int:
        self.proc.join(timeout=60)
        self.conn.close()
        code = self.proc.exitcode
        assert code is not None, f"pid {self.pid} did not exit"
        if code == self.STATUS_LOST and not _alive(self.pid) and "Traceback" not in self.stderr.read_text():
            # the status was lost on its way back; the child is gone, it was sent SIGKILL and reported no error
            # (one that ends by itself exits 0 or 1 and says why on stderr): it died by that SIGKILL
            return -signal.SIGKILL
        return int(code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_run(plan: KillPlan, run_dir: Path) -> KillOutcome:
    """Start the run, wait until it has finished step ``plan.after_step`` (so it is training), wait
    ``plan.delay``, SIGKILL it; report what it left in its checkpoint directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = plan.args(run_dir)
    stderr = run_dir.parent / f"{run_dir.name}.stderr"
    launched: _Fresh | _Forked = _Fresh(argv, stderr) if plan.fresh else _Forked(argv, stderr)
    marker, last = None if plan.after_step is None else f"step {plan.after_step}", None
    try:
        while True:
            line = launched.next_line(timeout=60)
            if line is None:
                break  # it exited (before the marker): reported by the exit code
            last = line
            if line == marker:
                time.sleep(plan.delay)
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(launched.pid, signal.SIGKILL)  # a no-op when it exited by itself (not yet reaped: a zombie)
        exitcode = launched.wait()
    directory = run_dir / "checkpoints"
    names = sorted(os.listdir(directory)) if directory.is_dir() else []
    return KillOutcome(
        plan=plan,
        run_dir=run_dir,
        exitcode=exitcode,
        last_line=last,
        temporaries=[n for n in names if n.endswith(".tmp")],
        step_files=sorted(f.iteration for f in list_checkpoints(directory)),
    )


@dataclass
class ResumeOutcome:
    loaded: Path | None  # what restore("auto") loaded (None: no checkpoint, started fresh)
    newest: Path | None  # the newest step file on disk before the resume
    fallback: bool  # restore("auto") skipped a damaged newer file
    warnings: list[str]
    snapshot: dict[str, Any]
    files_after: list[str]  # the checkpoint directory after the resumed run


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_in_process(
    run_dir: Path,
    *,
    num_workers: int,
    every: str,
    resume: bool = True,
    at_step: dict[int, Callable[[BaseTrainer], object]] | None = None,
) -> ResumeOutcome:
    """In this process: build the trainer on ``run_dir``, ``restore("auto")`` (with ``resume``), train to the end.
    ``at_step`` maps iterations to functions called at their ``post_step``."""
    directory = run_dir / "checkpoints"
    listed = list_checkpoints(directory)
    capture = _Capture()
    logger = logging.getLogger("stepbus")
    logger.addHandler(capture)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the script
    try:
        trainer = build(run_dir, num_workers=num_workers, every=every)
        steps = 0

        def count(t: BaseTrainer, **_: Any) -> None:
            nonlocal steps
            steps += 1
            if at_step and t.state.iteration in at_step:
                at_step[t.state.iteration](t)

        trainer.on("post_step")(count)
        try:
            loaded = trainer.restore("auto") if resume else None
            trainer.train(handle_signals=False)
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
        logger.removeHandler(capture)
    newest = listed[0].path if listed else None
    return ResumeOutcome(
        loaded=loaded,
        newest=newest,
        fallback=loaded != newest,
        warnings=capture.messages,
        snapshot=snapshot(trainer, steps_run=steps),
        files_after=sorted(os.listdir(directory)),
    )


def resume_in_process(run_dir: Path, *, num_workers: int, every: str) -> ResumeOutcome:
    """:func:`run_in_process` resuming from the newest checkpoint in ``run_dir`` (``restore("auto")``)."""
    return run_in_process(run_dir, num_workers=num_workers, every=every)


def saved_before_marker(after_step: int, every: str) -> int:
    """The newest iteration whose checkpoint was on disk when the script printed ``step <after_step>`` (``every``
    is ``"<n>it"``): a step's save precedes that line, except at an epoch's last step (saved after ``post_epoch``)."""
    period = int(every.removesuffix("it"))
    newest = after_step - after_step % period
    if newest == after_step and after_step % ITERATIONS_PER_EPOCH == 0:
        newest -= period
    return newest


def check_resumed(
    reference: dict[str, Any], killed: KillOutcome, resumed: ResumeOutcome, *, require_kill: bool = True
) -> list[str]:
    """What is wrong with one killed-and-resumed run, compared with the uninterrupted ``reference`` snapshot of the
    same configuration (empty when nothing): it died by SIGKILL (with ``require_kill``); ``restore("auto")`` loaded
    the newest file on disk, at least as new as the last save the process had announced; the training ended
    bit-identical; the directory holds exactly the reference's checkpoints and links, no temporary file."""
    plan, problems = killed.plan, []
    if require_kill and not killed.killed:
        problems.append(f"exit code {killed.exitcode}, not killed by SIGKILL (last line {killed.last_line!r})")
    if resumed.fallback:
        problems.append(f"fell back to {resumed.loaded} although {resumed.newest} is newer: {resumed.warnings}")
    loaded = 0 if resumed.loaded is None else int(resumed.loaded.name[5:13])
    if plan.after_step is not None and loaded < saved_before_marker(plan.after_step, plan.every):
        problems.append(f"resumed from iteration {loaded}, before the checkpoint saved by 'step {plan.after_step}'")
    problems += same_training(resumed.snapshot, reference)
    expected = sorted([entry[0] for entry in reference["callbacks"]["Checkpointer"]["files"]] + ["best.pt", "last.pt"])
    if resumed.files_after != expected:
        problems.append(f"files after the resumed run: {resumed.files_after}, expected {expected}")
    return problems


def plan_kills(
    count: int,
    *,
    seed: int,
    configs: Sequence[tuple[int, str]] = ((0, "1it"), (2, "2it")),
    after_steps: tuple[int, int] = (1, 24),
    max_delay: float = 0.012,
    slow_fsync: Sequence[float] = (0.0, 0.004),
    fresh_every: int = 0,
) -> list[KillPlan]:
    """``count`` reproducible kill plans drawn from ``random.Random(seed)``: ``(num_workers, every)`` taken from
    ``configs`` in turn, the marker step uniform in ``after_steps``, the delay uniform in ``[0, max_delay]``;
    every ``fresh_every``-th trial (if not 0) runs in a fresh interpreter."""
    rng = random.Random(seed)
    plans = []
    for index in range(count):
        num_workers, every = configs[index % len(configs)]
        plans.append(
            KillPlan(
                index=index,
                num_workers=num_workers,
                every=every,
                after_step=rng.randint(*after_steps),
                delay=round(rng.uniform(0.0, max_delay), 4),
                slow_fsync=rng.choice(list(slow_fsync)),
                fresh=bool(fresh_every) and index % fresh_every == 0,
            )
        )
    return plans


if __name__ == "__main__":
    sys.exit(main())
