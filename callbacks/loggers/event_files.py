"""Opening TensorBoard's ``SummaryWriter`` so that a failed write is reported once, by its logger (not a callback).

TensorBoard writes event files from a thread of its own (``EventFileWriter`` -> ``_AsyncWriter`` ->
``_AsyncWriterThread``). When a write fails -- a full disk -- that thread keeps the exception, drains its queue and
re-raises it, which ends the thread and makes Python print ``Exception in thread Thread-1 ... OSError: [Errno 28]``
on stderr; the writer then raises the same exception from its next ``add_*`` or ``flush`` call, where the logger's
``on_error`` policy reports it in plain words. The printed traceback only repeats that report in a worse form, so
:func:`open_summary_writer` removes it for that one thread -- and no other -- by giving the thread an exception
hook that does nothing (CPython calls ``thread._invoke_excepthook`` for an exception that ends ``run``; the global
``threading.excepthook`` is left alone). Where that attribute does not exist the traceback is printed as before.

The thread starts, and writes the file's first event, inside ``SummaryWriter(...)``, before it can be reached: so a
file system with no block left is refused before the writer is made (an ``OSError`` ``ENOSPC`` naming the folder,
reported by the policy like any other failure), and :func:`check_writer` raises the thread's failure where the
logger asks (before ``add_hparams``, which opens a second writer of its own).

:func:`add_scalars` writes a row of scalars as one event (one ``Summary`` with a value per tag) rather than one event
per tag as ``add_scalar`` does: readers see the same points, and the row costs one protobuf and one record.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.checkpoint.disk_space import no_room_left

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["add_scalars", "check_room", "check_writer", "open_summary_writer", "writer_thread"]


def _no_traceback(thread: threading.Thread) -> None:
    """The exception hook of an event-writer thread: its failure is raised again by the writer, and reported there."""


def check_room(directory: Path) -> None:
    """Raise ``OSError`` (``ENOSPC``) when the file system holding ``directory`` has no block left."""
    if no_room_left(directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))


def writer_thread(writer: SummaryWriter) -> threading.Thread | None:
    """The thread that writes ``writer``'s event file, or ``None`` where tensorboard keeps it elsewhere."""
    event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
    thread = getattr(getattr(event_writer, "_async_writer", None), "_worker", None)
    return thread if isinstance(thread, threading.Thread) else None


def open_summary_writer(directory: Path, purge_step: int | None) -> SummaryWriter:
    """A ``SummaryWriter`` on ``directory`` whose writer thread prints no traceback (see the module docstring)."""
    from torch.utils.tensorboard import SummaryWriter

    check_room(directory)
    writer = SummaryWriter(str(directory), purge_step=purge_step)
    thread = writer_thread(writer)
    if thread is not None and hasattr(thread, "_invoke_excepthook"):
        thread._invoke_excepthook = _no_traceback  # CPython's per-thread hook (a private name)
    return writer


def check_writer(writer: SummaryWriter, directory: Path) -> None:
    """Raise what made ``writer``'s thread fail, if it did, or an ``ENOSPC`` when ``directory``'s file system has no
    block left; else return."""
    thread = writer_thread(writer)
    failure = getattr(thread, "exception", None)
    if isinstance(failure, BaseException):
        raise failure
    check_room(directory)


def add_scalars(writer: SummaryWriter, values: Mapping[str, float], step: int) -> None:
    """Write ``values`` at ``step`` as one event (see the module docstring)."""
    from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]

    row = Summary(value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()])
    file_writer: Any = writer.file_writer if writer.file_writer is not None else writer._get_file_writer()  # type: ignore[no-untyped-call]
    file_writer.add_summary(row, step)
