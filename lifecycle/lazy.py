"""Package attributes imported on first use: how ``callbacks`` and ``trainers`` export names whose modules import
torch, while ``from callbacks import Callback`` and ``stepbus --help`` import none."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, where: Mapping[str, str], exported: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``: ``name`` comes from module ``where[name]`` when first asked for;
    ``exported`` is the package's ``__all__``."""

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    def dir_() -> list[str]:
        return sorted(exported)

    return getattr_, dir_
