"""The README's example runs as written and prints what it promises; its config example and error block are real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README has no python block under '## Example'"
    return match.group(1)


def test_readme_example_is_short() -> None:
    code = [line for line in _example().splitlines() if line.strip()]
    assert len(code) <= 25, f"the README example has {len(code)} non-blank lines"


def test_readme_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_example())
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # 1024 items / 32 = 32 steps per epoch, 3 epochs = 96 steps: reports at 25, 50, 75, interleaved with epochs
    heads = [line.split(":")[0] for line in lines]
    assert heads == [
        "iteration 25",
        "epoch 1 done",
        "iteration 50",
        "epoch 2 done",
        "iteration 75",
        "epoch 3 done",
        "completed",
    ]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("iteration ")]
    assert losses[0] > losses[-1], f"the example's loss did not decrease: {losses}"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_readme_config_example_is_a_valid_config() -> None:
    """The YAML shown under "Configuration and the CLI" loads as written, with the callbacks it shows enabled."""
    import yaml

    from trainers import load_config

    match = re.search(r"```yaml\n(.*?)```", _section("Configuration and the CLI"), re.S)
    assert match is not None
    config = load_config(yaml.safe_load(match.group(1)))
    enabled = [spec.key for spec in config.callbacks if spec.enabled]
    assert enabled == ["lr_decay", "validator", "validator@holdout", "checkpointer"]
    assert config.data["callbacks"]["validator@holdout"]["prefix"] == "holdout"
    assert config.data["trainer"]["optimizer"] == {"name": "adam", "lr": 0.01}


def test_readme_config_error_example_is_what_the_cli_prints(tmp_path: Path) -> None:
    """The error block shown in the README is the CLI's real output for that file (long lines shortened there)."""
    section = _section("Configuration and the CLI")
    shown = re.search(r"```text\n\$ stepbus config validate bad.yaml\n(.*?)```", section, re.S)
    assert shown is not None
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
    assert result.returncode == 2
    printed = result.stderr.splitlines()
    expected = shown.group(1).splitlines()
    assert len(printed) == len(expected)
    for real, doc in zip(printed, expected, strict=True):
        assert real.startswith(doc.removesuffix("...")), (real, doc)


def _blocks(title: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(title), re.S)


def test_readme_gan_example_is_the_gan_apps_update() -> None:
    """The ``optimization_step`` shown under "BaseTrainer" trains the GAN app's pipeline to the app's own weights,
    bit for bit, and the YAML beside it is a valid config of the GAN app."""
    import torch
    import yaml

    from trainers import load_config
    from trainers.apps.gan import GAN, gan_trainer

    (code,) = [block for block in _blocks("BaseTrainer", "python") if "optimization_step" in block]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)

    def adam(part: str) -> object:
        return lambda p: torch.optim.Adam(p.get_submodule(part).parameters(), lr=1e-3, betas=(0.5, 0.9))

    app = gan_trainer(max_epochs=2)
    torch.manual_seed(0)
    shown = namespace["GANTrainer"](  # type: ignore[operator]
        GAN(),
        app.dataset,
        max_epochs=2,
        batch_size=128,
        device="cpu",
        optimizer={"discriminator": adam("discriminator"), "generator": adam("generator")},
    )
    app.train()
    shown.train()
    ours, theirs = app.pipeline.state_dict(), shown.pipeline.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert not torch.equal(ours["generator.0.weight"], gan_trainer().pipeline.state_dict()["generator.0.weight"])

    (block,) = [b for b in _blocks("BaseTrainer", "yaml") if "optimizers:" in b]
    config = load_config(yaml.safe_load(block))
    assert config.trainer_kwargs["optimizers"]["generator"] == {
        "name": "adam",
        "lr": 0.001,
        "betas": [0.5, 0.9],
        "params": ["generator"],
    }
    assert [spec.key for spec in config.callbacks if spec.enabled] == ["lr_decay@generator", "lr_decay@discriminator"]


def test_readme_resample_recipe_reloads_the_data_every_epoch() -> None:
    """The ``pre_epoch`` resample shown under "Data that changes ..." runs as written on a real trainer: each epoch
    trains on that epoch's points, whose number changes."""
    import textwrap

    import torch

    from trainers import BaseTrainer

    (code,) = [b for b in _blocks("Data that changes, renders between ticks, logging anything", "python")]

    class Points:
        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []
            self.resample(seed=0, epoch=0)

        def resample(self, *, seed: int, epoch: int) -> None:
            self.calls.append((seed, epoch))
            generator = torch.Generator().manual_seed(seed * 1000 + epoch)
            self.x = torch.randn(4 + 4 * epoch, 2, generator=generator)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, index: int) -> torch.Tensor:
            return self.x[index]

    dataset = Points()
    trainer = BaseTrainer(
        torch.nn.Linear(2, 1),
        dataset,
        max_epochs=3,
        batch_size=4,
        seed=5,
        device="cpu",
        loss_fn=lambda model, x: model(x).pow(2).mean(),
    )
    exec(compile(textwrap.dedent(code), "README.md", "exec"), {"trainer": trainer})
    trainer.train()
    assert dataset.calls == [(0, 0), (5, 1), (5, 2), (5, 3)]
    assert trainer.state.iteration == 2 + 3 + 4
