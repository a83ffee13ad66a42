"""The trainer's view of the other processes: :class:`SingleProcess` when there are none, :class:`Job` under
``torchrun``.

The engine talks to one of these objects and never asks which it has: in a single process every collective is the
identity, nothing is voted on, the loss is computed directly and no peer can fail; in a job the same calls run on
the trainer's gloo side groups (``trainers.distributed.collective``), stops are agreed by the stop vote
(``trainers.distributed.stop_vote``), the loss goes through DDP and a failed collective becomes a
:class:`~trainers.distributed.peer_failure.PeerFailure` naming the lost ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainers.distributed import fsdp
from trainers.distributed.collective import Collective, RankZeroFailure
from trainers.distributed.ddp import wrap as ddp_wrap
from trainers.distributed.peer_failure import PeerFailure, is_collective_failure
from trainers.distributed.replicas import average_gradients, broadcast_module
from trainers.distributed.stop_vote import INTERRUPT, NOTHING, STOP, StopVote

__all__ = ["INTERRUPT", "NOTHING", "STOP", "Job", "Ranks", "SingleProcess"]

T = TypeVar("T")
Elsewhere = Callable[[RankZeroFailure], BaseException]
Options = Mapping[str, Any] | None


def _direct(
    pipeline: nn.Module, compute_loss: Callable[[Any], Any], device: torch.device, options: Mapping[str, Any] | None
) -> Callable[[Any], Any]:
    return compute_loss


def _failed_on_zero(fn: Callable[[], Any]) -> Elsewhere:
    """The other ranks' error when ``fn`` raised on rank 0: a ``RuntimeError`` naming rank 0 and ``fn``."""
    name = getattr(fn, "__qualname__", repr(fn))
    return lambda failure: RuntimeError(f"{name} failed on rank 0: {failure}")


class SingleProcess:
    """No other process: collectives return this process's value, stops act at once (:attr:`votes` is false)."""

    rank = 0
    world_size = 1
    #: whether stops are wishes the ranks vote on (``want``/``settle``) rather than acted on at once
    votes = False
    #: the clock wall-time schedules read (``None``: the bus's own monotonic clock)
    clock: Callable[[], float] | None = None

    #: what the step calls to compute the loss: ``compute_loss`` itself
    forward = staticmethod(_direct)
    #: whether the pipeline's parameters are sharded over the ranks (``strategy="fsdp"`` in a job)
    sharded = False

    def shard(self, pipeline: nn.Module, optimizers: Iterable[torch.optim.Optimizer], options: Options) -> None:
        """One process keeps the whole model: ``strategy="fsdp"`` alone trains it as it is."""

    def replicate(self, pipeline: nn.Module) -> None:
        """No replica to make equal."""

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """No other rank's gradients to average with."""

    def no_sync(self) -> AbstractContextManager[Any]:
        """Nothing to hold back: gradients are never all-reduced."""
        return nullcontext()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]

    def on_rank_zero(self, fn: Callable[[], T], elsewhere: Elsewhere | None = None) -> T:
        return fn()

    def barrier(self) -> None:
        """Nothing to wait for."""

    def want(self, code: int) -> None:
        """Never called (:attr:`votes` is false): a stop acts at once."""

    def settle(self, *, wait: bool) -> int:
        return NOTHING

    def finish_vote(self) -> None:
        """No vote round to wait for."""

    def abandon_vote(self) -> None:
        """No vote round to drop."""

    def check_open(self, iteration: int) -> None:
        """A single-process trainer can always step."""

    def peer_failure(self, error: Exception, where: str) -> PeerFailure | None:
        """No peer can fail."""
        return None

    def close(self) -> None:
        """Nothing to release."""


class Job:
    """A ``torchrun`` job of :attr:`world_size` processes (the default process group is up).

    Args:
        timeout: how long a collective waits for a peer before it fails.
    """

    votes = True

    def __init__(self, timeout: timedelta) -> None:
        self._collective = Collective(timeout)
        self._vote = StopVote(self._collective.group)
        self.rank = self._collective.rank
        self.world_size = self._collective.size
        #: every rank reads the same time at the same point, so a "10min" schedule fires at one iteration everywhere
        self.clock: Callable[[], float] | None = self._vote.now
        self._ddp: DistributedDataParallel | None = None
        self._sharded: nn.Module | None = None

    @property
    def sharded(self) -> bool:
        """Whether the pipeline's parameters are sharded over the ranks (``strategy="fsdp"``)."""
        return self._sharded is not None

    def shard(self, pipeline: nn.Module, optimizers: Iterable[torch.optim.Optimizer], options: Options) -> None:
        """``strategy="fsdp"``: shard ``pipeline`` in place (``trainers.distributed.fsdp``) and point the
        optimizers at its sharded parameters; the loss is then computed directly (no wrapper)."""
        broadcast_module(pipeline)  # rank 0's initial weights everywhere, as DDP does: each rank keeps its shard
        before = {id(param): name for name, param in pipeline.named_parameters()}
        fsdp.shard(pipeline, fsdp.check_options(options))
        fsdp.rebind(optimizers, before, pipeline)
        self._sharded = pipeline

    def forward(
        self, pipeline: nn.Module, compute_loss: Callable[[Any], Any], device: torch.device, ddp: Options
    ) -> Callable[[Any], Any]:
        """``compute_loss`` through DDP, so the backward pass all-reduces the gradients."""
        self._ddp = ddp_wrap(pipeline, compute_loss, device, ddp)
        return self._ddp

    def replicate(self, pipeline: nn.Module) -> None:
        """For a trainer without DDP (``optimization_step``): rank 0's parameters and buffers on every rank."""
        broadcast_module(pipeline)

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """For a trainer without DDP: each gradient becomes its mean over the ranks (one flat all-reduce)."""
        average_gradients(params, self.world_size)

    def no_sync(self) -> AbstractContextManager[Any]:
        """DDP's ``no_sync``: the micro-batches of an accumulation window before its last keep their gradients
        local; the last one's backward all-reduces the sum. Under FSDP the same with its gradient reduce-scatter."""
        if self._sharded is not None:
            return fsdp.no_sync(self._sharded)
        return nullcontext() if self._ddp is None else self._ddp.no_sync()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._collective.broadcast(obj, src)

    def all_gather(self, obj: Any) -> list[Any]:
        return self._collective.all_gather(obj)

    def gather(self, obj: Any) -> list[Any] | None:
        return self._collective.gather(obj)

    def on_rank_zero(self, fn: Callable[[], T], elsewhere: Elsewhere | None = None) -> T:
        """``fn()`` on rank 0, its result on every rank; a failure raises on every rank (``elsewhere(failure)`` on
        the others, by default a ``RuntimeError`` naming rank 0 and ``fn``)."""
        return self._collective.on_rank_zero(fn, elsewhere or _failed_on_zero(fn))

    def barrier(self) -> None:
        self._collective.barrier()

    def want(self, code: int) -> None:
        """Ask the ranks for a stop (``STOP``) or an interrupt (``INTERRUPT``); safe from a signal handler."""
        self._vote.want(code)

    def settle(self, *, wait: bool) -> int:
        """A round of the stop vote; the agreed code the first time there is one, else ``NOTHING``."""
        return self._vote.settle(wait=wait)

    def finish_vote(self) -> None:
        self._vote.finish()

    def abandon_vote(self) -> None:
        self._vote.abandon()

    def check_open(self, iteration: int) -> None:
        if self._collective.closed:
            _refuse_closed(iteration)

    def peer_failure(self, error: Exception, where: str) -> PeerFailure | None:
        """When ``error`` is a failed collective: probe the peers and return the :class:`PeerFailure` naming the
        ones that are gone; else ``None`` (the error is this rank's own)."""
        if not is_collective_failure(error):
            return None
        collective = self._collective
        probe = min(collective.timeout, timedelta(seconds=10))
        return PeerFailure.after_probe(collective.rank, collective.probe(probe), where, error, probe)

    def close(self) -> None:
        """Release the side groups (after a failure a vote round may still be pending: drop it first)."""
        self._vote.abandon()
        self._collective.close()
        self._ddp = None  # DDP's reducer holds the default group: let it go too
        self._sharded = None


Ranks = SingleProcess | Job


def _refuse_closed(iteration: int) -> NoReturn:
    raise RuntimeError(
        f"this trainer was closed at iteration {iteration}: in a distributed run close() releases its side groups, "
        "so it cannot step on (build a new trainer, and restore() from a checkpoint to continue)"
    )
