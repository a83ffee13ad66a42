"""The files of a sharded checkpoint directory, and their integrity.

A sharded checkpoint (``strategy="fsdp"``, see :mod:`trainers.checkpoint.sharded`) is a directory with a checkpoint's
name, ``step-00000042.pt/``, holding::

    .metadata          DCP's index: every tensor's global shape and where each of its shards lies
    __<rank>_0.distcp  one file per rank: that rank's shards of the model's and the optimizers' tensors
    stepbus.pt         what a checkpoint file holds besides the tensors (metadata block, counters, callbacks,
                       tracked objects, every rank's RNG state, the optimizers' parameter groups), plus the size
                       and CRC-32 of every other file (``stepbus["shards"]``)

``stepbus.pt`` is written last, and the directory only gets its name once it is complete, so a directory with that
name and that file is a whole checkpoint. DCP keeps no checksum: the ones recorded here catch a shard file cut short
or changed on disk before any of it is loaded.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from trainers.checkpoint.dcp_reader import DataOnlyReader

__all__ = ["STATE_FILE", "checksums", "is_sharded", "model_shapes", "no_single_process_warning", "shard_problem"]

#: the file of a sharded checkpoint directory that holds everything but the tensors
STATE_FILE = "stepbus.pt"
_CHUNK = 1 << 22


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a complete sharded checkpoint directory (it holds :data:`STATE_FILE`)."""
    return path.is_dir() and (path / STATE_FILE).is_file()


def checksums(directory: Path, names: list[str]) -> dict[str, list[int]]:
    """``{name: [size, crc32]}`` of the files ``names`` in ``directory``."""
    return {name: _checksum(directory / name) for name in names}


def _checksum(path: Path) -> list[int]:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return [path.stat().st_size, crc]


def shard_problem(directory: Path, manifest: Any, *, crc: bool) -> str | None:
    """What is wrong with the shard files of ``directory`` against ``manifest`` (``{name: [size, crc32]}``): a
    missing file, another size, or (with ``crc``) changed bytes; ``None`` when they are whole."""
    if not isinstance(manifest, dict) or ".metadata" not in manifest:
        return "malformed: its stepbus.pt has no list of shard files ('shards')"
    for name, record in sorted(manifest.items()):
        file = directory / str(name)
        if not isinstance(record, list) or len(record) != 2:
            return f"malformed: the shard record of {name!r} is {record!r}"
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return f"incomplete: shard file {name} is missing"
        if size != record[0]:
            return f"incomplete: shard file {name} has {size} bytes, {record[0]} were written"
        if crc and _checksum(file)[1] != record[1]:
            return f"corrupted: shard file {name} fails its CRC-32 check (bytes changed on disk)"
    return None


def model_shapes(directory: Path) -> dict[str, torch.Tensor]:
    """The model entries of the checkpoint as shape-only (``meta``) tensors, from DCP's index: what a restore checks
    a model against without reading any shard."""
    metadata = DataOnlyReader(directory).read_metadata()
    shapes: dict[str, torch.Tensor] = {}
    for key, entry in metadata.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(entry, TensorStorageMetadata):
            shapes[key[len("model.") :]] = torch.empty(entry.size, dtype=entry.properties.dtype, device="meta")
    return shapes


@contextmanager
def no_single_process_warning() -> Iterator[None]:
    """DCP warns that it ``assumes the intent is to load in a single process`` whenever no process group is up: in
    a single process that is exactly the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*assuming the intent is to (load|save) in a single process")
        yield


def listed(directory: Path) -> Iterator[str]:
    """The names of the files in ``directory`` (for a rank's own shard files: ``__<rank>_*``)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file():
                yield entry.name
