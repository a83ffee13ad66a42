"""Every code block of README.md and docs/ is run or checked: the marker before it (``<!-- test: NAME -->``) names
the check (here, or in tests/doc_checks_code.py) that takes it as the page shows it. Python blocks are executed
(the names a fragment uses, such as ``trainer``, are supplied), YAML blocks loaded as configs, TOML blocks compared
with a real package's entry points, shell blocks parsed by the very parsers that would run them, and the diagrams
checked against the code. A block without a marker must be output shown as text.

The pages checked as a whole elsewhere (see ``tests.doc_pages.CHECKED_AS_A_WHOLE``) are left out."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lifecycle import Event, Status
from tests import (
    doc_checks_code,  # noqa: F401  (registers the checks of the Python blocks that drive a trainer)
    doc_checks_csv,  # noqa: F401  (registers the checks of the CSV logger page)
    doc_checks_fsdp,  # noqa: F401  (registers the check of docs/distributed.md's FSDP example, run on 2 ranks)
    doc_checks_mlflow,  # noqa: F401  (registers the checks of the MLflow logger page)
    doc_checks_multinode,  # noqa: F401  (registers the check of docs/distributed.md's command for several nodes)
    doc_checks_notebooks,  # noqa: F401  (registers the checks of docs/notebooks.md, run in a kernel)
    doc_checks_profiling,  # noqa: F401  (registers the checks of docs/profiling.md)
    doc_checks_ray,  # noqa: F401  (registers the checks of docs/ray.md, run on a local Ray cluster)
    doc_checks_run_control,  # noqa: F401  (registers the checks of docs/run-control.md)
    doc_checks_torchmetrics,  # noqa: F401  (registers the checks of docs/torchmetrics.md)
    doc_checks_tune,  # noqa: F401  (registers the check of the LR range test page)
    doc_checks_validation,  # noqa: F401  (registers the checks of docs/validation.md)
)
from tests.doc_checks import CHECKS, SLOW_CHECKS, check, points, run, small_trainer
from tests.doc_pages import CHECKED_AS_A_WHOLE, DOCS, ROOT, Block, all_blocks, blocks, load_toml
from tests.doc_shell import check_shell
from trainers import BaseTrainer

#: markers whose block another test runs: the README's example, by tests/test_readme.py
CHECKED_ELSEWHERE = {"readme-example": ROOT / "tests" / "test_readme.py"}
BLOCKS = [block for block in all_blocks() if block.page not in CHECKED_AS_A_WHOLE]


def test_every_block_is_run_or_checked() -> None:
    unmarked = [block.id for block in BLOCKS if block.marker is None and block.language != "text"]
    assert not unmarked, f"code blocks with no <!-- test: NAME --> marker (only output may go unchecked): {unmarked}"
    unknown = [b.id for b in BLOCKS if b.marker and b.marker not in CHECKS and b.marker not in CHECKED_ELSEWHERE]
    assert not unknown, f"markers that name no check: {unknown}"
    used = {block.marker for block in BLOCKS}
    assert set(CHECKS) | set(CHECKED_ELSEWHERE) <= used, f"checks with no block: {set(CHECKS) - used}"
    for marker, test_file in CHECKED_ELSEWHERE.items():
        assert f"<!-- test: {marker} -->" in (ROOT / "README.md").read_text()
        assert "def test_readme_example_runs" in test_file.read_text()


# --- diagrams ----------------------------------------------------------------------------------------------------


@functools.cache
def _recorded_payloads() -> dict[str, set[str]]:
    """The payload keys each event really carries: a run with a validator, and one that fails."""
    from callbacks import Callback, Validator

    seen: dict[str, set[str]] = {event.value: set() for event in Event}

    def recorder(event: str) -> Callable[..., None]:
        def handler(self: Callback, trainer: BaseTrainer, **payload: object) -> None:
            seen[event].update(payload)

        return handler

    recording = type("Recorder", (Callback,), {event.value: recorder(event.value) for event in Event})
    trainer = small_trainer(callbacks=[recording(), Validator(fn=lambda trainer: {"loss": 1.0})])
    assert trainer.train() == Status.COMPLETED

    def fail(model: nn.Module, batch: object) -> torch.Tensor:
        raise ValueError("fails on purpose")

    failing = BaseTrainer(nn.Linear(2, 1), points(), max_epochs=1, batch_size=8, device="cpu", loss_fn=fail)
    failing.add_callback(recording())
    with pytest.raises(ValueError, match="fails on purpose"):
        failing.train()
    return seen


@check("lifecycle-diagram")
def _lifecycle_diagram(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event is in the diagram, with payload names it really carries, and every final status."""
    shown: dict[str, list[str]] = {}
    for line in block.text.splitlines():
        head = re.split(r"\s{2,}", line.strip())[0]
        for part in head.split(" / "):
            match = re.fullmatch(r"(\w+)(?:\(([\w, ]*)\))?", part)
            assert match is not None, f"not an event: {part!r}"
            shown[match[1]] = [name.strip() for name in match[2].split(",")] if match[2] else []
    assert set(shown) == {event.value for event in Event}
    (final,) = [line for line in block.text.splitlines() if line.startswith("post_training")]
    assert set(re.findall(r'"(\w+)"', final)) == {status.value for status in Status}
    payloads = _recorded_payloads()
    for event, names in shown.items():
        assert set(names) <= payloads[event], f"{event} carries {sorted(payloads[event])}, the diagram shows {names}"


@check("architecture-tree")
def _architecture_tree(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every folder and module the tree names exists where it says, and every subpackage of trainers is there."""
    top: Path | None = None
    folder: Path | None = None
    named: list[Path] = []
    for line in block.text.splitlines():
        entry, description = line[:26].strip(), line[26:]
        if entry and not line.startswith(" "):
            top = folder = ROOT / entry.split()[0]
            named.append(top)
        elif entry:
            assert top is not None
            first = entry.split(",")[0].strip()
            if first.endswith("/"):
                folder = top / first
                named.append(folder)
            else:
                folder = top
                named += [top / name.strip() for name in entry.split(",")]
        assert folder is not None
        for module in re.findall(r"(?<![\w/])(\w+\.py)\b", description):
            found = [path for path in folder.rglob(module) if "__pycache__" not in path.parts]
            assert found, f"{module} (under {folder.relative_to(ROOT)}) does not exist"
        for path in re.findall(r"(?<![\w/])((?:\w+/)+\w+\.py)\b", description):
            assert (ROOT / path).exists(), path
    missing = [path.relative_to(ROOT) for path in named if not path.exists()]
    assert not missing, missing
    packages = {p.parent.relative_to(ROOT) for p in (ROOT / "trainers").glob("*/__init__.py")}
    listed = {path.relative_to(ROOT) for path in named}
    assert packages <= listed, f"subpackages the tree leaves out: {sorted(map(str, packages - listed))}"


# --- configuration -------------------------------------------------------------------------------------------------


def _config_from(block: Block) -> object:
    from trainers import load_config

    return load_config(yaml.safe_load(block.text))


@check("config-example")
def _config_example(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_from(block)
    enabled = [spec.key for spec in config.callbacks if spec.enabled]  # type: ignore[attr-defined]
    assert enabled == ["lr_decay", "validator", "validator@holdout", "checkpointer"]
    assert config.data["callbacks"]["validator@holdout"]["prefix"] == "holdout"  # type: ignore[attr-defined]
    assert config.data["trainer"]["optimizer"] == {"name": "adam", "lr": 0.01}  # type: ignore[attr-defined]


@check("config-error-output")
def _config_error_output(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error block is the CLI's real output for that file (long lines shortened with '...')."""
    command, *shown = block.text.splitlines()
    assert command == "$ stepbus config validate bad.yaml"
    (tmp_path / "bad.yaml").write_text(
        "trainer: {name: demo, max_epochs: 5, optimizer: {name: adamm, lr: 0.01}}\n"
        "callbacks:\n"
        "  checkpointer: {every: 1ep, keep_last: three, monitr: val/mse}\n"
        "  tensorbord: {every: 50it}\n"
        "  validator@holdout: {prefix: holdout}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "trainers", "config", "validate", "bad.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000", "NO_COLOR": "1"},
    )
    assert result.returncode == 2, result.stderr
    printed = result.stderr.splitlines()
    assert len(printed) == len(shown), printed
    for real, page in zip(printed, shown, strict=True):
        if page.endswith("..."):
            assert real.startswith(page.removesuffix("...")), (real, page)
        else:
            assert real == page


@check("build-from-python")
def _build_from_python(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``my.yaml`` is the demo's config with fewer samples: the block trains it for the 20 epochs it sets."""
    config = yaml.safe_load((ROOT / "trainers/apps/configs/demo.yaml").read_text())
    config["trainer"]["samples"] = 256
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    trainer = run(block, {})["trainer"]
    assert isinstance(trainer, BaseTrainer)
    assert (trainer.state.max_epochs, trainer.state.epoch, trainer.state.iteration) == (20, 20, 80)
    assert (tmp_path / "runs/try-1/checkpoints/last.pt").exists()


def _entrypoints(toml: str) -> dict[str, dict[str, str]]:
    points: dict[str, dict[str, str]] = load_toml(toml)["project"]["entry-points"]
    return points


def _registry_groups() -> set[str]:
    from trainers.config import registry

    return set(registry._GROUPS.values())


@check("plugin-entry-point")
def _plugin_entry_point(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry point shown is the example plugin's own, which the CLI tests install and find."""
    shown = _entrypoints(block.text)
    plugin = _entrypoints((ROOT / "tests/fixtures/stepbus_plugin_example/pyproject.toml").read_text())
    assert set(shown) <= _registry_groups()
    for group, names in shown.items():
        assert names.items() <= plugin[group].items(), (group, names)


@check("own-model-entry-point")
def _own_model_entry_point(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's entry point is the one of the package docs/own-model.md builds (and its test installs)."""
    shown = _entrypoints(block.text)
    (package,) = [b for b in blocks(DOCS / "own-model.md") if b.language == "toml" and "entry-points" in b.text]
    built = _entrypoints(package.text)
    assert set(shown) <= _registry_groups()
    for group, names in shown.items():
        assert names.items() <= built[group].items(), (group, names)


@check("shell")
def _shell(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_shell(block.text)


@check("gan-config")
def _gan_config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_from(block)
    assert config.trainer_kwargs["optimizers"]["generator"] == {  # type: ignore[attr-defined]
        "name": "adam",
        "lr": 0.001,
        "betas": [0.5, 0.9],
        "params": ["generator"],
    }
    enabled = [spec.key for spec in config.callbacks if spec.enabled]  # type: ignore[attr-defined]
    assert enabled == ["lr_decay@generator", "lr_decay@discriminator"]


# --- last, once every check above is registered ------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=pytest.mark.slow) if b.marker in SLOW_CHECKS else b for b in BLOCKS if b.marker in CHECKS],
    ids=lambda block: block.id,
)
def test_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert block.marker is not None
    CHECKS[block.marker](block, tmp_path, monkeypatch)
