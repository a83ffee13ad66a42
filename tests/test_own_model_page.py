"""docs/own-model.md works as written: the files shown on the page, taken from it as they are, make a package that
pip builds and installs; ``stepbus callbacks`` lists its callback and trainer; ``stepbus config validate`` and
``stepbus train --config my.yaml`` print what the page shows, and the run directory holds the files it lists.

The package is installed the way the plugin tests install theirs (``pip install --target`` into a folder of its own,
offline, without build isolation) and put on the ``stepbus`` command's ``PYTHONPATH``: the venv never holds it, so
nothing is left to uninstall and tests running beside this one never see its names. The numbers a run prints may
differ in their last digits from one CPU to another, so each is compared with the page's within a tolerance;
everything else on each line must match exactly.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from trainers.checkpoint.format import read_metadata

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "own-model.md"
#: a file on the page: its path in backticks and a colon on a line of its own, a blank line, then a fenced block
FILE = re.compile(r"^`(?P<path>[\w./-]+)`:\n\n```[a-z]+\n(?P<text>.*?)^```$", re.MULTILINE | re.DOTALL)
#: a console block: ``$ command`` lines, each followed by what it prints
CONSOLE = re.compile(r"^```console\n(?P<text>.*?)^```$", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"\d+\.\d+")
DISTRIBUTION = "my-model"


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _files() -> dict[str, str]:
    """Path -> text of every file the page shows, in page order."""
    found = [(m["path"], m["text"]) for m in FILE.finditer(_page())]
    paths = [path for path, _ in found]
    assert len(set(paths)) == len(paths), f"a file is shown twice: {paths}"
    return dict(found)


def _shown(command: str) -> list[str]:
    """What the page shows ``$ <command>`` printing: the lines after it, up to the next ``$`` line or the block's
    end."""
    for block in CONSOLE.finditer(_page()):
        lines = block["text"].splitlines()
        if f"$ {command}" in lines:
            after = lines[lines.index(f"$ {command}") + 1 :]
            end = next((i for i, line in enumerate(after) if line.startswith("$ ")), len(after))
            return after[:end]
    raise AssertionError(f"the page shows no '$ {command}'")


def _same_line(real: str, shown: str, relative: float) -> bool:
    """``real`` reads as ``shown``: equal once the decimal numbers are masked, and each number within ``relative``
    of the page's (or 0.002 absolute, for values near zero)."""
    if NUMBER.sub("#", real) != NUMBER.sub("#", shown):
        return False
    pairs = zip(NUMBER.findall(real), NUMBER.findall(shown), strict=True)
    return all(math.isclose(float(a), float(b), rel_tol=relative, abs_tol=0.002) for a, b in pairs)


@dataclass(frozen=True)
class Installed:
    work: Path  #: the folder the page's files were written to: the commands run here
    site: Path  #: where pip installed the package


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The page's files written to a fresh folder, and its package installed by pip into a folder of its own."""
    work = tmp_path_factory.mktemp("own-model")
    for name, text in _files().items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (package,) = [m.group(1) for m in re.finditer(r"^\$ pip install (\S+)$", _page(), re.MULTILINE)]
    assert (work / package / "pyproject.toml").is_file(), f"'pip install {package}' names no package on the page"
    site = work.parent / f"{work.name}-site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--no-cache-dir", "--disable-pip-version-check", "--target", str(site), package]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=work)
    assert result.returncode == 0, f"pip could not install the page's package:\n{result.stdout}\n{result.stderr}"
    return Installed(work, site)


def _stepbus(installed: Installed, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``stepbus`` command of this environment, with the page's package on its path, run where the page's
    files are."""
    script = Path(sys.executable).parent / "stepbus"
    assert script.is_file(), f"no stepbus command beside {sys.executable}: install stepbus (make setup)"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000", "WANDB_MODE": "offline"})
    env["PYTHONPATH"] = os.pathsep.join([str(installed.site), str(ROOT)])
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=300, cwd=installed.work, env=env
    )


def test_the_page_shows_the_package_tree_it_describes() -> None:
    files = _files()
    tree = re.search(r"^```text\n(?P<tree>my-model/\n.*?)^```$", _page(), re.MULTILINE | re.DOTALL)
    assert tree is not None, "the page shows no tree of the package"
    listed = [line.split("#")[0].strip().lstrip("│├└─ ") for line in tree["tree"].splitlines()]
    assert listed == [
        "my-model/",
        "pyproject.toml",
        "my_model/",
        "__init__.py",
        "trainer.py",
        "report.py",
        "my.yaml",
    ]
    assert list(files) == [
        "my-model/pyproject.toml",
        "my-model/my_model/__init__.py",
        "my-model/my_model/trainer.py",
        "my-model/my_model/report.py",
        "my.yaml",
    ]
    project = files["my-model/pyproject.toml"]
    assert '[project.entry-points."stepbus.trainers"]\nrings = "my_model.trainer:ring_trainer"\n' in project
    assert '[project.entry-points."stepbus.callbacks"]\nloss_report = "my_model.report:LossReport"\n' in project
    config = yaml.safe_load(files["my.yaml"])
    assert config["trainer"]["name"] == "rings"
    assert list(config["callbacks"]) == ["loss_report", "validator", "checkpointer", "metrics_file"]


def test_pip_installs_the_package_with_its_entry_points(installed: Installed) -> None:
    assert sorted(p.name for p in installed.site.iterdir() if p.name != "__pycache__") == [
        "my_model",
        "my_model-0.1.0.dist-info",
    ]
    assert sorted(p.name for p in (installed.site / "my_model").glob("*.py")) == [
        "__init__.py",
        "report.py",
        "trainer.py",
    ]
    points = (installed.site / "my_model-0.1.0.dist-info" / "entry_points.txt").read_text(encoding="utf-8")
    assert points.split() == [
        "[stepbus.callbacks]",
        "loss_report",
        "=",
        "my_model.report:LossReport",
        "[stepbus.trainers]",
        "rings",
        "=",
        "my_model.trainer:ring_trainer",
    ]


def test_stepbus_callbacks_lists_the_packages_callback_and_trainer_as_the_page_shows(installed: Installed) -> None:
    result = _stepbus(installed, "callbacks")
    assert result.returncode == 0, result.stdout + result.stderr
    printed = [line.rstrip() for line in result.stdout.splitlines()]
    shown = _shown("stepbus callbacks")
    assert shown[0] == "..."  # the page leaves out the built-ins
    (title,) = [i for i, line in enumerate(printed) if line.startswith("loss_report: ")]
    assert printed[title : title + len(shown) - 2] == shown[1:-1]
    assert printed[-1].startswith("Trainers (config: trainer.name): demo (built-in), ")
    assert printed[-1].endswith(", rings (plugin my-model (my_model.trainer:ring_trainer))")
    assert shown[-1] == "Trainers (config: trainer.name): ..., rings (plugin my-model (my_model.trainer:ring_trainer))"


def test_stepbus_config_validate_answers_and_refuses_as_the_page_shows(installed: Installed) -> None:
    result = _stepbus(installed, "config", "validate", "my.yaml")
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    assert result.stdout.splitlines() == _shown("stepbus config validate my.yaml")
    for setting in ("trainer.hiden=128", "trainer.samples=10"):  # a key the factory lacks, a value it refuses
        result = _stepbus(installed, "config", "validate", "my.yaml", "--set", setting)
        assert (result.returncode, result.stdout) == (2, ""), result.stdout + result.stderr
        assert result.stderr.splitlines() == _shown(f"stepbus config validate my.yaml --set {setting}")


def _same_output(result: subprocess.CompletedProcess[str], command: str) -> None:
    """``result`` succeeded and printed what the page shows for ``command``, line by line, numbers within 25 %."""
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    printed, shown = result.stdout.splitlines(), _shown(command)
    assert len(printed) == len(shown), result.stdout
    for real, page in zip(printed, shown, strict=True):
        assert _same_line(real, page, relative=0.25), f"printed {real!r}, the page shows {page!r}"


def test_stepbus_train_prints_what_the_page_shows_writes_the_files_it_lists_and_resumes(installed: Installed) -> None:
    command = "stepbus train --config my.yaml --run-dir runs/first"
    _same_output(_stepbus(installed, *command.split()[1:]), command)

    run_dir = installed.work / "runs" / "first"
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    listed = re.search(r"^```text\nruns/first/\n(?P<files>.*?)^```$", _page(), re.MULTILINE | re.DOTALL)
    assert listed is not None, "the page lists no files of runs/first"
    assert files == [line.strip() for line in listed["files"].splitlines()]
    checkpoints = run_dir / "checkpoints"
    assert [os.readlink(checkpoints / link) for link in ("last.pt", "best.pt")] == ["step-00000256.pt"] * 2

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["status"], metrics["iterations"], metrics["epochs"]) == ("completed", 256, 4)
    assert metrics["final"]["val/accuracy"] >= 0.9  # the model learns the ring
    assert metrics["best"]["best/accuracy"] == metrics["final"]["val/accuracy"]  # best.pt is the last checkpoint
    assert metrics["final"]["val/loss"] < 0.3
    saved = read_metadata(checkpoints / "step-00000256.pt")
    assert saved["config"]["trainer"]["name"] == "rings"
    assert saved["config"]["callbacks"]["loss_report"] == {"enabled": True, "every": "32it", "digits": 4}

    command = "stepbus train --config my.yaml --run-dir runs/first --resume auto --epochs 6"
    _same_output(_stepbus(installed, *command.split()[1:]), command)
    assert sorted(p.name for p in checkpoints.glob("step-*.pt")) == [
        "step-00000128.pt",
        "step-00000256.pt",
        "step-00000384.pt",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["status"], metrics["iterations"], metrics["epochs"]) == ("completed", 384, 6)
