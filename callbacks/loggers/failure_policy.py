"""What the logging callbacks share about their backends (not a callback): the "is the optional package installed"
check and the ``on_error`` policy for a backend that fails mid-run.

A logger is an observer: a full disk under its event files or a W&B hiccup must not, by default, cost the user
their training run -- but it must not fail silently either. :class:`BackendGuard` runs each backend call and applies
the policy the user chose: ``"disable"`` (default: warn once, stop logging, keep training), ``"warn"`` (warn at each
failure, keep trying) or ``"raise"`` (the failure fails the run, named by the bus like any handler error).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Literal, get_args

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
        raise ModuleNotFoundError(f'{owner} needs the {module} package: pip install "stepbus[{extra}]"', name=module)


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

    def run(self, what: str, action: Callable[[], None]) -> bool:
        """Run ``action`` unless disabled; True when it ran and succeeded. ``what`` completes "could not ..."."""
        if self.disabled:
            return False
        try:
            action()
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self.failures += 1
            where = f"{self.owner} could not {what} in {self._where()}"
            if self.on_error == "warn":
                self._log.warning("%s: %s: %s; training goes on", where, type(exc).__name__, exc)
                return False
            self.disabled = True
            self._log.warning("%s: %s: %s; the logger is disabled, training goes on", where, type(exc).__name__, exc)
            return False
        return True

    def warn(self, message: str) -> None:
        """A warning about this logger that is not a backend failure (e.g. a value logged while nothing is open)."""
        self._log.warning("%s: %s", self.owner, message)
