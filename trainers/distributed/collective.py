"""The trainer's side channel between ranks: small Python objects, stop votes and liveness probes.

It runs on its own ``gloo`` groups over CPU tensors, whatever the training backend: with ``nccl`` an agreement read
on the host would otherwise wait for the GPU. Every method is a collective -- every rank calls it at the same point
of the run, as the engine and the callbacks built on it do (they call it from the same events on every rank).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Collective", "RankZeroFailure", "backend_reason"]

T = TypeVar("T")


@dataclass(frozen=True)
class RankZeroFailure:
    """How the other ranks hear of an exception rank 0 raised in :meth:`Collective.on_rank_zero` (an exception
    itself may not pickle): its type name, its message, and its ``reason`` and ``path`` when it has them (a
    ``CheckpointError``)."""

    kind: str
    message: str
    reason: str | None = None
    path: str | None = None  #: the file or directory a ``CheckpointError`` names

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class Collective:
    """Object collectives over a ``gloo`` side group of every rank of the default process group.

    Args:
        timeout: how long a collective waits for a peer before it fails.
    """

    def __init__(self, timeout: timedelta) -> None:
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.timeout = timeout
        #: objects and votes
        self.group = dist.new_group(backend="gloo", timeout=timeout)
        #: liveness probes only: a failed collective leaves nothing half-done on it
        self.probe_group = dist.new_group(backend="gloo", timeout=timeout)
        self.closed = False

    def close(self) -> None:
        """Destroy both groups and drop the handles; idempotent. Local to this rank: the peers close theirs when
        they are done. A gloo group's worker threads only stop when the last handle to it goes (torch's
        ``destroy_process_group`` drops its own), so no handle may outlive this."""
        if self.closed:
            return
        self.closed = True
        groups, self.group, self.probe_group = (self.group, self.probe_group), None, None
        if dist.is_initialized():
            for group in groups:
                dist.destroy_process_group(group)

    def _live(self) -> Any:
        if self.closed:
            raise RuntimeError("the trainer's side group was closed (trainer.close()): no collective can run on it")
        return self.group

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``src``'s ``obj`` on every rank (pickled: keep it small and plain)."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self._live())
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        found: list[Any] = [None] * self.size
        dist.all_gather_object(found, obj, group=self._live())
        return found

    def gather(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on ``dst``; ``None`` elsewhere."""
        found: list[Any] | None = [None] * self.size if self.rank == dst else None
        dist.gather_object(obj, found, dst=dst, group=self._live())
        return found

    def on_rank_zero(self, fn: Callable[[], T], elsewhere: Callable[[RankZeroFailure], BaseException]) -> T:
        """``fn()`` on rank 0 only; its result (small, picklable) on every rank. If ``fn`` raises, every rank
        raises -- rank 0 its own exception, the others ``elsewhere(failure)`` -- once all of them heard of it, so no
        rank goes on alone to wait for the others in the next collective."""
        result: T | None = None
        error: Exception | None = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the other ranks heard of it
                error = exc
        if error is None:
            shared = self.broadcast((True, result))
        else:
            reason = getattr(error, "reason", None)
            path = getattr(error, "path", None)
            failure = RankZeroFailure(
                type(error).__name__,
                str(error),
                reason if isinstance(reason, str) else None,
                None if path is None else str(path),
            )
            shared = self.broadcast((False, failure))
        if error is not None:
            raise error
        ok, payload = shared
        if not ok:
            raise elsewhere(payload) from None
        return payload  # type: ignore[no-any-return]

    def barrier(self) -> None:
        """Wait until every rank got here (or fail after the timeout)."""
        dist.barrier(group=self._live())

    def probe(self, timeout: timedelta) -> dict[int, str]:
        """After a failed collective: exchange one message with every peer; returns the ranks that did not answer
        within ``timeout`` and why. The peers that are still alive run the same probe (their collective failed
        too), so a live peer answers at once and a dead one fails at once (its connection is closed)."""
        mine = torch.tensor([self.rank], dtype=torch.int64)
        works: dict[int, tuple[Any, Any, torch.Tensor]] = {}
        failed: dict[int, str] = {}
        for peer in range(self.size):
            if peer == self.rank:
                continue
            answer = torch.full((1,), -1, dtype=torch.int64)
            try:
                sent = dist.isend(mine, dst=peer, group=self.probe_group, tag=0x5B)
                received = dist.irecv(answer, src=peer, group=self.probe_group, tag=0x5B)
            except Exception as exc:  # noqa: BLE001 - the connection to it is gone
                failed[peer] = backend_reason(exc)
                continue
            works[peer] = (sent, received, answer)
        for peer, (sent, received, answer) in works.items():
            try:
                received.wait(timeout)
                sent.wait(timeout)
            except Exception as exc:  # noqa: BLE001 - a closed connection or a timeout: either way, no answer
                failed[peer] = backend_reason(exc)
                continue
            if int(answer.item()) != peer:
                failed[peer] = f"answered as rank {int(answer.item())}"
        return failed


def backend_reason(error: BaseException) -> str:
    """The backend_reason of a backend error: its first line without gloo's source location and boilerplate advice:
    ``[.../pair.cc:553] Connection closed by peer [127.0.0.1]:6043. This is typically ...`` ->
    ``Connection closed by peer [127.0.0.1]:6043``."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(". This is typically", 1)[0].rstrip(".") or type(error).__name__
