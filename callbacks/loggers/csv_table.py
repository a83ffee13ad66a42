"""The file behind :class:`~callbacks.loggers.csv_logger.CSVLogger`: one CSV table that grows by rows and columns,
stays valid at every flush, and is cut back to a checkpoint on resume (not a callback).

Layout: a header ``step,epoch,<metric>,...`` (metric columns in the order they first appeared), then one line per
row; a cell is a number written with ``repr`` (the shortest text that reads back as the same float: ``0.1``,
``1e-05``, ``nan``, ``inf``) or empty where the row has no value for that column.

Why the writes look the way they do:

* **Appends, in batches.** Rows are kept in memory and written at a flush (the logger flushes at epoch ends,
  validations, checkpoints and the end of the run, and here every :data:`FLUSH_ROWS` rows): one ``open``, one
  ``write`` of complete lines, one ``close``. No handle stays open, so nothing holds a stale file after a rewrite.
* **A new column rewrites the file, atomically and rarely.** A row that brings a metric never seen before widens the
  table; at the next flush the file is replaced (``trainers.checkpoint.atomic.atomic_write``) by the wider header,
  every earlier line padded with empty cells -- nothing shifts, nothing is lost -- and the new rows. Columns appear
  when a metric first does, almost always in the first rows of a run, so this costs a few rewrites of a small file.
* **Only complete lines count.** The table remembers how many bytes and rows of the file it wrote completely. A
  write cut short (a full disk, a process killed mid-write) leaves a partial last line; the next append cuts the
  file back to the last complete line first, and a resume drops it.
* **Resume is exact.** :meth:`CsvTable.resume` keeps the rows a checkpoint recorded (their count and the step of
  the last one), drops whatever a killed run wrote after that checkpoint and any partial line, and replaces the
  file atomically; the resumed run then appends. Without a record (a checkpoint taken without this logger) it keeps
  the rows up to the checkpoint's iteration, as TensorBoard's ``purge_step`` does.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainers.checkpoint.atomic import atomic_write

__all__ = ["FLUSH_ROWS", "KEYS", "CsvTable", "Resumed", "read_table"]

#: the columns every row has, before the metrics
KEYS = ("step", "epoch")
#: pending rows that make a flush due on their own (a long epoch logged every step stays bounded in memory)
FLUSH_ROWS = 256


def read_table(path: Path) -> tuple[list[str], list[list[str]], int]:
    """``(header, rows, torn)`` of a CSV file: its complete lines only; ``torn`` is the byte count of a partial
    last line (0 when the file ends with a newline)."""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    lines = list(csv.reader(io.StringIO(data[:complete].decode("utf-8"), newline="")))
    if not lines:
        return [], [], len(data) - complete
    return lines[0], lines[1:], len(data) - complete


@dataclass(frozen=True)
class Resumed:
    """What :meth:`CsvTable.resume` did to the file."""

    kept: int  #: rows kept
    dropped: int  #: complete rows dropped (written after the checkpoint)
    torn: int  #: bytes of a partial last line dropped
    missing: bool  #: there was no file: it was created with the header alone
    mismatch: str | None  #: why the checkpoint's record did not fit the file (rows kept by iteration instead)


class CsvTable:
    """One CSV file of rows ``(step, epoch, {metric: value})`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = list(KEYS)
        self._index: dict[str, int] = {}
        self._pending: list[tuple[int, int, Mapping[str, float]]] = []
        self._written_width = 0  # columns of the header on disk; 0 until the file is started
        self._size = 0  # bytes of complete lines on disk
        self._header_size = 0  # bytes of the header line on disk
        self.rows = 0  #: data rows on disk
        self.last_step = 0  #: the step of the last row on disk (0: none)

    # ------------------------------------------------------------------ starting
    def start(self) -> int:
        """Replace whatever is at the path by the header alone (a new run); returns the data rows the old file had."""
        old = 0
        if self.path.exists():
            old = len(read_table(self.path)[1])
        self._replace(b"", rows=0, last_step=0)
        return old

    def resume(self, *, rows: int | None, step: int | None, iteration: int) -> Resumed:
        """Cut the file back to a checkpoint: its first ``rows`` rows when the ``rows``-th has ``step``, else (no
        record, or one that does not fit the file) the rows up to ``iteration``; then replace it atomically."""
        if not self.path.exists():
            self._replace(b"", rows=0, last_step=0)
            return Resumed(0, 0, 0, True, None)
        header, found, torn = read_table(self.path)
        width = len(header)
        complete = [row for row in found if len(row) == width and _step_of(row) is not None]
        mismatch = None
        if tuple(header[: len(KEYS)]) != KEYS:
            mismatch = f"its header is not {','.join(KEYS)},...: not a file of this logger; started it over"
            header, complete = list(KEYS), []
        elif rows is not None and step is not None and not _fits(complete, rows, step):
            last = _step_of(complete[-1]) if complete else None
            mismatch = f"the checkpoint recorded {rows} rows up to step {step}; the file has {len(complete)}"
            mismatch += f" up to step {last}" if last is not None else ""
            mismatch += f"; kept the rows up to iteration {iteration}"
        if rows is not None and step is not None and mismatch is None:
            kept = complete[:rows]
        else:
            kept = [row for row in complete if (_step_of(row) or 0) <= iteration]
        # the metric columns that hold a value in a kept row, in the file's order (= order of first appearance)
        used = [i for i in range(len(KEYS), len(header)) if any(row[i] != "" for row in kept)]
        self.columns = [*KEYS, *(header[i] for i in used)]
        self._index = {name: i for i, name in enumerate(self.columns) if i >= len(KEYS)}
        for _, _, values in self._pending:  # rows queued before the file could be cut back (a retried failure)
            self._widen_to(values)
        body = "".join(_line([row[0], row[1], *(row[i] for i in used)]) for row in kept)
        last_step = (_step_of(kept[-1]) or 0) if kept else 0
        self._replace(body.encode("utf-8"), rows=len(kept), last_step=last_step)
        return Resumed(len(kept), len(complete) - len(kept), torn, False, mismatch)

    # ------------------------------------------------------------------ rows
    def add(self, step: int, epoch: int, values: Mapping[str, float]) -> bool:
        """Queue one row (new metrics become columns); returns whether a flush is due (:data:`FLUSH_ROWS`)."""
        self._widen_to(values)
        self._pending.append((step, epoch, values))
        return len(self._pending) >= FLUSH_ROWS

    @property
    def pending(self) -> int:
        """Rows queued and not yet on disk."""
        return len(self._pending)

    def discard(self) -> int:
        """Forget the queued rows (after a failed flush); returns how many."""
        count, self._pending = len(self._pending), []
        return count

    def flush(self) -> str | None:
        """Write the queued rows: appended, or with the whole file replaced when the table grew wider. Raises
        ``OSError`` when the file cannot be written; the rows stay queued (see :meth:`discard`). Returns a note for
        a warning when the file had been removed or shortened by something else (it is then started over)."""
        if not self._pending and self._written_width == len(self.columns):
            return None
        body = "".join(self._format(step, epoch, values) for step, epoch, values in self._pending).encode("utf-8")
        rows, last_step = self.rows + len(self._pending), self._pending[-1][0] if self._pending else self.last_step
        note = None
        if self._written_width != len(self.columns):
            self._widen(body, rows=rows, last_step=last_step)
        else:
            note = self._append(body, rows=rows, last_step=last_step)
        self._pending = []
        return note

    # ------------------------------------------------------------------ helpers
    def _widen_to(self, values: Mapping[str, float]) -> None:
        for name in values:
            if name not in self._index:
                self._index[name] = len(self.columns)
                self.columns.append(name)

    def _format(self, step: int, epoch: int, values: Mapping[str, float]) -> str:
        cells = [""] * len(self.columns)
        cells[0], cells[1] = str(step), str(epoch)
        index = self._index
        for name, value in values.items():
            cells[index[name]] = repr(float(value))
        return _line(cells)

    def _append(self, body: bytes, *, rows: int, last_step: int) -> str | None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return self._restart(body, rows=rows - self.rows, last_step=last_step)
        try:
            size = os.fstat(fd).st_size
            if size >= self._size:
                if size > self._size:
                    os.ftruncate(fd, self._size)  # a partial line left by a write that failed midway
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if size < self._size:  # shortened under the logger
            return self._restart(body, rows=rows - self.rows, last_step=last_step)
        self._size += len(body)
        self.rows, self.last_step = rows, last_step
        return None

    def _restart(self, body: bytes, *, rows: int, last_step: int) -> str:
        """The file was removed or shortened by something else: start it over with ``body``."""
        lost = self.rows
        self._replace(body, rows=rows, last_step=last_step)
        return f"{self.path} was removed or shortened during the run; started it over ({lost} earlier rows lost)"

    def _widen(self, body: bytes, *, rows: int, last_step: int) -> None:
        """Replace the file by the wider header, the earlier lines padded, and ``body``."""
        earlier = b""
        if self._size:
            with open(self.path, "rb") as handle:
                earlier = handle.read(self._size)[self._header_size :]
            earlier = earlier.replace(b"\n", b"," * (len(self.columns) - self._written_width) + b"\n")
        self._replace(earlier + body, rows=rows, last_step=last_step)

    def _replace(self, body: bytes, *, rows: int, last_step: int) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(self.columns)
        data = text.getvalue().encode("utf-8") + body
        atomic_write(self.path, lambda handle: handle.write(data), durable=True)
        self._header_size = len(data) - len(body)
        self._written_width, self._size, self.rows, self.last_step = len(self.columns), len(data), rows, last_step


def _line(cells: list[str]) -> str:
    return ",".join(cells) + "\n"


def _fits(rows: list[list[str]], count: int, step: int) -> bool:
    """Whether ``rows`` has ``count`` rows or more, the ``count``-th at ``step``."""
    return len(rows) >= count and (count == 0 or _step_of(rows[count - 1]) == step)


def _step_of(row: list[str]) -> int | None:
    try:
        return int(row[0])
    except (ValueError, IndexError):
        return None
