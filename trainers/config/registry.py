"""Names for callbacks and trainers, so a config file can say ``checkpointer:`` or ``trainer: {name: demo}``.

A :class:`Registry` is an ordinary object (no module-level registry to mutate): :meth:`Registry.default` holds the
built-in callbacks and trainers plus every plugin installed under the entry-point groups ``stepbus.callbacks`` and
``stepbus.trainers``; :meth:`Registry.register_callback` and :meth:`Registry.register_trainer` add more in code. A
name registered twice -- by two plugins, or a plugin shadowing a built-in -- is an error that names both sources,
never a silent override.

Built-ins are recorded as ``module:attribute`` and imported on first use, so listing names costs no torch import;
:meth:`Entry.describe` reads a class's docstring and parameters from its source where that settles them
(:mod:`trainers.config.static_class`), so listing what the callbacks take (``stepbus callbacks``) costs none either.
A trainer is any callable ``factory(*, run_dir, seed, callbacks, **params) -> BaseTrainer``; its typed keyword
parameters are the keys of the config's ``trainer:`` block.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from callbacks import BUILT_IN
from lifecycle import Callback
from trainers.config.errors import ConfigError, Problem, did_you_mean
from trainers.config.params import Param, params_of
from trainers.config.static_class import ClassSource, NotStatic, read_class

__all__ = ["BUILTIN_CALLBACKS", "BUILTIN_TRAINERS", "Entry", "Registry", "RegistryError", "first_paragraph"]

Kind = Literal["callback", "trainer"]
_GROUPS: dict[Kind, str] = {"callback": "stepbus.callbacks", "trainer": "stepbus.trainers"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: config name -> "module:Class" of the built-in callbacks (registered in one place: ``callbacks.BUILT_IN``)
BUILTIN_CALLBACKS: dict[str, str] = BUILT_IN

#: config name -> "module:attribute" of the built-in trainer factories
BUILTIN_TRAINERS: dict[str, str] = {
    "demo": "trainers.apps.demo:demo_trainer",
    "gan": "trainers.apps.gan:gan_trainer",
    "image_field": "trainers.apps.image_field.trainer:image_field_trainer",
}

#: parameters of a trainer factory that the builder supplies (not config keys of the ``trainer:`` block)
FACTORY_ARGS = ("run_dir", "seed", "callbacks")


class RegistryError(ConfigError):
    """A name that cannot be registered (a clash, a bad name) or a plugin that cannot be loaded."""


@dataclass
class Entry:
    """One registered name: what it is, where it came from, and (after :meth:`load`) the object itself."""

    name: str
    kind: Kind
    source: str  #: "built-in", "code", or "plugin <distribution> (<module:attr>)"
    target: str  #: "module:attribute", or the qualified name of an object registered in code
    _obj: Any = field(default=None, repr=False)
    _params: dict[str, Param] | None = field(default=None, repr=False)

    def load(self) -> Any:
        """The class or factory (imported on first use); a :class:`RegistryError` names the plugin that failed."""
        if self._obj is None:
            module_name, _, attribute = self.target.partition(":")
            try:
                obj: Any = importlib.import_module(module_name)
                for part in attribute.split("."):
                    obj = getattr(obj, part)
            except Exception as exc:
                raise RegistryError(
                    Problem(
                        self.name,
                        f"{self.kind} {self.name!r} from {self.source} could not be loaded: "
                        f"{type(exc).__name__}: {exc}",
                    )
                ) from exc
            self._obj = obj
        return self._obj

    def params(self) -> dict[str, Param]:
        """The configurable parameters (from the typed signature), computed once."""
        if self._params is None:
            self._params = params_of(self.load(), skip=self._skip)
        return self._params

    def describe(self) -> ClassSource:
        """Name, docstring (as written) and parameters: read from the source when it settles them and the module is
        not imported yet -- so listing them imports no torch -- else from the loaded object (the same values: see
        :mod:`trainers.config.static_class`)."""
        if self._obj is None and self.target.partition(":")[0] not in sys.modules:
            try:
                return read_class(self.target, skip=self._skip)
            except NotStatic:
                pass
        obj = self.load()
        return ClassSource(getattr(obj, "__name__", self.name), getattr(obj, "__doc__", None), self.params())

    def summary(self) -> str:
        """The first paragraph of the docstring, on one line (reStructuredText markup as written)."""
        return first_paragraph(self.describe().doc)

    @property
    def _skip(self) -> tuple[str, ...]:
        return FACTORY_ARGS if self.kind == "trainer" else ()


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring (up to its first blank line), its lines joined with single spaces."""
    lines = (doc or "").expandtabs().strip().splitlines()
    paragraph: list[str] = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line.strip())
    return " ".join(" ".join(paragraph).split())


class Registry:
    """Name -> callback class and name -> trainer factory (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[Kind, dict[str, Entry]] = {"callback": {}, "trainer": {}}

    @classmethod
    def default(cls, *, plugins: bool = True) -> Registry:
        """The built-ins, plus the installed plugins unless ``plugins=False``."""
        registry = cls()
        for name, target in BUILTIN_CALLBACKS.items():
            registry._add(Entry(name, "callback", "built-in", target))
        for name, target in BUILTIN_TRAINERS.items():
            registry._add(Entry(name, "trainer", "built-in", target))
        if plugins:
            registry.load_plugins()
        return registry

    def load_plugins(self) -> None:
        """Add every entry point of the ``stepbus.callbacks`` and ``stepbus.trainers`` groups (imported lazily)."""
        for kind, group in _GROUPS.items():
            for point in entry_points(group=group):
                dist = point.dist.name if point.dist is not None else "unknown distribution"
                try:
                    self._add(Entry(point.name, kind, f"plugin {dist} ({point.value})", point.value))
                except RegistryError as exc:
                    raise RegistryError(exc.problems, f"the installed plugins (entry points {group})") from None

    def register_callback(self, name: str, cls: type) -> None:
        """Make ``cls`` (a ``Callback`` subclass) available as ``name`` in configs."""
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise RegistryError(Problem(name, f"register_callback needs a Callback subclass, got {cls!r}"))
        self._add(Entry(name, "callback", "code", f"{cls.__module__}:{cls.__qualname__}", cls))

    def register_trainer(self, name: str, factory: Callable[..., Any]) -> None:
        """Make ``factory(*, run_dir, seed, callbacks, **params)`` available as ``trainer: {name: <name>}``."""
        if not callable(factory):
            raise RegistryError(Problem(name, f"register_trainer needs a callable factory, got {factory!r}"))
        target = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"
        self._add(Entry(name, "trainer", "code", target, factory))

    def entry(self, kind: Kind, name: str, path: str) -> Entry:
        """The entry for ``name``, or a :class:`ConfigError` at ``path`` listing the valid names."""
        found = self._entries[kind].get(name)
        if found is None:
            names = sorted(self._entries[kind])
            raise ConfigError(
                Problem(path, f"unknown {kind} {name!r}{did_you_mean(name, names)}; known: {', '.join(names)}")
            )
        return found

    def names(self, kind: Kind) -> list[str]:
        """Registered names of ``kind``, in registration order."""
        return list(self._entries[kind])

    def entries(self, kind: Kind) -> Iterator[Entry]:
        yield from self._entries[kind].values()

    def _add(self, entry: Entry) -> None:
        if not isinstance(entry.name, str) or not _NAME.match(entry.name):
            raise RegistryError(
                Problem(
                    str(entry.name),
                    f"{entry.kind} name {entry.name!r} from {entry.source} is not valid: use lower-case letters, "
                    "digits and underscores, starting with a letter (e.g. 'my_logger')",
                )
            )
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise RegistryError(
                Problem(
                    entry.name,
                    f"{entry.kind} name {entry.name!r} is registered twice: by {existing.source} and by "
                    f"{entry.source}; rename one (names must be unique)",
                )
            )
        self._entries[entry.kind][entry.name] = entry
