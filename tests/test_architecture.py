"""The shape of the code, checked: the import layers (import-linter's contracts, which must also be able to fail),
no built-in callback importing another, the callbacks registered in one place, and modules of readable size."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import callbacks
from trainers.config.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lifecycle", "callbacks", "trainers")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: one idea per module, about 400 lines at most (the BaseTrainer facade's module is the longest)
MAX_LINES = 440


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


def test_the_import_contracts_hold_and_fail_on_a_wrong_way_import(tmp_path: Path) -> None:
    for name in (*PACKAGES, "pyproject.toml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    kept = _lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "3 kept, 0 broken" in kept.stdout

    driver = tmp_path / "trainers" / "engine" / "driver.py"  # the engine reaching up into a callback
    driver.write_text(driver.read_text(encoding="utf-8") + "\nimport callbacks.checkpointer  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode == 1, broken.stdout
    assert "2 kept, 1 broken" in broken.stdout
    assert "trainers.engine.driver -> callbacks.checkpointer" in broken.stdout


def test_no_built_in_callback_imports_another(graph: grimp.ImportGraph) -> None:
    modules = sorted({target.partition(":")[0] for target in callbacks.BUILT_IN.values()})
    assert len(modules) == len(callbacks.BUILT_IN)  # one module per callback
    for importer in modules:
        for imported in modules:
            if importer != imported:
                chain = graph.find_shortest_chain(importer=importer, imported=imported)
                assert chain is None, f"{importer} imports {imported}: {' -> '.join(chain or ())}"


def test_the_registry_and_the_exports_come_from_the_one_table() -> None:
    registry = Registry.default(plugins=False)
    assert registry.names("callback") == list(callbacks.BUILT_IN)
    for name, target in callbacks.BUILT_IN.items():
        module, _, attribute = target.partition(":")
        cls = getattr(importlib.import_module(module), attribute)
        assert registry.entry("callback", name, name).load() is cls
        assert getattr(callbacks, attribute) is cls
        assert attribute in callbacks.__all__


def test_modules_stay_readable() -> None:
    long = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"
