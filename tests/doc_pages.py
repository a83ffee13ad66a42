"""Reading the documentation the tests check: README.md and the pages in docs/, their fenced code blocks (each
with the ``<!-- test: NAME -->`` marker that says which check runs it), their links and their headings' anchors."""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as pip ships it
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: pages another test owns block by block: the page of a package of your own runs as a whole
#: (tests/test_own_model_page.py), and the callbacks reference is generated from the registry
CHECKED_AS_A_WHOLE = ("docs/own-model.md", "docs/callbacks-reference.md")

_MARKER = re.compile(r"^<!-- test: ([a-z0-9-]+) -->$")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w-]*)\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, the check its marker names (None: no marker), its text."""

    page: str  #: relative to the repository root, e.g. "docs/config.md"
    line: int  #: 1-based line of the opening fence
    language: str
    marker: str | None
    text: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.marker or self.language}"


def pages() -> list[Path]:
    """README.md, then every page of docs/ (sorted)."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, with the marker on the last non-blank line before it (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = len(opening["indent"])
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{relative(path)}:{index + 1}: a code block is never closed"
        body = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        before = [line.strip() for line in lines[:index] if line.strip()]
        marker = _MARKER.match(before[-1]) if before else None
        found.append(Block(relative(path), index + 1, opening["language"], marker[1] if marker else None, body))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]


def prose(path: Path) -> str:
    """The page without its fenced blocks and inline code spans: the text links and headings are read from."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "code", text)


def links(path: Path) -> list[str]:
    """The targets of the page's markdown links and images, outside code."""
    return [match["target"] for match in _LINK.finditer(prose(path))]


def mkdocs_slug(title: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's ``toc`` slugify, the default)."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading when it shows the file: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    """The page's headings as written (inline code marks removed, as both renderers remove them from anchors)."""
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [match["title"].replace("`", "") for line in text.splitlines() if (match := _HEADING.match(line))]


def load_toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)
