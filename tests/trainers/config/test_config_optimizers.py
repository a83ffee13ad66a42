"""The ``trainer.optimizers`` blocks of a config: named optimizers over submodules (``params``), split into
parameter groups by module (``groups``), every bad block reported with its key path, and built into the optimizers
a real trainer steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainers import build, load_config
from trainers.config.errors import ConfigError


def _gan(optimizers: Any, **trainer: Any) -> dict[str, Any]:
    return {"trainer": {"name": "gan", "max_epochs": 1, "samples": 256, "optimizers": optimizers, **trainer}}


def _problems(config: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return [(p.path, p.message) for p in info.value.problems]


def test_named_blocks_build_the_optimizers_over_their_submodules_and_groups(tmp_path: Path) -> None:
    config = _gan(
        {
            "discriminator": {
                "name": "sgd",
                "lr": 0.1,
                "params": "discriminator",
                "groups": {"discriminator.4": {"lr_scale": 0.5}},
            },
            "generator": {"name": "adam", "lr": 0.001, "betas": [0.5, 0.9], "params": ["generator"]},
        }
    )
    resolved = load_config(config)
    assert resolved.data["trainer"]["optimizers"]["discriminator"] == {
        "name": "sgd",
        "lr": 0.1,
        "params": ["discriminator"],
        "groups": {"discriminator.4": {"lr_scale": 0.5}},
    }
    trainer = build(config, run_dir=tmp_path / "run")
    assert list(trainer.optimizers) == ["discriminator", "generator"]
    sgd, adam = trainer.optimizers["discriminator"], trainer.optimizers["generator"]
    assert isinstance(sgd, torch.optim.SGD)
    assert [(g["name"], g["lr"], len(g["params"])) for g in sgd.param_groups] == [
        ("discriminator.4", 0.05, 2),
        ("rest", 0.1, 4),
    ]
    assert adam.param_groups[0]["betas"] == (0.5, 0.9)
    held = {id(p) for p in adam.param_groups[0]["params"]}
    assert held == {id(p) for p in trainer.pipeline.generator.parameters()}
    assert trainer.train() is not None


def test_bad_blocks_are_reported_with_their_key_paths() -> None:
    found = _problems(
        _gan(
            {
                "discriminator": {"name": "adamm", "params": "discriminator"},
                "generator": {"name": "adam", "lrr": 0.1, "params": 3},
                "bad name": {"name": "sgd"},
                "critic": {"name": "sgd", "groups": {"head": 2}},
            }
        )
    )
    paths = [path for path, _ in found]
    assert paths == [
        "trainer.optimizers.discriminator.name",
        "trainer.optimizers.generator.lrr",
        "trainer.optimizers.bad name",
        "trainer.optimizers.critic.groups",
    ]
    assert "did you mean 'adam'" in found[0][1]
    assert found[2][1] == "an optimizer name must be an identifier such as generator"
    assert found[3][1].startswith("expected submodule paths mapped to options, e.g. {decoder: {lr_scale: 0.1}}")
    assert _problems(_gan({"generator": {"name": "adam", "params": 3}})) == [
        ("trainer.optimizers.generator.params", "expected a submodule path or a list of them, got 3")
    ]
    assert _problems(_gan([])) == [
        (
            "trainer.optimizers",
            "expected names mapped to optimizer blocks, e.g. {generator: {name: adam, params: generator}}, "
            "got [] (list)",
        )
    ]


def test_a_submodule_the_pipeline_lacks_and_shared_parameters_are_refused_when_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the pipeline has no submodule 'gen'; its children are \['generator', "):
        build(_gan({"generator": {"name": "adam", "params": "gen"}}), run_dir=tmp_path / "a")
    both = {"all": {"name": "sgd", "lr": 0.1}, "generator": {"name": "adam", "params": "generator"}}
    with pytest.raises(ConfigError, match=r"optimizers 'all' and 'generator' both hold generator.0.weight"):
        build(_gan(both), run_dir=tmp_path / "b")
