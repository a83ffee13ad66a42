"""``trainer.max_time``: valid for every trainer factory (built-in or registered in code, none of which receives it),
built into one ``TimeLimit``, kept in the resolved and saved config, refused at its own key when bad (also by
``stepbus config validate`` and ``stepbus train --dry-run``, exit 2), and refused together with an enabled
``callbacks.time_limit`` block, naming both keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from callbacks.time_limit import DURATION_FORMS, TimeLimit
from lifecycle import Status
from tests.support import make_trainer
from trainers import BaseTrainer
from trainers.cli import main
from trainers.config.builder import build, load_config
from trainers.config.errors import ConfigError
from trainers.config.registry import BUILTIN_TRAINERS, Registry

#: small settings for each built-in trainer, so that building them is quick
SMALL: dict[str, dict[str, Any]] = {
    "demo": {"samples": 64},
    "gan": {"samples": 64},
    "image_field": {"size": 32, "batch_size": 64},
}


def bare_factory(*, run_dir: str | None = None, seed: int = 0) -> BaseTrainer:
    """A factory with no parameters of its own: it would raise a TypeError if it were given max_time."""
    return make_trainer(run_dir=run_dir, seed=seed, max_epochs=1)


def time_limits(trainer: BaseTrainer) -> list[TimeLimit]:
    return [c for c in trainer.callbacks if isinstance(c, TimeLimit)]


def problems(config: dict[str, Any], registry: Registry | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(config, registry=registry)
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


@pytest.mark.parametrize("name", sorted(BUILTIN_TRAINERS))
def test_every_built_in_trainer_takes_max_time_as_a_time_limit(name: str, tmp_path: Path) -> None:
    config = {"trainer": {"name": name, **SMALL[name], "max_time": "1h30min"}}
    resolved = load_config(config)
    assert "max_time" not in resolved.trainer_kwargs  # never given to the factory
    assert resolved.data["trainer"]["max_time"] == "1h30min"
    assert list(resolved.data["trainer"])[-1] == "max_time"
    trainer = build(resolved, run_dir=tmp_path / "run")
    try:
        [limit] = time_limits(trainer)
        assert limit.max_time == 5400.0
    finally:
        trainer.close()


def test_a_trainer_registered_in_code_takes_it_too(tmp_path: Path) -> None:
    registry = Registry()
    registry.register_trainer("bare", bare_factory)
    resolved = load_config({"trainer": {"name": "bare", "max_time": 90}}, registry=registry)
    assert resolved.data["trainer"] == {"name": "bare", "max_time": 90}
    trainer = build(resolved, run_dir=tmp_path / "run", registry=registry)
    [limit] = time_limits(trainer)
    assert limit.max_time == 90.0
    trainer.close()
    assert problems({"trainer": {"name": "bare", "max_tiem": 90}}, registry) == [
        "trainer.max_tiem: unknown key for trainer 'bare' (did you mean 'max_time'?); valid keys: max_time"
    ]


def test_null_means_no_limit_and_is_kept(tmp_path: Path) -> None:
    resolved = load_config({"trainer": {"name": "demo", **SMALL["demo"], "max_time": None}})
    assert resolved.data["trainer"]["max_time"] is None
    trainer = build(resolved, run_dir=tmp_path / "run")
    assert time_limits(trainer) == []
    trainer.close()
    assert "max_time" not in load_config({"trainer": {"name": "demo"}}).data["trainer"]  # not given: not added


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0", "a duration must be > 0 (to train without a limit, leave it out), got 0"),
        ("-2", "a duration must be > 0 (to train without a limit, leave it out), got -2"),
        (".nan", "a duration must be finite, got nan"),
        ("soon", "not a duration, got 'soon'"),
        ("2 parsecs", "not a duration, got '2 parsecs'"),
        ("true", "a duration must be a number of seconds or a string, not bool, got True"),
        ("[1, 2]", "a duration must be a number of seconds or a string, not list, got [1, 2]"),
    ],
)
def test_a_bad_value_is_refused_at_trainer_max_time(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"trainer": {"name": "demo"}}, overrides=[f"trainer.max_time={text}"])
    assert [f"{p.path}: {p.message}" for p in caught.value.problems] == [
        f"trainer.max_time: {why}; valid forms: {DURATION_FORMS}"
    ]


def test_max_time_and_a_time_limit_block_are_refused_together_naming_both_keys() -> None:
    both = "trainer.max_time already adds a TimeLimit; give the budget once: either trainer.max_time or"
    for key in ("time_limit", "time_limit@job"):
        config = {"trainer": {"name": "demo", "max_time": "2h"}, "callbacks": {key: {"max_time": "1h"}}}
        assert problems(config) == [
            f"callbacks.{key}: {both} callbacks.{key} (remove one, or set callbacks.{key}.enabled: false)"
        ]
    off = {
        "trainer": {"name": "demo", "max_time": "2h"},
        "callbacks": {"time_limit": {"max_time": "1h", "enabled": False}},
    }
    assert load_config(off).data["callbacks"]["time_limit"] == {"enabled": False, "max_time": "1h"}
    alone = {"trainer": {"name": "demo", "max_time": None}, "callbacks": {"time_limit": {"max_time": "1h"}}}
    assert load_config(alone).data["callbacks"]["time_limit"] == {"enabled": True, "max_time": "1h"}


def test_the_saved_config_keeps_it(tmp_path: Path) -> None:
    trainer = build({"trainer": {"name": "demo", "samples": 64, "max_epochs": 1, "max_time": "2h"}}, run_dir=tmp_path)
    assert trainer.train() is Status.COMPLETED
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    assert saved["trainer"]["max_time"] == "2h"
    assert trainer.state.metrics["time_limit/elapsed_s"] < 7200


def test_config_validate_and_dry_run_refuse_a_bad_value_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text("trainer: {name: demo, samples: 64}\n", encoding="utf-8")
    assert main(["config", "validate", str(config), "--set", "trainer.max_time=0"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_time: a duration must be > 0" in err
    run_dir = tmp_path / "run"
    assert (
        main(
            ["train", "--dry-run", "--config", str(config), "--run-dir", str(run_dir), "--set", "trainer.max_time=soon"]
        )
        == 2
    )
    assert "trainer.max_time: not a duration, got 'soon'" in capsys.readouterr().err
    assert main(["config", "validate", str(config), "--set", "trainer.max_time=45min"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--dry-run",
                "--config",
                str(config),
                "--run-dir",
                str(run_dir),
                "--set",
                "trainer.max_time=45min",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "max_time: 45min" in out
    assert "TimeLimit" in out  # its handlers are listed
    assert not run_dir.exists()
