"""The checkpoint file: what is in it, how it is written so that no crash can damage it, and how it is read.

**Format** (version :data:`FORMAT`): one ``torch.save`` zip archive holding a dict of tensors and plain containers
only, so that it loads with ``torch.load(..., weights_only=True)`` -- a checkpoint can never run code::

    {"stepbus":   {"format": 1, "version": ..., "torch": ..., "saved_at": ISO time, "unix_time": ..., "reason": ...,
                   "resumable": bool, "iteration": ..., "epoch": ..., "epoch_iteration": ..., "metrics": {...},
                   "config": {...} | None, "trainer": "module.Class", "optimizers": [name, ...],
                   "optimizer_types": {name: "torch.optim.adam.Adam"},
                   "optimizer_groups": {name: [[shape of each parameter] for each group]}, ...},
     "trainer":   {"counters": {...}, "seed": ...},        # the data position
     "model":     pipeline.state_dict(),
     "optimizer": optimizer.state_dict(),
     "tracked":   {name: obj.state_dict()},                 # schedulers, AMP scaler, EMA ... (trainer.track)
     "callbacks": {state_key: callback.state_dict()},
     "rng":       {"torch": ..., "python": ..., "cuda": [...], "numpy": {...}}}

With ``strategy="fsdp"`` a checkpoint is a directory instead, its tensors in per-rank shards and the rest in
``stepbus.pt`` (:mod:`trainers.checkpoint.shard_files`); the functions below read both kinds.

The ``stepbus`` block is the metadata: :func:`read_metadata` returns it without reading any tensor data (the archive
is memory-mapped, so its cost does not grow with the model).

**Writing** (:func:`write_checkpoint`): every value is checked first (a non-plain object is an error naming its key
path, at save time rather than at resume time); then the bytes go to a temporary file in the target's directory,
which is flushed and fsynced, renamed over the target with ``os.replace``, and the directory is fsynced. A crash at
any byte leaves either the old file or the new one, both complete; a failed write removes its temporary file.

**Reading** (:func:`load_checkpoint`): the zip's CRC-32 of every record is verified first (torch itself does not
notice flipped bits in tensor data), then ``torch.load(weights_only=True)``; then the structure and format version
are checked. Every failure is a :class:`CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import re
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from trainers.checkpoint.atomic import atomic_write
from trainers.checkpoint.shard_files import STATE_FILE, is_sharded, model_shapes, shard_problem

__all__ = [
    "FORMAT",
    "CheckpointError",
    "CheckpointFile",
    "check_model_fits",
    "check_plain",
    "list_checkpoints",
    "load_checkpoint",
    "load_newest",
    "now_metadata",
    "read_metadata",
    "stepbus_version",
    "write_checkpoint",
]

#: The checkpoint format this stepbus writes and reads. Bumped only for a change old readers cannot follow.
FORMAT = 1
#: The name of a trainer's lone optimizer: its checkpoint's ``"optimizer"`` is that optimizer's state dict (named
#: optimizers' are a dict by name; the metadata's ``"optimizers"`` lists the names either way).
LONE_OPTIMIZER = "optimizer"
#: Top-level keys every resumable checkpoint has.
REQUIRED_KEYS = ("stepbus", "trainer", "model", "optimizer", "callbacks", "rng")
#: File names :func:`list_checkpoints` recognises: ``step-<iteration>.pt`` (the Checkpointer's default pattern).
STEP_FILE = re.compile(r"^step-(\d+)\.pt$")

_log = logging.getLogger("stepbus")
_PLAIN_SCALARS = (str, bytes, int, float, complex, bool, type(None), torch.Size, torch.dtype, torch.device)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")


class EarlierRunCheckpoints(CheckpointError):
    """A fresh run was pointed at a checkpoint directory that holds another run's checkpoints (refused before the
    run writes anything: continue that run with ``--resume``, or choose another directory)."""


def _installed_version() -> str:
    try:
        return metadata.version("stepbus")
    except metadata.PackageNotFoundError:
        return "unknown"


#: read once, at import: looking it up in the installed packages' metadata takes ~0.6 ms, at every checkpoint
_VERSION = _installed_version()


def stepbus_version() -> str:
    """The installed stepbus version (``"unknown"`` when running from a tree that was never installed)."""
    return _VERSION


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the key path (e.g. ``callbacks['Validator']['best']``) of the first value that
    ``torch.load(weights_only=True)`` would refuse: anything but tensors, dicts, lists, tuples, sets, str, bytes,
    numbers, bool, None, ``torch.Size``, ``torch.dtype`` and ``torch.device``. Subclasses (a ``str`` enum, a numpy
    float) are refused too: they would not load back."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        kind = type(item)
        if kind in _PLAIN_SCALARS or kind in _TENSORS:
            continue
        if kind is dict or kind is collections.OrderedDict:
            for key, child in item.items():
                if type(key) not in _PLAIN_SCALARS:
                    raise TypeError(f"{path} has a key {key!r} of type {type(key).__name__}; keys must be plain")
                stack.append((f"{path}[{key!r}]", child))
            continue
        if kind in _CONTAINERS:
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
            continue
        raise TypeError(
            f"{path} is a {kind.__module__}.{kind.__qualname__} ({_short(item)}); a checkpoint holds tensors and "
            "plain containers only (dict, list, tuple, set, str, bytes, int, float, bool, None), so that it loads "
            "with weights_only=True -- convert it in state_dict() (e.g. str(enum), float(np_value), tensor)"
        )


def write_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and durably; returns the path.

    The payload is checked with :func:`check_plain` first. On any failure (a non-plain value, a full disk, a
    directory that is not writable) a :class:`CheckpointError` names the file and the cause, the temporary file is
    removed and whatever was at ``path`` before is untouched.
    """
    target = Path(path)
    try:
        check_plain(dict(payload))
    except TypeError as exc:
        raise CheckpointError(target, f"not saved: {exc}") from None
    blocker = next((p for p in (target.parent, *target.parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CheckpointError(target, f"could not be written: {blocker} is a file, not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda handle: torch.save(dict(payload), handle), durable=True)
    except OSError as exc:
        raise CheckpointError(target, f"could not be written ({_os_reason(exc)}); any previous file is intact") from exc
    except RuntimeError as exc:  # torch's writer reports a failed write (e.g. a full disk) as RuntimeError
        raise CheckpointError(target, f"could not be written ({exc}); any previous file is intact") from exc
    return target


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")


def _verify_archive(path: Path, *, pickle_only: bool = False) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            if pickle_only:  # the metadata lives in the pickle record: check that one, not the tensor data
                bad = None
                for name in archive.namelist():
                    if name.endswith("/data.pkl"):
                        try:
                            archive.read(name)
                        except zipfile.BadZipFile:
                            bad = name
            else:
                bad = archive.testzip()  # reads every record and checks its CRC-32
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a checkpoint") from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            path, f"not a complete torch checkpoint archive ({exc}): the file is truncated or is not a checkpoint"
        ) from None
    except (OSError, EOFError, zipfile.LargeZipFile, ValueError) as exc:
        raise CheckpointError(path, f"cannot be read: {type(exc).__name__}: {exc}") from None
    if bad is not None:
        raise CheckpointError(path, f"corrupted: record {bad!r} fails its CRC-32 check (bytes changed on disk)")


def _torch_load(path: Path, *, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises for a bad file becomes a CheckpointError
        message = str(exc)
        if "Weights only load failed" in message or isinstance(exc, pickle.UnpicklingError):
            found = re.search(
                r"(Unsupported global: [^\n]*|Trying to load unsupported GLOBAL[^\n]*|Unsupported operand[^\n]*)",
                message,
            )
            detail = found.group(1).strip() if found else message.splitlines()[0]
            raise CheckpointError(
                path,
                f"refused: it contains objects that are not tensors or plain containers ({detail}); unpickling it "
                "could run code, and stepbus only loads with weights_only=True",
            ) from None
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise CheckpointError(path, f"cannot be loaded: {type(exc).__name__}: {first}") from None


def _check_metadata(path: Path, loaded: Any) -> dict[str, Any]:
    if not isinstance(loaded, dict) or not isinstance(loaded.get("stepbus"), dict):
        keys = sorted(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(path, f"not a stepbus checkpoint: no 'stepbus' metadata block (found {keys})")
    meta: dict[str, Any] = loaded["stepbus"]
    version = meta.get("format")
    if version != FORMAT:
        raise CheckpointError(
            path,
            f"incompatible format {version!r} (written by stepbus {meta.get('version', '?')}); this stepbus "
            f"({stepbus_version()}) reads format {FORMAT}",
        )
    return meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's ``stepbus`` metadata block (iteration, epoch, time, reason, metrics, config) without
    reading tensor data: the pickle record is CRC-checked and the tensors are memory-mapped, never read, so the
    cost does not grow with the model. (:func:`load_checkpoint` verifies every record.) ``path`` may be a sharded
    checkpoint directory (its ``stepbus.pt`` holds the block)."""
    file = _state_file(Path(path))
    _verify_archive(file, pickle_only=True)
    return dict(_check_metadata(file, _torch_load(file, mmap=True)))


def load_checkpoint(path: str | os.PathLike[str], *, shard_crc: bool = True) -> dict[str, Any]:
    """Load and check a checkpoint (on the CPU): integrity, ``weights_only=True``, format version, required keys.
    Applying it to a trainer is ``trainer.restore(path)``.

    A sharded checkpoint directory (``trainers.checkpoint.shard_files``) loads as the same dict, with its tensors
    left on disk: ``"model"`` holds shape-only (``meta``) tensors from DCP's index and ``"optimizer"`` the
    optimizers' parameter groups; ``restore`` reads the shards. Its shard files are checked against their recorded
    sizes and (``shard_crc``) CRC-32s first."""
    given = Path(path)
    file = _state_file(given)
    _verify_archive(file)
    loaded = _torch_load(file, mmap=False)
    meta = _check_metadata(file, loaded)
    sharded = file is not given
    required = [key for key in REQUIRED_KEYS if not (sharded and key == "model")]
    missing = [key for key in required if key not in loaded]
    if missing:
        raise CheckpointError(file, f"incomplete: missing {missing} (a stepbus checkpoint has {list(REQUIRED_KEYS)})")
    for key in ("trainer", "callbacks", "rng"):
        if not isinstance(loaded[key], dict):
            raise CheckpointError(file, f"malformed: {key!r} is a {type(loaded[key]).__name__}, expected a dict")
    if sharded:
        problem = shard_problem(given, meta.get("shards"), crc=shard_crc)
        if problem is not None:
            raise CheckpointError(given, problem)
        try:
            loaded["model"] = model_shapes(given)
        except Exception as exc:  # noqa: BLE001 - any failure to read the index is a damaged checkpoint
            raise CheckpointError(
                given, f"its DCP index (.metadata) cannot be read: {type(exc).__name__}: {exc}"
            ) from None
    return dict(loaded)


def _state_file(path: Path) -> Path:
    """``path`` itself, or for a sharded checkpoint directory the file holding its metadata block."""
    if not path.is_dir():
        return path
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            path, f"is a directory without {STATE_FILE}: not a checkpoint (a sharded checkpoint directory holds one)"
        )
    return path / STATE_FILE


@dataclass(frozen=True)
class CheckpointFile:
    """A ``step-<iteration>.pt`` file in a checkpoint directory."""

    path: Path
    iteration: int
    mtime_ns: int


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointFile]:
    """The step checkpoints in ``directory``, newest first (by modification time, then iteration): files, and
    complete sharded checkpoint directories. Pointers (``last.pt``, ``best.pt``), temporary files and directories
    (a sharded checkpoint being written or left half-written by a kill) and anything else are not listed."""
    folder = Path(directory)
    found: list[CheckpointFile] = []
    try:
        entries: Iterator[os.DirEntry[str]] = os.scandir(folder)
    except FileNotFoundError:
        return []
    with entries as scan:  # type: ignore[attr-defined]
        for entry in scan:
            match = STEP_FILE.match(entry.name)
            if match is None or entry.is_symlink():
                continue
            if entry.is_file():
                found.append(CheckpointFile(folder / entry.name, int(match.group(1)), entry.stat().st_mtime_ns))
            elif entry.is_dir() and is_sharded(folder / entry.name):  # complete: it holds its stepbus.pt
                stamp = (folder / entry.name / STATE_FILE).stat().st_mtime_ns
                found.append(CheckpointFile(folder / entry.name, int(match.group(1)), stamp))
    found.sort(key=lambda f: (f.mtime_ns, f.iteration), reverse=True)
    return found


def load_newest(directories: Sequence[Path], *, required: bool) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directories`` that loads, with its contents. A damaged one is reported (logger
    ``stepbus``) and the next newest tried; when every one is damaged a :class:`CheckpointError` lists them all.
    With none at all: ``None``, or a :class:`CheckpointError` when ``required``."""
    candidates = sorted(
        (file for directory in directories for file in list_checkpoints(directory)),
        key=lambda f: (f.mtime_ns, f.iteration),
        reverse=True,
    )
    failures: list[str] = []
    for file in candidates:
        try:
            loaded = load_checkpoint(file.path)
        except CheckpointError as exc:
            _log.warning("resume: skipping %s; trying the next newest checkpoint", exc)
            failures.append(str(exc))
            continue
        if failures:
            _log.warning("resume: fell back to %s (iteration %d)", file.path, file.iteration)
        return file.path, loaded
    if failures:
        raise CheckpointError(
            directories[0],
            "no loadable checkpoint: " + "; ".join(failures) + " -- nothing was loaded and nothing was changed",
        )
    if required:
        raise CheckpointError(directories[0], "no step-<iteration>.pt checkpoint in this directory")
    return None


def check_model_fits(path: Path, model: torch.nn.Module, saved: Any) -> None:
    """Raise :class:`CheckpointError` listing missing and unexpected keys and shape mismatches, so that a model
    that does not fit is refused before any parameter is overwritten."""
    if not isinstance(saved, dict):
        raise CheckpointError(path, f"malformed: 'model' is a {type(saved).__name__}, expected a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and isinstance(v, torch.Tensor) and getattr(saved[k], "shape", None) != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_first_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_first_few(shapes)}")
    if problems:
        raise CheckpointError(path, f"its model does not fit {type(model).__name__}: " + "; ".join(problems))


def _first_few(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def now_metadata() -> dict[str, Any]:
    """The time fields of the metadata block."""
    unix = time.time()
    return {
        "saved_at": datetime.fromtimestamp(unix, tz=timezone.utc).isoformat(timespec="seconds"),
        "unix_time": unix,
    }


def _short(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - only for an error message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
