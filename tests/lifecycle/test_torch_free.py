"""The lifecycle core must import and run without torch, and must not import the layers above it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIFECYCLE = ROOT / "lifecycle"
SOURCES = sorted(LIFECYCLE.glob("*.py"))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_importing_lifecycle_does_not_import_torch() -> None:
    result = run_python(
        """
        import sys
        import lifecycle
        import lifecycle.bus, lifecycle.errors, lifecycle.events, lifecycle.loop
        import lifecycle.priority, lifecycle.schedule, lifecycle.state, lifecycle.callback
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "callbacks", "trainers"})
        print("LOADED", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LOADED []"


def test_the_callback_base_and_the_callbacks_package_import_no_torch() -> None:
    result = run_python(
        """
        import sys
        from callbacks import BUILT_IN, Callback
        from lifecycle import Callback as Base
        assert Callback is Base, (Callback, Base)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "trainers"})
        print("LOADED", heavy, len(BUILT_IN))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LOADED [] 19"  # the 18 built-ins registered, none of them imported


def test_lifecycle_works_with_torch_unimportable() -> None:
    result = run_python(
        """
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        from lifecycle import Bus, Loop, State, Status

        state = State(max_epochs=1, iterations_per_epoch=2)
        bus, loop = Bus(state), Loop(state)
        seen = []
        bus.connect("post_step", lambda sender, **kw: seen.append(state.iteration), every="2it")

        class Driver:
            def begin_training(self): pass
            def begin_epoch(self): pass
            def run_step(self): bus.emit("post_step", self)
            def end_epoch(self): pass
            def end_training(self, status): seen.append(str(status))
            def fail(self, error): pass
            def serve_requests(self): pass

        driver = Driver()
        while loop.iterate(driver):
            pass
        print(seen)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[2, 'completed']"


def test_sources_were_found() -> None:
    names = {path.name for path in SOURCES}
    assert {"__init__.py", "bus.py", "events.py", "loop.py", "schedule.py", "state.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_torch_import_in_source(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import\s+torch|from\s+torch)\b", text, re.MULTILINE)
    imported: set[str] = set()
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in {
            "import_module",
            "__import__",
        }:
            names = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            imported.update(name.split(".")[0] for name in names)
    assert "torch" not in imported
    assert not imported & {"callbacks", "trainers"}  # lifecycle imports neither of the layers above it
