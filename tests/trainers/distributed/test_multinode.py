"""Several nodes, simulated on one machine: two torchrun agents (``--nnodes=2 --nproc-per-node=1``, a c10d rendezvous
on 127.0.0.1) run ``-m trainers train --run-dir <shared> --resume auto`` as two nodes would, each one its own
process group. The finished run must equal a ``torchrun --standalone --nproc-per-node=2`` run of the same config bit
for bit -- also when one node is SIGKILLed after a checkpoint and started again with the same command line: the
survivor's worker raises ``PeerFailure``, its agent restarts it (``--max-restarts``), the new node joins the next
rendezvous and every worker resumes from the newest checkpoint.

Which worker is rank 0 is decided by torch's rendezvous (its participants sorted by host, then agent pid), and the
rendezvous store lives in the agent that bound ``--rdzv-endpoint`` first. The tests order the agents' pids (a
waiting process that execs torchrun keeps its pid) to choose which node holds rank 0 -- the writer, holder of
the run directory's lock -- while the other node always hosts the store (torch's c10d store does not survive its
host: that node must stay up)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.trainers.distributed.identical import same_state
from tests.trainers.distributed.ranks import ROOT, free_port, torchrun
from trainers.checkpoint.format import list_checkpoints, load_checkpoint, read_metadata
from trainers.checkpoint.run_lock import LOCK_NAME

DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")
EPOCHS = 40
ITERATIONS = EPOCHS * 4  # 256 samples in batches of 64
#: a checkpoint every epoch, the last two kept; TensorBoard, W&B and the progress bar off (demo.yaml's defaults)
SETTINGS = ("--set", "trainer.samples=256", "--set", f"trainer.max_epochs={EPOCHS}",
            "--set", "callbacks.checkpointer.keep_last=2")  # fmt: skip
TRAIN = ("-m", "trainers", "train", "--config", DEMO, *SETTINGS)
#: how long a survivor waits in a collective before it calls a silent peer lost (a dead one is noticed at once)
DIST_TIMEOUT = "5"
#: what docs/distributed.md tells every node to set
NODE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
LIMIT = 180.0  # seconds for a whole job, however loaded the machine
#: waits on stdin, then becomes the command given in its arguments (same pid)
EXEC_WHEN_TOLD = "import os, sys; sys.stdin.readline(); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"


def _env() -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("STEPBUS_", "TORCHELASTIC_"))}
    # torch's rendezvous hands the workers a store of rank 0's agent unless told not to: a node that joins a later
    # round then waits for an address the others never publish again (its agent fails after 60 s)
    return {**inherited, **NODE_ENV, "PYTHONPATH": str(ROOT), "STEPBUS_DIST_TIMEOUT": DIST_TIMEOUT}


class Node:
    """One simulated node: a torchrun agent in its own session (so its group can be killed), output to a file."""

    def __init__(self, name: str, port: int, run_dir: Path, log_dir: Path, *, held: bool = False) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        agent = [
            "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=multinode", "--max-restarts=1",
            *TRAIN, "--run-dir", str(run_dir), "--resume", "auto",
        ]  # fmt: skip
        command = [sys.executable, "-c", EXEC_WHEN_TOLD, *agent] if held else [sys.executable, *agent]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                command,
                env=_env(),
                cwd=log_dir,
                stdin=subprocess.PIPE if held else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def go(self) -> None:
        """Let a held node become its torchrun agent."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def groups(self) -> set[int]:
        """The process groups of the agent and of every process below it (torchrun starts each worker in a
        session of its own)."""
        found = {self.process.pid}
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        todo = [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        groups = set()
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        return groups

    def kill(self) -> None:
        """SIGKILL the agent's and its workers' process groups (the node is gone)."""
        for group in self.groups():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)

    def finish(self, deadline: float) -> int:
        return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))


def _wait_for(what: str, ready: Callable[[], bool], nodes: list[Node], deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {node.name}\n{node.output()[-3000:]}" for node in nodes)
            raise AssertionError(f"no {what} within {LIMIT:g} s\n{logs}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    """Whether something on this machine listens on TCP ``port`` (read from /proc: no connection is made)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] == "0A":  # local address, state LISTEN
                return True
    return False


def _start_nodes(run_dir: Path, tmp_path: Path, *, writer: str) -> tuple[Node, Node, int]:
    """Nodes ``a`` and ``b``; ``a`` hosts the rendezvous store and ``writer`` ("a" or "b") gets rank 0."""
    port = free_port()
    if writer == "a":
        a = Node("a", port, run_dir, tmp_path)
        _wait_for("rendezvous store", lambda: _listening(port), [a], time.monotonic() + LIMIT)
        b = Node("b", port, run_dir, tmp_path)
    else:  # b takes its (smaller) pid first, and becomes torchrun once a hosts the store
        b = Node("b", port, run_dir, tmp_path, held=True)
        a = Node("a", port, run_dir, tmp_path)
        _wait_for("rendezvous store", lambda: _listening(port), [a], time.monotonic() + LIMIT)
        b.go()
    return a, b, port


def _final(run_dir: Path) -> dict[str, object]:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[0].path)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The final checkpoint of the same config under ``torchrun --standalone --nproc-per-node=2``."""
    work = tmp_path_factory.mktemp("standalone")
    run = work / "run"
    env = {"STEPBUS_DIST_TIMEOUT": DIST_TIMEOUT}
    result = torchrun([*TRAIN, "--run-dir", str(run)], work, env=env, timeout=LIMIT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = _final(run)
    assert final["stepbus"]["iteration"] == ITERATIONS  # type: ignore[index]
    return final


def _check_finished(run_dir: Path, nodes: list[Node], standalone: dict[str, object]) -> None:
    """One rank-0 report of the whole run; its last checkpoint written by rank 0 of a world of 2, the lock gone, and
    the weights of the standalone run."""
    outputs = [node.output() for node in nodes]
    whole = "".join(outputs)
    assert whole.count(f"training completed: {ITERATIONS} iterations") == 1, whole[-4000:]
    assert "Traceback" not in whole
    final = _final(run_dir)
    meta = final["stepbus"]
    assert (meta["iteration"], meta["epoch"]) == (ITERATIONS, EPOCHS)  # type: ignore[index]
    newest = read_metadata(list_checkpoints(run_dir / "checkpoints")[0].path)
    assert (newest["world_size"], newest["writer"]["rank"]) == (2, 0)
    assert not (run_dir / LOCK_NAME).exists()  # the writer released the run directory
    same_state(final, standalone)


def test_two_nodes_train_like_one_standalone_job(tmp_path: Path, standalone: dict[str, object]) -> None:
    run = tmp_path / "shared" / "run"
    a, b, _ = _start_nodes(run, tmp_path, writer="a")
    deadline = time.monotonic() + LIMIT
    try:
        assert (a.finish(deadline), b.finish(deadline)) == (0, 0), a.output()[-3000:] + b.output()[-3000:]
        _check_finished(run, [a, b], standalone)
        assert (a.output() + b.output()).count("no checkpoint in") == 1  # rank 0 alone says it found none
        # rank 0 (node a, the smaller agent pid) spoke and wrote for the job; node b's worker stayed quiet
        assert a.output().count(f"stepbus demo run in {run}") == 1
        assert "stepbus demo run in" not in b.output()
        writers = {read_metadata(c.path)["writer"]["pid"] for c in list_checkpoints(run / "checkpoints")}
        assert len(writers) == 1
    finally:
        for node in (a, b):
            if node.process.poll() is None:
                node.kill()


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["a", "b"], ids=["survivor-writes", "writer-killed"])
def test_killed_node_restarts_and_resumes_exactly(tmp_path: Path, standalone: dict[str, object], writer: str) -> None:
    """Node b is SIGKILLed (agent and worker) once the checkpoint of epoch 2 exists, then started again. With
    ``writer="b"`` the killed node held rank 0: the writer and the lock holder is gone, and after the restart the
    survivor's worker is rank 0 and takes over the directory."""
    run = tmp_path / "shared" / "run"
    a, b, port = _start_nodes(run, tmp_path, writer=writer)
    nodes = [a, b]
    deadline = time.monotonic() + LIMIT
    try:
        checkpoints = run / "checkpoints"
        _wait_for("checkpoint of epoch 2", lambda: any(c.iteration >= 8 for c in list_checkpoints(checkpoints)),
                  nodes, deadline)  # fmt: skip
        b.kill()
        lost = 0 if writer == "b" else 1
        _wait_for("PeerFailure", lambda: f"lost rank {lost}" in a.output(), nodes, deadline)
        before = a.output()  # node a's first workers' output, to the PeerFailure
        killed_at = list_checkpoints(checkpoints)[0]  # a's worker writes nothing more once it failed
        assert killed_at.iteration < ITERATIONS  # the kill landed mid-run
        b_again = Node("b-again", port, run, tmp_path)
        nodes.append(b_again)
        assert (a.finish(deadline), b_again.finish(deadline)) == (0, 0), "".join(n.output()[-3000:] for n in nodes)
        _check_finished(run, [a, b_again], standalone)
        # the first start found no checkpoint, and rank 0 alone said so (on node b when it held rank 0)
        assert "".join(n.output() for n in (a, b, b_again)).count("no checkpoint in") == 1
        # rank 0 was on the chosen node before the kill (it spoke for the job), and on node a after it (its
        # agent's pid is now the smaller one): every worker resumed from the newest checkpoint, rank 0 said so
        speaks = f"stepbus demo run in {run}"
        assert [speaks in before, speaks in b.output()] == [writer == "a", writer == "b"]
        after = a.output()[len(before) :]
        assert speaks in after
        assert speaks not in b_again.output()
        resumed = f"resumed from {killed_at.path} at epoch {killed_at.iteration // 4}/{EPOCHS}, step 4/4, "
        assert f"{resumed}iteration {killed_at.iteration}\n" in after, after[-3000:]
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.kill()
