"""A callable's configurable parameters, read once from its typed signature, and the check of config values
against them (with pydantic), so a callback or trainer declares its parameters exactly once: in ``__init__``.

A schedule parameter (annotated ``ScheduleSpec``) is also parsed as a schedule, so ``every: 0it`` is reported at
``callbacks.<name>.every`` with the schedule's own message.

Annotations are strings here (``from __future__ import annotations``); names only imported for type checking
(``PruneFn``, ``SchedulerSpec``) resolve to :class:`CodeOnly`, a type no config value can have. A parameter whose
every alternative is such a type (a callable, a ``Console``) is *code-only*: it can be passed in Python but not
written in a config file, and a config that sets it is told so.
"""

from __future__ import annotations

import builtins
import enum
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, ForwardRef, Literal, Union

from trainers.config.errors import Problem, show_value
from trainers.config.strict_values import holds_nan, stray_bool

__all__ = ["REQUIRED", "CodeOnly", "Param", "check_values", "make_param", "params_of", "type_phrase"]


class CodeOnly:
    """Stands for a type that only Python code can provide (a callable, an object); no config value is one."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a parameter that has none
REQUIRED: Any = _Required()

_PLAIN = (str, int, float, bool, type(None))


@dataclass
class Param:
    """One parameter: its name, resolved type, default, whether a config may set it, and its annotation text."""

    name: str
    annotation: Any
    default: Any
    code_only: bool
    text: str
    _adapter: Any = field(default=None, repr=False, compare=False)

    @property
    def is_schedule(self) -> bool:
        """True for a schedule parameter (annotated ``ScheduleSpec``, e.g. ``every``): its value is also parsed."""
        return "ScheduleSpec" in self.text

    @property
    def expected(self) -> str:
        """What a valid value is, in words."""
        if self.is_schedule:
            return (
                "a schedule: '50it', '2ep', '10min', 'never', an integer (iterations), a mapping (every, at, start, "
                "end) or null"
            )
        return type_phrase(self.annotation)

    def validate(self, value: Any) -> Any:
        """``value`` checked (and normalised by pydantic: a list for a sequence, a float for an int given to a
        float); raises ``ValueError`` with a message that says what is valid. ``true``/``false`` where no boolean
        is wanted and NaN are refused (see ``trainers.config.strict_values``)."""
        if stray_bool(value, self.annotation, CodeOnly):
            raise ValueError(f"got {show_value(value)}; expected {self.expected}")
        if self._adapter is None:
            from pydantic import ConfigDict, TypeAdapter

            self._adapter = TypeAdapter(self.annotation, config=ConfigDict(arbitrary_types_allowed=True))
        from pydantic import ValidationError

        try:
            checked = self._adapter.validate_python(value)
        except ValidationError as exc:
            raise ValueError(_message(exc, value, self.annotation, self.expected)) from None
        if holds_nan(checked):
            raise ValueError(f"got {show_value(value)}; expected {self.expected}, and NaN is never a valid setting")
        if self.is_schedule:
            _check_schedule(checked)
        return checked


def _check_schedule(value: Any) -> None:
    """Parse a schedule value as the callback will, so that a bad one (``0it``, ``-1``) is a problem at its own key
    (``callbacks.grid_pruning.every``) rather than at the callback's block."""
    from lifecycle import Schedule

    try:
        Schedule.parse(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def params_of(obj: Callable[..., Any], *, skip: Sequence[str] = ()) -> dict[str, Param]:
    """The keyword-settable parameters of ``obj`` (a class: its ``__init__``; or a function), in order, without
    ``self``, ``*args``/``**kwargs`` and the names in ``skip``."""
    function = obj.__init__ if isinstance(obj, type) else obj  # type: ignore[misc]
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    namespace = _Namespace(vars(module) if module is not None else {})
    params: dict[str, Param] = {}
    for name, parameter in list(inspect.signature(function).parameters.items()):
        if name in ("self", "cls") or name in skip:
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            continue
        default = REQUIRED if parameter.default is inspect.Parameter.empty else parameter.default
        params[name] = make_param(name, parameter.annotation, default, namespace)
    return params


def make_param(name: str, raw: Any, default: Any, module_globals: Mapping[str, Any]) -> Param:
    """One parameter from its annotation as written (a string under ``from __future__ import annotations``, else the
    object; ``inspect.Parameter.empty`` for none), resolved against ``module_globals`` (the defining module's names,
    then builtins, then :class:`CodeOnly`) -- what :func:`params_of` does for each parameter of a signature."""
    namespace = module_globals if isinstance(module_globals, _Namespace) else _Namespace(module_globals)
    text = raw if isinstance(raw, str) else _type_text(raw)
    annotation = _resolve(raw, namespace)
    return Param(name, annotation, default, _code_only(annotation), text)


def check_values(
    params: Mapping[str, Param],
    values: Mapping[str, Any],
    path: str,
    owner: str,
    *,
    handled: Sequence[str] = (),
) -> tuple[dict[str, Any], list[Problem]]:
    """Check ``values`` (from a config) against ``params``: unknown keys (with a did-you-mean), code-only keys,
    missing required ones and bad values are problems at ``<path>.<key>``. Returns the checked values and the
    problems (the values are only meaningful without problems). Keys in ``handled`` are checked by the caller:
    valid here (and listed among the valid keys), but neither validated nor returned."""
    from trainers.config.errors import did_you_mean

    checked: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in values.items():
        where = f"{path}.{key}"
        if key in handled:
            continue
        param = params.get(key) if isinstance(key, str) else None
        if param is None:
            valid = [name for name, p in params.items() if not p.code_only or name in handled]
            hint = did_you_mean(str(key), valid)
            problems.append(Problem(where, f"unknown key for {owner}{hint}; valid keys: {', '.join(valid) or 'none'}"))
            continue
        if param.code_only:
            problems.append(
                Problem(where, f"{owner} takes {key} ({param.text}) only in Python code, not from a config file")
            )
            continue
        try:
            checked[key] = param.validate(value)
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
    for name, param in params.items():
        if param.default is REQUIRED and name not in values and not param.code_only and name not in handled:
            problems.append(Problem(f"{path}.{name}", f"{owner} needs {name} ({param.expected})"))
    return checked, problems


def type_phrase(annotation: Any) -> str:
    """A type in words, for messages and the ``stepbus callbacks`` table: ``an integer or null``."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return "any value"
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        plain = [a for a in args if a is not type(None) and not _code_only(a)]
        shown = plain or [a for a in args if a is not type(None)][:1]
        shown += [type(None)] * (type(None) in args)  # null last
        unique = list(dict.fromkeys(type_phrase(a) for a in shown))
        return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " or " + unique[-1]
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if (isinstance(annotation, type) and issubclass(annotation, (PurePath, os.PathLike))) or origin is os.PathLike:
        return "a path"
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        return f"a list of {_plural(type_phrase(args[0]))}" if args else "a list"
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is not Any:
            return f"a mapping of names to {_plural(type_phrase(args[1])).removeprefix('any of ')}"
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if annotation is CodeOnly or origin is Callable or annotation is Callable:
        return "a Python object (code only)"
    return f"a {getattr(annotation, '__name__', str(annotation))} (code only)"


# ---------------------------------------------------------------------------------------------------- internals
class _Namespace(dict[str, Any]):
    """``eval`` locals: the module's names, then builtins, then :class:`CodeOnly` for what is only imported for
    type checking (so ``str | PruneFn`` still admits a string)."""

    def __init__(self, module_globals: Mapping[str, Any]) -> None:
        super().__init__()
        self._globals = module_globals

    def __missing__(self, key: str) -> Any:
        if key in self._globals:
            return self._globals[key]
        if hasattr(builtins, key):
            return getattr(builtins, key)
        return CodeOnly


def _resolve(raw: Any, namespace: _Namespace) -> Any:
    if raw is inspect.Parameter.empty:
        return Any
    if isinstance(raw, str):
        try:
            raw = eval(raw, {"__builtins__": builtins}, namespace)
        except Exception:  # noqa: BLE001 - an annotation we cannot evaluate: only code can satisfy it
            return CodeOnly
    return _clean(raw, namespace)


def _clean(tp: Any, namespace: _Namespace) -> Any:
    """Forward references inside unions (``Union[None, "Schedule"]``) resolved; every type no config value can be
    (a class such as ``Schedule``, a callable) replaced by :class:`CodeOnly` -- otherwise pydantic would build a
    ``Schedule`` dataclass out of a mapping meant for the callback's own parser."""
    if isinstance(tp, str):
        return _resolve(tp, namespace)
    if isinstance(tp, ForwardRef):
        return _resolve(tp.__forward_arg__, namespace)
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return Union[tuple(_clean(a, namespace) for a in typing.get_args(tp))]
    return CodeOnly if _code_only(tp) else tp


def _code_only(annotation: Any) -> bool:
    """True when no config value (string, number, bool, null, list, mapping) can satisfy ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return all(_code_only(a) for a in members) if members else False
    if annotation is Any or annotation in _PLAIN or origin is Literal:
        return False
    if origin is os.PathLike or (isinstance(annotation, type) and issubclass(annotation, (PurePath, os.PathLike))):
        return False
    if origin in (list, tuple, dict, Sequence, Mapping, typing.Sequence, typing.Mapping):
        return False
    if annotation in (list, tuple, dict):
        return False
    return not (isinstance(annotation, type) and issubclass(annotation, enum.Enum))


def _message(exc: Any, value: Any, annotation: Any, expected: str) -> str:
    errors = exc.errors()
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType or len(errors) != 1:
        return f"got {show_value(value)}; expected {expected}"
    error = errors[0]
    where = "".join(f"[{part!r}]" for part in error.get("loc", ()) if not isinstance(part, str) or part)
    inner = f" at {where}" if where else ""
    return f"got {show_value(value)}; {error['msg'][0].lower()}{error['msg'][1:]}{inner}"


def _plural(text: str) -> str:
    if text.startswith("one of "):  # a list of Literal values: each item is one of them
        return "any of " + text.removeprefix("one of ")
    for article in ("an ", "a "):
        if text.startswith(article):
            word = text[len(article) :]
            return word + ("es" if word.endswith(("s", "x")) else "s") if " " not in word else word
    return text


def _type_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
