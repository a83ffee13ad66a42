"""Whether W&B's service really wrote what the ``WandbLogger`` logged (not a callback).

``run.log`` only hands a row to W&B's service process (``wandb-core``), which writes the run file
(``<dir>/wandb/offline-run-*/run-<id>.wandb``) on its own. When that write fails -- a full disk -- nothing reaches
Python: ``run.log`` and ``run.finish`` return as usual, the service drops every later record (its writer keeps the
first error), and the only trace is a line in the service's own log (``logs/debug-internal.log``)::

    {"level":"ERROR","msg":"writer: failed to save record: transactionlog: error writing: write .../run-x.wandb:
     no space left on device"}

:class:`RunFileWatch` looks where the failure shows, without slowing the run down:

* :meth:`~RunFileWatch.failure` (at each epoch's end): the service's log lines written since the last look, for a
  ``writer:`` or ``transactionlog:`` error -- its last part (``no space left on device``) becomes an ``OSError``
  with that ``errno`` -- then the file system of the run file, which has no block left on a full disk even where the
  service could not log a word, and the run file's size against the file size limit (``ulimit -f``) the service
  inherits from this process;
* :meth:`~RunFileWatch.finished` (after ``run.finish()``): the same, then the run file's last record must be the
  run's exit record, which a service that lost a write never writes (it may lag ``finish`` by milliseconds: it is
  awaited up to a timeout). Only the file's last two 32 KiB blocks are read, whatever its length.

The run file's format: a 7-byte header (``":W&B"``, magic ``0xBEE1``, version 0), then LevelDB's log format in
32 KiB blocks -- each physical record ``crc32 (4) | length (2) | type (1)`` and its bytes, types FULL=1, FIRST=2,
MIDDLE=3, LAST=4 -- whose logical records are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from trainers.checkpoint.disk_space import file_size_limit, no_room_left

__all__ = ["RunFileWatch", "ends_with_exit_record", "service_error"]

_BLOCK = 32768
_FILE_HEADER = 7
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
#: the OS's words for each error code, lower case, as Go's errors spell them ("no space left on device")
_ERRNO_OF = {os.strerror(code).lower(): code for code in sorted(errno.errorcode, reverse=True)}


def service_error(line: str, run_file: Path) -> OSError | None:
    """The failed write a line of the service's log reports, as an ``OSError`` (its ``errno`` when the words are
    the OS's, the words as they are otherwise; the file is ``run_file``), or ``None`` for any other line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("level") != "ERROR":
        return None
    message = entry.get("msg")
    if not isinstance(message, str) or not (message.startswith("writer:") or "transactionlog:" in message):
        return None
    words = message.rsplit(": ", 1)[-1].strip()
    code = _ERRNO_OF.get(words.lower())
    if code is not None:
        return OSError(code, os.strerror(code), str(run_file))
    return OSError(f"W&B's service could not write {run_file}: {message}")


def ends_with_exit_record(run_file: Path) -> bool:
    """Whether the last record of ``run_file`` is complete, checks out (CRC) and is the run's exit record."""
    try:
        with run_file.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, ((size - 1) // _BLOCK - 1) * _BLOCK)  # the last two blocks
            handle.seek(start)
            data = handle.read(size - start)
    except OSError:
        return False
    last: bytes | None = None
    pending: bytes | None = None
    pos = max(start, _FILE_HEADER)
    while pos < size:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:
            pos += left  # a block's tail: zero padding
            continue
        if size - pos < _CHUNK.size:
            return False  # a header cut short
        crc, length, kind = _CHUNK.unpack_from(data, pos - start)
        if crc == 0 and length == 0 and kind == 0:
            break  # the zero tail
        end = pos + _CHUNK.size + length
        if end > size or end > pos + left:
            return False
        payload = data[pos - start + _CHUNK.size : end - start]
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            return False
        if kind == _FULL:
            last, pending = payload, None
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending = None if pending is None else pending + payload
        elif kind == _LAST:
            last, pending = (None if pending is None else pending + payload), None
        pos = end
    if pending is not None or last is None:
        return False  # the file ends inside a record, or its last record began before the two blocks (not an exit)
    from wandb.proto import wandb_internal_pb2

    pb: Any = wandb_internal_pb2  # chosen by wandb for the installed protobuf; no stubs
    record = pb.Record()
    try:
        record.ParseFromString(last)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: not a record, so not the exit record
        return False
    return bool(record.WhichOneof("record_type") == "exit")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class RunFileWatch:
    """Watches one W&B run's files for a write W&B's service could not make (see the module docstring).

    Args:
        run_file: the run file (``run.settings.sync_file``).
        service_log: the service's log (``run.settings.log_internal``), or ``None``.
    """

    def __init__(self, run_file: Path, service_log: Path | None) -> None:
        self.run_file, self.service_log = run_file, service_log
        self._offset = 0  # how far the service's log has been read

    def failure(self) -> OSError | None:
        """The first failed write the service logged since the last call, else an ``ENOSPC`` when the run file's
        file system has no block left, else an ``EFBIG`` when the run file has reached this process's file size
        limit (which the service inherits), else ``None``."""
        logged = self._logged_failure()
        if logged is not None:
            return logged
        if no_room_left(self.run_file.parent):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_file))
        limit = file_size_limit()  # the service inherits this process's limit
        if limit is not None and _size(self.run_file) >= limit:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(self.run_file))
        return None

    def finished(self, timeout: float) -> OSError | None:
        """After ``run.finish()``: :meth:`failure`, or, when the run file has not ended with its exit record within
        ``timeout`` seconds, an ``OSError`` saying so; ``None`` for a complete file."""
        deadline = time.monotonic() + timeout
        while True:
            failure = self.failure()
            if failure is not None:
                return failure
            if ends_with_exit_record(self.run_file):
                return None
            if time.monotonic() >= deadline:
                return OSError(
                    f"W&B's service did not complete {self.run_file} within {timeout:g} s of the run's end (its "
                    "exit record is missing): rows logged may be missing from it"
                )
            time.sleep(0.02)

    def _logged_failure(self) -> OSError | None:
        log = self.service_log
        if log is None:
            return None
        try:
            with log.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return None
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            failure = service_error(line, self.run_file)
            if failure is not None:
                return failure
        return None
