"""stepbus's three top-level packages come from one installation, or an import error says which file is in the way.

stepbus's import names -- ``lifecycle``, ``callbacks``, ``trainers`` -- are plain words, so a user's
``callbacks.py`` (or ``trainers.py``, ``lifecycle.py``, or a ``callbacks/`` package) beside their script comes first
on ``sys.path`` and shadows stepbus's package. Left alone, that surfaces far from its cause (``cannot import name
'Callback' from 'callbacks'``). Each of the three packages calls :func:`check_installation` as it is imported: the
other two must resolve beside it, else :class:`ShadowedPackageError` names the file that shadows one and says to
rename it. ``trainers`` and ``callbacks`` check ``lifecycle`` before importing from it (a module of the user's named
``lifecycle`` has no ``lifecycle.installation``), with the same message.

What it catches: any shadowing file, as soon as a stepbus package is imported -- ``from trainers import ...`` or
``from lifecycle import ...`` with a ``callbacks.py`` beside the script, ``from callbacks import ...`` with a
``trainers.py`` or ``lifecycle.py``, and a shadowing module that itself imports stepbus (a ``callbacks.py`` of the
user's callbacks that says ``from lifecycle import Callback``). What it cannot catch: a script whose first stepbus
import names the shadowed package itself, when the shadowing file imports nothing of stepbus (``from callbacks import
Callback`` with a ``callbacks.py`` that does not): Python then runs only the user's file, and its own ``ImportError``
(``cannot import name 'Callback' from 'callbacks' (/path/to/callbacks.py)``) is what the user sees.

The check costs one ``find_spec`` per package not yet imported (a look-up in ``sys.path``'s cached directory
listings; nothing is imported) and no state: it runs again, the same way, whenever a package is imported.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from pathlib import Path

__all__ = ["PACKAGES", "ShadowedPackageError", "check_installation", "shadowed_message"]

#: stepbus's top-level import packages, which must all come from the folder that holds this one
PACKAGES = ("lifecycle", "callbacks", "trainers")


class ShadowedPackageError(ImportError):
    """A module that is not stepbus's answers to the name of one of stepbus's packages."""


def shadowed_message(name: str, found: str) -> str:
    """What the error says: the file that shadows stepbus's package ``name``, and to rename it."""
    return (
        f"{found} shadows stepbus's package {name!r}: `import {name}` finds it first on sys.path. "
        f"Rename it (stepbus's packages are {', '.join(PACKAGES)})."
    )


def check_installation() -> None:
    """Raise :class:`ShadowedPackageError` when ``lifecycle``, ``callbacks`` or ``trainers`` resolves to a module
    that does not sit beside this installation's ``lifecycle`` package."""
    home = Path(__file__).resolve().parent.parent
    for name in PACKAGES:
        found = _found(name)
        if found is not None and Path(found).resolve().parent != home / name:
            raise ShadowedPackageError(shadowed_message(name, found), name=name, path=found)


def _found(name: str) -> str | None:
    """The file ``import name`` runs (a package's ``__init__.py``), or a namespace package's folder; ``None`` when
    nothing by that name can be imported or where it comes from is unknown."""
    module = sys.modules.get(name)
    spec: ModuleSpec | None
    if module is not None:
        spec = getattr(module, "__spec__", None)
        if spec is None:
            return getattr(module, "__file__", None)
    else:
        spec = find_spec(name)
    if spec is None:
        return None
    if spec.has_location and spec.origin is not None:
        return spec.origin
    locations = list(spec.submodule_search_locations or ())
    return locations[0] if locations else None
