"""When a collective fails because a peer died or hangs: say which rank, where, and what the backend said.

A gloo or nccl error reads ``Connection closed by peer [127.0.0.1]:18086`` -- an address, not a rank. After such a
failure every surviving rank probes every peer on a side group
(:meth:`trainers.distributed.collective.Collective.probe`) and raises :class:`PeerFailure` naming the ranks that did
not answer.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

from trainers.distributed.collective import backend_reason

__all__ = ["PeerFailure", "is_collective_failure"]

#: what the backends' errors say when a peer is gone or silent
_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "socket closed",
    "connection refused",
    "nccl communicator was aborted",
    "nccl error",
    "watchdog caught collective operation timeout",
)


class PeerFailure(RuntimeError):
    """A collective failed because one or more peers stopped answering (``ranks``; empty when every peer still
    answers and the collective failed for another reason)."""

    def __init__(self, message: str, ranks: tuple[int, ...]) -> None:
        super().__init__(message)
        self.ranks = ranks

    @classmethod
    def after_probe(
        cls, rank: int, failed: dict[int, str], where: str, error: BaseException, probe: timedelta
    ) -> PeerFailure:
        """The failure of rank ``rank``, whose collective failed ``where`` with ``error``, given the peers that did
        not answer a probe (``failed``: rank -> why)."""
        original = backend_reason(error)
        if not failed:
            return cls(f"rank {rank}: a collective failed {where}, but every peer still answers: {original}", ranks=())
        ranks = tuple(sorted(failed))
        names = ", ".join(f"rank {r} ({failed[r]})" for r in ranks)
        return cls(
            f"rank {rank}: lost {names} {where}; a rank that dies, hangs or fails ends the whole run (its own log "
            f"says why; a peer that did not answer within {probe.total_seconds():g} s may also be stuck). Original "
            f"error: {original}",
            ranks=ranks,
        )


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a backend's report of a failed collective (a lost peer, a timeout), as opposed to an
    error of this rank's own code."""
    if isinstance(error, PeerFailure):
        return False
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return any(sign in text for sign in _SIGNS)
