"""How the ranks of a job agree to stop at the same iteration.

``stop()``, a non-finite guard or a signal may reach one rank only. If that rank simply stopped, the others would
wait in the next gradient all-reduce until the timeout. Instead a stop is a *wish* that the ranks vote on: one
``MAX`` all-reduce of a small integer per round, on the gloo side group (CPU tensors: no device sync).

- At the boundaries of an epoch (after ``pre_training``, ``pre_epoch`` and ``post_epoch``) the vote is
  synchronous: a stop asked for there ends the run at once, exactly as in a single process.
- After each step the vote is asynchronous: the round started after step *k* is read after step *k + 1*. So no
  step waits for the vote, and a stop asked for during step *k* takes effect after step *k + 1* -- on every rank.

Votes are codes: 0 nothing, 1 stop, 2 interrupt (an interrupt outranks a stop). Once the ranks agreed, the vote
is closed: no further rounds (the ranks agreed in the same round, so they all stop voting together).

Each round also carries every rank's monotonic clock (milliseconds since the vote was made); their maximum is
:attr:`StopVote.clock`, the time wall-time schedules (``"10min"``) read in a distributed run. Every rank sees the
same value at the same point, so a handler on such a schedule -- a checkpoint, a validation -- fires at the same
iteration everywhere (each rank's own clock would fire it at different ones, and its collectives would not meet).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["StopVote"]

NOTHING, STOP, INTERRUPT = 0, 1, 2


class StopVote:
    """This rank's wish and the rounds in flight on ``group``."""

    __slots__ = ("_buffer", "_group", "_pending", "_start", "agreed", "clock", "closed", "wish")

    def __init__(self, group: Any) -> None:
        self._group = group
        #: [code, milliseconds]: one buffer serves every round (a round starts only once the previous one was read)
        self._buffer = torch.zeros(2, dtype=torch.int64)
        self._start = time.monotonic()
        #: the agreed time in seconds: the largest of the ranks' clocks at the latest round read
        self.clock = 0.0
        self._pending: tuple[Any, torch.Tensor] | None = None
        #: the strongest stop this rank asked for (0: none)
        self.wish = NOTHING
        #: what the ranks agreed on, once they did
        self.agreed = NOTHING
        #: no more rounds: the ranks agreed, the run ended, or it failed
        self.closed = False

    def want(self, code: int) -> None:
        """Ask for a stop (``STOP``) or an interrupt (``INTERRUPT``); safe from a signal handler (no collective)."""
        if code > self.wish:
            self.wish = code

    def settle(self, *, wait: bool) -> int:
        """One round. ``wait``: agree now (a blocking all-reduce); else start a round and read the previous one.
        Returns the agreed code the first time there is one, else ``NOTHING``."""
        if self.closed:
            return NOTHING
        agreed = self._collect()
        if not agreed:
            buffer = self._buffer
            buffer[0] = self.wish
            buffer[1] = int((time.monotonic() - self._start) * 1000.0)
            if wait:
                dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=self._group)
                agreed = self._read(buffer)
            else:
                work = dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
                self._pending = (work, buffer)
        if agreed:
            self.agreed, self.closed = agreed, True
        return agreed

    def finish(self) -> None:
        """Wait for the round in flight, if any, and close (at the end of a run: no collective outlives it)."""
        if not self.closed:
            self._collect()
            self.closed = True
        self._group = None  # no more rounds: the group may be destroyed (see Collective.close)

    def abandon(self) -> None:
        """Close without waiting (the run failed: a peer may be gone)."""
        self._pending = None
        self.closed = True
        self._group = None

    def now(self) -> float:
        """The agreed clock, for the bus's wall-time schedules."""
        return self.clock

    def _collect(self) -> int:
        pending, self._pending = self._pending, None
        if pending is None:
            return NOTHING
        work, buffer = pending
        work.wait()
        return self._read(buffer)

    def _read(self, buffer: torch.Tensor) -> int:
        code, millis = buffer.tolist()
        self.clock = max(self.clock, millis / 1000.0)
        return int(code)
