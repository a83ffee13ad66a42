"""``callbacks.loggers.wandb_health`` on a real offline W&B run file and the service's log format: a complete file
ends with the exit record, every cut-short copy does not; the service's error lines become OSErrors with their
errno; the watch reads the log incrementally, never half a line, and reports an incomplete file after its timeout."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest

from callbacks.loggers.wandb_health import RunFileWatch, ends_with_exit_record, service_error
from tests.callbacks.loggers.wandb_records import complete, read_records


def _line(level: str, msg: str) -> str:
    return json.dumps({"time": "2026-01-01T00:00:00Z", "level": level, "msg": msg}) + "\n"


@pytest.fixture
def run_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished offline W&B run with 300 rows (its file spans several 32 KiB blocks)."""
    import wandb

    monkeypatch.delenv("WANDB_DIR", raising=False)
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / "wandb-env" / name.lower()))
    run = wandb.init(
        project="health",
        dir=str(tmp_path),
        mode="offline",
        id="health01",
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    for step in range(300):
        run.log({"loss": 1.0 / (step + 1), "text": "x" * 200}, step=step)
    path = Path(run.settings.sync_file)
    run.finish()
    return complete(path)  # the service may still be writing its last block (even inside a record)


def test_a_complete_run_file_ends_with_its_exit_record_and_no_cut_short_copy_does(
    run_file: Path, tmp_path: Path
) -> None:
    data = run_file.read_bytes()
    assert len(data) > 2 * 32768  # the tail reader must find record starts at block boundaries
    assert read_records(run_file)[-1].WhichOneof("record_type") == "exit"
    assert ends_with_exit_record(run_file) is True
    copy = tmp_path / "cut.wandb"
    for cut in (1, 2, 6, 7, 8, 20, len(data) % 32768 + 1, 32768, 40000, len(data) - 7):
        copy.write_bytes(data[: len(data) - cut])
        assert ends_with_exit_record(copy) is False, cut
    damaged = bytearray(data)
    damaged[-3] ^= 0x40  # a flipped bit in the exit record: its CRC fails
    copy.write_bytes(bytes(damaged))
    assert ends_with_exit_record(copy) is False
    assert ends_with_exit_record(tmp_path / "missing.wandb") is False
    assert RunFileWatch(run_file, None).finished(timeout=0.0) is None


def test_an_incomplete_run_file_is_reported_after_the_timeout(run_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cut.wandb"
    copy.write_bytes(run_file.read_bytes()[:-5])
    started = time.monotonic()
    failure = RunFileWatch(copy, None).finished(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert isinstance(failure, OSError)
    assert failure.errno is None
    assert str(failure) == (
        f"W&B's service did not complete {copy} within 0.2 s of the run's end (its exit record is missing): rows "
        "logged may be missing from it"
    )


def test_the_services_error_lines_become_oserrors_with_their_errno(tmp_path: Path) -> None:
    run_file = tmp_path / "run-x.wandb"
    written = f"writer: failed to save record: transactionlog: error writing: write {run_file}: "
    for words, code in (
        ("no space left on device", errno.ENOSPC),
        ("disk quota exceeded", errno.EDQUOT),
        ("file too large", errno.EFBIG),
        ("permission denied", errno.EACCES),
    ):
        found = service_error(_line("ERROR", written + words), run_file)
        assert isinstance(found, OSError)
        assert (found.errno, found.filename) == (code, str(run_file))
    odd = "writer: failed to save record: transactionlog: error marshaling: bad field"
    found = service_error(_line("ERROR", odd), run_file)
    assert isinstance(found, OSError)
    assert (found.errno, str(found)) == (None, f"W&B's service could not write {run_file}: {odd}")
    assert service_error(_line("INFO", "writer: started"), run_file) is None
    assert service_error(_line("ERROR", "sender: upload failed: no space left on device"), run_file) is None
    assert service_error("not json", run_file) is None


def test_the_watch_reads_the_log_once_and_never_half_a_line(tmp_path: Path) -> None:
    run_file, log = tmp_path / "run-x.wandb", tmp_path / "debug-internal.log"
    run_file.write_bytes(b"")
    watch = RunFileWatch(run_file, log)
    assert watch.failure() is None  # no log yet
    log.write_text(_line("INFO", "stream: started"))
    assert watch.failure() is None
    failing = _line(
        "ERROR", f"writer: failed to save record: transactionlog: error writing: write {run_file}: file too large"
    )
    with log.open("a") as handle:
        handle.write(failing[:40])  # the service is still writing this line
    assert watch.failure() is None
    with log.open("a") as handle:
        handle.write(failing[40:])
    found = watch.failure()
    assert isinstance(found, OSError)
    assert found.errno == errno.EFBIG
    assert watch.failure() is None  # read once
