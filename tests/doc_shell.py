"""Checking the shell lines the pages show, without running them: each command goes through the parser that would
take it -- ``stepbus`` lines through the CLI's own argument parser, ``torchrun`` lines through torchrun's, ``make``
targets against the Makefile, ``python -m benchmarks`` options against the script's ``--help``, ``pip install``
requirements against pyproject.toml and the Makefile's torch pin. A command of any other program fails the check."""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.doc_pages import DOCS, ROOT, load_toml


def check_shell(text: str) -> None:
    """Check every command of a shell block (lines joined at a trailing backslash; ``&&`` separates commands)."""
    commands = 0
    for raw in text.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for token in [*shlex.split(raw, comments=True), "&&"]:
            if token != "&&":
                command.append(token)
            elif command:
                _check_command(raw, command)
                commands += 1
                command = []
    assert commands, "a shell block with no command"


def _check_command(raw: str, argv: list[str]) -> None:
    program = Path(argv[0]).name
    if program == "make":
        _make(raw, argv[1:])
    elif program == "stepbus":
        _stepbus(argv[1:])
    elif program == "torchrun":
        _torchrun(argv[1:])
    elif program in ("python", "python3") and argv[1:2] == ["-m"]:
        _python_module(raw, argv[2], argv[3:])
    elif program == "pip" and argv[1:2] == ["install"]:
        _pip_install(argv[2:])
    elif program == "cd":
        assert argv[1:] == ["/path/to/stepbus"], argv
    else:
        pytest.fail(f"a shell line runs {argv[0]!r}, which no check knows: {raw}")
    for version in re.findall(r"stepbus-([\w.]+)-py3-none-any\.whl", raw):
        assert version == _project()["version"], raw


@functools.cache
def _project() -> dict[str, Any]:
    project: dict[str, Any] = load_toml((ROOT / "pyproject.toml").read_text())["project"]
    return project


@functools.cache
def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def _torch_pin() -> str:
    (pin,) = set(re.findall(r'"torch==([\w.+]+)"', _makefile()))
    return pin


def _make(raw: str, targets: list[str]) -> None:
    defined = set(re.findall(r"^([\w-]+):", _makefile(), re.MULTILINE))
    assert targets, "make with no target"
    assert set(targets) <= defined, f"make targets {targets}; the Makefile has {sorted(defined)}"
    for extras in re.findall(r"stepbus\[([\w,]+)\]", raw):
        (installed,) = re.findall(r'-e "\.\[([\w,]+)\]"', _makefile())
        assert extras == installed, f"the page says stepbus[{extras}], the Makefile installs .[{installed}]"
    for pin in re.findall(r"torch==([\w.+]+)", raw):
        assert pin == _torch_pin(), raw


def _stepbus(arguments: list[str]) -> None:
    from trainers.cli.parser import build_parser

    try:
        parsed = build_parser().parse_args(arguments)
    except SystemExit as error:  # argparse's refusal: exit 2, with the usage on stderr
        pytest.fail(f"stepbus refuses {arguments}: exit {error.code}")
    config = getattr(parsed, "config", None)
    for path in config if isinstance(config, list) else [config]:
        if path is not None and str(path).startswith("trainers/"):
            assert (ROOT / path).is_file(), f"--config {path}: no such file"


def _torchrun(arguments: list[str]) -> None:
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(arguments)
    assert parsed.module, arguments
    assert parsed.training_script == "trainers", arguments
    _stepbus(parsed.training_script_args)


@functools.cache
def _help(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _python_module(raw: str, module: str, arguments: list[str]) -> None:
    if module == "build":
        assert importlib.util.find_spec("build") is not None, "python -m build needs the build package"
        assert not arguments, arguments
        return
    assert module == "benchmarks" or module.startswith("benchmarks."), f"python -m {module}: not a known module"
    usage = _help(module)
    for option in [argument for argument in arguments if argument.startswith("--")]:
        assert re.search(rf"(^|\s){re.escape(option)}\b", usage), f"python -m {module} has no option {option}"
    for listed in re.findall(r"--case ([\w|-]+)", raw):
        (choices,) = set(re.findall(r"--case \{([\w,-]+)\}", usage))  # in the usage line and the options
        assert listed.split("|") == choices.split(","), (listed, choices)


def _pip_install(arguments: list[str]) -> None:
    requirements = [argument for argument in arguments if argument != "-e"]
    assert requirements, arguments
    assert not any(r.startswith("-") for r in requirements), arguments
    for requirement in requirements:
        if requirement.startswith("torch=="):
            assert requirement == f"torch=={_torch_pin()}", requirement
        elif requirement.startswith("/path/to/stepbus"):
            match = re.fullmatch(r"/path/to/stepbus(/dist/[\w.-]+\.whl)?(?:\[([\w,]+)\])?", requirement)
            assert match is not None, requirement
            extras = set(match[2].split(",")) if match[2] else set()
            assert extras <= set(_project()["optional-dependencies"]), requirement
        elif requirement == "build":
            assert any(r.startswith("build") for r in _project()["optional-dependencies"]["dev"]), requirement
        else:  # a package of your own: the one docs/own-model.md builds
            folder = requirement.removeprefix("./")
            assert f"`{folder}/pyproject.toml`:" in (DOCS / "own-model.md").read_text(), requirement
