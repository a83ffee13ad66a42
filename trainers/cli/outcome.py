"""How ``train`` and ``gui`` end on an error: a refusal of what they were given (exit 2) or a failed run (exit 1).

A *refusal* means nothing was trained because of the input or the place the command was pointed at, so a message
says what is wrong and what to do, with no traceback:

* a run directory holding another run's checkpoints (the Checkpointer refuses it as the run starts, before any
  event: ``EarlierRunCheckpoints``), or a checkpoint that cannot be used (a ``CheckpointError``, unwrapped here
  from the ``CallbackError`` the bus puts around a handler's error);
* a run directory another live process holds (``RunDirectoryBusy``);
* a run directory or an output folder that cannot be created or written before the first step: no permission, a
  read-only file system, a file where a folder is needed.

A *failure* is anything else, and anything at all once the first step began: the first line says where and why
(``error: training failed at epoch 3, iteration 412 in Checkpointer.post_step: OSError: ...``); the traceback follows
for an unexpected exception, which a bug needs, but not for a full disk, a used-up quota or a file size limit, where
that line says it all.
"""

from __future__ import annotations

import errno
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from lifecycle import CallbackError
from trainers.cli.invocation import command_line

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle import State

__all__ = ["REFUSED", "cause_of", "environmental", "failure_line", "refusal", "report"]

#: the exit code of a refusal (a failure is 1)
REFUSED = 2

#: the errors of a directory or file that cannot be created or written where the run was pointed
_UNWRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


def cause_of(error: BaseException) -> tuple[BaseException, CallbackError | None]:
    """The error a handler raised, without the ``CallbackError`` wrappers the bus (and a nested emission) put
    around it; and the innermost wrapper, which names that handler (``None`` when ``error`` is no wrapper)."""
    wrapper: CallbackError | None = None
    while isinstance(error, CallbackError) and error.__cause__ is not None:
        wrapper, error = error, error.__cause__
    return error, wrapper


def refusal(error: BaseException, *, began: bool, run_dir: Path) -> str | None:
    """The message for an error that refuses the command's input (see the module docstring), or ``None`` when
    ``error`` is a failure. ``began``: whether a step of this run began in this process."""
    from trainers.checkpoint.format import CheckpointError, EarlierRunCheckpoints
    from trainers.checkpoint.run_lock import RunDirectoryBusy

    cause = cause_of(error)[0]
    if isinstance(cause, RunDirectoryBusy):
        return str(cause)
    if began:
        return None
    if isinstance(cause, CheckpointError):
        if isinstance(cause, EarlierRunCheckpoints):  # a checkpointer's claim on its directory
            again = command_line("train", "--resume", "auto", "--run-dir", run_dir)
            return f"{cause}\nto continue the run saved there: {again}"
        return str(cause)
    if isinstance(cause, OSError) and cause.errno in _UNWRITABLE:
        what = f"{cause.filename}: " if cause.filename is not None else ""
        why = cause.strerror or str(cause)
        if cause.errno in (errno.ENOTDIR, errno.EEXIST):
            why += " (a file stands where a folder is needed)"
        return (
            f"{what}{why}; nothing was trained. The run directory ({run_dir}) and the folders its callbacks write "
            "must be directories this process can write: choose another --run-dir (or run.dir in the config), or fix "
            "the permissions"
        )
    return None


def failure_line(error: BaseException, state: State | None) -> str:
    """The one line that says where the run failed and why: the first line of the cause's message (the traceback
    has all of it). ``state``: the trainer's counters, ``None`` when it could not even be built."""
    cause, wrapper = cause_of(error)
    if state is None:
        where = " before the trainer was built"
    else:
        where = f" at epoch {state.epoch}, iteration {state.iteration}"
    if wrapper is not None:
        where += f" in {wrapper.handler}"
    lines = str(cause).strip().splitlines() or [""]
    more = " ..." if len(lines) > 1 else ""
    return f"training failed{where}: {type(cause).__name__}: {lines[0]}{more}"


def environmental(error: BaseException) -> bool:
    """Whether ``error`` is a write that did not fit (a full disk, a used-up quota, a file size limit): its one line
    says all there is to say, no traceback helps."""
    from trainers.checkpoint.disk_space import full_disk_error

    return full_disk_error(error) is not None


def report(
    errors: Console, error: BaseException, *, state: State | None, began: bool, run_dir: Path, speak: bool = True
) -> int:
    """Print what ended the command (only where ``speak``: rank 0 of a job speaks for a refusal every rank shares)
    and return its exit code: :data:`REFUSED` with the message, else 1 with :func:`failure_line` first and the
    traceback after it unless the failure is :func:`environmental`."""
    message = refusal(error, began=began, run_dir=run_dir)
    if message is not None:
        if speak:
            errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        return REFUSED
    errors.print(f"[red]error:[/red] {escape(failure_line(error, state))}", highlight=False, soft_wrap=True)
    if environmental(error):
        rest = str(cause_of(error)[0]).strip().splitlines()[1:]
        if rest:  # no traceback follows to show the rest of the message
            errors.print(escape("\n".join(rest)), highlight=False, soft_wrap=True)
    else:
        errors.file.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        errors.file.flush()
    return 1
