"""Inline reStructuredText of docstrings as plain text (``stepbus callbacks``) or as Markdown (the reference page
docs/callbacks-reference.md).

Plain text keeps the words and drops the markup: a literal in double backquotes shows its content, a role such as
``:class:`~callbacks.ema.EMA``` its last name (``EMA``), emphasis its words. Markdown turns literals and roles into
code spans, keeps emphasis, and escapes what it would read as markup among the other words (``<run_dir>`` would be
an HTML tag).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["code_span", "markdown_text", "plain_text"]

_INLINE = re.compile(
    r"``(?P<literal>.+?)``"
    r"|:(?P<role>[A-Za-z][\w.:+-]*):`(?P<target>[^`]+)`"
    r"|`(?P<default>[^`]+)`_{0,2}"
    r"|\*\*(?P<strong>[^*\s](?:[^*]*[^*\s])?)\*\*"
    r"|\*(?P<emphasis>[^*\s](?:[^*]*[^*\s])?)\*"
)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_<>\[\]|])")


def plain_text(rst: str) -> str:
    """``rst`` with its inline markup rendered as plain words."""
    return _render(rst, lambda text: text, lambda code: code, lambda kind, text: text)


def markdown_text(rst: str) -> str:
    """``rst`` as Markdown: code and roles as code spans, emphasis kept, the other words escaped."""
    return _render(rst, _escape, code_span, lambda kind, text: f"{kind}{_escape(text)}{kind}")


def code_span(code: str) -> str:
    """``code`` as a Markdown code span, fenced with more backticks than it holds; ``|`` escaped for tables."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {code} " if code.startswith("`") or code.endswith("`") else code
    return f"{fence}{padded}{fence}".replace("|", "\\|")


def _render(
    rst: str, words: Callable[[str], str], code: Callable[[str], str], emphasis: Callable[[str, str], str]
) -> str:
    parts: list[str] = []
    position = 0
    for match in _INLINE.finditer(rst):
        parts.append(words(rst[position : match.start()]))
        position = match.end()
        if match["literal"] is not None:
            parts.append(code(match["literal"]))
        elif match["target"] is not None:
            parts.append(code(_role_text(match["target"])))
        elif match["default"] is not None:
            parts.append(code(_role_text(match["default"])))
        elif match["strong"] is not None:
            parts.append(emphasis("**", match["strong"]))
        else:
            parts.append(emphasis("*", match["emphasis"]))
    parts.append(words(rst[position:]))
    return "".join(parts)


def _role_text(target: str) -> str:
    """What a role shows: ``~a.b.C`` is ``C``, ``title <a.b.C>`` is ``title``, ``!name`` is ``name``."""
    titled = re.fullmatch(r"(?s)(.*?)\s*<[^<>]+>", target)
    if titled and titled[1]:
        return titled[1]
    target = target.lstrip("!")
    return target[1:].rpartition(".")[2] if target.startswith("~") else target


def _escape(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
