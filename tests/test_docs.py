"""The documentation holds together: every relative link of README.md and docs/ reaches a file and an anchor (on
GitHub and in the MkDocs site alike), every repository path the pages name exists, the benchmark tables are the
result files' own rows, the built-in callbacks table states the real defaults and priorities, and the strict MkDocs
build passes -- and fails on a broken link, a missing anchor or a page left out of the nav.

The code blocks themselves are run or checked in tests/test_docs_examples.py."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_pages import DOCS, ROOT, github_slug, headings, links, mkdocs_slug, pages, relative

BENCHMARK_RESULTS = ("results.md", "results-checkpoint.md", "results-gui.md", "results-strategies.md")


def _anchors(page: Path) -> tuple[set[str], set[str]]:
    titles = headings(page)
    return {mkdocs_slug(t) for t in titles}, {github_slug(t) for t in titles}


@pytest.mark.parametrize("page", pages(), ids=relative)
def test_every_relative_link_resolves_to_a_file_and_anchor(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: -- not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
            continue
        if not file.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
            continue
        if page.parent == DOCS and not file.is_relative_to(DOCS):
            broken.append(f"{target}: outside docs/, so the site cannot link it")
        if anchor:
            assert file.suffix == ".md", f"{target}: an anchor into a file that is not a page"
            site, github = _anchors(file)
            if anchor not in site or anchor not in github:
                broken.append(
                    f"{target}: no heading with anchor #{anchor} (site: {anchor in site}, GitHub: {anchor in github})"
                )
    assert not broken, f"{relative(page)}:\n" + "\n".join(broken)


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [missing](#nowhere) [gone](absent.md) `[in code](absent.md)`\n")
    assert links(page) == ["#title", "#nowhere", "absent.md"]
    site, github = _anchors(page)
    assert "title" in site
    assert "title" in github
    assert "nowhere" not in site


def test_slugs_follow_both_renderers() -> None:
    assert mkdocs_slug("The GUI: stepbus gui") == github_slug("The GUI: stepbus gui") == "the-gui-stepbus-gui"
    assert mkdocs_slug("Case 1: engine overhead (benchmarks/overhead.py)") == (
        "case-1-engine-overhead-benchmarksoverheadpy"
    )
    assert mkdocs_slug("a -- b") == "a-b"  # where the two differ
    assert github_slug("a -- b") == "a----b"


#: a repository path in inline code: starts with one of the top-level folders, no placeholder or wildcard in it
_REPO_PATH = re.compile(r"`((?:lifecycle|callbacks|trainers|tests|benchmarks|docs)/[\w./-]*)`")


@pytest.mark.parametrize("page", pages(), ids=relative)
def test_every_repository_path_named_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    named = {m[1].rstrip(".") for m in _REPO_PATH.finditer(text)}
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"{relative(page)} names paths that do not exist: {missing}"


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|") and not re.match(r"^\|[-:| ]+\|$", line)]


def test_the_benchmark_tables_are_the_result_files_rows() -> None:
    """What docs/benchmarks.md and docs/gui.md show is what the benchmark scripts last wrote, row for row."""
    shown = set(_table_rows((DOCS / "benchmarks.md").read_text()) + _table_rows((DOCS / "gui.md").read_text()))
    for name in BENCHMARK_RESULTS:
        rows = _table_rows((ROOT / "benchmarks" / name).read_text(encoding="utf-8"))
        assert rows, f"benchmarks/{name} has no table"
        missing = [row for row in rows if row not in shown]
        assert not missing, f"rows of benchmarks/{name} the docs do not show:\n" + "\n".join(missing)


def test_the_built_in_callbacks_table_states_real_defaults_and_priorities() -> None:
    """Each row of the table in docs/guide.md: the class behind the config name, its priority, and every
    ``key=default`` it lists, against the constructor's signature."""
    from callbacks import BUILT_IN

    rows = [line for line in _table_rows((DOCS / "guide.md").read_text()) if re.match(r"^\| `\w+` \(`\w+`\)", line)]
    assert sorted(re.search(r"\(`(\w+)`\)", row)[1] for row in rows) == sorted(BUILT_IN)  # type: ignore[index]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        class_name, name = re.match(r"`(\w+)` \(`(\w+)`\)", cells[0]).groups()  # type: ignore[union-attr]
        module, _, attribute = BUILT_IN[name].partition(":")
        assert attribute == class_name, f"{name} is {BUILT_IN[name]}, the table says {class_name}"
        cls = getattr(importlib.import_module(module), attribute)
        assert int(re.search(r"-?\d+", cells[1])[0]) == cls.priority, (name, cells[1])  # type: ignore[index]
        parameters = inspect.signature(cls.__init__).parameters
        listed = re.findall(r"`(\w+)=([^`]+)`", cells[4])
        assert listed or "(required" in cells[4], f"no defaults listed for {name}, nor a required key"
        for key, value in listed:
            assert key in parameters, f"{class_name} has no parameter {key!r}"
            default, shown = parameters[key].default, ast.literal_eval(value)
            if isinstance(default, tuple) and isinstance(shown, list):
                default = list(default)
            assert default == shown, f"{class_name}({key}=...) defaults to {default!r}, the table says {value}"


MKDOCS_WARNINGS = (
    'pages exist in the docs directory, but are not included in the "nav" configuration',
    "contains a link 'metricz.md', but the target is not found",
    "does not contain an anchor '#no-such-anchor'",
)


def _mkdocs(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_strict_docs_build_passes_and_fails_on_a_broken_link_or_a_page_out_of_the_nav(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    built = _mkdocs(tmp_path)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "guide" / "index.html").is_file()
    assert (tmp_path / "site" / "gui.png").is_file()

    guide = tmp_path / "docs" / "guide.md"
    text = guide.read_text()
    assert "(metrics.md)" in text
    assert "(checkpoints.md#interruption)" in text
    guide.write_text(text.replace("(metrics.md)", "(metricz.md)").replace("#interruption)", "#no-such-anchor)"))
    config = tmp_path / "mkdocs.yml"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "wisp.md" not in line) + "\n")
    broken = _mkdocs(tmp_path)
    assert broken.returncode == 1, broken.stderr
    for warning in MKDOCS_WARNINGS:
        assert warning in broken.stderr, (warning, broken.stderr)
    assert "- wisp.md" in broken.stderr
    assert "Aborted with 3 warnings in strict mode" in broken.stdout + broken.stderr
