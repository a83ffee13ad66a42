"""One writer per run directory (``trainers.checkpoint.run_lock``, ``trainers.engine.directory_locks``): the lock
taken before ``pre_training``, held while the run may write, released at its end, on ``close()`` and by the OS when
the process dies; a refused run emits nothing and writes nothing; a Checkpointer removes leftover temporary files only
under the lock and never a live process's.

Real trainers in this process, and real ``stepbus train`` processes side by side on one directory: the first one
held at a known iteration (``lock_app.py``) while the second starts, or killed with ``SIGKILL``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from callbacks import Callback, Checkpointer
from lifecycle import Phase, Status
from tests.support import Recorder, make_trainer
from tests.trainers.distributed.ranks import start_ranks, wait_ranks
from tests.trainers.engine.live_process import LiveProcess
from trainers import BaseTrainer
from trainers.checkpoint.format import list_checkpoints, load_checkpoint, read_metadata
from trainers.checkpoint.run_lock import LOCK_NAME, Holder, RunDirectoryBusy, RunLock, process_alive
from trainers.config.builder import build

ROOT = Path(__file__).resolve().parents[3]
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")
APP = "tests.trainers.checkpoint.lock_app"  # the stepbus command, held at an iteration until a file exists
HOST = socket.gethostname()
RUN_ADVICE = "wait for it to end or choose another --run-dir"
CHECKPOINT_ADVICE = "wait for it to end or give this run's checkpointer another dir"
STARTED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def holder_of(directory: Path) -> Holder:
    data = json.loads((directory / LOCK_NAME).read_text(encoding="utf-8"))
    assert sorted(data) == ["host", "pid", "started"]
    assert STARTED.match(data["started"]), data
    return Holder(data["pid"], data["host"], data["started"])


def in_this_process(kind: str, directory: Path, advice: str = RUN_ADVICE) -> str:
    """The refusal when another trainer (or lock) of this process holds ``directory``."""
    h = holder_of(directory)
    assert (h.pid, h.host) == (os.getpid(), HOST)
    return (
        f"{kind} {directory} is in use by another trainer in this process (pid {h.pid} on host {HOST}, started "
        f"{h.started}); {advice}"
    )


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


# ---------------------------------------------------------------------------------------------------- the lock
def test_the_lock_file_names_its_holder_and_a_second_lock_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "x"
    first = RunLock(run)
    first.acquire()
    assert first.held
    assert listing(run) == [LOCK_NAME]
    holder = holder_of(run)
    assert (holder.pid, holder.host) == (os.getpid(), HOST)
    second = RunLock(run)
    with pytest.raises(RunDirectoryBusy) as info:
        second.acquire()
    assert str(info.value) == in_this_process("run directory", run)
    assert (info.value.directory, info.value.holder) == (run, holder)
    assert not second.held
    first.release()
    first.release()  # idempotent
    assert not tmp_path.joinpath("runs").exists()  # folders made only for the lock file go with it

    second.acquire()  # free again
    (run / "notes.txt").write_text("written under the lock", encoding="utf-8")
    second.release()
    assert listing(run) == ["notes.txt"]  # what the holder wrote stays; the lock file goes


def test_process_alive_counts_only_live_processes(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # ended, not reaped until wait()
    deadline = time.monotonic() + 30
    while "State:\tZ" not in Path(f"/proc/{zombie.pid}/status").read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop = threading.Event()
    native: list[int] = []

    def sleeper() -> None:
        native.append(threading.get_native_id())
        stop.wait(60)

    thread = threading.Thread(target=sleeper)
    thread.start()
    while not native:
        time.sleep(0.001)
    try:
        assert process_alive(os.getpid()) is True
        assert process_alive(live.pid) is True
        assert process_alive(dead.pid) is False
        assert process_alive(zombie.pid) is False
        assert process_alive(native[0]) is False  # a thread's id: no process of that pid
        assert process_alive(0) is False
    finally:
        stop.set()
        thread.join()
        live.kill()
        live.wait()
        zombie.wait()


# ---------------------------------------------------------------------------------------------------- trainers
class Look(Callback):
    """At the events a test names: whether the trainer holds ``directory`` and what the directory holds."""

    def __init__(self, directory: Path, *, priority: int = 1_000_000) -> None:
        super().__init__(priority=priority, state_key=f"look-{priority}")
        self.directory = directory
        self.seen: list[tuple[str, int, bool, list[str]]] = []

    def _look(self, trainer: BaseTrainer, event: str) -> None:
        held = trainer.holds_directory(self.directory)
        self.seen.append((event, trainer.state.iteration, held, listing(self.directory)))

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._look(trainer, "pre_training")

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._look(trainer, "post_training")

    def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._look(trainer, "exception")


def test_a_trainer_holds_its_run_directory_from_before_pre_training_to_the_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    look = Look(run)
    trainer = make_trainer(max_epochs=2, run_dir=run, callbacks=[look, Checkpointer()])
    assert not run.exists()  # built, not started: nothing created
    assert trainer.iterate()
    # locked before the first handler ran; nothing else there yet
    assert look.seen == [("pre_training", 0, True, [LOCK_NAME])]
    assert holder_of(run).pid == os.getpid()
    assert trainer.holds_directory(run / "checkpoints")
    assert not trainer.holds_directory(tmp_path)
    while trainer.iterate():  # held across iterate() calls, as a GUI drives it
        with pytest.raises(RunDirectoryBusy) as info:
            RunLock(run).acquire()
        assert str(info.value) == in_this_process("run directory", run)
    assert look.seen[-1] == ("post_training", 6, True, [LOCK_NAME, "checkpoints"])
    assert trainer.status is Status.COMPLETED
    assert listing(run) == ["checkpoints"]  # released at the end
    assert not trainer.holds_directory(run)
    assert trainer.iterate() is False  # after the end: nothing emitted, nothing locked
    assert listing(run) == ["checkpoints"]


def test_a_refused_trainer_emits_nothing_writes_nothing_and_may_try_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    other = RunLock(run)
    other.acquire()
    rec = Recorder(compact=True)
    trainer = make_trainer(max_epochs=1, run_dir=run, callbacks=[rec, Checkpointer()])
    message = in_this_process("run directory", run)
    for drive in (trainer.train, trainer.iterate, lambda: trainer.run_for(5.0)):
        with pytest.raises(RunDirectoryBusy) as info:
            drive()
        assert str(info.value) == message
    assert rec.log == []
    assert (trainer.phase, trainer.state.iteration, trainer.status) == (Phase.IDLE, 0, None)
    assert listing(run) == [LOCK_NAME]  # no checkpoints folder, no temporary removed, nothing
    other.release()
    assert trainer.train() is Status.COMPLETED
    assert rec.log[0] == ("pre_training", 0, 0, 0, False)
    assert rec.log[-1] == ("post_training", 1, 3, 3, "completed")
    assert [f.iteration for f in list_checkpoints(run / "checkpoints")] == [3]


def test_a_checkpoint_directory_outside_the_run_directory_is_locked_too(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    first = make_trainer(max_epochs=1, run_dir=tmp_path / "a", callbacks=[Checkpointer(shared)])
    assert first.iterate()
    assert listing(shared) == [LOCK_NAME]
    assert first.holds_directory(shared)
    second = make_trainer(max_epochs=2, run_dir=tmp_path / "b", callbacks=[Checkpointer(shared)])
    with pytest.raises(RunDirectoryBusy) as info:
        second.iterate()
    assert str(info.value) == in_this_process("checkpoint directory", shared, CHECKPOINT_ADVICE)
    assert not (tmp_path / "b").exists()  # its run directory was locked, then let go as it found shared taken
    no_run_dir = make_trainer(max_epochs=1, callbacks=[Checkpointer(shared)])  # locks the checkpoint directory
    with pytest.raises(RunDirectoryBusy, match=r"^checkpoint directory .* is in use by another trainer"):
        no_run_dir.train()
    while first.iterate():
        pass
    assert listing(shared) == ["last.pt", "step-00000003.pt"]
    assert second.restore("auto") == shared / "step-00000003.pt"  # free once the first run ended: continue it
    assert second.train() is Status.COMPLETED
    assert listing(shared) == ["last.pt", "step-00000003.pt", "step-00000006.pt"]


def test_trainers_without_directories_take_no_lock_and_run_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    one, two = make_trainer(max_epochs=1), make_trainer(max_epochs=1)
    while one.iterate() | two.iterate():
        assert not one.holds_directory(tmp_path)
        assert not two.holds_directory(tmp_path)
    assert one.status is two.status is Status.COMPLETED
    assert listing(tmp_path) == []


def test_close_releases_an_unfinished_run_and_driving_it_on_locks_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = make_trainer(max_epochs=2, run_dir=run, callbacks=[Checkpointer(every="1it")])
    assert trainer.iterate()
    trainer.close()
    assert not trainer.holds_directory(run)
    other = RunLock(run)
    other.acquire()  # free after close()
    with pytest.raises(RunDirectoryBusy):
        trainer.iterate()  # an unfinished run locks again before it goes on: refused now
    assert trainer.state.iteration == 1
    other.release()
    assert trainer.iterate()
    assert trainer.state.iteration == 2
    assert trainer.holds_directory(run)
    assert trainer.train() is Status.COMPLETED
    assert [f.iteration for f in list_checkpoints(run / "checkpoints")] == [6, 5, 4]
    assert LOCK_NAME not in listing(run)


class Boom(Callback):
    def __init__(self, event: str, priority: int = 10) -> None:
        super().__init__(priority=priority)
        self.event = event

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self.event == "post_step" and trainer.state.iteration == 2:
            raise ValueError("boom in post_step")

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self.event == "post_training":
            raise ValueError("boom in post_training")


@pytest.mark.parametrize("event", ["post_step", "post_training"])
def test_a_failing_run_holds_the_lock_through_its_last_handler_then_releases_it(tmp_path: Path, event: str) -> None:
    run = tmp_path / "run"
    look = Look(run, priority=100)  # before Boom (10) in post_training
    trainer = make_trainer(max_epochs=1, run_dir=run, callbacks=[look, Boom(event), Checkpointer(on_exception=True)])
    with pytest.raises(Exception, match=f"boom in {event}"):
        trainer.train()
    # after a failing step: exception, then post_training; after a failing post_training: its exception handlers
    order = ["exception", "post_training"] if event == "post_step" else ["post_training", "exception"]
    assert [(e, held) for e, _, held, _ in look.seen[1:]] == [(order[0], True), (order[1], True)]
    assert LOCK_NAME not in listing(run)
    assert not trainer.holds_directory(run)
    crash = "crash-00000002.pt" if event == "post_step" else "crash-00000003.pt"
    assert crash in listing(run / "checkpoints")  # the crash dump was written under the lock


def test_a_restored_run_with_nothing_left_to_step_leaves_no_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert make_trainer(max_epochs=1, run_dir=run, callbacks=[Checkpointer()]).train() is Status.COMPLETED
    restored = make_trainer(max_epochs=1, run_dir=run, callbacks=[Checkpointer()])
    assert restored.restore("auto") == run / "checkpoints" / "step-00000003.pt"
    assert restored.iterate() is False
    assert listing(run) == ["checkpoints"]
    RunLock(run).acquire()  # nobody holds it (the lock object goes with this statement)


def test_a_manual_save_outside_a_run_holds_the_lock_for_the_save(tmp_path: Path) -> None:
    run = tmp_path / "run"
    checkpointer = Checkpointer()
    trainer = make_trainer(max_epochs=1, run_dir=run, callbacks=[checkpointer])
    other = RunLock(run)
    other.acquire()
    with pytest.raises(RunDirectoryBusy) as info:
        checkpointer.save(trainer)  # before the first step
    assert str(info.value) == in_this_process("run directory", run)
    assert listing(run) == [LOCK_NAME]
    other.release()
    assert checkpointer.save(trainer) == run / "checkpoints" / "step-00000000.pt"
    assert listing(run) == ["checkpoints"]  # held for the save only
    assert trainer.train() is Status.COMPLETED
    assert checkpointer.save(trainer) == run / "checkpoints" / "step-00000003.pt"  # after the end
    assert listing(run) == ["checkpoints"]


def test_temporaries_of_a_live_process_survive_and_a_dead_ones_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        alive_name = f".step-00000005.pt.{live.pid}.0123abcd.tmp"
        dead_name = f".step-00000005.pt.{dead.pid}.89abcdef.tmp"
        for name in (alive_name, dead_name):
            (folder / name).write_bytes(b"partial")
        look = Look(folder, priority=-2000)  # after the Checkpointer's pre_training
        trainer = make_trainer(max_epochs=1, callbacks=[Checkpointer(folder), look])
        assert trainer.iterate()
        assert look.seen == [("pre_training", 0, True, sorted([LOCK_NAME, alive_name]))]
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------------------------- processes
def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    out.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p)
    return out


def held(tmp_path: Path, run: Path, release: Path, at: int, *args: str) -> LiveProcess:
    """``stepbus train`` on the demo, held at ``post_step`` of iteration ``at`` until ``release`` exists."""
    command = ("--hold-at", str(at), "--until", str(release), "train", "--config", DEMO, "--run-dir", str(run))
    return LiveProcess(tmp_path, APP, *command, *args, env=env())


def stepbus(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trainers", "train", "--config", DEMO, *args]
    return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)


def refusal(run: Path, pid: int) -> str:
    holder = holder_of(run)
    assert (holder.pid, holder.host) == (pid, HOST)
    return f"error: run directory {run} is in use by process {pid} on host {HOST} (started {holder.started}); "


def test_a_second_run_into_a_live_run_directory_is_refused_and_the_live_run_ends_intact(tmp_path: Path) -> None:
    run, release = tmp_path / "run", tmp_path / "release"
    folder = run / "checkpoints"
    with held(tmp_path, run, release, 130, "--epochs", "2") as first:
        first.wait_for(rf"^HOLD 130 {first.proc.pid}$")  # epoch 1 saved step-128; the run stands at iteration 130
        writing = folder / f".step-00000131.pt.{first.proc.pid}.0123abcd.tmp"  # a save of the live run under way
        writing.write_bytes(b"partial")
        before = listing(folder)
        second = stepbus(tmp_path, "--epochs", "2", "--run-dir", str(run))
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        assert refusal(run, first.proc.pid) + RUN_ADVICE in second.stderr
        assert "training completed" not in second.stdout
        assert listing(folder) == before
        assert writing.read_bytes() == b"partial"
        writing.unlink()
        release.touch()
        code, out, err = first.finish()
    assert code == 0, out + err
    assert "training completed: 256 iterations" in out
    assert [f.iteration for f in list_checkpoints(folder)] == [256, 128]
    for f in list_checkpoints(folder):
        load_checkpoint(f.path)  # every record verified
        assert read_metadata(f.path)["iteration"] == f.iteration
    assert (folder / "last.pt").resolve() == folder / "step-00000256.pt"
    assert listing(run) == ["checkpoints", "config.yaml"]


def test_two_resume_auto_runs_at_once_exactly_one_trains(tmp_path: Path) -> None:
    run, release = tmp_path / "run", tmp_path / "release"
    earlier = build(DEMO, run_dir=run, overrides=["trainer.max_epochs=1"])  # the run both continue: step-128
    assert earlier.train() is Status.COMPLETED
    runs = [held(tmp_path, run, release, 200, "--epochs", "2", "--resume", "auto") for _ in range(2)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the winner holds at 200; the loser is refused and exits
            holding = [p for p in runs if "HOLD 200" in p.output()]
            ended = [p for p in runs if p.proc.poll() is not None]
            if holding and ended:
                break
            time.sleep(0.05)
        outputs = [p.output() for p in runs]
        assert (len(holding), len(ended)) == (1, 1), outputs
        assert holding[0] is not ended[0], outputs
        winner, loser = holding[0], ended[0]
        code, out, err = loser.finish()
        assert code == 2, out + err
        # both started at once: the loser may find the lock taken before the winner has written its pid, and says so
        early = f"error: run directory {run} is in use by another process (it has not written its pid yet); "
        assert refusal(run, winner.proc.pid) + RUN_ADVICE in err or early + RUN_ADVICE in err, err
        assert "epoch 2/2" not in out
        assert "HOLD" not in out
        release.touch()
        code, out, err = winner.finish()
    finally:
        for process in runs:
            process.__exit__()
    assert code == 0, out + err
    assert f"resumed from {run / 'checkpoints' / 'step-00000128.pt'} at epoch 1/2" in out
    assert "training completed: 256 iterations" in out
    assert [f.iteration for f in list_checkpoints(run / "checkpoints")] == [256, 128]


def test_kill_9_frees_the_lock_at_once_and_a_resume_removes_the_dead_runs_temporaries(tmp_path: Path) -> None:
    run, release = tmp_path / "run", tmp_path / "release"
    folder = run / "checkpoints"
    with held(tmp_path, run, release, 130, "--epochs", "2") as first:
        first.wait_for(rf"^HOLD 130 {first.proc.pid}$")
        leftover = folder / f".step-00000131.pt.{first.proc.pid}.0123abcd.tmp"
        leftover.write_bytes(b"partial")  # as if killed in the middle of a save
        first.proc.kill()
        first.proc.wait()
    assert holder_of(run).pid == first.proc.pid  # its file is left behind, but not its lock:
    taken = RunLock(run)
    taken.acquire()
    taken.release()
    resumed = stepbus(tmp_path, "--epochs", "2", "--resume", "auto", "--run-dir", str(run))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {folder / 'step-00000128.pt'} at epoch 1/2" in resumed.stdout
    assert "training completed: 256 iterations" in resumed.stdout
    assert not leftover.exists()
    assert listing(folder) == ["best.pt", "last.pt", "step-00000128.pt", "step-00000256.pt"]
    assert listing(run) == ["checkpoints", "config.yaml"]


FORKING_HOLDER = r"""
import os, sys, time
from trainers.checkpoint.run_lock import RunLock

lock = RunLock(sys.argv[1])
lock.acquire()
child = os.fork()
if child == 0:  # a DataLoader worker would be forked like this, with the lock held
    os.write(1, f"CHILD {lock.held}\n".encode())  # one write each: the two processes share the pipe
    time.sleep(60)
    os._exit(0)
os.write(1, f"HOLDER {child}\n".encode())
time.sleep(60)
"""


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert holder.stdout is not None
        said = dict(holder.stdout.readline().split() for _ in range(2))
        child = int(said["HOLDER"])
        assert said["CHILD"] == "False"  # the child forgot the lock it inherited
        with pytest.raises(RunDirectoryBusy):  # the holder still holds it
            RunLock(run).acquire()
        holder.kill()
        holder.wait()
        assert process_alive(child)  # the forked child lives on ...
        taken = RunLock(run)
        taken.acquire()  # ... and the directory is free at once
        taken.release()
    finally:
        holder.kill()
        holder.wait()
        if child:
            os.kill(child, 9)


# ---------------------------------------------------------------------------------------------------- a job
WORKER = r"""
import json, sys, time
from pathlib import Path

from callbacks import Callback, Checkpointer
from tests.support import make_trainer

out = Path(sys.argv[1])
run = out / "run"
report = {}


class Holds(Callback):
    def post_step(self, trainer, **payload):
        report.setdefault("holds", trainer.holds_directory(run))


trainer = make_trainer(items=8, batch_size=4, max_epochs=1, run_dir=run, callbacks=[Holds(), Checkpointer()])
try:
    trainer.train()
except Exception as exc:
    report["refused"] = [type(exc).__name__, str(exc)]
report["in_step"] = trainer.all_gather_object(trainer.rank)
(out / f"refused-{trainer.rank}").touch()
deadline = time.monotonic() + 60
while not (out / "released").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
report["status"] = str(trainer.train())
trainer.close()
(out / f"rank-{trainer.rank}.json").write_text(json.dumps(report), encoding="utf-8")
"""


def test_in_a_job_rank_zero_locks_and_every_rank_hears_of_a_refusal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    other = RunLock(run)
    other.acquire()
    holder = holder_of(run)
    message = f"run directory {run} is in use by process {holder.pid} on host {HOST} (started {holder.started}); "
    processes = start_ranks(["-c", WORKER, str(tmp_path)], tmp_path, env={"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while not all((tmp_path / f"refused-{r}").exists() for r in (0, 1)) and time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                break
            time.sleep(0.05)
    finally:
        other.release()
        (tmp_path / "released").touch()
    outputs, _ = wait_ranks(processes, 120)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
    zero, one = (json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1))
    assert zero["refused"] == one["refused"] == ["RunDirectoryBusy", message + RUN_ADVICE]
    assert zero["in_step"] == one["in_step"] == [0, 1]  # no collective left unmatched
    assert zero["status"] == one["status"] == "completed"
    assert (zero["holds"], one["holds"]) == (True, False)  # rank 0 holds the job's lock
    assert listing(run) == ["checkpoints"]
