"""``ConfigError``: every problem found in a configuration, each with where it is and what would be valid.

Torch-free on purpose: the CLI reports a bad config file without importing torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["TOO_DEEP", "ConfigError", "Problem", "did_you_mean", "show_value"]

#: the problem of a config whose nesting exceeds Python's recursion limit (or a YAML anchor that contains itself)
TOO_DEEP = "nested too deeply (or a YAML anchor that contains itself): a config is a few levels of mappings"


@dataclass(frozen=True)
class Problem:
    """One problem: the dotted key path (``callbacks.checkpointer.keep_last``), the message, which says what was
    found and what is valid."""

    path: str
    message: str

    def __str__(self) -> str:
        path = self.path if self.path.isprintable() else repr(self.path)  # one line per problem, always
        return f"{path}: {self.message}" if path else self.message


class ConfigError(ValueError):
    """A configuration that cannot be used. ``problems`` lists all of them (not only the first), ``source`` names
    the file (or ``--set``, or ``<dict>`` for a config given in code)."""

    def __init__(self, problems: Sequence[Problem] | Problem | str, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{where}{self.problems[0]}"
        lines = [f"{where}{len(self.problems)} problems"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)

    def with_source(self, source: str) -> ConfigError:
        """The same problems, attributed to ``source`` (a file name) when none was set."""
        return self if self.source else ConfigError(self.problems, source)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show_value(value: object, limit: int = 60) -> str:
    """``value`` as it appears in a message: its repr, shortened, with its type for non-obvious cases."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's digit limit, a structure that contains itself
        text = f"<{type(value).__name__} too large to show>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(value, (bool, int, float, str)) or value is None:
        return text
    return f"{text} ({type(value).__name__})"
