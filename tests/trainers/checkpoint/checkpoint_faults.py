"""Fault injection for ``test_checkpoint_format.py``, run as a script: ``python checkpoint_faults.py SPEC.json``.

The script imports torch once, trains a tiny real trainer for 4 steps and writes the reference checkpoint "B"
(iteration 4, reason "B") without any fault. Then every case of the spec runs in a forked child, which installs
one fault and calls ``trainer.save_checkpoint`` exactly like an application does:

* ``crash``: the child dies by ``SIGKILL`` at a chosen stage of the write: after ``bytes`` bytes of the temporary
  file reached the disk (the file object returned by ``os.fdopen`` is wrapped), after the fsync but before
  ``os.replace``, or right after ``os.replace`` (before the directory fsync). Just before dying it writes a note.
* ``disk_full``: ``RLIMIT_FSIZE`` caps every file at ``limit`` bytes (SIGXFSZ ignored, so ``write`` fails with
  ``EFBIG`` like a full disk); the child records the ``CheckpointError``.
* ``read_only``: the child drops root (uid/gid 65534) after opening both directories, so that ``chmod 0o555`` is
  really enforced, then saves into the read-only directory (must fail) and into a writable one it owns (must work).
  Root is dropped here and not in ``preexec_fn``: the interpreter lives under ``/root`` (mode 0700) and pytest's
  temporary base directory is 0700 too, so an unprivileged process could not even start. Paths are relative to
  the directory (``fchdir``), so no parent directory has to be searchable.

The report (``SPEC.json`` -> ``report`` file) maps each case name to how the child ended and what it saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from tests.support import make_trainer
from trainers.checkpoint.format import CheckpointError


def _write_note(note: Path, **fields: Any) -> None:
    note.write_text(json.dumps(fields))


def _die(note: Path, **fields: Any) -> None:
    _write_note(note, **fields)
    os.kill(os.getpid(), signal.SIGKILL)


class DyingFile:
    """A file object that lets ``limit`` bytes reach the file, flushes them, then kills the process."""

    def __init__(self, handle: Any, limit: int, note: Path, path: str) -> None:
        self.handle, self.limit, self.note, self.path = handle, limit, note, path
        self.written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.written + len(view) >= self.limit:
            room = self.limit - self.written
            self.handle.write(view[:room])
            self.handle.flush()
            _die(self.note, stage="write", written=self.written + room, tmp=self.path)
        self.handle.write(view)
        self.written += len(view)
        return len(view)

    def flush(self) -> None:
        self.handle.flush()

    def fileno(self) -> int:
        return int(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> DyingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def crash(trainer: Any, case: dict[str, Any], total: int) -> None:
    note = Path(case["note"])
    stage = case["stage"]
    fsyncs: list[int] = []
    real_fsync, real_replace, real_fdopen = os.fsync, os.replace, os.fdopen

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    os.fsync = fsync
    if stage == "write":
        limit = case["bytes"] if case["bytes"] >= 0 else total + case["bytes"]

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> DyingFile:
            return DyingFile(real_fdopen(fd, *args, **kwargs), limit, note, os.readlink(f"/proc/self/fd/{fd}"))

        os.fdopen = fdopen  # type: ignore[assignment]
    elif stage == "before_replace":

        def replace(src: Any, dst: Any) -> None:
            _die(note, stage=stage, tmp=str(src), size=os.path.getsize(src), fsyncs_before=len(fsyncs))

        os.replace = replace
    elif stage == "after_replace":

        def replace(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            _die(note, stage=stage, tmp=str(src), fsyncs_before=len(fsyncs))

        os.replace = replace
    else:
        raise ValueError(stage)
    trainer.save_checkpoint(case["target"], reason="B")
    _write_note(note, stage="not killed: the fault never fired")


def disk_full(trainer: Any, case: dict[str, Any]) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (case["limit"], hard))
    results = []
    for target in case["targets"]:
        try:
            trainer.save_checkpoint(target, reason="B")
        except CheckpointError as exc:
            cause = exc.__cause__
            results.append(
                {
                    "path": str(exc.path),
                    "reason": exc.reason,
                    "cause": type(cause).__name__ if cause else None,
                    "errno": getattr(cause, "errno", None),
                }
            )
        else:
            results.append({"path": target, "reason": None})
    _write_note(Path(case["note"]), results=results)


def read_only(trainer: Any, case: dict[str, Any]) -> None:
    ro = os.open(case["ro_dir"], os.O_RDONLY)
    rw = os.open(case["rw_dir"], os.O_RDONLY)
    note = Path(case["note"])
    out = note.open("w")  # opened as root: the note's directory is not accessible to uid 65534
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    results: dict[str, Any] = {"uid": os.getuid(), "euid": os.geteuid()}
    os.fchdir(ro)
    for name in ("step-00000002.pt", "step-00000004.pt", "sub/step-00000004.pt"):
        try:
            trainer.save_checkpoint(name, reason="B")
        except CheckpointError as exc:
            results[name] = {"path": str(exc.path), "reason": exc.reason, "cause": type(exc.__cause__).__name__}
        else:
            results[name] = {"path": name, "reason": None}
    os.fchdir(rw)
    try:
        trainer.save_checkpoint("step-00000004.pt", reason="B")
    except CheckpointError as exc:
        results["writable"] = {"reason": exc.reason}
    else:
        results["writable"] = {"reason": None}
    out.write(json.dumps(results))
    out.close()


def main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    trainer = make_trainer(items=6, batch_size=2, max_epochs=2)
    for _ in range(4):
        trainer.iterate()
    reference = Path(spec["reference"])
    trainer.save_checkpoint(reference, reason="B")  # also imports whatever torch.save loads lazily
    total = reference.stat().st_size
    report: dict[str, Any] = {"reference_size": total}
    python_rng = random.getstate()
    for case in spec["cases"]:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: one fault, then exit without running any cleanup of the parent's
            code = 1
            try:
                random.setstate(python_rng)  # `random` reseeds itself in a forked child; B must match the reference
                if case["kind"] == "crash":
                    crash(trainer, case, total)
                elif case["kind"] == "disk_full":
                    disk_full(trainer, case)
                else:
                    read_only(trainer, case)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported; the test fails on it
                with contextlib.suppress(BaseException):  # e.g. no longer allowed to write there
                    Path(case["note"]).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report[case["name"]] = {
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "pid": pid,
        }
    Path(spec["report"]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
