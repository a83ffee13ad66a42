"""Reading ``torch.distributed.checkpoint`` (DCP) directories without running code from them.

DCP unpickles its ``.metadata`` file with plain ``pickle.load`` and every non-tensor value (an optimizer's learning
rate, its ``betas``) with ``torch.load(weights_only=False)``: a doctored checkpoint could run anything. stepbus loads
every checkpoint as data only, so here the metadata is read by an unpickler that builds nothing but DCP's own
metadata records (and ``torch.Size``, dtypes, layouts, paths), and values with ``torch.load(weights_only=True)``. A
file that asks for anything else is refused, naming it.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from typing import Any

import torch
import torch.distributed.checkpoint.filesystem as dcp_filesystem
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element  # DCP's own helper, as its planner uses it
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import ReadItem

__all__ = ["DataOnlyLoadPlanner", "DataOnlyReader", "UnsafeMetadata", "dcp_failure"]

_METADATA_MODULES = {dcp_metadata.__name__}
_ALLOWED: dict[tuple[str, str], Any] = {
    (dcp_filesystem.__name__, "_StorageInfo"): dcp_filesystem._StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # a layout from its name
    ("pathlib", "Path"): pathlib.Path,
    ("pathlib", "PosixPath"): pathlib.PurePosixPath,  # a path is only a name here: never a concrete one
    ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
    ("collections", "OrderedDict"): dict,
}


class UnsafeMetadata(pickle.UnpicklingError):
    """A DCP metadata file that asks for a global outside DCP's own records."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES and not name.startswith("__"):
            found = getattr(dcp_metadata, name, None)
            if isinstance(found, type):
                return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafeMetadata(f"it asks for {module}.{name}, which is not part of a checkpoint's metadata")


class DataOnlyReader(FileSystemReader):
    """``FileSystemReader`` whose metadata is unpickled as data only (see the module docstring)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise UnsafeMetadata(f"its metadata is a {type(metadata).__name__}, not a DCP Metadata record")
        storage = metadata.storage_meta
        if storage is None:
            storage = metadata.storage_meta = dcp_metadata.StorageMeta()
        storage.load_id = self.load_id
        return metadata


class DataOnlyLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that reads non-tensor values with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def dcp_failure(error: BaseException) -> str:
    """The first cause of a DCP failure in a line (DCP wraps every rank's error in a ``CheckpointException``
    whose message is a whole traceback): ``"rank 1: UnpicklingError: Weights only load failed..."``."""
    if isinstance(error, CheckpointException) and error.failures:
        rank, wrapped = sorted(error.failures.items())[0]
        cause = wrapped[0] if isinstance(wrapped, tuple) else wrapped
        return f"rank {rank}: {_line(cause)}"
    return _line(error)


def _line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, AssertionError) and "global metadata read failed: " in text:
        text = text.split("global metadata read failed: ", 1)[1].split("; rank local", 1)[0]
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}"
