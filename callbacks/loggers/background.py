"""A logger's writes, made on a thread of their own (not a callback): :class:`BackgroundWriter`.

Building a TensorBoard event, a W&B row or an MLflow batch costs hundreds of microseconds to milliseconds; made
on the training thread, that is paid inside the step of every log point. A logger with ``background=True`` (the
default) computes its row as before -- the window means, one host copy, and the values given to ``trainer.log``
turned into plain numbers and pixels at once, so nothing the step changes later is read afterwards -- and hands
the write to its background writer:

* **One thread per logger**, started by the first write and ended after a second with nothing to do (so a run that
  ended without ``post_training`` -- a notebook left mid-run, a GUI closed -- keeps no thread and loses nothing:
  the interpreter waits for the writes still queued before it exits). Writes run in the order they were made.
* **A bounded queue** (:data:`CAPACITY` writes): when the backend falls that far behind, a new write waits for a
  free place -- the step slows down, nothing is dropped and memory stays flat.
* **Flushed** -- every queued write made before the call returns -- at each epoch's end, when a checkpoint is taken
  (the logger's ``state_dict``), at ``post_training`` whatever the status, and when the logger is removed. A
  graceful stop (``stop()``, Ctrl-C, SIGTERM, a time limit, a failure) thus loses nothing, and the rows of every
  step up to a checkpoint are with the backend before the checkpoint is written; a ``kill -9`` loses at most the
  writes still queued, and each backend keeps its files valid (TensorBoard's records are framed and checked,
  so a torn last record is not read; the resumed run writes those steps again).
* **The failure policy is the logger's** (:class:`~callbacks.loggers.failure_policy.BackendGuard`): a write that
  fails on the writer thread is reported on the training thread -- at the next write or flush -- and there
  warned, counted, disabling the logger or raised in the event it happened in, as if it had failed there. After a
  failure under ``"disable"`` or ``"raise"`` the writes still queued are dropped; under ``"warn"`` the next ones
  are tried.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable

from callbacks.loggers.failure_policy import BackendGuard

__all__ = ["CAPACITY", "IDLE_SECONDS", "BackgroundWriter"]

#: writes queued before a new one waits for a free place
CAPACITY = 256
#: how long the thread waits for a write before it ends (the next write starts a new one)
IDLE_SECONDS = 1.0

_Write = tuple[str, Callable[[], None]]


def _stop() -> None:
    """Queued by :meth:`BackgroundWriter.close`: the thread ends when it takes this."""


class BackgroundWriter:
    """Runs one logger's writes, in order, on a thread of its own (see the module docstring).

    Args:
        guard: the logger's failure policy; failures met on the thread go to it on the training thread.
        name: the thread's name (``"stepbus-TensorBoardLogger"``), as tools that list threads show it.
        enabled: ``False`` runs each write at once, on the caller's thread (the logger's ``background=False``).
        capacity: the queue's bound.
    """

    def __init__(self, guard: BackendGuard, name: str, *, enabled: bool = True, capacity: int = CAPACITY) -> None:
        self.enabled = enabled
        self._guard, self._name = guard, name
        self._queue: queue.Queue[_Write] = queue.Queue(maxsize=capacity)
        self._failed: collections.deque[tuple[str, Exception]] = collections.deque()
        self._halted = False  # a failure under "disable"/"raise": the writes still queued are dropped
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # a thread ending for idleness and a write arriving, never both at once

    @property
    def pending(self) -> int:
        """Writes queued or running."""
        return self._queue.unfinished_tasks

    def submit(self, what: str, action: Callable[[], None], *, report: bool = True) -> bool:
        """Queue ``action`` (``what`` completes "could not ..." in a failure's message). Returns False, writing
        nothing, when the logger is disabled -- also by a failure of an earlier write, reported here first
        (``report=False``: left for the next call, e.g. while a checkpoint is being built)."""
        logging_on = self.report() if report else not self._guard.disabled
        if not logging_on:
            return False
        if not self.enabled:
            return self._guard.run(what, action)
        with self._lock:
            self._queue.put((what, action))  # waits while the queue is full: the thread is running, it empties it
            if self._thread is None:
                thread = threading.Thread(target=self._work, name=self._name, daemon=False)
                self._thread = thread
                thread.start()
        return True

    def wait(self) -> None:
        """Wait until every write queued so far has run; their failures are reported later (:meth:`report`)."""
        if self._queue.unfinished_tasks:
            self._queue.join()

    def flush(self) -> bool:
        """Wait until every write queued so far has run, then report the failures they met. Returns False when
        the logger is (now) disabled."""
        self.wait()
        return self.report()

    def close(self) -> bool:
        """:meth:`flush`, then end the thread now rather than after :data:`IDLE_SECONDS` (a later write starts a
        new one). Returns False when the logger is (now) disabled."""
        ok = self.flush()
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._queue.put(("stop", _stop))
        if thread is not None:
            thread.join()
        return ok

    def report(self) -> bool:
        """Hand the failures the thread met to the guard, in order (warn, count, disable, or raise the first
        under ``"raise"``). Returns False when the logger is disabled."""
        failed = self._failed
        while failed:
            what, error = failed.popleft()
            if self._guard.disabled:
                continue  # the first failure disabled the logger: it was told, the rest are not news
            self._guard.fail(what, error)
        return not self._guard.disabled

    def _work(self) -> None:
        take, done = self._queue.get, self._queue.task_done
        while True:
            try:
                what, action = take(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if action is _stop:
                with self._lock:
                    self._thread = None
                done()
                return
            try:
                if not self._halted:
                    action()
            except Exception as error:  # noqa: BLE001 - each failure goes to the logger's policy
                self._failed.append((what, error))
                if self._guard.on_error != "warn":
                    self._halted = True
            finally:
                done()
