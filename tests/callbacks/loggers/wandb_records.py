"""A small reader of W&B's ``.wandb`` run file, for the tests (wandb 0.31 ships no reader of its own datastore).

The format: a 7-byte header (``":W&B"``, magic ``0xBEE1``, version 0), then the LevelDB log format in 32 KiB blocks
(the header counts inside the first block). Each physical record is ``crc32 (4) | length (2) | type (1)`` and
``length`` bytes; types FULL=1, FIRST=2, MIDDLE=3, LAST=4 (the last three are fragments of one logical record). The
CRC is ``zlib.crc32(type byte + payload)``. Fewer than 7 bytes left in a block are zero padding; a zero header ends the
file. Each logical record is a ``wandb_internal_pb2.Record`` protobuf.

Every malformed byte is a ``ValueError`` naming the file, so a test reading a damaged file fails with the reason.
W&B's service may still be writing a run file when ``run.finish()`` has returned: read a finished run's file once
it holds its exit record (:func:`complete`).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from wandb.proto import wandb_internal_pb2

pb: Any = wandb_internal_pb2  # chosen at import time by the protobuf major version; no stubs for type checkers

__all__ = [
    "artifacts",
    "complete",
    "config",
    "exit_record",
    "history",
    "read_records",
    "run_files",
    "run_record",
    "summary",
]

BLOCK = 32768
HEADER = struct.Struct("<4sHB")  # ident, magic, version
RECORD = struct.Struct("<IHB")  # crc32, length, type
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(path: Path) -> list[bytes]:
    """The logical records of the file at ``path``, as raw protobuf bytes."""
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise ValueError(f"{path}: {len(data)} bytes, too short for the 7-byte W&B header")
    ident, magic, version = HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise ValueError(
            f"{path}: not a W&B run file (header {ident!r}, magic {magic:#x}, version {version}; "
            f"expected {IDENT!r}, {MAGIC:#x}, {VERSION})"
        )
    records: list[bytes] = []
    pending: bytes | None = None  # the fragments of a FIRST .. LAST record so far
    pos = HEADER.size
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:
            pos += left  # the block's tail is zero padding
            continue
        if len(data) - pos < RECORD.size:
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        crc, length, kind = RECORD.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:
            break  # the zero tail: end of the file
        start, end = pos + RECORD.size, pos + RECORD.size + length
        if end > len(data):
            raise ValueError(f"{path}: record at byte {pos} needs {length} bytes, the file ends at {len(data)}")
        if end > pos + left:
            raise ValueError(f"{path}: record at byte {pos} ({length} bytes) crosses its 32 KiB block")
        payload = data[start:end]
        actual = zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF
        if actual != crc:
            raise ValueError(
                f"{path}: CRC mismatch in the record at byte {pos} (stored {crc:#010x}, computed {actual:#010x})"
            )
        if kind == FULL:
            if pending is not None:
                raise ValueError(f"{path}: a FULL record at byte {pos} inside a fragmented record")
            records.append(payload)
        elif kind == FIRST:
            if pending is not None:
                raise ValueError(f"{path}: a FIRST fragment at byte {pos} inside a fragmented record")
            pending = payload
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise ValueError(
                    f"{path}: a {'MIDDLE' if kind == MIDDLE else 'LAST'} fragment at byte {pos} without its FIRST"
                )
            pending += payload
            if kind == LAST:
                records.append(pending)
                pending = None
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
        pos = end
    if pending is not None:
        raise ValueError(f"{path}: the file ends inside a fragmented record")
    return records


def read_records(path: str | Path) -> list[Any]:
    """Every record of the run file, in order."""
    path = Path(path)
    records = []
    for index, payload in enumerate(_payloads(path)):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            raise ValueError(f"{path}: record {index} is not a W&B Record protobuf: {exc}") from exc
        records.append(record)
    return records


def _of(path: str | Path, kind: str) -> list[Any]:
    return [getattr(r, kind) for r in read_records(path) if r.WhichOneof("record_type") == kind]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def history(path: str | Path) -> list[dict[str, Any]]:
    """One dict per history record (``{"_step": 5, "train/loss": 0.12, "val/field/width": 5, ...}``), values
    json-decoded, in file order."""
    return [{_key(item): json.loads(item.value_json) for item in h.item} for h in _of(path, "history")]


def run_record(path: str | Path) -> Any:
    """The file's run record (the first one)."""
    runs = _of(path, "run")
    if not runs:
        raise ValueError(f"{path}: no run record")
    return runs[0]


def exit_record(path: str | Path) -> Any | None:
    """The exit record (``exit_code``), or ``None`` when the run never finished (a killed process)."""
    exits = _of(path, "exit")
    return exits[-1] if exits else None


def artifacts(path: str | Path) -> list[Any]:
    """The artifact records, in order."""
    return _of(path, "artifact")


def _apply(target: dict[str, Any], update: Any) -> None:
    for item in update.update:
        target[_key(item)] = json.loads(item.value_json)
    for item in update.remove:
        target.pop(_key(item), None)


def config(path: str | Path) -> dict[str, Any]:
    """The run's config: the run record's ``config.update`` items, then any later config records, json-decoded."""
    values: dict[str, Any] = {}
    _apply(values, run_record(path).config)
    for record in _of(path, "config"):
        _apply(values, record)
    return values


def summary(path: str | Path) -> dict[str, Any]:
    """The last value of each key over all summary records, json-decoded (nested keys joined with ``/``)."""
    values: dict[str, Any] = {}
    for record in _of(path, "summary"):
        _apply(values, record)
    return values


def run_files(directory: str | Path) -> list[Path]:
    """Every ``wandb/offline-run-*/run-*.wandb`` under ``directory``, sorted by name."""
    return sorted(Path(directory).glob("**/wandb/offline-run-*/run-*.wandb"), key=lambda p: (p.parent.name, p.name))


def complete(path: Path, timeout: float = 30.0) -> Path:
    """``path`` once W&B's service has written it up to its exit record (the last record it writes).

    ``run.finish()`` returns before the service has flushed an offline run file (wandb 0.31: read at once, a file
    can stop at a 32 KiB block boundary, or inside a record), so a finished run's file is read only once complete.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if exit_record(path) is not None:
                return path
            problem = "no exit record"
        except (OSError, ValueError) as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            pytest.fail(f"{path} is not complete after {timeout:.0f} s ({problem}): the run was never finished")
        time.sleep(0.02)
