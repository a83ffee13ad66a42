"""Sharded checkpoints: how a ``strategy="fsdp"`` job writes them, and how any trainer loads one.

**Writing** (:func:`save_sharded`, a collective): rank 0 creates a temporary directory beside the target
(``.step-00000042.pt.<pid>.<hex>.tmp``); every rank writes its shards of the model's and the optimizers' tensors into
it with ``torch.distributed.checkpoint`` (DCP: ``get_model_state_dict``/``get_optimizer_state_dict``, one fsynced
file per rank) and reports their sizes and CRC-32s; rank 0 writes ``stepbus.pt`` (the rest of the checkpoint, every
rank's RNG state, the shard list), fsyncs the directory and renames it to its name. A kill at any point leaves
either no directory of that name or a complete one: the temporary one is never listed, and the next run's
Checkpointer removes it (its writer is dead). The layout is in :mod:`trainers.checkpoint.shard_files`.

**Loading** (:class:`ModelAndOptimizers`, the last part a restore applies): a sharded checkpoint loads into any
trainer -- an FSDP job of the same or another world size (DCP reshards), a DDP job or a single process (each gets
whole tensors) -- and a checkpoint file written by a single process or a DDP job loads into an FSDP job (each rank
takes its shard of the whole tensors; the optimizer state, keyed by parameter position in the file, is matched to
parameter names first). Every read is data only (:mod:`trainers.checkpoint.dcp_reader`).

**Whole state** (:func:`full_model_state`, :func:`export_model`): the pipeline's ``state_dict`` as plain tensors on
the CPU -- gathered from the ranks in a job, read from the shards of a checkpoint directory -- for a file that any
program loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from trainers.checkpoint.atomic import fsync_directory, remove_checkpoint, temporary_name
from trainers.checkpoint.dcp_reader import DataOnlyLoadPlanner, DataOnlyReader, dcp_failure
from trainers.checkpoint.format import CheckpointError, load_checkpoint, write_checkpoint
from trainers.checkpoint.rng import capture_rng
from trainers.checkpoint.shard_files import STATE_FILE, checksums, is_sharded, listed, no_single_process_warning
from trainers.distributed.collective import RankZeroFailure
from trainers.distributed.ranks import Ranks

__all__ = ["ModelAndOptimizers", "export_model", "full_model_state", "save_sharded"]

Optimizers = Mapping[str, torch.optim.Optimizer]


def save_sharded(
    path: Path, payload: Callable[[], dict[str, Any]], ranks: Ranks, pipeline: nn.Module, optimizers: Optimizers
) -> Path:
    """Write a sharded checkpoint directory at ``path`` (see the module docstring); every rank returns the path or
    raises (a ``CheckpointError`` naming the rank that failed)."""
    states = ranks.gather(capture_rng())

    def elsewhere(failure: RankZeroFailure) -> Exception:
        return CheckpointError(path, f"{failure.reason or failure} (rank 0 writes the checkpoints)")

    tmp = Path(ranks.on_rank_zero(lambda: str(_temporary_directory(path)), elsewhere))
    error: str | None = None
    own: dict[str, list[int]] = {}
    try:
        tensors = {
            "model": get_model_state_dict(pipeline),
            "optimizer": {name: get_optimizer_state_dict(pipeline, opt) for name, opt in optimizers.items()},
        }
        writer = FileSystemWriter(tmp, single_file_per_rank=True, sync_files=True, thread_count=1)
        dcp_save(tensors, storage_writer=writer)
        own = checksums(tmp, [name for name in listed(tmp) if name.startswith(f"__{ranks.rank}_")])
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - every rank hears of it below, then raises
        error = dcp_failure(exc)
    reports = ranks.all_gather((own, error))
    failed = [(rank, text) for rank, (_, text) in enumerate(reports) if text is not None]

    def finish_on_zero() -> str:
        if failed:
            shutil.rmtree(tmp, ignore_errors=True)
            rank, text = failed[0]
            raise CheckpointError(path, f"could not be written: rank {rank} failed to write its shards: {text}")
        manifest = {name: record for files, _ in reports for name, record in files.items()}
        manifest.update(checksums(tmp, [".metadata"]))
        written = payload()
        written["stepbus"]["shards"] = manifest
        if states is not None:
            written["rank_rng"] = states
        try:
            write_checkpoint(tmp / STATE_FILE, written)
            fsync_directory(tmp)
            _commit(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(path)

    return Path(ranks.on_rank_zero(finish_on_zero, elsewhere))


def _temporary_directory(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)
        tmp.mkdir()
    except OSError as exc:
        raise CheckpointError(
            path, f"could not be written: {exc.strerror or exc}: {exc.filename or path.parent}"
        ) from exc
    return tmp


def _commit(tmp: Path, path: Path) -> None:
    """Give the complete directory ``tmp`` its name ``path``; a checkpoint already there (the same iteration saved
    again) is moved aside first and removed after. The parent directory is fsynced."""
    aside = None
    if path.exists() or path.is_symlink():
        aside = temporary_name(path)
        os.replace(path, aside)
    os.replace(tmp, path)
    fsync_directory(path.parent)
    if aside is not None:
        remove_checkpoint(aside)


class ModelAndOptimizers:
    """The model and optimizer states of a checkpoint, applied together (the last part of a restore; see the
    module docstring). ``optimizers``: the ones to load, by name, with their saved parameter groups (empty with
    ``fresh_optimizer``: those stay as built)."""

    def __init__(
        self,
        path: Path,
        pipeline: nn.Module,
        optimizers: Mapping[str, tuple[torch.optim.Optimizer, Any]],
    ) -> None:
        self._path, self._pipeline, self._optimizers = path, pipeline, dict(optimizers)

    def load_state_dict(self, saved_model: Any) -> None:
        """Load the model (``saved_model``: its whole state from a checkpoint file; unused for a sharded one, whose
        shards are read) and the optimizers. A collective in a job."""
        fresh = [opt for opt, _ in self._optimizers.values() if not opt.state]
        try:
            if is_sharded(self._path):
                self._from_shards()
            else:
                self._from_whole(saved_model)
        except BaseException as exc:
            # reading an optimizer's state first gives it one (DCP steps it once with lr=0 and zero gradients):
            # a failed load leaves it as it was
            for opt in fresh:
                opt.state.clear()
            self._pipeline.zero_grad(set_to_none=True)
            if isinstance(exc, CheckpointException):  # a BaseException: an ordinary error naming the first cause
                raise RuntimeError(f"reading its shards failed on {dcp_failure(exc)}") from None
            raise

    def _from_shards(self) -> None:
        pipeline = self._pipeline
        tensors: dict[str, Any] = {
            "model": get_model_state_dict(pipeline),
            "optimizer": {name: get_optimizer_state_dict(pipeline, opt) for name, (opt, _) in self._optimizers.items()},
        }
        if not tensors["optimizer"]:
            del tensors["optimizer"]
        with no_single_process_warning():
            dcp_load(tensors, storage_reader=DataOnlyReader(self._path), planner=DataOnlyLoadPlanner())
        set_model_state_dict(pipeline, tensors["model"])
        for name, (opt, _) in self._optimizers.items():
            set_optimizer_state_dict(pipeline, opt, tensors["optimizer"][name])

    def _from_whole(self, saved_model: Any) -> None:
        """A checkpoint file (whole tensors) into a sharded model: each rank keeps its shard."""
        whole = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self._pipeline, saved_model, options=whole)
        names = {id(param): name for name, param in self._pipeline.named_parameters()}
        for opt, saved in self._optimizers.values():
            set_optimizer_state_dict(self._pipeline, opt, _by_name(opt, saved, names), options=whole)


def _by_name(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, Any]:
    """``saved`` (a torch optimizer state, keyed by parameter position) keyed by parameter name instead, the names
    taken from ``optimizer``'s parameters at the same positions (a restore checked that the layouts match)."""
    state: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for group, theirs in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        fqns = [names[id(param)] for param in group["params"]]
        for position, fqn in zip(theirs["params"], fqns, strict=True):
            if position in saved["state"]:
                state[fqn] = saved["state"][position]
        groups.append({**theirs, "params": fqns})
    return {"state": state, "param_groups": groups}


def full_model_state(pipeline: nn.Module, ranks: Ranks) -> dict[str, Any]:
    """The pipeline's whole ``state_dict`` on the CPU. With sharded parameters a collective (every rank calls it):
    rank 0 gets the state, the other ranks an empty dict."""
    if not ranks.sharded:
        return {
            key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
            for key, value in pipeline.state_dict().items()
        }
    return get_model_state_dict(pipeline, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_model(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's whole ``state_dict`` from a checkpoint -- a file, or a sharded directory whose shards are read
    into whole tensors (in this process, whatever world size wrote it) -- verified and read as data only."""
    loaded = load_checkpoint(checkpoint)
    model = loaded["model"]
    if not is_sharded(checkpoint):
        return dict(model)
    whole = {"model": {key: torch.empty(meta.shape, dtype=meta.dtype) for key, meta in model.items()}}
    try:
        with no_single_process_warning():
            dcp_load(whole, storage_reader=DataOnlyReader(checkpoint), planner=DataOnlyLoadPlanner(), no_dist=True)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - any failure to read the shards
        raise CheckpointError(checkpoint, f"its shards cannot be read: {dcp_failure(exc)}") from None
    return whole["model"]
