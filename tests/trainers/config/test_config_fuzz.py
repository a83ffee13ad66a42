"""Fuzzing ``load_config``: random and mutated configs, as mappings, as YAML files and through ``--set`` overrides.

The contract: every input either loads (a :class:`RunConfig` whose resolved data is plain YAML and resolves to
itself again, as a resume does with ``config.yaml``) or raises :class:`ConfigError` with at least one problem --
never any other exception (the CLI turns ``ConfigError`` into exit 2; anything else is a traceback and exit 1).
``build()`` is never called here: it builds models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainers import ConfigError, Registry, RunConfig, load_config
from trainers.config.errors import Problem
from trainers.config.overrides import parse_override
from trainers.config.registry import BUILTIN_CALLBACKS
from trainers.config.schema import default_config_path, dump_yaml

#: the file the fuzz mutates: the demo's config, a fixed file -- not the built-in default, which may change (it is the
#: image-field app now; ``base=None`` below and the last test cover it)
DEMO_PATH = Path(__file__).resolve().parents[3] / "trainers" / "apps" / "configs" / "demo.yaml"
DEMO: dict[str, Any] = yaml.safe_load(DEMO_PATH.read_text(encoding="utf-8"))
REGISTRY = Registry.default()  # shared: an entry reads its class's parameters once
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: names that reach deep into the checks: sections, run keys, trainer and optimizer keys, callback names (plain,
#: tagged, badly tagged) and every callback parameter
KEYS = sorted(
    {"run", "trainer", "callbacks", "name", "dir", "seed", "enabled", "optimizer", "lr", "betas", "momentum"}
    | set(DEMO["trainer"])
    | set(BUILTIN_CALLBACKS)
    | {f"{name}@x" for name in BUILTIN_CALLBACKS}
    | {"validator@", "validator@a.b", "validator@holdout", "checkpointer@2", "@x", "nope"}
    | {param for name in BUILTIN_CALLBACKS for param in REGISTRY.entry("callback", name, name).params()}
)
#: values the callbacks give meaning to, so mutations pass the type checks and reach the constructors
WORDS = [
    "",
    " ",
    "1ep",
    "2ep",
    "0ep",
    "50it",
    "1it",
    "-1it",
    "10min",
    "0.5s",
    "once",
    "always",
    "val/mse",
    "best/mse",
    "val/",
    "/val",
    "adam",
    "adamw",
    "sgd",
    "lbfgs",
    "min",
    "max",
    "raise",
    "warn",
    "disable",
    "offline",
    "online",
    "disabled",
    "iteration",
    "epoch",
    "skip",
    "stop",
    "demo",
    "runs",
    "a/b",
    "prune",
    "zero_grad",
    "holdout",
    "Validator",
    "1e-3",
    "nan",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=200)
    | st.integers()
    | st.floats()  # nan and +-inf included
    | st.text(max_size=8)
    | st.sampled_from(WORDS)
)
KEYS_ANY = st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(-2, 2) | st.none() | st.booleans() | st.floats()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS_ANY, inner, max_size=4),
    max_leaves=10,
)


def _containers(node: Any) -> Iterator[dict[Any, Any] | list[Any]]:
    """Every mapping and list in ``node`` (itself included), depth first."""
    if isinstance(node, (dict, list)):
        yield node
        for child in node.values() if isinstance(node, dict) else node:
            yield from _containers(child)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The demo's config with 1-6 random edits: replace, delete or insert a key or list item anywhere."""
    config: Any = copy.deepcopy(DEMO)
    for _ in range(draw(st.integers(1, 6))):
        nodes = list(_containers(config))
        if not nodes:
            break
        node = draw(st.sampled_from(nodes))
        action = draw(st.sampled_from(["replace", "delete", "insert"]))
        if isinstance(node, dict):
            if node and action != "insert":
                key = draw(st.sampled_from(list(node)))
                if action == "delete":
                    del node[key]
                else:
                    node[key] = draw(VALUES)
            else:
                node[draw(KEYS_ANY)] = draw(VALUES)
        elif node and action != "insert":
            index = draw(st.integers(0, len(node) - 1))
            if action == "delete":
                del node[index]
            else:
                node[index] = draw(VALUES)
        else:
            node.insert(draw(st.integers(0, len(node))), draw(VALUES))
    if draw(st.integers(0, 19)) == 19:  # now and then: no mapping at all at the top (a string would be a path)
        config = draw(VALUES.filter(lambda value: not isinstance(value, str)))
    return config


def _same(a: Any, b: Any) -> bool:
    """Equality where nan equals nan (a resolved config may hold nan, e.g. a W&B setting)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def outcome(config: Any, overrides: list[str] | None = None) -> RunConfig | ConfigError:
    """``load_config``'s result or its ConfigError, checked; any other exception fails the test."""
    error: ConfigError | None = None
    try:
        result = load_config(config, overrides=overrides or [], registry=REGISTRY)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.problems, "a ConfigError without problems"
        assert all(isinstance(p, Problem) and isinstance(p.path, str) and p.message for p in error.problems)
        header = f"{error.source}: " if error.source else ""
        if len(error.problems) == 1:
            assert str(error) == f"{header}{error.problems[0]}"
        else:
            lines = [f"{header}{len(error.problems)} problems", *(f"  - {p}" for p in error.problems)]
            assert str(error) == "\n".join(lines)
        return error
    assert isinstance(result, RunConfig)
    assert list(result.data) == ["run", "trainer", "callbacks"]
    assert [spec.key for spec in result.callbacks] == list(result.data["callbacks"])
    assert all(spec.enabled is result.data["callbacks"][spec.key]["enabled"] for spec in result.callbacks)
    # plain YAML, and a fixed point: the saved config.yaml resolves to the same config
    text = dump_yaml(result.data)
    assert _same(yaml.safe_load(text), result.data)
    try:
        again = load_config(yaml.safe_load(text), registry=REGISTRY)
    except ConfigError as exc:
        pytest.fail(f"the resolved config does not load again: {exc}\nresolved:\n{text}")
    assert _same(again.data, result.data), (result.data, again.data)
    return result


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file that every example rewrites (hypothesis cannot use function-scoped fixtures)."""
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


# ---------------------------------------------------------------------------------------------------- fuzz
@FUZZ
@given(config=mutated())
def test_mutated_mappings_load_or_raise_config_error(config: Any) -> None:
    before = repr(config)
    outcome(config)
    assert repr(config) == before  # load_config does not change the caller's mapping


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=mutated(), edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.text(max_size=3))))
def test_mutated_yaml_files_load_or_raise_config_error(
    fuzz_file: Path, config: Any, edits: list[tuple[int, int, str]]
) -> None:
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=bool(len(edits) % 2))
    for position, length, insert in edits:  # character-level damage: YAML syntax errors, odd indentation ...
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + length :]
    fuzz_file.write_text(text, encoding="utf-8")
    assert outcome(fuzz_file).source == str(fuzz_file)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200) | st.sampled_from(["", "---", "[]", "{}", "~", "a: [", "? [1, 2]\n: 3\n"]))
def test_random_yaml_text_loads_or_raises_config_error(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8")
    result = outcome(fuzz_file)
    assert result.source == str(fuzz_file)


OVERRIDE_KEYS = st.lists(st.sampled_from(KEYS) | st.text(max_size=4), min_size=1, max_size=4).map(".".join)
OVERRIDE_VALUES = (
    st.sampled_from(WORDS)
    | st.text(max_size=10)
    | VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip())
)
OVERRIDES = st.lists(
    st.builds(lambda key, value: f"{key}={value}", OVERRIDE_KEYS, OVERRIDE_VALUES) | st.text(max_size=20),
    max_size=4,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the base is the built-in default (None: the image-field app), the demo's config as a file or a mapping, or a
# mutated mapping; a base that is not a mapping is test_overrides_on_a_non_mapping_...
@given(
    base=st.sampled_from([None, "file", "mapping"]) | mutated().filter(lambda c: isinstance(c, dict)),
    overrides=OVERRIDES,
)
def test_random_overrides_load_or_raise_config_error(fuzz_file: Path, base: Any, overrides: list[str]) -> None:
    if base is None or base == "file":
        fuzz_file.write_text(DEMO_PATH.read_text(encoding="utf-8"), encoding="utf-8")
        config: Any = None if base is None else fuzz_file
    else:
        config = copy.deepcopy(DEMO) if base == "mapping" else base
    source = str(default_config_path()) if base is None else str(fuzz_file) if base == "file" else "<dict>"
    result = outcome(config, overrides)
    if isinstance(result, RunConfig):
        assert result.source == (f"{source} with --set" if overrides else source)
    else:  # a malformed --set, or a problem in the config with the overrides applied
        assert result.source in ("--set", f"{source} with --set" if overrides else source)
    # parse_override alone: a ConfigError or a dotted key and a value, never anything else
    for text in overrides:
        if "=" in text and all(part.strip() for part in text.partition("=")[0].split(".")):
            parts, _ = parse_override(text)
            assert parts == [part.strip() for part in text.partition("=")[0].split(".")]
        else:
            with pytest.raises(ConfigError) as info:
                parse_override(text)
            assert [p.path for p in info.value.problems] == [""]


# ---------------------------------------------------------------------------------------------------- found cases
# Inputs the random search does not reach by itself (they need a 4301-digit number, a self-referencing YAML anchor
# or hundreds of nesting levels). Each one crashes `stepbus config validate` with a traceback and exit 1 today.


@pytest.mark.parametrize("every", [{"every": "2ep"}, {"every": 100}, {"once": True}])
def test_the_mapping_form_of_a_checkpointer_schedule_resolves_to_itself(every: dict[str, Any]) -> None:
    # found by test_mutated_mappings_load_or_raise_config_error (hypothesis seed 1): the checkpointer's schedule
    # mapping is turned into a bare Schedule ("always"), which the saved config cannot be loaded from again
    result = outcome({"trainer": {"name": "demo"}, "callbacks": {"checkpointer": {"every": every}}})
    assert isinstance(result, RunConfig)
    assert result.data["callbacks"]["checkpointer"]["every"] == every


def test_a_yaml_integer_with_more_than_4300_digits_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"trainer: {{name: demo}}\nrun: {{seed: {'9' * 5000}}}\n", encoding="utf-8")
    assert isinstance(outcome(path), ConfigError)


def test_a_huge_integer_in_an_override_is_a_config_error() -> None:
    assert isinstance(outcome(None, ["run.seed=" + "9" * 5000]), ConfigError)


def test_a_huge_integer_in_a_mapping_is_reported_not_crashed_on() -> None:
    result = outcome({"trainer": {"name": "demo"}, "run": {"seed": -(10**5000)}})
    assert isinstance(result, ConfigError)
    assert [p.path for p in result.problems] == ["run.seed"]


def test_a_self_referencing_yaml_anchor_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    # wandb's settings take any mapping: the cycle reaches the resolved data
    path.write_text("trainer: {name: demo}\ncallbacks: {wandb: {settings: &a {x: *a}}}\n", encoding="utf-8")
    assert isinstance(outcome(path), ConfigError)


def test_a_self_referencing_yaml_anchor_with_overrides_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("trainer: {name: demo}\nrun: &a {name: x, y: *a}\n", encoding="utf-8")
    without = outcome(path)  # without --set: reported as an unknown key
    assert isinstance(without, ConfigError)
    assert [p.path for p in without.problems] == ["run.y"]
    assert isinstance(outcome(path, ["run.seed=1"]), ConfigError)  # with --set: the copy recurses forever


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("trainer: {name: demo}\nrun: " + "[" * 1000 + "]" * 1000 + "\n", encoding="utf-8")
    assert isinstance(outcome(path), ConfigError)


@pytest.mark.parametrize("config", [[], [{"trainer": {"name": "demo"}}], ({"trainer": {"name": "demo"}},), 5])
def test_overrides_on_a_non_mapping_config_are_a_config_error(config: Any) -> None:
    without = outcome(config)  # without --set: "the config must be a mapping"
    assert isinstance(without, ConfigError)
    assert str(without).startswith("<dict>: the config must be a mapping, got ")
    assert isinstance(outcome(config, ["trainer.max_epochs=2"]), ConfigError)


def test_the_built_in_default_is_the_image_field_app_and_resolves_to_itself() -> None:
    """``load_config(None)`` (what the random overrides above start from with ``base=None``) is image_field.yaml,
    resolved; the resolved config loads again to the same (``outcome`` checks the fixed point)."""
    default = outcome(None)
    assert isinstance(default, RunConfig)
    assert default_config_path() == DEMO_PATH.with_name("image_field.yaml")
    assert default.source == str(default_config_path())
    assert default.trainer.name == "image_field"
    from_file = outcome(DEMO_PATH.with_name("image_field.yaml"))
    assert isinstance(from_file, RunConfig)
    assert _same(from_file.data, default.data)
    demo = outcome(DEMO_PATH)
    assert isinstance(demo, RunConfig)
    assert demo.trainer.name == "demo"
