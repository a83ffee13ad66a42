"""On-demand actions: ``trainer.request_validation()`` from a GUI button or a callback, served by whichever
callbacks registered to serve that kind of request.

Why a queue rather than a direct call: a request made while a step is running (from a handler, or by a callback
such as early stopping) must not run validation in the middle of the step's events. So a request is

* served **now** when the trainer is not inside ``iterate()`` (a GUI button between ticks, a script before or
  after ``train()``);
* otherwise **queued** and served at the next safe point of the same ``iterate()``: right after ``post_step``
  (at an epoch's last step: right after that epoch's ``post_epoch``, so that a checkpoint taken there is
  resumable), right after ``post_epoch``, before a stop or interrupt finishes the run, or just before
  ``post_training`` (so loggers still receive what it publishes).

Requests of one kind coalesce: asking twice before the queue is served serves once. A request made while requests
are being served waits for the next safe point, so a server that requests again cannot loop forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lifecycle import CallbackError, State

__all__ = ["Requests"]

Server = Callable[[Any], None]


class Requests:
    """The request queue of one trainer: kind -> servers (in registration order) and the pending kinds."""

    __slots__ = ("_owner", "_servers", "_serving", "_state", "pending")

    def __init__(self, owner: object, state: State) -> None:
        self._owner, self._state = owner, state
        self._servers: dict[str, dict[int, tuple[str, Server]]] = {}
        self._serving = False
        #: kinds requested and not yet served, in request order (a dict used as an ordered set)
        self.pending: dict[str, None] = {}

    def serve(self, kind: str, name: str, fn: Server) -> Callable[[], None]:
        """Register ``fn(trainer)`` to serve requests of ``kind``; returns a function that unregisters it."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"request kind must be a non-empty string, got {kind!r}")
        if not callable(fn):
            raise TypeError(f"server {name!r} for {kind!r} requests is not callable: {fn!r}")
        servers = self._servers.setdefault(kind, {})
        token = id(fn)
        while token in servers:  # the same bound method registered twice gets its own slot
            token += 1
        servers[token] = (name, fn)

        def remove() -> None:
            servers.pop(token, None)

        return remove

    def servers(self, kind: str) -> tuple[str, ...]:
        """Names of the servers of ``kind``, in the order they run."""
        return tuple(name for name, _ in self._servers.get(kind, {}).values())

    def request(self, kind: str, *, defer: bool) -> None:
        """Queue ``kind``; with ``defer=False`` (the trainer is idle) serve the queue at once."""
        if not self._servers.get(kind):
            raise RuntimeError(self._unserved(kind))
        self.pending[kind] = None
        if not defer:
            self.drain()

    def _unserved(self, kind: str) -> str:
        """Why ``request(kind)`` cannot be served, naming what would work. A named kind (``"validation:<name>"``,
        ``trainer.request_validation(name)``) lists the names served in its family, without the plumbing kinds."""
        known = sorted(k for k, v in self._servers.items() if v)
        family, named, name = kind.partition(":")
        names = sorted(k.partition(":")[2] for k in known if named and k.startswith(f"{family}:"))
        if names:
            unnamed = f", or no name for every {family!r} server" if family in known else ""
            return (
                f"nothing on this trainer serves {kind!r} requests: no {family!r} server answers to {name!r}; the "
                f"names that work are {', '.join(map(repr, names))}{unnamed}"
            )
        return (
            f"nothing on this trainer serves {kind!r} requests; add a callback that does "
            f"(the callbacks registered now serve: {known or 'no requests'})"
        )

    def run_now(self, kind: str) -> None:
        """Call every server of ``kind`` at once, outside the queue, letting their exceptions through as raised:
        for checks the engine itself makes at a fixed point (``directory_locks.CLAIM``), not for user requests."""
        for _, fn in list(self._servers.get(kind, {}).values()):
            fn(self._owner)

    def drain(self) -> None:
        """Serve every pending request once, in request order. A server that raises becomes a
        :class:`~lifecycle.CallbackError` naming it, the request and the iteration (the original is ``__cause__``)."""
        if self._serving or not self.pending:
            return
        kinds = list(self.pending)
        self.pending.clear()
        self._serving = True
        try:
            for kind in kinds:
                for name, fn in list(self._servers.get(kind, {}).values()):
                    try:
                        fn(self._owner)
                    except CallbackError:
                        raise
                    except Exception as exc:
                        it = self._state.iteration
                        raise CallbackError(
                            f"{name!r} failed serving a {kind!r} request at iteration {it} ({self._state}): "
                            f"{type(exc).__name__}: {exc}",
                            handler=name,
                            event=f"{kind} request",
                            iteration=it,
                        ) from exc
        finally:
            self._serving = False
