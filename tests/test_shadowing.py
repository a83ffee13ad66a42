"""A user's ``callbacks.py``, ``trainers.py`` or ``lifecycle.py`` (or such a package) beside their script shadows
stepbus's package of that name: importing stepbus then fails with an error that names the file and says to rename
it (``lifecycle.installation``). Each case is a real script in a fresh folder, run by a real interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the README's imports, in its order
README_IMPORTS = "from lifecycle import Callback, Event\nfrom trainers import BaseTrainer\n"
CALLBACKS_FIRST = "from callbacks import Callback\nfrom lifecycle import Event\nfrom trainers import BaseTrainer\n"
TRAINERS_FIRST = "from trainers import BaseTrainer, build\nfrom callbacks import Callback\n"
LIFECYCLE_FIRST = "from lifecycle import Event\nfrom callbacks import Callback\nfrom trainers import BaseTrainer\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's stepbus, after the script's own folder (sys.path[0])
    return env


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=folder, env=_env(), timeout=120, check=False
    )


def _script(folder: Path, imports: str) -> Path:
    script = folder / "train_mine.py"
    script.write_text(imports + 'print("imported", Callback.__module__)\n', encoding="utf-8")
    return script


def _message(name: str, found: Path) -> str:
    return (
        f"{found} shadows stepbus's package '{name}': `import {name}` finds it first on sys.path. "
        "Rename it (stepbus's packages are lifecycle, callbacks, trainers)."
    )


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path.resolve()


def test_without_a_shadowing_file_the_readme_imports_work(folder: Path) -> None:
    (folder / "models.py").write_text("X = 1\n", encoding="utf-8")  # a module of the user's by another name
    result = _run(folder, str(_script(folder, README_IMPORTS)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "imported lifecycle.callback\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("imports", "raised_by"),
    [
        (TRAINERS_FIRST, "ShadowedPackageError"),
        (LIFECYCLE_FIRST, "ShadowedPackageError"),
        (README_IMPORTS, "ShadowedPackageError"),
    ],
    ids=["trainers-first", "lifecycle-first", "readme-order"],
)
def test_a_callbacks_py_is_named_when_trainers_or_lifecycle_is_imported_first(
    folder: Path, imports: str, raised_by: str
) -> None:
    (folder / "callbacks.py").write_text("def report():\n    pass\n", encoding="utf-8")
    result = _run(folder, str(_script(folder, imports)))
    assert result.returncode == 1
    assert result.stdout == ""
    assert _last_line(result) == f"lifecycle.installation.{raised_by}: {_message('callbacks', folder / 'callbacks.py')}"


def test_a_callbacks_py_that_imports_stepbus_is_named_even_when_imported_first(folder: Path) -> None:
    (folder / "callbacks.py").write_text(
        "from lifecycle import Callback\n\n\nclass Mine(Callback):\n    pass\n", encoding="utf-8"
    )
    result = _run(folder, str(_script(folder, CALLBACKS_FIRST)))
    assert result.returncode == 1
    assert _last_line(result) == (
        f"lifecycle.installation.ShadowedPackageError: {_message('callbacks', folder / 'callbacks.py')}"
    )


def test_a_callbacks_py_imported_before_any_stepbus_package_fails_in_python_s_own_words(folder: Path) -> None:
    # the limit of the check: no code of stepbus runs before the user's file answers `from callbacks import ...`
    (folder / "callbacks.py").write_text("def report():\n    pass\n", encoding="utf-8")
    result = _run(folder, str(_script(folder, CALLBACKS_FIRST)))
    assert result.returncode == 1
    assert _last_line(result) == (
        f"ImportError: cannot import name 'Callback' from 'callbacks' ({folder / 'callbacks.py'})"
    )
    # and so for a lifecycle.py answering the README's first line, `from lifecycle import ...`
    (folder / "callbacks.py").unlink()
    (folder / "lifecycle.py").write_text("Event = None\n", encoding="utf-8")
    result = _run(folder, str(_script(folder, README_IMPORTS)))
    assert result.returncode == 1
    assert (
        _last_line(result) == f"ImportError: cannot import name 'Callback' from 'lifecycle' ({folder / 'lifecycle.py'})"
    )


@pytest.mark.parametrize("imports", [README_IMPORTS, LIFECYCLE_FIRST], ids=["readme-order", "lifecycle-first"])
def test_a_trainers_py_is_named(folder: Path, imports: str) -> None:
    (folder / "trainers.py").write_text("BaseTrainer = object\n", encoding="utf-8")
    result = _run(folder, str(_script(folder, imports)))
    assert result.returncode == 1
    assert _last_line(result) == (
        f"lifecycle.installation.ShadowedPackageError: {_message('trainers', folder / 'trainers.py')}"
    )


@pytest.mark.parametrize("imports", [CALLBACKS_FIRST, TRAINERS_FIRST], ids=["callbacks-first", "trainers-first"])
def test_a_lifecycle_py_is_named(folder: Path, imports: str) -> None:
    (folder / "lifecycle.py").write_text("Event = None\n", encoding="utf-8")
    result = _run(folder, str(_script(folder, imports)))
    assert result.returncode == 1
    assert _last_line(result) == f"ImportError: {_message('lifecycle', folder / 'lifecycle.py')}"
    assert "ModuleNotFoundError" not in result.stderr  # the import error behind it is not shown (`from None`)


def test_a_callbacks_package_is_named_by_its_init_file(folder: Path) -> None:
    (folder / "callbacks").mkdir()
    (folder / "callbacks" / "__init__.py").write_text("", encoding="utf-8")
    result = _run(folder, str(_script(folder, TRAINERS_FIRST)))
    assert result.returncode == 1
    assert _last_line(result) == (
        f"lifecycle.installation.ShadowedPackageError: {_message('callbacks', folder / 'callbacks' / '__init__.py')}"
    )


def test_the_command_line_run_beside_a_callbacks_py_names_it(folder: Path) -> None:
    # `python -m trainers` puts the working directory first on sys.path, as a script's folder is
    (folder / "callbacks.py").write_text("", encoding="utf-8")
    result = _run(folder, "-m", "trainers", "--help")
    assert result.returncode == 1
    assert result.stdout == ""
    assert _last_line(result) == (
        f"lifecycle.installation.ShadowedPackageError: {_message('callbacks', folder / 'callbacks.py')}"
    )
