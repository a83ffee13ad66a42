"""The checkpoint file (``trainers.checkpoint.format``, ``trainers.checkpoint.rng`` and the trainer's save/resume) with
real files and real torch: the exact round trip of keys, metadata and tensors; ``read_metadata`` not loading tensor
data; ``check_plain`` naming the key path of a non-plain value and leaving the disk untouched; crafted malicious files
refused without running their code; damaged files (truncated at many offsets, random bytes, a flipped bit in tensor
data, wrong structure or format) each reported with the file and the specific reason; checkpoints that do not fit a
trainer refused with the trainer left bit-identical and still trainable; the newest-loadable fallback of
``restore(dir)`` / ``restore("auto")`` and ``list_checkpoints``; atomicity under ``SIGKILL`` at every stage of a
write, a full disk (``RLIMIT_FSIZE``) and a read-only directory, in real subprocesses (``checkpoint_faults.py``);
and the RNG state surviving a ``weights_only`` round trip."""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from callbacks import Callback
from tests.support import Recorder, full_run, make_trainer, params_of, same_params
from trainers import BaseTrainer
from trainers.checkpoint.format import (
    FORMAT,
    CheckpointError,
    check_plain,
    list_checkpoints,
    load_checkpoint,
    read_metadata,
    stepbus_version,
    write_checkpoint,
)
from trainers.checkpoint.optimizer_fit import FRESH_HINT
from trainers.checkpoint.rng import capture_rng, check_rng, restore_rng

ROOT = Path(__file__).resolve().parents[3]
FAULTS = Path(__file__).with_name("checkpoint_faults.py")
STEPS = 3  # make_trainer: 6 items in batches of 2
KEYS = {"stepbus", "trainer", "model", "optimizer", "tracked", "callbacks", "rng"}
TRUNCATED = (
    "not a complete torch checkpoint archive (File is not a zip file): the file is truncated or is not a checkpoint"
)


def step(iteration: int) -> str:
    return f"step-{iteration:08d}.pt"


def tmp_name(target: str, pid: int) -> re.Pattern[str]:
    """The temporary file ``write_checkpoint`` uses for ``target`` in process ``pid``."""
    return re.compile(rf"^\.{re.escape(target)}\.{pid}\.[0-9a-f]{{8}}\.tmp$")


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def same_tree(a: Any, b: Any, where: str = "") -> None:
    """Assert that ``a`` and ``b`` are equal containers of the same types with bit-identical tensors."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: {a.dtype} {a.shape} != {b.dtype} {b.shape}"
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            same_tree(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Mode(str, Enum):
    FAST = "fast"


class Keeper(Callback):
    """Counts steps; its state holds one value of every kind a checkpoint may hold."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = 0

    def post_step(self, trainer: BaseTrainer, **_: Any) -> None:
        self.seen += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "history": [1.5, 2, True],
            "tags": {"a", "b"},
            "pair": (1, "x"),
            "raw": b"\x00\xff",
            "complex": 1 + 2j,
            "size": torch.Size([2, 3]),
            "dtype": torch.float16,
            "device": torch.device("cpu"),
            "ordered": collections.OrderedDict(z=1, a=2),
            "none": None,
            "big": 2**70,
            "tensor": torch.arange(3),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


class Holder(Callback):
    """A callback whose state is whatever the test puts in ``value``; refuses a state whose mode it does not know."""

    def __init__(self, value: Any = "fast", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] not in ("fast", "slow"):
            raise ValueError(f"unknown mode {state['mode']!r}")
        self.value = state["mode"]


def trained(steps: int, **kwargs: Any) -> BaseTrainer:
    trainer = make_trainer(**kwargs)
    for _ in range(steps):
        trainer.iterate()
    return trainer


def good_checkpoint(directory: Path, steps: int = 2, name: str | None = None, **kwargs: Any) -> Path:
    return trained(steps, **kwargs).save_checkpoint(directory / (name or step(steps)))


def expect_error(path: Path, reason: str, fn: Any, *args: Any) -> CheckpointError:
    """``fn(*args)`` raises a CheckpointError for ``path`` whose reason is exactly ``reason``."""
    with pytest.raises(CheckpointError) as info:
        fn(*args)
    assert info.value.path == path
    assert info.value.reason == reason
    assert str(info.value) == f"checkpoint {path}: {reason}"
    return info.value


# ---------------------------------------------------------------------------------------------------- round trip
def test_round_trip_has_exactly_the_keys_metadata_and_tensors(tmp_path: Path) -> None:
    keeper = Keeper()
    trainer = make_trainer(max_epochs=3, seed=5, callbacks=[keeper])
    scheduler = trainer.track("scheduler", torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5))
    trainer.config = {"lr": 0.001, "layers": [3, 1], "name": "demo", "nested": {"flag": True}}
    for _ in range(4):
        trainer.iterate()
        scheduler.step()
    trainer.state.metrics.update({"val/mse": 0.25, "lr": 1e-3, "note": "x", "count": 3, "t": torch.tensor(1.0)})
    before = time.time()
    path = trainer.save_checkpoint(tmp_path / step(4), reason="test", metadata={"score": 0.5, "tag": "t"})
    after = time.time()
    assert path == tmp_path / step(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [step(4)]  # no temporary file left

    loaded = load_checkpoint(path)
    assert set(loaded) == KEYS
    meta = loaded["stepbus"]
    assert set(meta) == {
        "format",
        "version",
        "torch",
        "saved_at",
        "unix_time",
        "reason",
        "resumable",
        "iteration",
        "epoch",
        "epoch_iteration",
        "max_epochs",
        "iterations_per_epoch",
        "status",
        "metrics",
        "config",
        "trainer",
        "score",
        "tag",
        "writer",
        "world_size",
        "optimizers",
        "optimizer_types",
        "optimizer_groups",
    }
    assert meta["optimizers"] == ["optimizer"]
    assert meta["optimizer_types"] == {"optimizer": "torch.optim.adam.Adam"}
    assert meta["optimizer_groups"] == {"optimizer": [[[1, 3], [1]]]}
    assert meta["writer"] == {"host": socket.gethostname(), "pid": os.getpid(), "rank": 0}
    assert meta["world_size"] == 1
    assert meta["format"] == FORMAT == 1
    assert meta["version"] == stepbus_version()
    assert meta["torch"] == str(torch.__version__)
    assert before <= meta["unix_time"] <= after
    saved_at = datetime.fromisoformat(meta["saved_at"])
    assert saved_at == datetime.fromtimestamp(meta["unix_time"], tz=timezone.utc).replace(microsecond=0)
    assert meta["saved_at"].endswith("+00:00")
    assert (meta["reason"], meta["resumable"], meta["status"]) == ("test", True, None)
    assert (meta["iteration"], meta["epoch"], meta["epoch_iteration"]) == (4, 2, 1)
    assert (meta["max_epochs"], meta["iterations_per_epoch"]) == (3, STEPS)
    assert meta["metrics"] == {"val/mse": 0.25, "lr": 1e-3, "note": "x", "count": 3}  # the tensor metric is left out
    assert meta["config"] == trainer.config
    assert meta["trainer"] == "trainers.engine.trainer.BaseTrainer"
    assert (meta["score"], meta["tag"]) == (0.5, "t")

    assert loaded["trainer"] == {
        "counters": {
            "epoch": 2,
            "iteration": 4,
            "epoch_iteration": 1,
            "max_epochs": 3,
            "iterations_per_epoch": 3,
            "optimizer_step": 4,
        },
        "seed": 5,
        "ended": False,
        "data_size": 6,
    }
    same_tree(loaded["model"], trainer.pipeline.state_dict(), "model")
    assert list(loaded["model"]) == ["weight", "bias"]
    same_tree(loaded["optimizer"], trainer.optimizer.state_dict(), "optimizer")
    assert loaded["optimizer"]["state"][0]["step"] == torch.tensor(4.0)
    same_tree(loaded["tracked"], {"scheduler": scheduler.state_dict()}, "tracked")
    assert loaded["tracked"]["scheduler"]["last_epoch"] == 4
    same_tree(loaded["callbacks"], {"Keeper": keeper.state_dict()}, "callbacks")
    assert loaded["callbacks"]["Keeper"]["seen"] == 4
    same_tree(loaded["rng"], capture_rng(), "rng")  # nothing drew random numbers since the save

    # the format promise: a plain weights_only load gives the same, and read_metadata gives the same block
    same_tree(torch.load(path, weights_only=True), loaded)
    assert read_metadata(path) == meta

    # a resumable checkpoint cannot be taken inside a step
    seen: list[str] = []

    def inside(trainer: BaseTrainer, **_: Any) -> None:
        with pytest.raises(RuntimeError, match="no resumable checkpoint can be taken inside a step"):
            trainer.save_checkpoint(tmp_path / "inside.pt")
        seen.append("refused")

    trainer.on("step")(inside)
    trainer.iterate()
    assert seen == ["refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [step(4)]


class BigModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.register_buffer("table", torch.arange(16 * 2**20, dtype=torch.float32))  # 64 MiB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _peak_rise(fn: Any) -> tuple[Any, int]:
    """``fn()`` and how far it raised this process's peak resident memory (KiB), measured from a reset peak."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _rss_kib("VmHWM")
    result = fn()
    return result, _rss_kib("VmHWM") - base


def test_read_metadata_of_a_large_model_reads_no_tensor_data(tmp_path: Path) -> None:
    trainer = trained(1, model=BigModel())
    path = trainer.save_checkpoint(tmp_path / step(1), reason="big")
    assert path.stat().st_size > 64 * 2**20
    del trainer
    meta, meta_rise = _peak_rise(lambda: read_metadata(path))
    loaded, load_rise = _peak_rise(lambda: load_checkpoint(path))
    assert meta == loaded["stepbus"]
    assert (meta["reason"], meta["iteration"]) == ("big", 1)
    assert torch.equal(loaded["model"]["table"], torch.arange(16 * 2**20, dtype=torch.float32))
    # the metadata comes from a memory-mapped archive: the 64 MiB buffer is never paged in (a full load is)
    assert load_rise >= 60 * 1024, load_rise
    assert meta_rise < 16 * 1024, meta_rise


# ---------------------------------------------------------------------------------------------------- plain values
@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"callbacks": {"X": {"y": Mode.FAST}}}, "checkpoint['callbacks']['X']['y']"),
        ({"callbacks": {"X": {"lr": np.float64(0.5)}}}, "checkpoint['callbacks']['X']['lr']"),
        ({"tracked": {"s": {"hist": [1, 2, np.int64(3)]}}}, "checkpoint['tracked']['s']['hist'][2]"),
        ({"a": (1, {"b": Path("x")})}, "checkpoint['a'][1]['b']"),
        ({"a": {1, 2, 3}, "b": [{"c": object()}]}, "checkpoint['b'][0]['c']"),
    ],
)
def test_check_plain_names_the_exact_key_path(value: Any, where: str) -> None:
    inner = value
    for key in re.findall(r"\[('[^']*'|\d+)\]", where):
        inner = inner[key.strip("'")] if key.startswith("'") else inner[int(key)]
    kind = type(inner)
    with pytest.raises(TypeError) as info:
        check_plain(value)
    assert str(info.value) == (
        f"{where} is a {kind.__module__}.{kind.__qualname__} ({inner!r}); a checkpoint holds tensors and plain "
        "containers only (dict, list, tuple, set, str, bytes, int, float, bool, None), so that it loads with "
        "weights_only=True -- convert it in state_dict() (e.g. str(enum), float(np_value), tensor)"
    )


def test_check_plain_refuses_non_plain_keys_and_accepts_every_plain_kind() -> None:
    with pytest.raises(TypeError) as info:
        check_plain({"callbacks": {Mode.FAST: 1}}, "state")
    assert str(info.value) == "state['callbacks'] has a key <Mode.FAST: 'fast'> of type Mode; keys must be plain"
    check_plain(Keeper().state_dict())  # every kind Keeper holds is plain (and the round trip test loads them)
    check_plain({"p": nn.Parameter(torch.ones(2)), "t": (torch.Size([1]), torch.int8, torch.device("cpu"))})


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(Mode.FAST, "<Mode.FAST: 'fast'>"), (np.float64(0.5), repr(np.float64(0.5)))],
    ids=["str-enum", "numpy-float64"],
)
def test_a_non_plain_value_is_refused_at_save_time_and_nothing_changes_on_disk(
    tmp_path: Path, bad: Any, shown: str
) -> None:
    holder = Holder()
    trainer = trained(2, callbacks=[holder])
    target = trainer.save_checkpoint(tmp_path / step(2))
    before = listing(tmp_path)
    mtime = target.stat().st_mtime_ns
    holder.value = bad
    kind = type(bad)
    reason = (
        f"not saved: checkpoint['callbacks']['Holder']['mode'] is a {kind.__module__}.{kind.__qualname__} ({shown}); "
        "a checkpoint holds tensors and plain containers only (dict, list, tuple, set, str, bytes, int, float, bool, "
        "None), so that it loads with weights_only=True -- convert it in state_dict() (e.g. str(enum), "
        "float(np_value), tensor)"
    )
    expect_error(target, reason, trainer.save_checkpoint, target)
    new = tmp_path / "sub" / step(2)
    expect_error(new, reason, trainer.save_checkpoint, new)
    payload = trainer.checkpoint_state(reason="manual", resumable=True)
    expect_error(target, reason, write_checkpoint, target, payload)
    assert listing(tmp_path) == before  # the same names (no temporary file, no sub/) and the same bytes
    assert not (tmp_path / "sub").exists()
    assert target.stat().st_mtime_ns == mtime
    assert load_checkpoint(target)["callbacks"] == {"Holder": {"mode": "fast"}}


# ---------------------------------------------------------------------------------------------------- malicious
class Touch:
    """Unpickling this runs ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Exec:
    """Unpickling this runs ``exec(...)``, which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


REFUSED = re.compile(
    r"^refused: it contains objects that are not tensors or plain containers \((?P<detail>.*)\); unpickling it could "
    r"run code, and stepbus only loads with weights_only=True$",
    re.DOTALL,
)


def _refusal(path: Path, fn: Any, *args: Any) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args)
    assert info.value.path == path
    found = REFUSED.match(info.value.reason)
    assert found, info.value.reason
    assert str(info.value).startswith(f"checkpoint {path}: refused: ")
    return found.group("detail")


def test_a_checkpoint_whose_unpickling_would_run_code_is_refused_and_the_code_never_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker-exec"
    evil = tmp_path / "runs" / step(5)
    evil.parent.mkdir()
    payload = load_checkpoint(good_checkpoint(tmp_path))
    payload["callbacks"] = {"Holder": {"mode": Exec(marker)}}
    torch.save(payload, evil)

    detail = _refusal(evil, load_checkpoint, evil)
    assert detail.startswith("Unsupported global: GLOBAL exec was not an allowed global by default"), detail
    _refusal(evil, read_metadata, evil)
    _refusal(evil, make_trainer(callbacks=[Holder()]).restore, evil)
    trainer = make_trainer(callbacks=[Holder()])
    with caplog.at_level(logging.WARNING, logger="stepbus"), pytest.raises(CheckpointError) as info:
        trainer.restore(evil.parent)
    assert info.value.path == evil.parent
    assert info.value.reason.startswith(f"no loadable checkpoint: checkpoint {evil}: refused: it contains objects")
    assert [r.getMessage().split(": refused:")[0] for r in caplog.records] == [f"resume: skipping checkpoint {evil}"]
    assert (trainer.state.iteration, trainer.resumed_from) == (0, None)
    assert not marker.exists()

    # the file really is malicious: an unsafe load runs its code
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_calling_os_system_is_refused_naming_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "marker-system"
    evil = tmp_path / step(5)
    torch.save({"stepbus": {"format": FORMAT}, "model": {"weight": Touch(marker)}}, evil)
    detail = _refusal(evil, load_checkpoint, evil)
    _refusal(evil, make_trainer().restore, evil)
    assert not marker.exists()
    # the reason names what was refused, and never advises the unsafe load torch suggests in its own message
    assert "posix.system" in detail, detail
    assert "weights_only` set to `False` will likely succeed" not in detail, detail

    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_plain_pickle_file_is_refused_without_unpickling_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker-pickle"
    path = tmp_path / step(3)
    with path.open("wb") as handle:
        pickle.dump({"stepbus": {"format": FORMAT}, "x": Touch(marker)}, handle)
    expect_error(path, TRUNCATED, load_checkpoint, path)
    expect_error(path, TRUNCATED, read_metadata, path)
    expect_error(path, TRUNCATED, make_trainer().restore, path)
    assert not marker.exists()
    with path.open("rb") as handle:
        pickle.load(handle)  # proves that the file would run code
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------- damaged files
def _record_offset(path: Path, name: str) -> tuple[int, int]:
    """Where the bytes of archive record ``name`` start in ``path``, and how many there are."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_a_file_truncated_anywhere_is_reported_as_truncated(tmp_path: Path) -> None:
    good = good_checkpoint(tmp_path)
    data = good.read_bytes()
    cuts = sorted({len(data) * k // 20 for k in range(20)} | {0, 1, len(data) - 1})
    assert len(cuts) == 22
    trainer = make_trainer()
    for cut in cuts:
        path = tmp_path / f"cut-{cut}.pt"
        path.write_bytes(data[:cut])
        expect_error(path, TRUNCATED, load_checkpoint, path)
        expect_error(path, TRUNCATED, read_metadata, path)
        expect_error(path, TRUNCATED, trainer.restore, path)
    assert (trainer.state.iteration, trainer.resumed_from) == (0, None)


def test_a_changed_byte_in_tensor_data_or_in_the_pickle_fails_the_crc_check(tmp_path: Path) -> None:
    good = good_checkpoint(tmp_path, model=BigModel())
    data = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        table = next(i.filename for i in archive.infolist() if i.file_size == 64 * 2**20)
    for record, at in ((table, 12345), ("archive/data.pkl", 40)):
        offset, size = _record_offset(good, record)
        assert size > at
        flipped = bytearray(data)
        flipped[offset + at] ^= 0x04
        path = tmp_path / f"flipped-{record.replace('/', '_')}.pt"
        path.write_bytes(bytes(flipped))
        reason = f"corrupted: record {record!r} fails its CRC-32 check (bytes changed on disk)"
        expect_error(path, reason, load_checkpoint, path)
        expect_error(path, reason, make_trainer(model=BigModel()).restore, path)
        if record == table:  # read_metadata checks only the pickle record: it never reads tensor data
            assert read_metadata(path) == read_metadata(good)
        else:
            expect_error(path, reason, read_metadata, path)
    # torch alone does not notice a flipped bit in tensor data: it loads a silently different tensor
    silently = torch.load(tmp_path / f"flipped-{table.replace('/', '_')}.pt", weights_only=True)
    assert not torch.equal(silently["model"]["table"], torch.arange(16 * 2**20, dtype=torch.float32))


def test_random_bytes_a_directory_and_a_missing_file_are_reported(tmp_path: Path) -> None:
    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(3).randbytes(20_000))
    expect_error(noise, TRUNCATED, load_checkpoint, noise)
    legacy = tmp_path / "legacy.pt"
    torch.save({"stepbus": {"format": FORMAT}}, legacy, _use_new_zipfile_serialization=False)
    expect_error(legacy, TRUNCATED, load_checkpoint, legacy)
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    no_state = "is a directory without stepbus.pt: not a checkpoint (a sharded checkpoint directory holds one)"
    expect_error(folder, no_state, load_checkpoint, folder)
    expect_error(folder, no_state, read_metadata, folder)
    missing = tmp_path / "missing.pt"
    expect_error(missing, "no such file", load_checkpoint, missing)
    expect_error(missing, "no such file", make_trainer().restore, missing)


def test_wrong_structure_or_format_is_reported_with_the_specific_reason(tmp_path: Path) -> None:
    good = load_checkpoint(good_checkpoint(tmp_path))
    meta = good["stepbus"]
    version = stepbus_version()
    everything = sorted(KEYS - {"stepbus"})
    cases: list[tuple[str, Any, str]] = [
        ("list", [1, 2], "not a stepbus checkpoint: no 'stepbus' metadata block (found list)"),
        ("tensor", torch.ones(2), "not a stepbus checkpoint: no 'stepbus' metadata block (found Tensor)"),
        (
            "no-stepbus",
            {k: v for k, v in good.items() if k != "stepbus"},
            f"not a stepbus checkpoint: no 'stepbus' metadata block (found {everything})",
        ),
        (
            "stepbus-str",
            {**good, "stepbus": "1"},
            f"not a stepbus checkpoint: no 'stepbus' metadata block (found {sorted(KEYS)})",
        ),
        (
            "format-2",
            {**good, "stepbus": {**meta, "format": 2, "version": "9.0"}},
            f"incompatible format 2 (written by stepbus 9.0); this stepbus ({version}) reads format 1",
        ),
        (
            "format-missing",
            {**good, "stepbus": {k: v for k, v in meta.items() if k not in ("format", "version")}},
            f"incompatible format None (written by stepbus ?); this stepbus ({version}) reads format 1",
        ),
        (
            "missing-keys",
            {k: v for k, v in good.items() if k not in ("model", "rng")},
            "incomplete: missing ['model', 'rng'] (a stepbus checkpoint has "
            "['stepbus', 'trainer', 'model', 'optimizer', 'callbacks', 'rng'])",
        ),
        (
            "no-callbacks",
            {k: v for k, v in good.items() if k != "callbacks"},
            "incomplete: missing ['callbacks'] (a stepbus checkpoint has "
            "['stepbus', 'trainer', 'model', 'optimizer', 'callbacks', 'rng'])",
        ),
        ("trainer-list", {**good, "trainer": [1]}, "malformed: 'trainer' is a list, expected a dict"),
        ("rng-tensor", {**good, "rng": torch.zeros(3)}, "malformed: 'rng' is a Tensor, expected a dict"),
    ]
    trainer = make_trainer()
    for name, payload, reason in cases:
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        expect_error(path, reason, load_checkpoint, path)
        expect_error(path, reason, trainer.restore, path)
        if reason.startswith(("not a stepbus", "incompatible")):
            expect_error(path, reason, read_metadata, path)
        else:  # read_metadata only needs the metadata block
            assert read_metadata(path) == meta
    assert (trainer.state.iteration, trainer.resumed_from) == (0, None)


# ---------------------------------------------------------------------------------------------------- fit checks
def _target(**kwargs: Any) -> BaseTrainer:
    """A fresh trainer whose optimizer already holds state (taken from another run), so that "unchanged" means
    something for the optimizer too."""
    trainer = make_trainer(callbacks=[Recorder(), Holder()], **kwargs)
    donor = trained(2, init_seed=9)
    trainer.optimizer.load_state_dict(donor.optimizer.state_dict())
    return trainer


def _snapshot(trainer: BaseTrainer) -> dict[str, Any]:
    return {
        "model": {k: v.clone() for k, v in trainer.pipeline.state_dict().items()},
        "optimizer": _clone(trainer.optimizer.state_dict()),
        "counters": trainer.state.state_dict(),
        "metrics": dict(trainer.state.metrics),
        "holder": [cb.state_dict() for cb in trainer.callbacks if isinstance(cb, Holder)],
        "resumed_from": trainer.resumed_from,
        "phase": trainer.phase,
    }


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return type(value)((k, _clone(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _assert_unchanged_and_trainable(trainer: BaseTrainer, before: dict[str, Any]) -> None:
    same_tree(_snapshot(trainer), before, "trainer")
    reference = _target()
    assert trainer.train() is reference.train()
    assert same_params(params_of(trainer.pipeline), params_of(reference.pipeline))
    same_tree(trainer.optimizer.state_dict(), reference.optimizer.state_dict(), "optimizer after training")
    recorder = trainer.callbacks[0]
    assert isinstance(recorder, Recorder)
    assert recorder.log == full_run(2, STEPS)


def _crafted(directory: Path, name: str, change: Any) -> Path:
    payload = load_checkpoint(good_checkpoint(directory, name=f"source-{name}.pt", callbacks=[Holder()]))
    change(payload)
    return write_checkpoint(directory / f"{name}.pt", payload)


def test_checkpoints_that_do_not_fit_are_refused_and_change_nothing(tmp_path: Path) -> None:
    def two_groups(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}])

    def set_in(part: str, key: str, value: Any) -> Any:
        return lambda payload: payload[part].__setitem__(key, value)

    def good(**kwargs: Any) -> Path:
        return good_checkpoint(tmp_path, **kwargs)

    rng_state = "malformed: the RNG state has no torch generator state (a 1-D uint8 tensor under 'torch')"
    cases: list[tuple[Path, str]] = [
        (
            _crafted(tmp_path, "shape", set_in("model", "weight", torch.zeros(2, 3))),
            "its model does not fit Linear: shape mismatch [weight: saved (2, 3), model (1, 3)] (1)",
        ),
        (
            _crafted(tmp_path, "missing", lambda p: p["model"].pop("bias")),
            "its model does not fit Linear: missing keys [bias] (1)",
        ),
        (
            _crafted(tmp_path, "unexpected", set_in("model", "scale", torch.ones(1))),
            "its model does not fit Linear: unexpected keys [scale] (1)",
        ),
        (
            good(name="sequential.pt", model=nn.Sequential(nn.Linear(3, 1))),
            "its model does not fit Linear: missing keys [weight, bias] (2); unexpected keys [0.weight, 0.bias] (2)",
        ),
        (
            good(name="groups.pt", optimizer=two_groups),
            "optimizer 'optimizer' (Adam) does not fit: the checkpoint has 2 parameter groups of [1, 1] parameters, "
            f"the trainer has 1 parameter group of [2] parameters; {FRESH_HINT}",
        ),
        (
            good(name="seed.pt", seed=7),
            "does not fit this trainer: the saved run used seed=7, this trainer seed=0: the data order would differ; "
            "construct the trainer with seed=7",
        ),
        (
            good(name="ipe.pt", items=8),
            "does not fit this trainer: the saved run had 4 iterations per epoch, this trainer has 3: dataset size, "
            "batch_size or drop_last changed, so the data position cannot be restored",
        ),
        (
            good(name="epochs.pt", steps=7, max_epochs=3),
            "does not fit this trainer: the saved run reached epoch 3, beyond this trainer's max_epochs=2",
        ),
        (_crafted(tmp_path, "rng-float", set_in("rng", "torch", torch.zeros(5))), rng_state),
        (_crafted(tmp_path, "rng-none", lambda p: p["rng"].pop("torch")), rng_state),
        (
            _crafted(tmp_path, "rng-python", set_in("rng", "python", [3, [1, 2], None])),
            "malformed: the RNG state has no Python 'random' state (a 3-tuple under 'python')",
        ),
        (
            _crafted(tmp_path, "rng-numpy", set_in("rng", "numpy", {"kind": "MT19937"})),
            "malformed: the RNG state's 'numpy' entry is malformed",
        ),
        (
            _crafted(tmp_path, "rng-cuda", set_in("rng", "cuda", "x")),
            "malformed: the RNG state's 'cuda' entry is not a list of tensors",
        ),
        (
            _crafted(tmp_path, "optimizer-groups", set_in("optimizer", "param_groups", {})),
            "malformed: 'optimizer' has no 'param_groups' list",
        ),
        (
            _crafted(tmp_path, "model-list", lambda p: p.__setitem__("model", [1])),
            "malformed: 'model' is a list, expected a state dict",
        ),
        (
            trained(2).save_checkpoint(tmp_path / "crash.pt", reason="exception", resumable=False),
            "not resumable: it was written at iteration 2 because of 'exception' (the state at a failure, mid-step); "
            "load it with trainers.checkpoint.format.load_checkpoint to inspect it",
        ),
    ]
    trainer = _target()
    before = _snapshot(trainer)
    for path, reason in cases:
        load_checkpoint(path)  # each one is a sound file: it is only this trainer it does not fit
        expect_error(path, reason, trainer.restore, path)
        same_tree(_snapshot(trainer), before, f"after {path.name}")
    _assert_unchanged_and_trainable(trainer, before)


def test_a_malformed_optimizer_state_is_a_checkpoint_error_and_changes_nothing(tmp_path: Path) -> None:
    path = _crafted(tmp_path, "optimizer-state", lambda p: p["optimizer"].__setitem__("state", [1]))
    trainer = _target()
    before = _snapshot(trainer)
    with pytest.raises(CheckpointError) as info:
        trainer.restore(path)
    assert info.value.path == path
    assert "optimizer" in info.value.reason
    _assert_unchanged_and_trainable(trainer, before)


def test_a_callback_refusing_its_saved_state_changes_nothing(tmp_path: Path) -> None:
    holder = Holder(value="turbo")
    source = trained(2, callbacks=[holder], init_seed=4)
    path = source.save_checkpoint(tmp_path / step(2))
    trainer = _target()
    before = _snapshot(trainer)
    expect_error(
        path,
        "callback 'Holder' (Holder) refused its saved state: ValueError: unknown mode 'turbo'",
        trainer.restore,
        path,
    )
    # resume() promises: "Every other failure is a CheckpointError ... raised before anything is changed"
    _assert_unchanged_and_trainable(trainer, before)


# ---------------------------------------------------------------------------------------------------- newest loadable
def _set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_list_checkpoints_orders_by_mtime_then_iteration_and_lists_only_step_files(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "absent") == []
    assert list_checkpoints(tmp_path) == []
    for name, when in ((step(1), 100), (step(3), 300), (step(2), 300), ("step-5.pt", 200), (step(40), 50)):
        (tmp_path / name).write_bytes(b"x")
        _set_mtime(tmp_path / name, when)
    (tmp_path / "last.pt").symlink_to(step(3))
    (tmp_path / step(9)).symlink_to(step(3))  # a link with a step name is a pointer, not a checkpoint
    (tmp_path / step(8)).mkdir()
    for other in (
        f".{step(7)}.123.0a1b2c3d.tmp",
        f"{step(6)}.tmp",
        "crash-00000007.pt",
        "best.pt",
        "step-abc.pt",
        "step-.pt",
        "step-00000004.pth",
        "notes.txt",
        "Step-00000004.pt",
    ):
        (tmp_path / other).write_bytes(b"x")
    found = list_checkpoints(tmp_path)
    assert [(f.path, f.iteration, f.mtime_ns) for f in found] == [
        (tmp_path / step(3), 3, 300 * 10**9),
        (tmp_path / step(2), 2, 300 * 10**9),
        (tmp_path / "step-5.pt", 5, 200 * 10**9),
        (tmp_path / step(1), 1, 100 * 10**9),
        (tmp_path / step(40), 40, 50 * 10**9),
    ]


def _run_with_two_checkpoints(directory: Path) -> tuple[BaseTrainer, Path, Path]:
    """A run that saved at iterations 2 (older) and 4 (newer), then finished."""
    source = make_trainer(callbacks=[Holder()])
    for _ in range(2):
        source.iterate()
    older = source.save_checkpoint(directory / step(2))
    for _ in range(2):
        source.iterate()
    newer = source.save_checkpoint(directory / step(4))
    _set_mtime(older, 1000)
    _set_mtime(newer, 2000)
    source.train()
    return source, older, newer


def test_resume_falls_back_past_a_damaged_newer_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "run" / "checkpoints"
    source, older, newer = _run_with_two_checkpoints(directory)
    damaged = bytearray(newer.read_bytes())
    offset, _ = _record_offset(newer, "archive/data/0")
    damaged[offset] ^= 0x01
    newer.write_bytes(bytes(damaged))
    _set_mtime(newer, 2000)
    record = "archive/data/0"

    for how in ("dir", "auto"):
        caplog.clear()
        trainer = make_trainer(callbacks=[Holder()], run_dir=tmp_path / "run")
        with caplog.at_level(logging.INFO, logger="stepbus"):
            loaded = trainer.restore(directory if how == "dir" else "auto")
        assert loaded == older
        assert trainer.resumed_from == older
        warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            (
                "stepbus",
                f"resume: skipping checkpoint {newer}: corrupted: record {record!r} fails its CRC-32 check (bytes "
                "changed on disk); trying the next newest checkpoint",
            ),
            ("stepbus", f"resume: fell back to {older} (iteration 2)"),
        ]
        assert trainer.state.state_dict() == {
            "epoch": 1,
            "iteration": 2,
            "epoch_iteration": 2,
            "max_epochs": 2,
            "iterations_per_epoch": 3,
            "optimizer_step": 2,
        }
        trainer.train()  # continues exactly: the same weights as the uninterrupted run
        assert same_params(params_of(trainer.pipeline), params_of(source.pipeline))


def test_resume_from_a_directory_of_damaged_checkpoints_lists_them_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "run" / "checkpoints"
    _, older, newer = _run_with_two_checkpoints(directory)
    newer.write_bytes(newer.read_bytes()[:1000])
    older.write_bytes(b"")
    _set_mtime(older, 1000)
    _set_mtime(newer, 2000)
    reason = (
        f"no loadable checkpoint: checkpoint {newer}: {TRUNCATED}; checkpoint {older}: {TRUNCATED} -- nothing was "
        "loaded and nothing was changed"
    )
    for how in (directory, "auto"):
        caplog.clear()
        trainer = _target(run_dir=tmp_path / "run")
        before = _snapshot(trainer)
        with caplog.at_level(logging.WARNING, logger="stepbus"):
            expect_error(directory, reason, trainer.restore, how)
        assert [r.getMessage() for r in caplog.records] == [
            f"resume: skipping checkpoint {newer}: {TRUNCATED}; trying the next newest checkpoint",
            f"resume: skipping checkpoint {older}: {TRUNCATED}; trying the next newest checkpoint",
        ]
        same_tree(_snapshot(trainer), before)
    _assert_unchanged_and_trainable(trainer, before)


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = _target(run_dir=tmp_path / "run")
    before = _snapshot(trainer)
    with caplog.at_level(logging.WARNING, logger="stepbus"):
        assert trainer.restore("auto") is None
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("stepbus", f"restore('auto'): no checkpoint in {checkpoints}; starting from scratch")
    ]
    _assert_unchanged_and_trainable(trainer, before)  # its log starts with pre_training(resumed=False) at iteration 0

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "last.pt").symlink_to(step(3))
    (empty / f".{step(3)}.1.0a1b2c3d.tmp").write_bytes(b"x")
    expect_error(empty, "no step-<iteration>.pt checkpoint in this directory", make_trainer().restore, empty)


# ---------------------------------------------------------------------------------------------------- faults
@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs ``checkpoint_faults.py`` once for every fault case below; returns the layout, the report and notes."""
    base = tmp_path_factory.mktemp("faults")
    old = trained(2).save_checkpoint(base / "A.pt", reason="A")
    cases: list[dict[str, Any]] = []
    crash_stages = [("write", n) for n in (0, 1, 700, 6000, -1)] + [("before_replace", 0), ("after_replace", 0)]
    for kind in ("same", "other"):
        for stage, size in crash_stages:
            name = f"{kind}-{stage}-{size}"
            folder = base / name
            folder.mkdir()
            shutil.copy2(old, folder / step(2))
            target = folder / (step(2) if kind == "same" else step(4))
            cases.append(
                {
                    "name": name,
                    "kind": "crash",
                    "stage": stage,
                    "bytes": size,
                    "target": str(target),
                    "note": str(base / f"{name}.json"),
                }
            )
    full = base / "full"
    full.mkdir()
    shutil.copy2(old, full / step(2))
    targets = [full / step(2), full / step(4), full / "sub" / step(4)]
    cases.append(
        {
            "name": "disk_full",
            "kind": "disk_full",
            "limit": 4096,
            "targets": [str(t) for t in targets],
            "note": str(base / "disk_full.json"),
        }
    )
    read_only, writable = base / "read_only", base / "writable"
    read_only.mkdir()
    writable.mkdir()
    shutil.copy2(old, read_only / step(2))
    read_only.chmod(0o555)
    if os.geteuid() == 0:
        os.chown(writable, 65534, 65534)
    cases.append(
        {
            "name": "read_only",
            "kind": "read_only",
            "ro_dir": str(read_only),
            "rw_dir": str(writable),
            "note": str(base / "read_only.json"),
        }
    )
    spec = base / "spec.json"
    spec.write_text(json.dumps({"reference": str(base / "B.pt"), "report": str(base / "report.json"), "cases": cases}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    env["WANDB_MODE"] = "offline"
    result = subprocess.run(
        [sys.executable, str(FAULTS), str(spec)], capture_output=True, text=True, timeout=120, env=env, cwd=base
    )
    read_only.chmod(0o755)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((base / "report.json").read_text())
    notes = {case["name"]: json.loads(Path(case["note"]).read_text()) for case in cases}
    return {"base": base, "old": old, "report": report, "notes": notes, "cases": cases}


def same_b(loaded: dict[str, Any], reference: dict[str, Any], where: str) -> None:
    """``loaded`` is checkpoint B: the reference written by the script without a fault, but for the time and the
    writing process."""
    assert (loaded["stepbus"]["reason"], loaded["stepbus"]["iteration"]) == ("B", 4)
    untimed = {"saved_at", "unix_time", "writer"}
    loaded = {**loaded, "stepbus": {k: v for k, v in loaded["stepbus"].items() if k not in untimed}}
    same_tree(loaded, {**reference, "stepbus": {k: v for k, v in reference["stepbus"].items() if k not in untimed}})


def test_a_crash_at_any_stage_of_a_write_leaves_the_old_or_the_new_file_complete(faults: dict[str, Any]) -> None:
    base: Path = faults["base"]
    old_bytes = faults["old"].read_bytes()
    reference = load_checkpoint(base / "B.pt")
    size = faults["report"]["reference_size"]
    assert size == (base / "B.pt").stat().st_size
    checked = []
    for case in (c for c in faults["cases"] if c["kind"] == "crash"):
        name, stage, target = case["name"], case["stage"], Path(case["target"])
        folder = target.parent
        outcome, note = faults["report"][name], faults["notes"][name]
        assert outcome["signal"] == 9, (name, outcome, note)  # it really died by SIGKILL ...
        assert note["stage"] == stage, (name, note)  # ... at the stage under test
        temporaries = sorted(p.name for p in folder.iterdir() if p.name not in (step(2), step(4)))
        pattern = tmp_name(target.name, outcome["pid"])
        assert all(pattern.match(t) for t in temporaries), (name, temporaries)
        if stage == "after_replace":  # the new file is in place and complete
            assert temporaries == [], name
            assert note["fsyncs_before"] == 1, note  # the file was fsynced, the directory not yet
            assert target.stat().st_size == size
            same_b(load_checkpoint(target), reference, name)
        else:  # the old file is untouched and the new one is only a temporary file
            assert len(temporaries) == 1, (name, temporaries)
            temporary = folder / temporaries[0]
            assert str(temporary) == note["tmp"]
            if stage == "write":
                expected = case["bytes"] if case["bytes"] >= 0 else size + case["bytes"]
                assert note["written"] == expected
                assert temporary.stat().st_size == expected, name
            else:
                assert (note["fsyncs_before"], note["size"]) == (1, size), note
                same_b(load_checkpoint(temporary), reference, name)  # complete and fsynced, just not renamed
            if target.name != step(2):
                assert not target.exists(), name
        if not (stage == "after_replace" and target.name == step(2)):
            assert (folder / step(2)).read_bytes() == old_bytes, name
        # a resume from the folder takes the newest complete checkpoint and ignores the temporary files
        expected_resume = target if stage == "after_replace" else folder / step(2)
        assert make_trainer().restore(folder) == expected_resume, name
        checked.append(name)
    assert len(checked) == 14


def test_a_full_disk_is_a_checkpoint_error_and_keeps_the_previous_file(faults: dict[str, Any]) -> None:
    base: Path = faults["base"]
    assert faults["report"]["disk_full"] == {"signal": None, "exit": 0, "pid": faults["report"]["disk_full"]["pid"]}
    full = base / "full"
    results = faults["notes"]["disk_full"]["results"]
    assert [r["path"] for r in results] == [str(full / step(2)), str(full / step(4)), str(full / "sub" / step(4))]
    for result in results:  # the real OS error of a write past RLIMIT_FSIZE: EFBIG
        limit = "this process may not write more than 4.0 KiB into a file: ulimit -f"  # the 4096-byte limit
        assert result["reason"] == f"could not be written: file too large ({limit}); any previous file is intact"
        assert (result["cause"], result["errno"]) == ("OSError", errno.EFBIG), result
    assert (full / step(2)).read_bytes() == faults["old"].read_bytes()
    assert sorted(p.name for p in full.iterdir()) == [step(2), "sub"]
    assert list((full / "sub").iterdir()) == []
    assert load_checkpoint(full / step(2))["stepbus"]["reason"] == "A"


def test_a_read_only_directory_is_a_checkpoint_error_and_keeps_the_previous_file(faults: dict[str, Any]) -> None:
    base: Path = faults["base"]
    report, note = faults["report"]["read_only"], faults["notes"]["read_only"]
    assert (report["signal"], report["exit"]) == (None, 0), (report, note)
    if os.geteuid() == 0:
        assert (note["uid"], note["euid"]) == (65534, 65534)
    pid = report["pid"]
    for name in (step(2), step(4)):
        result = note[name]
        assert result["path"] == name
        found = re.fullmatch(
            rf"could not be written \(Permission denied: (\.{re.escape(name)}\.{pid}\.[0-9a-f]{{8}}\.tmp)\); "
            r"any previous file is intact",
            result["reason"],
        )
        assert found, result
        assert result["cause"] == "PermissionError"
    assert note["sub/" + step(4)] == {
        "path": "sub/" + step(4),
        "reason": "could not be written (Permission denied: sub); any previous file is intact",
        "cause": "PermissionError",
    }
    read_only = base / "read_only"
    assert sorted(p.name for p in read_only.iterdir()) == [step(2)]
    assert (read_only / step(2)).read_bytes() == faults["old"].read_bytes()
    # the same process could write where it is allowed to: the failure above is the directory's mode
    assert note["writable"] == {"reason": None}
    assert load_checkpoint(base / "writable" / step(4))["stepbus"]["reason"] == "B"


def test_a_parent_that_is_a_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a directory")
    target = blocker / step(2)
    with pytest.raises(CheckpointError) as info:
        trained(2).save_checkpoint(target)
    assert info.value.path == target
    # mkdir(parents=True, exist_ok=True) on the file reports EEXIST
    assert info.value.reason == f"could not be written: {blocker} is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


# ---------------------------------------------------------------------------------------------------- RNG
def _draw() -> tuple[list[float], float, list[float], float]:
    return (torch.rand(4).tolist(), random.random(), np.random.rand(3).tolist(), float(np.random.randn()))


def test_rng_round_trip_restores_torch_python_and_numpy(tmp_path: Path) -> None:
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng()
    check_rng(state)
    assert set(state) == {"torch", "python", "numpy"}
    assert state["numpy"]["has_gauss"] == 1
    first = _draw()
    assert _draw() != first  # the streams move on
    assert restore_rng(state) == []
    assert _draw() == first

    # through a checkpoint file written by a trainer and read back with weights_only
    trainer = trained(1)
    restore_rng(state)
    path = trainer.save_checkpoint(tmp_path / step(1))
    _draw()
    saved = load_checkpoint(path)["rng"]
    same_tree(saved, state, "rng")
    check_rng(saved)
    assert restore_rng(saved) == []
    assert _draw() == first
    plain = torch.load(path, weights_only=True)["rng"]
    restore_rng(plain)
    assert _draw() == first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: [s], "the RNG state is a list, expected a dict"),
        (lambda s: {**s, "torch": s["torch"].float()}, "the RNG state has no torch generator state"),
        (lambda s: {**s, "torch": s["torch"].view(1, -1)}, "the RNG state has no torch generator state"),
        (lambda s: {**s, "python": s["python"][:2]}, "the RNG state has no Python 'random' state"),
        (lambda s: {**s, "python": (3, list(s["python"][1]), None)}, "the RNG state has no Python 'random' state"),
        (lambda s: {**s, "cuda": [1]}, "the RNG state's 'cuda' entry is not a list of tensors"),
        (lambda s: {**s, "numpy": {**s["numpy"], "key": [1, 2]}}, "the RNG state's 'numpy' entry is malformed"),
    ],
)
def test_check_rng_says_what_is_wrong(change: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_rng(change(capture_rng()))
