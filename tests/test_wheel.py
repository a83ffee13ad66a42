"""stepbus as a user installs it: ``python -m build`` makes an sdist and a wheel from a copy of this checkout; the
wheel holds every file of the three packages (modules, ``py.typed``, the apps' configs); and installed into a fresh
virtual environment -- no system site-packages, torch pinned as the Makefile pins it -- ``stepbus train`` runs the
packaged demo config from a folder outside the source tree and writes its checkpoint.

The build runs without isolation (the dev extra brings ``build`` and ``setuptools``), so it needs no index; the
fresh environment installs torch and stepbus's dependencies the way ``make setup`` does, through pip's own
configuration (its index, ``--find-links`` and cache).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainers.checkpoint.format import read_metadata

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lifecycle", "callbacks", "trainers")
VERSION = re.findall(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.MULTILINE)[0]
#: what a copy of the checkout leaves out: version control, environments, caches and build outputs (.gitignore)
LEFT_OUT = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "build", "dist", "site", "runs", "wandb",
)  # fmt: skip
#: the files of the packages that are not modules: the apps load their configs; py.typed marks the packages typed
DATA_FILES = (
    "lifecycle/py.typed",
    "callbacks/py.typed",
    "trainers/py.typed",
    "trainers/apps/configs/demo.yaml",
    "trainers/apps/configs/gan.yaml",
    "trainers/apps/configs/image_field.yaml",
)


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path
    seconds: float  #: how long ``python -m build`` took


def _package_files() -> set[str]:
    """Every file of the three packages in this checkout, as paths relative to it (bytecode aside)."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.add(path.relative_to(ROOT).as_posix())
    return found


def _torch_pin() -> str:
    """The torch requirement ``make setup`` installs first (``"torch==2.13.0"``), read from the Makefile."""
    pins: list[str] = re.findall(r'pip install [^\n]*"(torch==[^"]+)"', (ROOT / "Makefile").read_text(encoding="utf-8"))
    assert len(pins) == 1, f"expected one torch pin in the Makefile, found {pins}"
    return pins[0]


def _outside_env() -> dict[str, str]:
    """The environment of a process that must see only the fresh venv: no PYTHONPATH, no active venv, no colour."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS", "COLUMNS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "WANDB_MODE": "offline", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return env


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_outside_env())
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build`` (sdist, then the wheel from the sdist) of a copy of the checkout: building in place would
    leave ``build/`` and ``*.egg-info`` in it."""
    root = tmp_path_factory.mktemp("dist")
    source, out = root / "source", root / "out"
    shutil.copytree(ROOT, source, ignore=LEFT_OUT)
    started = time.perf_counter()
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout}\n{result.stderr}"
    assert sorted(p.name for p in out.iterdir()) == [f"stepbus-{VERSION}-py3-none-any.whl", f"stepbus-{VERSION}.tar.gz"]
    return Dist(out / f"stepbus-{VERSION}-py3-none-any.whl", out / f"stepbus-{VERSION}.tar.gz", seconds)


def test_the_wheel_holds_every_file_of_the_packages_and_the_stepbus_command(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"stepbus-{VERSION}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode("utf-8")
        metadata = wheel.read(f"{info}/METADATA").decode("utf-8")
    expected = _package_files()
    assert set(DATA_FILES) <= expected  # the files besides modules are among them, and in the wheel with the rest
    assert {n for n in names if not n.startswith(f"{info}/")} == expected
    assert {n.removeprefix(f"{info}/") for n in names if n.startswith(f"{info}/")} == {
        "METADATA",
        "WHEEL",
        "RECORD",
        "entry_points.txt",
        "top_level.txt",
    }
    assert entry_points.split() == ["[console_scripts]", "stepbus", "=", "trainers.cli:main"]
    requires = [line.partition(": ")[2] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert sorted(r for r in requires if "; extra ==" not in r) == [
        "blinker>=1.8",
        "pydantic>=2.5",
        "pyyaml>=6",
        "rich>=13",
        "torch>=2.6",
    ]


def test_the_sdist_holds_the_project_file_the_readme_and_every_file_of_the_packages(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {name.removeprefix(f"stepbus-{VERSION}/") for name in sdist.getnames()}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
    assert _package_files() <= names


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Path]:
    """A fresh virtual environment outside the source tree, removed afterwards (torch alone fills about 1 GB)."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    path = tmp_path / "venv"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_venv_trains_the_packaged_demo_outside_the_source_tree(
    dist: Dist, venv: Path, tmp_path: Path
) -> None:
    bin_dir = venv / "bin"
    timings = {"build": dist.seconds}

    started = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    config = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    assert "include-system-site-packages = false" in config.splitlines()
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", _torch_pin(), str(dist.wheel)], tmp_path, 600)
    timings["venv + install"] = time.perf_counter() - started

    # stepbus, its packages and its demo config all come from the venv, not from this checkout
    where = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "import importlib.resources, callbacks, lifecycle, trainers, torch\n"
            "for module in (lifecycle, callbacks, trainers): print(module.__file__)\n"
            "print(importlib.resources.files('trainers.apps') / 'configs' / 'demo.yaml')\n"
            "print(torch.__version__)",
        ],
        tmp_path,
        120,
    ).stdout.splitlines()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert where[:3] == [str(site / package / "__init__.py") for package in PACKAGES]
    demo = Path(where[3])
    assert demo == site / "trainers" / "apps" / "configs" / "demo.yaml"
    assert where[4].split("+")[0] == _torch_pin().removeprefix("torch==")

    run_dir = tmp_path / "run"
    started = time.perf_counter()
    command = [str(bin_dir / "stepbus"), "train", "--config", str(demo), "--epochs", "1", "--run-dir", str(run_dir)]
    result = _run(command, tmp_path, 300)
    timings["stepbus train"] = time.perf_counter() - started
    lines = result.stdout.splitlines()
    assert lines[0] == f"stepbus demo run in {run_dir}"
    assert lines[-1] == "training completed: 128 iterations"  # 8192 samples / 64 per batch, one epoch
    checkpoint = run_dir / "checkpoints" / "step-00000128.pt"
    assert checkpoint.is_file()
    metadata = read_metadata(checkpoint)
    assert (metadata["iteration"], metadata["config"]["trainer"]["max_epochs"]) == (128, 1)
    print("seconds: " + ", ".join(f"{step} {seconds:.1f}" for step, seconds in timings.items()))
