"""Which names Python statements bind, read from their syntax tree (for :mod:`trainers.config.static_class`,
which must know whether a module binds a name once and unconditionally)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence

__all__ = ["bound_names", "type_checking_block", "walk_block"]


def bound_names(body: Sequence[ast.stmt], *, functions: bool = True) -> set[str]:
    """Every name a block of statements binds, at any depth but not inside the functions and classes it defines
    (with ``functions=False``, not the names of the functions either)."""
    names: set[str] = set()
    for statement in body:
        for node in walk_block(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                names.add(node.id)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.partition(".")[0])
            elif isinstance(node, ast.ClassDef | ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
                names.add(node.name or "")
            elif functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


def walk_block(statement: ast.stmt) -> Iterator[ast.AST]:
    """``ast.walk`` that does not enter function, class or lambda bodies (the names bound there are theirs)."""
    pending: list[ast.AST] = [statement]
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))


def type_checking_block(statement: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``), whose body never runs."""
    if not isinstance(statement, ast.If):
        return False
    test = statement.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
