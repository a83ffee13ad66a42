"""Checkpoints on a disk that is really full (a small tmpfs filled to the last byte, or the ``RLIMIT_FSIZE`` stand-in:
see tests/full_disk.py), in real child processes: a failed save says so in plain words and names the file; saves
that fail under ``on_error="warn"`` are counted, and the progress summary and ``metrics.json`` say how many."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

from tests.full_disk import full_disk, run_case


def test_a_save_onto_a_full_disk_names_the_file_and_says_why_in_plain_words(tmp_path: Path) -> None:
    with full_disk(tmp_path) as disk:
        done = run_case(disk, tmp_path / "run", case="save")
        assert done.returncode == 0, done.stderr
        note = json.loads((tmp_path / "run" / "note.json").read_text())
        target = disk.root / "checkpoints" / "step-00000001.pt"
        # torch's zip writer wraps the OSError in "[enforce fail at inline_container.cc:...] unexpected pos ..."
        reason = f"could not be written: {disk.reason()}; any previous file is intact"
        assert note["error"] == f"checkpoint {target}: {reason}"
        code = errno.ENOSPC if disk.mode == "tmpfs" else errno.EFBIG
        assert (note["cause"], note["errno"]) == ("OSError", code)
        assert note["left"] == []  # the temporary file is gone
        if disk.mode == "tmpfs":
            assert disk.free() == 0  # the disk really is full


def test_saves_failing_under_warn_are_counted_in_the_summary_and_metrics_json(tmp_path: Path) -> None:
    """32 steps, a save after each and one at the end, the disk full from the first: 33 failed saves."""
    with full_disk(tmp_path) as disk:
        done = run_case(disk, tmp_path / "run", case="checkpointer", fill_at=1)
        assert done.returncode == 0, done.stderr
        note = json.loads((tmp_path / "run" / "note.json").read_text())
        assert note["status"] == "completed"
        assert note["failed_writes"] == {"Checkpointer": 33}
        saved = [*range(1, 33), 32]  # the end save repeats iteration 32 (forced)
        assert len(note["warnings"]) == len(saved) == 33
        for iteration, warning in zip(saved, note["warnings"], strict=True):
            target = disk.root / "checkpoints" / f"step-{iteration:08d}.pt"
            assert warning.startswith("stepbus.checkpointer: Checkpointer 'Checkpointer': "), warning
            assert f"iteration {iteration} " in warning, warning
            assert warning.endswith(
                f"checkpoint {target}: could not be written: {disk.reason()}; any previous file is intact"
            ), warning
        assert sorted(disk.root.rglob("*.pt*")) == []  # no checkpoint, no temporary file, no link
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (report["status"], report["failed_writes"], report["checkpoints"]) == ("completed", {"Checkpointer": 33}, {})
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "training completed with 33 failed writes: Checkpointer 33"
    rows = [line for line in lines if "failed writes/" in line]
    assert len(rows) == 1, rows
    assert re.fullmatch(r"\s*failed writes/Checkpointer\s+│\s+33\s*", rows[0]), rows
