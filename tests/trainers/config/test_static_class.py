"""Reading a class's docstring and parameters from its source (``trainers.config.static_class``) gives what
importing it gives -- for every built-in callback, and for modules written here -- and refuses (``NotStatic``)
what only an import can settle, where ``Entry.describe`` then imports the class and still answers the same."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callbacks import BUILT_IN
from trainers.config.params import REQUIRED, Param, params_of
from trainers.config.registry import Entry, RegistryError, first_paragraph
from trainers.config.static_class import NotStatic, read_class, read_constant

PACKAGE = "static_reading_sample"


def _facts(params: dict[str, Param]) -> list[tuple[str, Any, str, bool, str, str]]:
    """What a listing and a config check use of each parameter (the default's type too: ``0`` is not ``0.0``)."""
    return [(p.name, p.default, type(p.default).__name__, p.code_only, p.expected, p.text) for p in params.values()]


def _imported(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("target", list(BUILT_IN.values()))
def test_a_built_in_callback_read_from_source_is_what_importing_it_gives(target: str) -> None:
    read = read_class(target)
    cls = _imported(target)
    assert read.name == cls.__name__
    assert read.doc == cls.__doc__
    assert _facts(read.params) == _facts(params_of(cls))


def test_a_constant_read_from_source_is_the_module_attribute() -> None:
    from callbacks import lr_decay

    assert read_constant("callbacks.lr_decay", "WISP_MILESTONES") == lr_decay.WISP_MILESTONES == (0.5, 0.75, 0.9)
    assert read_constant("callbacks.weights", "USES") == ("validation", "preview", "export")  # typing.get_args(Use)
    with pytest.raises(NotStatic, match="NOT_THERE is not defined"):
        read_constant("callbacks.lr_decay", "NOT_THERE")


def test_first_paragraph_joins_the_lines_up_to_the_first_blank_one() -> None:
    doc = """Capture the picture
        and the loss.

        More.
        """
    assert first_paragraph(doc) == "Capture the picture and the loss."
    assert first_paragraph(None) == ""
    assert first_paragraph("One line.") == "One line."


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``static_reading_sample`` on ``sys.path``, whose modules each test writes; unloaded afterwards."""
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kinds.py").write_text(
        textwrap.dedent(
            """\
            from __future__ import annotations

            from typing import Literal

            Mode = Literal["fast", "slow"]
            LIMIT = 7
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield package
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _write(package: Path, module: str, source: str) -> str:
    (package / f"{module}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    return f"{PACKAGE}.{module}"


PLAIN = """\
    from __future__ import annotations

    from collections.abc import Callable, Sequence
    from typing import TYPE_CHECKING

    from lifecycle import Callback, ScheduleSpec

    from .kinds import LIMIT, Mode

    if TYPE_CHECKING:
        from torch import Tensor

    NAMES = ("a", "b")


    class Base(Callback):
        pass


    class Counter(Base):
        '''Count the steps
        it sees.

        More words.'''

        def __init__(
            self,
            every: ScheduleSpec = "5it",
            /,
            *,
            limit: int = LIMIT,
            mode: Mode = "fast",
            names: Sequence[str] = NAMES,
            scale: float | None = -1.5,
            fn: Callable[[Tensor], float] | None = None,
            label: str,
            priority: int | None = None,
            state_key: str | None = None,
        ) -> None:
            super().__init__(priority=priority, state_key=state_key)
    """


def test_a_module_written_here_reads_as_it_imports_without_being_imported(sample: Path) -> None:
    module = _write(sample, "counter", PLAIN)
    read = Entry("counter", "callback", "test", f"{module}:Counter").describe()
    assert module not in sys.modules  # read, not imported
    assert f"{PACKAGE}.kinds" not in sys.modules
    assert read.name == "Counter"
    assert first_paragraph(read.doc) == "Count the steps it sees."
    shown = [(name, default, code_only, expected) for name, default, _, code_only, expected, _ in _facts(read.params)]
    assert shown == [
        ("limit", 7, False, "an integer"),
        ("mode", "fast", False, "one of 'fast', 'slow'"),
        ("names", ("a", "b"), False, "a list of strings"),
        ("scale", -1.5, False, "a number or null"),
        ("fn", None, True, "a Python object (code only) or null"),
        ("label", REQUIRED, False, "a string"),
        ("priority", None, False, "an integer or null"),
        ("state_key", None, False, "a string or null"),
    ]
    assert _facts(read.params) == _facts(params_of(_imported(f"{module}:Counter")))


HEADER = """\
from __future__ import annotations

import enum
from typing import Literal

from lifecycle import Callback

Mode = Literal["fast", "slow"]
"""
PLAIN_CLASS = '''
class Plain(Callback):
    """One mode."""

    def __init__(self, *, mode: Mode = "fast", limit: int = 7) -> None:
        super().__init__()
'''
INHERITED = '''
class Plain(Callback):
    """Nothing of its own."""
'''
TRY = """
try:
    import tomllib as parser
except ImportError:
    parser = None
"""
#: what only an import settles: the module's source, and the reason ``read_class`` gives
REFUSED = {
    "a decorated class": (HEADER + "\ndef mark(cls):\n    return cls\n\n\n@mark" + PLAIN_CLASS, "decorated"),
    "a name bound twice": (HEADER + "Mode = int\n" + PLAIN_CLASS, "bound more than once"),
    "a name bound in a try": (HEADER + TRY + PLAIN_CLASS.replace("int = 7", "object = parser"), "conditionally"),
    "a default that is a call": (HEADER + "LIMIT = int('7')\n" + PLAIN_CLASS.replace("= 7", "= LIMIT"), "plain"),
    "an inherited __init__": (HEADER + INHERITED, "__init__"),
    "an enum parameter": (
        HEADER + "\n\nclass Fast(enum.Enum):\n    FAST = 'fast'\n\n" + PLAIN_CLASS.replace("mode: Mode", "mode: Fast"),
        "derives from Enum",
    ),
    "no future import": (HEADER.replace("from __future__ import annotations\n", "") + PLAIN_CLASS, "objects"),
    "a module __getattr__": (
        HEADER.replace('Mode = Literal["fast", "slow"]\n', "\ndef __getattr__(name):\n    return int\n") + PLAIN_CLASS,
        "dynamically",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_only_an_import_settles_is_refused_and_describe_imports_it(sample: Path, case: str) -> None:
    source, reason = REFUSED[case]
    module = _write(sample, f"refused_{list(REFUSED).index(case)}", source)
    with pytest.raises(NotStatic, match=reason):
        read_class(f"{module}:Plain")
    assert module not in sys.modules
    described = Entry("plain", "callback", "test", f"{module}:Plain").describe()
    assert module in sys.modules  # imported this time
    cls = _imported(f"{module}:Plain")
    assert (described.name, described.doc) == ("Plain", cls.__doc__)
    assert _facts(described.params) == _facts(params_of(cls))


def test_a_module_that_cannot_be_parsed_is_reported_by_the_import(sample: Path) -> None:
    module = _write(sample, "broken", HEADER + "\nclass Plain(Callback:\n    pass\n")
    with pytest.raises(NotStatic, match="SyntaxError"):
        read_class(f"{module}:Plain")
    with pytest.raises(RegistryError) as info:
        Entry("plain", "callback", "test", f"{module}:Plain").describe()
    assert str(info.value.problems[0]).startswith("plain: callback 'plain' from test could not be loaded: SyntaxError")
