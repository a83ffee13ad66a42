"""The command this process was started as, written so that the user can type it again: the start of every command
the CLI prints as a hint (``continue with: .venv/bin/stepbus train --resume auto ...``).

* the console script: ``stepbus`` when the ``stepbus`` found on ``PATH`` is the one that ran, else its path as given
  (``.venv/bin/stepbus``);
* ``python -m trainers`` (or any module that runs :func:`trainers.cli.main`): the interpreter as it was typed, again
  shortened to its name only when ``PATH`` finds that very interpreter, then ``-m`` and the module;
* a script file: run as given when it is executable, else by the interpreter;
* the ranks ``stepbus train --nproc N`` starts (as ``python -m trainers`` under torchrun) get the command the user
  typed in :data:`COMMAND_ENV`;
* anything else (``python -c ...``, an interactive session): ``stepbus``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["COMMAND_ENV", "command_line", "command_words", "runnable", "words_for"]

#: the environment variable through which ``train --nproc`` hands its ranks the command the user typed
COMMAND_ENV = "STEPBUS_COMMAND"


def runnable(program: str, *, path: str | None = None) -> str:
    """``program`` (an executable's path as given) shortened to its bare name when ``PATH`` (``path``) finds that
    same file under that name, else as given: what a shell runs as that program."""
    name = os.path.basename(program)
    if not name or name == program:
        return program  # already a bare name, found on PATH when it was run
    found = shutil.which(name, path=path)
    return name if found is not None and _same_place(found, program) else program


def command_words() -> list[str]:
    """The words that start this process's command again (see the module docstring)."""
    return words_for(
        argv0=sys.argv[0] if sys.argv else "",
        interpreter=sys.orig_argv[0] if sys.orig_argv else sys.executable,
        main_module=_main_module(),
        environ=os.environ,
    )


def words_for(*, argv0: str, interpreter: str, main_module: str | None, environ: Mapping[str, str]) -> list[str]:
    """The words that start a command again, given how its process was started: ``argv0`` (``sys.argv[0]``), the
    interpreter as typed (``sys.orig_argv[0]``), the module ``python -m`` ran (``None`` for none) and the
    environment (its ``PATH`` and :data:`COMMAND_ENV`)."""
    handed = _split(environ.get(COMMAND_ENV, ""))
    if handed:
        return handed
    search = environ.get("PATH")
    if main_module is not None:
        return [runnable(interpreter, path=search), "-m", main_module.removesuffix(".__main__")]
    if argv0 in ("", "-c") or not os.path.isfile(argv0):
        return ["stepbus"]
    script = argv0 if os.sep in argv0 else os.path.join(os.curdir, argv0)  # a bare name would be looked up on PATH
    if os.access(script, os.X_OK):
        return [runnable(script, path=search)]
    return [runnable(interpreter, path=search), argv0]


def command_line(*args: str | Path) -> str:
    """One line for a shell: the command that started this process followed by ``args``, each quoted where a
    shell needs it (``shlex.join``)."""
    return shlex.join([*command_words(), *(str(arg) for arg in args)])


def _split(line: str) -> list[str]:
    """A command line's words; none for a line no shell would split (an unclosed quote)."""
    try:
        return shlex.split(line)
    except ValueError:
        return []


def _main_module() -> str | None:
    """The module ``python -m`` ran as ``__main__``, or None for a script, ``-c`` or an interactive session."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) and name else None


def _same_place(found: str, given: str) -> bool:
    """Whether two paths name the same directory entry: their folders compared as files (a linked folder is the
    same place), the entries by name, never resolved (a virtual environment's ``python`` links to the system's
    interpreter, which is not it: that one lacks the environment's packages)."""
    first, second = Path(os.path.abspath(found)), Path(os.path.abspath(given))
    if first.name != second.name:
        return False
    try:
        return first.parent.samefile(second.parent)
    except OSError:
        return False
