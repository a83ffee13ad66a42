"""``stepbus callbacks`` as a reference, and docs/callbacks-reference.md, generated from the same data: the page is
current byte for byte, and the command, piped, prints every summary whole (as plain text), every key with its real
default, and imports no torch."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

from callbacks import BUILT_IN
from callbacks.lr_decay import LRDecay
from trainers.cli.rst_inline import code_span, markdown_text
from trainers.config.params import REQUIRED, params_of

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "callbacks-reference.md"
STEPBUS = Path(sys.executable).with_name("stepbus")  # the console script of this environment
COMMON = ("priority", "state_key")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env(**env), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result


def _class(target: str) -> type:
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type)
    return cls


def _first_paragraph_as_plain_text(cls: type) -> str:
    """Worked out here apart from the code under test: the docstring up to its first blank line, on one line,
    with the reStructuredText literals and roles reduced to their text."""
    paragraph = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    text = " ".join(paragraph.split())
    text = re.sub(r"``(.+?)``", r"\1", text)
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)


def test_the_reference_page_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = tmp_path / "callbacks-reference.md"
    _run([sys.executable, "-m", "trainers.cli.callback_docs", str(written)])
    assert written.read_bytes() == PAGE.read_bytes(), (
        "docs/callbacks-reference.md is stale: run python -m trainers.cli.callback_docs docs/callbacks-reference.md"
    )
    printed = _run([sys.executable, "-m", "trainers.cli.callback_docs"]).stdout
    assert printed.encode() == PAGE.read_bytes()


def test_the_page_has_a_section_per_built_in_callback_with_every_config_key() -> None:
    page = PAGE.read_text(encoding="utf-8")
    sections = re.split(r"^## ", page, flags=re.MULTILINE)[1:]
    assert [s.split("\n", 1)[0] for s in sections] == list(BUILT_IN)
    for section, (name, target) in zip(sections, BUILT_IN.items(), strict=True):
        cls = _class(target)
        lines = section.splitlines()
        assert lines[2] == f"Config key `callbacks.{name}`; class `{target.replace(':', '.')}`."
        assert re.sub(r"[`\\]", "", lines[4]) == _first_paragraph_as_plain_text(cls)  # the summary, in Markdown
        rows = [line for line in lines if line.startswith("| `")]
        expected = [p for p in params_of(cls).values() if not p.code_only and p.name not in COMMON]
        assert [row.split(" | ")[0] for row in rows] == [f"| `{p.name}`" for p in expected]
        for row, param in zip(rows, expected, strict=True):
            if (name, param.name) == ("lr_decay", "milestones"):
                continue
            default = "(required)" if param.default is REQUIRED else repr(param.default)
            assert row == f"| `{param.name}` | {code_span(default)} | {markdown_text(param.expected)} |"
    milestones = next(line for line in page.splitlines() if line.startswith("| `milestones`"))
    assert milestones == "| `milestones` | `None` (= `[0.5, 0.75, 0.9]` of the run) | a list of numbers or null |"


def test_stepbus_callbacks_piped_prints_whole_summaries_and_real_defaults() -> None:
    out = _run([str(STEPBUS), "callbacks"], COLUMNS="60").stdout  # a narrow terminal width changes nothing
    assert "(see the module docstring)" not in out
    assert "``" not in out
    assert ":class:" not in out
    assert ":meth:" not in out
    assert "\x1b[" not in out
    blocks = {b.split(":", 1)[0]: b.splitlines() for b in out.strip().split("\n\n")[1:-1]}
    assert list(blocks) == list(BUILT_IN)
    for name, target in BUILT_IN.items():
        cls = _class(target)
        title, header, *rows = blocks[name]
        summary = _first_paragraph_as_plain_text(cls)
        assert title == f"{name}: {cls.__name__} (built-in) {summary}"
        assert summary.endswith("."), f"{name}: the summary is not a whole sentence: {summary!r}"
        assert header.split() == ["key", "default", "accepts"]
        expected = [p for p in params_of(cls).values() if not p.code_only and p.name not in COMMON]
        assert [row.split()[0] for row in rows] == [p.name for p in expected]
        for row, param in zip(rows, expected, strict=True):
            columns = re.split(r"\s{2,}", row.strip())
            default = "(required)" if param.default is REQUIRED else repr(param.default)
            if (name, param.name) != ("lr_decay", "milestones"):
                assert columns == [param.name, default, param.expected], row
    assert blocks["preview"][0] == (
        "preview: Preview (built-in) Capture the trainer's latest picture (trainer.preview(), or fn(trainer)) and "
        "its loss on a wall-time schedule and at the end, for a live display such as stepbus gui."
    )
    milestones = next(row for row in blocks["lr_decay"] if row.split()[0] == "milestones")
    assert re.split(r"\s{2,}", milestones.strip()) == [
        "milestones",
        f"None (= {list(LRDecay().milestones)} of the run)",  # what LRDecay() actually decays at
        "a list of numbers or null",
    ]
    assert list(LRDecay().milestones) == [0.5, 0.75, 0.9]
    assert (
        out.splitlines()[-1]
        == "Trainers (config: trainer.name): demo (built-in), gan (built-in), image_field (built-in)"
    )


def test_stepbus_callbacks_imports_no_torch() -> None:
    script = (
        "import sys\n"
        "from trainers.cli import main\n"
        "code = main(['callbacks'])\n"
        "heavy = sorted(m for m in sys.modules if m.partition('.')[0] in ('torch', 'numpy'))\n"
        "sys.stderr.write(f'{code} {heavy[:5]}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT
    )
    assert result.stderr == "0 []"
    assert result.stdout.count("(built-in)") == len(BUILT_IN) + 3  # the callbacks, then the three trainers


def test_stepbus_callbacks_on_a_terminal_draws_the_same_reference() -> None:
    out = _run([str(STEPBUS), "callbacks"], FORCE_COLOR="1", COLUMNS="200").stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "\x1b[1mlr_decay\x1b[0m: LRDecay (built-in) Decay the learning rate" in out
    rows = [re.split(r"\s{2,}", line.strip()) for line in plain.splitlines()]
    assert ["milestones", "None (= [0.5, 0.75, 0.9] of the run)", "a list of numbers or null"] in rows
    assert ["history", "4096", "an integer"] in rows
