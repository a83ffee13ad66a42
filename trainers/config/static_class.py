"""A class's docstring and config parameters read from its module's source, without importing the module.

Listing the callbacks (``stepbus callbacks``) needs each class's docstring and typed ``__init__`` signature, and
importing a callback's module imports torch, which takes seconds. The source says the same: :func:`read_class`
parses the module, finds the class and its ``__init__``, and resolves each annotation and default as Python would
-- names bound in the module (constants, ``Literal`` aliases, imports, followed into other modules' sources),
builtins, and the standard library (imported: it is cheap and holds no torch). Each parameter is then built by
:func:`trainers.config.params.make_param`, as for an imported class, so both paths agree (a test compares them for
every built-in callback).

Whatever the source alone cannot settle raises :class:`NotStatic`, and the caller imports the class instead: a
decorated class or ``__init__``, a metaclass or ``__init_subclass__`` on the way, an inherited ``__init__``, a
module without ``from __future__ import annotations``, a name bound twice or conditionally (``try``, ``if`` -- except
under ``if TYPE_CHECKING:``, which binds nothing at run time), a module-level ``__getattr__``, a star import,
``globals()``, a default or constant that is not a plain expression (a call), a class derived from an ``Enum`` or a
path type (a config value can be one). Other classes stand in as empty classes of the same name: that is all a
signature needs of them, since no config value can be one.
"""

from __future__ import annotations

import abc
import ast
import builtins
import enum
import importlib
import inspect
import os
import sys
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import PurePath
from typing import Any

from trainers.config.params import REQUIRED, CodeOnly, Param, make_param
from trainers.config.source_bindings import bound_names, type_checking_block

__all__ = ["ClassSource", "NotStatic", "read_class", "read_constant"]

#: the expressions evaluated from source: names, attributes, subscripts, literals and ``|`` (calls: only these below)
_PLAIN_NODES: tuple[type[ast.AST], ...] = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Attribute)
_PLAIN_NODES += (ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.BinOp, ast.BitOr)
_PLAIN_NODES += (ast.UnaryOp, ast.USub, ast.UAdd)
#: the only calls evaluated from source: functions of their arguments alone (``USES = typing.get_args(Use)``)
_PURE_CALLS: tuple[Any, ...] = (typing.get_args, typing.get_origin, tuple, frozenset, list)
#: bases whose subclasses a config value can be (see ``params._code_only``): such a class must be imported
_VALUE_BASES = (enum.Enum, PurePath, os.PathLike)
#: names through which a module can bind names the source does not show
_DYNAMIC = {"globals", "exec", "__getattr__"}


class NotStatic(Exception):
    """The source alone does not settle it: import the module instead."""


@dataclass(frozen=True)
class ClassSource:
    """What the source says of a class: its name, its docstring as written, its ``__init__`` parameters."""

    name: str
    doc: str | None
    params: dict[str, Param]


def read_class(target: str, *, skip: Sequence[str] = ()) -> ClassSource:
    """The class ``"module:Class"`` read from source, its parameters as :func:`trainers.config.params.params_of`
    gives them (``self``/``cls``, ``*args``/``**kwargs``, positional-only ones and ``skip`` left out);
    :class:`NotStatic` when only an import can tell."""
    module_name, _, attribute = target.partition(":")
    if not attribute or "." in attribute:
        raise NotStatic(f"{target}: not a module-level class")
    module = _Reader().module(module_name)
    node = module.definition(attribute)
    if not isinstance(node, ast.ClassDef):
        raise NotStatic(f"{target}: not a class statement")
    if attribute in module.patched:
        raise NotStatic(f"{target}: the module assigns attributes of {attribute}")
    module.value(attribute, annotation=False)  # checks the decorators, the metaclass and the bases
    init = _own_init(node, target)
    class_names = bound_names(node.body)
    lookup = _Lookup(module, annotation=True)
    params: dict[str, Param] = {}
    for arg, default in _arguments(init.args):
        if arg.arg in ("self", "cls") or arg.arg in skip:
            continue
        if default is not None and class_names & {n.id for n in ast.walk(default) if isinstance(n, ast.Name)}:
            raise NotStatic(f"{target}: the default of {arg.arg} reads a name of the class body")
        value = REQUIRED if default is None else _plain_value(module.evaluate(default, annotation=False), target)
        raw: Any = inspect.Parameter.empty
        if arg.annotation is not None:
            raw = ast.unparse(arg.annotation)
            module.evaluate(arg.annotation, annotation=True)  # a failure is NotStatic here, not CodeOnly below
        params[arg.arg] = make_param(arg.arg, raw, value, lookup)
        if lookup.failures:
            raise NotStatic(f"{target}: {lookup.failures[0]}")
    return ClassSource(node.name, ast.get_docstring(node, clean=False), params)


def read_constant(module_name: str, name: str) -> Any:
    """The module-level constant ``name`` of ``module_name`` from source; :class:`NotStatic` unless it is a plain
    expression bound once."""
    return _plain_value(_Reader().module(module_name).value(name, annotation=False), f"{module_name}:{name}")


# ---------------------------------------------------------------------------------------------------- internals
def _plain_value(value: Any, where: str) -> Any:
    """``value`` unless it is a stand-in (a class or module read from source), which only an import can give."""
    if isinstance(value, _ModuleStandIn) or getattr(value, "__stand_in__", False):
        raise NotStatic(f"{where}: the value is a class or module defined in source, not a constant")
    return value


def _own_init(node: ast.ClassDef, target: str) -> ast.FunctionDef:
    inits = [s for s in node.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name == "__init__"]
    if len(inits) != 1 or not isinstance(inits[0], ast.FunctionDef) or inits[0].decorator_list:
        raise NotStatic(f"{target}: no single undecorated __init__ of its own")
    rebound = bound_names(node.body, functions=False) & {"__init__", "__doc__", "__signature__"}
    if rebound:
        raise NotStatic(f"{target}: the class body assigns {', '.join(sorted(rebound))}")
    return inits[0]


def _arguments(args: ast.arguments) -> Iterator[tuple[ast.arg, ast.expr | None]]:
    """The keyword-settable parameters with their defaults (positional-only ones are left out, as ``params_of``
    leaves them out)."""
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    skipped = len(args.posonlyargs)
    yield from zip(positional[skipped:], defaults[skipped:], strict=True)
    yield from zip(args.kwonlyargs, args.kw_defaults, strict=True)


def _check_real_base(base: Any, target: str) -> None:
    """A base that is a real class (imported already, or from the standard library) must not make the class one a
    config value can be, nor change its subclasses as they are created."""
    if not isinstance(base, type):
        return
    if issubclass(base, _VALUE_BASES):
        raise NotStatic(f"{target}: derives from {base.__name__}, which a config value can be")
    if type(base) not in (type, abc.ABCMeta) or "__init_subclass__" in {
        name for klass in base.__mro__[:-1] for name in vars(klass)
    }:
        raise NotStatic(f"{target}: {base.__name__} changes its subclasses as they are created")


class _Reader:
    """Parses modules on demand (each once) and finds them without importing them or their packages."""

    def __init__(self) -> None:
        self._modules: dict[str, _Module] = {}

    def module(self, name: str) -> _Module:
        """``name`` parsed (once); :class:`NotStatic` when it has no readable source -- the import then says why."""
        if name not in self._modules:
            spec = _locate(name)
            if spec is None or not str(spec.origin).endswith(".py"):
                raise NotStatic(f"{name}: no Python source found")
            try:
                get_source = getattr(spec.loader, "get_source", None)
                source = get_source(name) if callable(get_source) else None
                tree = ast.parse(source) if isinstance(source, str) else None
            except (ImportError, OSError, SyntaxError, ValueError) as exc:
                raise NotStatic(f"{name}: {type(exc).__name__}: {exc}") from None
            if tree is None:
                raise NotStatic(f"{name}: no Python source found")
            package = spec.submodule_search_locations is not None
            self._modules[name] = _Module(name, tree, self, package=package)
        return self._modules[name]

    def module_value(self, name: str) -> Any:
        """The module ``name`` as an expression sees it: the real one when it is imported already or in the standard
        library, else a stand-in whose attributes are read from its source."""
        if name in sys.modules:
            return sys.modules[name]
        if name.partition(".")[0] in sys.stdlib_module_names:
            return importlib.import_module(name)
        return _ModuleStandIn(self.module(name))


def _locate(name: str) -> ModuleSpec | None:
    """``name``'s spec from the import system's finders, without running any package ``__init__`` on the way."""
    parent = name.rpartition(".")[0]
    path: list[str] | None = None
    if parent:
        loaded = sys.modules.get(parent)
        locations = getattr(loaded, "__path__", None)
        if locations is None:
            parent_spec = _locate(parent)
            locations = parent_spec.submodule_search_locations if parent_spec is not None else None
        if locations is None:
            return None
        path = list(locations)
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec(name, path)
        except (ImportError, ValueError):
            continue
        if isinstance(spec, ModuleSpec):
            return spec
    return None


class _Module:
    """One parsed module: the names its top level binds once and unconditionally, each evaluated on demand."""

    def __init__(self, name: str, tree: ast.Module, reader: _Reader, *, package: bool) -> None:
        self.name = name
        self.package = name if package else name.rpartition(".")[0]
        self.reader = reader
        self.future_annotations = any(
            isinstance(s, ast.ImportFrom) and s.module == "__future__" and any(a.name == "annotations" for a in s.names)
            for s in tree.body
        )
        everywhere = list(ast.walk(tree))
        #: names whose attributes the module assigns (``Cls.__init__ = ...``)
        self.patched = {
            n.value.id
            for n in everywhere
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
        }
        self._open = any(
            (isinstance(n, ast.Name) and n.id in _DYNAMIC) or (isinstance(n, ast.alias) and n.name == "*")
            for n in everywhere
        ) or any(isinstance(s, ast.FunctionDef) and s.name == "__getattr__" for s in tree.body)  # any name may exist
        self._unsure = {name for n in everywhere if isinstance(n, ast.Global) for name in n.names}
        self._definitions: dict[str, object] = {}
        self._values: dict[str, Any] = {}
        self._busy: set[str] = set()
        for statement in tree.body:
            self._record(statement)

    def _record(self, statement: ast.stmt) -> None:
        bound: list[tuple[str, object]] = []
        if isinstance(statement, ast.Import):
            bound = [(a.asname or a.name.partition(".")[0], a) for a in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            bound = [(a.asname or a.name, _FromImport(statement, a.name)) for a in statement.names]
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            if isinstance(statement.targets[0], ast.Name):
                bound = [(statement.targets[0].id, statement.value)]
            else:
                self._unsure |= bound_names([statement])
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            if statement.value is not None:  # ``x: int`` alone binds nothing
                bound = [(statement.target.id, statement.value)]
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound = [(statement.name, statement)]
        elif type_checking_block(statement):
            assert isinstance(statement, ast.If)
            self._unsure |= bound_names(statement.orelse)
        else:
            self._unsure |= bound_names([statement])
        for name, node in bound:
            if name in self._definitions:
                self._unsure.add(name)
            self._definitions[name] = node

    def definition(self, name: str) -> object:
        """The one statement (or expression) that binds ``name``."""
        if not self.binds(name):
            raise NotStatic(f"{self.name} does not define {name}")
        return self._definitions[name]

    def binds(self, name: str) -> bool:
        """Whether the module defines ``name`` at run time; :class:`NotStatic` when the source cannot tell."""
        if name in self._unsure or (self._open and name not in self._definitions):
            raise NotStatic(f"{self.name}.{name} is bound more than once, conditionally, or dynamically")
        return name in self._definitions

    def value(self, name: str, *, annotation: bool) -> Any:
        """What ``name`` is in the module; an unbound name is a builtin, else (in an annotation, as
        ``params._Namespace`` resolves it) ``CodeOnly``, else :class:`NotStatic`."""
        if not self.binds(name):
            if hasattr(builtins, name):
                return getattr(builtins, name)
            if annotation:
                return CodeOnly
            raise NotStatic(f"{self.name}: {name} is not defined")
        if name not in self._values:
            if name in self._busy:
                raise NotStatic(f"{self.name}.{name} refers to itself")
            self._busy.add(name)
            try:
                self._values[name] = self._evaluate_definition(name, self._definitions[name])
            finally:
                self._busy.discard(name)
        return self._values[name]

    def _evaluate_definition(self, name: str, node: object) -> Any:
        if isinstance(node, ast.alias):  # import a.b [as c]
            return self.reader.module_value(node.name if node.asname else node.name.partition(".")[0])
        if isinstance(node, _FromImport):
            return node.resolve(self)
        if isinstance(node, ast.ClassDef):
            return self._stand_in(node)
        if isinstance(node, ast.expr):
            return self.evaluate(node, annotation=False)
        raise NotStatic(f"{self.name}.{name} is a {type(node).__name__}, not a value")

    def _stand_in(self, node: ast.ClassDef) -> type:
        """An empty class of ``node``'s name, once its statement is known to make an ordinary class."""
        target = f"{self.name}:{node.name}"
        if node.decorator_list or node.keywords or "__init_subclass__" in bound_names(node.body):
            raise NotStatic(f"{target}: decorated, with a metaclass, or with __init_subclass__")
        for base in node.bases:
            _check_real_base(self.evaluate(base, annotation=False), target)
        return type(node.name, (), {"__module__": self.name, "__qualname__": node.name, "__stand_in__": True})

    def _pure_call(self, node: ast.AST) -> bool:
        """Whether ``node`` calls one of ``_PURE_CALLS`` with positional arguments (those are checked apart)."""
        if not isinstance(node, ast.Call) or node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            return False
        return any(self.evaluate(node.func, annotation=False) is pure for pure in _PURE_CALLS)

    def evaluate(self, expression: ast.expr, *, annotation: bool) -> Any:
        """A plain expression of this module's source, evaluated; :class:`NotStatic` for anything else."""
        wrapped = ast.Expression(expression)
        for node in ast.walk(wrapped):
            if not isinstance(node, _PLAIN_NODES) and not self._pure_call(node):
                raise NotStatic(f"{self.name}: {ast.unparse(expression)} is not a plain expression")
        try:
            code = compile(wrapped, self.name, "eval")
            return eval(code, {"__builtins__": {}}, _Lookup(self, annotation=annotation))
        except NotStatic:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever fails here is settled by importing the module
            raise NotStatic(f"{self.name}: {ast.unparse(expression)}: {type(exc).__name__}: {exc}") from None


class _FromImport:
    """``from module import attribute`` at a module's top level."""

    def __init__(self, statement: ast.ImportFrom, attribute: str) -> None:
        self.statement = statement
        self.attribute = attribute

    def resolve(self, importer: _Module) -> Any:
        level, attribute, source = self.statement.level, self.attribute, self.statement.module or ""
        if level:
            package = importer.package.rsplit(".", level - 1)[0] if level > 1 else importer.package
            source = f"{package}.{source}" if source else package
        loaded = sys.modules.get(source)
        if loaded is None and source.partition(".")[0] in sys.stdlib_module_names:
            loaded = importlib.import_module(source)
        if loaded is not None:  # imported already: the real thing (a lazy package's __getattr__ imports it)
            if hasattr(loaded, attribute):
                return getattr(loaded, attribute)
            return importer.reader.module_value(f"{source}.{attribute}")
        module_source = importer.reader.module(source)
        if not module_source.binds(attribute):  # a submodule: ``from package import module``
            return importer.reader.module_value(f"{source}.{attribute}")
        return module_source.value(attribute, annotation=False)


class _ModuleStandIn:
    """A module not imported: its attributes are the values its source binds."""

    def __init__(self, module: _Module) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if not self._module.binds(name):
            return self._module.reader.module_value(f"{self._module.name}.{name}")
        return self._module.value(name, annotation=False)


class _Lookup(dict[str, Any]):
    """The names an expression of ``module`` sees, as ``eval`` locals and as the module globals handed to
    ``make_param``. Since ``make_param`` turns any failure into ``CodeOnly``, what the source could not settle is
    also kept in :attr:`failures`."""

    def __init__(self, module: _Module, *, annotation: bool) -> None:
        super().__init__()
        if annotation and not module.future_annotations:
            raise NotStatic(f"{module.name}: without `from __future__ import annotations`, annotations are objects")
        self.module = module
        self.annotation = annotation
        self.failures: list[str] = []

    def __missing__(self, key: str) -> Any:
        try:
            return self.module.value(key, annotation=self.annotation)
        except NotStatic as exc:
            self.failures.append(str(exc))
            raise

    def __contains__(self, key: object) -> bool:  # ``params._Namespace`` asks before it reads
        if not isinstance(key, str):
            return False
        try:
            return self.module.binds(key)
        except NotStatic as exc:
            self.failures.append(str(exc))
            raise
