"""What the ``stepbus`` command imports before it answers: ``--help`` and argument errors need the parser alone, so
they import neither torch nor the libraries the commands use (rich, pydantic, yaml), and no command module.

Each case runs ``python -X importtime -m trainers ...`` in a fresh interpreter and reads the modules it imported
from the ``-X importtime`` report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
#: the heavy imports a command may need, which the parser does not
HEAVY = ("torch", "numpy", "rich", "pydantic", "yaml", "blinker")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _imports(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainers", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(),
    )
    rows = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert rows[0] == "imported package", rows[:3]  # the report's header: the format this test reads
    return result, rows[1:]


def _top(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted({m for m in modules if m.split(".")[0] in names})


def test_help_imports_the_parser_alone(tmp_path: Path) -> None:
    result, modules = _imports(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: stepbus [-h] COMMAND ...\n")
    assert "trainers.cli.parser" in modules
    assert _top(modules, HEAVY) == []
    ours = sorted(m for m in modules if m.split(".")[0] == "trainers")
    assert ours == ["trainers", "trainers.cli", "trainers.cli.parser", "trainers.cli.prepare"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--bogus"), "stepbus: error: unrecognized arguments: --bogus"),
        (("config",), "stepbus config: error: the following arguments are required: ACTION"),
        (("train", "--fresh-optimizer"), "--fresh-optimizer needs --resume PATH|auto"),
    ],
    ids=["unknown-option", "missing-action", "option-without-its-partner"],
)
def test_an_argument_error_answers_before_any_heavy_import(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result, modules = _imports(tmp_path, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert _top(modules, HEAVY) == []
    assert not [
        m for m in modules if m.startswith("trainers.cli.") and m not in ("trainers.cli.parser", "trainers.cli.prepare")
    ]
