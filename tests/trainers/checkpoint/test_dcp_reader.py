"""Reading DCP directories as data only: the metadata unpickler and the planner that loads values with
``weights_only=True`` (DCP's own reader would unpickle anything). Real DCP directories, written in this process."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint.filesystem
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from trainers.checkpoint.dcp_reader import DataOnlyLoadPlanner, DataOnlyReader, UnsafeMetadata, dcp_failure
from trainers.checkpoint.shard_files import checksums, model_shapes, no_single_process_warning, shard_problem


class Payload:
    """A non-plain value: ``weights_only=True`` refuses it."""

    def __init__(self, note: str) -> None:
        self.note = note


class Doctored:
    """Unpickles as ``os.system(command)``: what a doctored metadata file would run."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _write(directory: Path, state: dict[str, object]) -> None:
    with no_single_process_warning():
        dcp_save(state, storage_writer=FileSystemWriter(directory, single_file_per_rank=True), no_dist=True)


def test_a_dcp_directory_loads_through_the_data_only_reader(tmp_path: Path) -> None:
    weight = torch.arange(12.0).reshape(3, 4)
    _write(tmp_path, {"model": {"w": weight, "lr": 0.5}})
    target: dict[str, object] = {"model": {"w": torch.zeros(3, 4), "lr": 0.0}}
    with no_single_process_warning():
        dcp_load(target, storage_reader=DataOnlyReader(tmp_path), planner=DataOnlyLoadPlanner(), no_dist=True)
    model = target["model"]
    assert isinstance(model, dict)
    assert torch.equal(model["w"], weight)
    assert model["lr"] == 0.5
    shapes = model_shapes(tmp_path)
    assert list(shapes) == ["w"]
    assert (shapes["w"].shape, shapes["w"].device.type) == ((3, 4), "meta")


def test_doctored_metadata_is_refused_without_running_it(tmp_path: Path) -> None:
    _write(tmp_path, {"model": {"w": torch.ones(2)}})
    marker = tmp_path / "ran"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Doctored(f"touch {marker}")))
    with pytest.raises(UnsafeMetadata, match=r"asks for (posix|nt|os)\.system, which is not part of"):
        DataOnlyReader(tmp_path).read_metadata()
    assert not marker.exists()
    target = {"model": {"w": torch.zeros(2)}}
    with pytest.raises(CheckpointException) as raised, no_single_process_warning():
        dcp_load(target, storage_reader=DataOnlyReader(tmp_path), planner=DataOnlyLoadPlanner(), no_dist=True)
    assert re.fullmatch(
        r"rank 0: AssertionError: it asks for (posix|nt|os)\.system, which is not part of a checkpoint's metadata",
        dcp_failure(raised.value),
    )
    assert not marker.exists()
    # what DCP's own reader does with the same file: it runs the command (then trips over its result, an int)
    with pytest.raises(AttributeError), no_single_process_warning():
        torch.distributed.checkpoint.filesystem.FileSystemReader(tmp_path).read_metadata()
    assert marker.exists()


def test_a_value_that_is_not_plain_data_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, {"model": {"w": torch.ones(2)}, "extra": Payload("runs code when unpickled")})
    target: dict[str, object] = {"model": {"w": torch.zeros(2)}, "extra": None}
    with pytest.raises(CheckpointException) as raised, no_single_process_warning():
        dcp_load(target, storage_reader=DataOnlyReader(tmp_path), planner=DataOnlyLoadPlanner(), no_dist=True)
    assert dcp_failure(raised.value).startswith("rank 0: UnpicklingError: Weights only load failed")
    assert target["extra"] is None


def test_shard_checks_name_the_missing_short_or_changed_file(tmp_path: Path) -> None:
    _write(tmp_path, {"model": {"w": torch.arange(64.0)}})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".metadata", "__0_0.distcp"]
    manifest = checksums(tmp_path, names)
    assert manifest[".metadata"][0] == (tmp_path / ".metadata").stat().st_size
    assert shard_problem(tmp_path, manifest, crc=True) is None
    shard = tmp_path / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    shard.write_bytes(bytes(data))
    assert shard_problem(tmp_path, manifest, crc=False) is None  # the sizes alone cannot see it
    assert shard_problem(tmp_path, manifest, crc=True) == (
        "corrupted: shard file __0_0.distcp fails its CRC-32 check (bytes changed on disk)"
    )
    shard.write_bytes(bytes(data[:-10]))
    assert shard_problem(tmp_path, manifest, crc=False) == (
        f"incomplete: shard file __0_0.distcp has {len(data) - 10} bytes, {len(data)} were written"
    )
    shard.unlink()
    assert shard_problem(tmp_path, manifest, crc=False) == "incomplete: shard file __0_0.distcp is missing"
    assert shard_problem(tmp_path, {"__0_0.distcp": [1, 2]}, crc=False) == (
        "malformed: its stepbus.pt has no list of shard files ('shards')"
    )
