"""``trainers.checkpoint.disk_space``: a lack of room found behind wrappers and told in plain words. The full-disk
behaviour itself is tested on a real full disk (test_checkpoint_full_disk.py, tests/callbacks/loggers/
test_full_disk_loggers.py); these pin the words and the chain walk."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from trainers.checkpoint.disk_space import (
    describe_full_disk,
    free_bytes,
    full_disk_error,
    human_size,
    mount_point,
    no_room_left,
    words_for_errno,
)


def _wrapped(code: int) -> RuntimeError:
    """What torch's zip writer raises when the file's write fails: a RuntimeError whose context is the OSError."""
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None
    except RuntimeError as exc:
        return exc


def test_the_oserror_is_found_behind_torchs_wrapper_and_chains() -> None:
    wrapped = _wrapped(errno.ENOSPC)
    assert wrapped.__cause__ is None  # `from None` leaves it as the context only
    found = full_disk_error(wrapped)
    assert isinstance(found, OSError)
    assert found.errno == errno.ENOSPC
    outer = ValueError("outer")
    outer.__cause__ = wrapped
    assert full_disk_error(outer) is found
    assert full_disk_error(OSError(errno.EACCES, "Permission denied")) is None
    assert full_disk_error(RuntimeError("unexpected pos 64 vs 0")) is None
    assert full_disk_error(None) is None
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped  # a cycle ends the walk
    assert full_disk_error(looped) is None


def test_the_plain_words_of_each_error(tmp_path: Path) -> None:
    mount = mount_point(tmp_path)
    assert os.path.ismount(mount)
    free = free_bytes(tmp_path)
    assert isinstance(free, int)
    words = words_for_errno(errno.ENOSPC, tmp_path / "not-yet" / "file.pt")  # a path that does not exist yet
    size = r"(\d+ bytes?|\d+\.\d (KiB|MiB|GiB|TiB))"  # the free space changes as others write: its form is fixed
    assert re.fullmatch(rf"no space left on device \({size} free on {re.escape(str(mount))}\)", words), words
    assert words_for_errno(errno.EDQUOT, tmp_path) == f"disk quota exceeded on {mount}"
    assert words_for_errno(errno.EFBIG, tmp_path) == f"file too large (larger than the file system on {mount} allows)"
    assert describe_full_disk(_wrapped(errno.EDQUOT), tmp_path) == f"disk quota exceeded on {mount}"
    assert describe_full_disk(PermissionError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert no_room_left(tmp_path) is (free < os.statvfs(tmp_path).f_frsize)


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (20_000, "19.5 KiB"),
        (3 << 30, "3.0 GiB"),
    ],
)
def test_sizes_in_words(count: int, text: str) -> None:
    assert human_size(count) == text
