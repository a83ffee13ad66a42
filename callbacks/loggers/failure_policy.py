"""What the logging callbacks share about their backends (not a callback): the "is the optional package installed"
check and the ``on_error`` policy for a backend that fails mid-run.

A logger is an observer: a full disk under its event files or a W&B hiccup must not, by default, cost the user
their training run -- but it must not fail silently either. :class:`BackendGuard` runs each backend call and applies
the policy the user chose: ``"disable"`` (default: warn once, stop logging, keep training), ``"warn"`` (warn at each
failure, keep trying) or ``"raise"`` (the failure fails the run, named by the bus like any handler error).

A write that failed for lack of room is told in plain words, the same as a checkpoint's (``TensorBoardLogger
'TensorBoardLogger' could not write scalars in runs/x/tb: no space left on device (0 bytes free on /mnt)``; see
:mod:`trainers.checkpoint.disk_space`); under ``"raise"`` it is raised as an ``OSError`` with that message. Each
failure the run survives (``"warn"``, ``"disable"``) is counted in the guard and, once the logger is added to a
trainer, in ``trainer.state.failed_writes`` under the logger's name, where the progress summary and
``metrics.json`` read it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, get_args

from trainers.checkpoint.disk_space import describe_full_disk, full_disk_error

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle import State

__all__ = ["ON_ERROR", "BackendGuard", "OnError", "check_on_error", "require_package"]

OnError = Literal["disable", "warn", "raise"]
ON_ERROR: tuple[str, ...] = get_args(OnError)


def check_on_error(on_error: object, owner: str) -> OnError:
    """``on_error`` checked, or a ``ValueError`` naming ``owner`` and the valid values."""
    if on_error not in ON_ERROR:
        valid = ", ".join(repr(v) for v in ON_ERROR)
        raise ValueError(f"{owner}: on_error must be one of {valid}, got {on_error!r}")
    return on_error  # type: ignore[return-value]  # narrowed by the membership test


def require_package(module: str, extra: str, owner: str) -> None:
    """Raise ``ModuleNotFoundError`` naming ``owner`` and the install command when ``module`` cannot be imported.

    Only the import system's metadata is consulted (no import: ``wandb`` alone takes ~0.7 s), so this is cheap
    enough for a callback's ``setup``. A module blocked with ``sys.modules[name] = None`` counts as missing."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a None or spec-less entry in sys.modules
        found = False
    if not found:
        wanted = " ".join(f'"{r}"' for r in _extra_requirements(extra)) or module
        raise ModuleNotFoundError(
            f"{owner} needs the {module} package: pip install {wanted} (stepbus's {extra!r} extra: "
            f'pip install "/path/to/stepbus[{extra}]" from a clone)',
            name=module,
        )


def _extra_requirements(extra: str) -> list[str]:
    """The requirements of stepbus's optional ``extra`` as its installed metadata lists them (none when stepbus runs
    from a source tree that was never installed)."""
    from importlib import metadata

    try:
        requires = metadata.requires("stepbus") or []
    except metadata.PackageNotFoundError:
        return []
    found: list[str] = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if f'extra == "{extra}"' in marker.replace("'", '"'):
            found.append(spec.strip())
    return found


class BackendGuard:
    """Runs backend calls under an ``on_error`` policy and counts the failures.

    Args:
        owner: names the logger in messages (``"WandbLogger 'WandbLogger'"``).
        on_error: the policy (see the module docstring).
        logger: where the warnings go.
        where: returns where the backend writes, for the message (a callable: the directory is known late).
    """

    def __init__(self, owner: str, on_error: OnError, logger: logging.Logger, where: Callable[[], object]) -> None:
        self.owner, self.on_error, self._log, self._where = owner, check_on_error(on_error, owner), logger, where
        self.disabled = False  #: set once a failure disabled the logger (policy "disable")
        self.failures = 0  #: failures so far, in this process and (through the logger's state) before a resume
        self.raised = False  #: set once a failure was raised (policy "raise"): the run is failing because of it
        self._state: State | None = None
        self._writer = ""

    def count_in(self, state: State | None, writer: str = "") -> None:
        """Count each failure the run survives in ``state.failed_writes[writer]`` too (``None``: stop)."""
        self._state, self._writer = state, writer

    def run(self, what: str, action: Callable[[], None]) -> bool:
        """Run ``action`` unless disabled; True when it ran and succeeded. ``what`` completes "could not ..."."""
        if self.disabled:
            return False
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - every backend failure goes to the policy, which may raise it
            self.fail(what, exc)
            return False
        return True

    def fail(self, what: str, error: Exception, *, where: object = None) -> None:
        """Apply the policy to ``error``, a failure of :meth:`run`'s action or one found otherwise (a writer's
        health check): raise it, or warn, count, and under ``"disable"`` disable. ``where`` replaces the guard's
        place in the message (a run's own folder rather than the logger's)."""
        place = self._where() if where is None else where
        words = describe_full_disk(error, place if isinstance(place, (str, os.PathLike)) else os.curdir)
        message = f"{self.owner} could not {what} in {place}"
        if self.on_error == "raise":
            self.raised = True
            found = full_disk_error(error)
            if words is not None and found is not None:
                raise OSError(found.errno, f"{message}: {words}") from error
            raise error
        self.failures += 1
        if self._state is not None:
            self._state.count_failed_write(self._writer)
        reason = words if words is not None else f"{type(error).__name__}: {error}"
        if self.on_error == "warn":
            self._log.warning("%s: %s; training goes on", message, reason)
            return
        self.disabled = True
        self._log.warning("%s: %s; the logger is disabled, training goes on", message, reason)

    def warn(self, message: str) -> None:
        """A warning about this logger that is not a backend failure (e.g. a value logged while nothing is open)."""
        self._log.warning("%s: %s", self.owner, message)
