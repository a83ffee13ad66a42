"""Where a config's callbacks write: every output path lies inside the run directory, unless the config allows a
directory outside it.

The output paths are the callback parameters annotated as a path (``str | os.PathLike[str]``, ``Path``): among the
built-ins ``checkpointer.dir``, ``tensorboard.dir``, ``wandb.dir``, ``validator.image_dir``, ``metrics_file.path``
and ``pipeline_export.path``. A parameter named ``path`` (or ``*_path``, ``*_file``) names a file; any other names a
directory. A plugin callback's path parameters follow the same rule, so it declares where it writes by its types.

The rule, for each such value given in a config (and each non-null default):

* a relative path is taken from the run directory (``checkpointer.dir: ckpt`` is ``<run_dir>/ckpt``): the callback
  receives it joined to the run directory's absolute path, whatever that callback would do with a relative path;
* the path is resolved as the file system will (``os.path.realpath``: ``..`` and symbolic links followed) and must
  then lie inside the run directory, or inside one of the directories listed in ``run.allow_outside`` (absolute
  paths, resolved the same way) -- ``metrics_file.path: ../../x.json`` is refused, never written;
* a file path may not name a directory (``path: /``, ``path: .``) and a directory path may not name a file;
* what does not exist yet must be creatable: its nearest existing ancestor is a directory this process can write.

All of it is decided from the file system as it is, without creating anything, so ``stepbus config validate`` and
``stepbus train --dry-run`` can run it too. The resolved config keeps the paths as written.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

from trainers.config.errors import Problem, show_value
from trainers.config.writable import unwritable

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.params import Param
    from trainers.config.schema import CallbackSpec, RunConfig

__all__ = [
    "OutputPath",
    "check_allow_outside",
    "check_output_paths",
    "check_run_directory",
    "located_kwargs",
    "output_params",
    "output_paths",
]

Kind = Literal["file", "directory"]
_FILE_NAME = re.compile(r"^(?:path|.+_path|.+_file)$")


@dataclass(frozen=True)
class OutputPath:
    """One path a callback is configured to write to."""

    key: str  #: the config key: ``callbacks.checkpointer.dir``
    given: str  #: the value as written
    kind: Kind
    path: Path  #: where the callback is told to write: ``given`` joined to the run directory's absolute path
    resolved: Path  #: ``path`` resolved (``..`` and symbolic links followed)
    example: str  #: a file or folder name to suggest in a message


def output_params(params: Mapping[str, Param]) -> dict[str, Kind]:
    """The parameters that name where a callback writes (see the module docstring), with what each names."""
    return {name: _kind(name) for name, param in params.items() if not param.code_only and _is_path(param.annotation)}


def output_paths(config: RunConfig, run_dir: str | os.PathLike[str]) -> list[OutputPath]:
    """Every output path of the config's enabled callbacks: each value given, else each default that is not null."""
    root = Path(os.path.abspath(run_dir))
    found: list[OutputPath] = []
    for spec in config.callbacks:
        if not spec.enabled:
            continue
        params = spec.entry.params()
        for name, kind in output_params(params).items():
            value = spec.kwargs.get(name, params[name].default)
            if not isinstance(value, (str, PurePath)) or not str(value):
                continue  # null: the callback's own place inside the run directory
            given = os.fspath(value)
            path = root / given
            default = params[name].default
            example = Path(default).name if isinstance(default, str) and default else Path(given).name or "out"
            found.append(OutputPath(f"callbacks.{spec.key}.{name}", given, kind, path, _real(path), example))
    return found


def located_kwargs(spec: CallbackSpec, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``spec.kwargs`` with each relative output path joined to the run directory's absolute path."""
    root = Path(os.path.abspath(run_dir))
    kwargs = dict(spec.kwargs)
    for name in output_params(spec.entry.params()):
        value = kwargs.get(name)
        if isinstance(value, (str, PurePath)) and str(value) and not Path(value).is_absolute():
            kwargs[name] = os.fspath(root / value)
    return kwargs


def check_output_paths(config: RunConfig, run_dir: str | os.PathLike[str]) -> list[Problem]:
    """The problems of :func:`output_paths` under the rule of the module docstring (none: every path is usable)."""
    root = _real(Path(os.path.abspath(run_dir)))
    allowed = [_real(Path(entry)) for entry in config.run.get("allow_outside", ())]
    problems: list[Problem] = []
    for output in output_paths(config, run_dir):
        message = _shape_problem(output, root) or _place_problem(output, root, allowed) or _creation_problem(output)
        if message is not None:
            problems.append(Problem(output.key, f"{output.given!r} {message}"))
    return problems


def check_run_directory(run_dir: str | os.PathLike[str]) -> list[Problem]:
    """A problem when the run directory is a file or cannot be created (nothing is created to find out)."""
    reason = unwritable(Path(os.path.abspath(run_dir)))
    if reason is None:
        return []
    return [Problem("", f"the run directory {run_dir} {reason}; choose another --run-dir (or run.dir in the config)")]


def check_allow_outside(value: Any) -> Problem | None:
    """``run.allow_outside`` checked: a list of absolute directory paths."""
    if isinstance(value, (str, PurePath)) or not isinstance(value, Sequence):
        bad: Any = value
    else:
        bad = next((e for e in value if not isinstance(e, (str, PurePath)) or not Path(e).is_absolute()), None)
        if bad is None:
            return None
    return Problem(
        "run.allow_outside",
        f"got {show_value(bad)}; expected a list of absolute directory paths outside the run directory where the "
        "callbacks' paths may also lie, e.g. [/data/exports]",
    )


# ---------------------------------------------------------------------------------------------------- the checks
def _shape_problem(output: OutputPath, root: Path) -> str | None:
    """A file path naming a directory, or a directory path naming a file."""
    resolved = output.resolved
    if output.kind == "file" and (resolved == root or resolved.is_dir()):
        what = "the run directory itself" if resolved == root else f"the directory {resolved}"
        return f"names {what}; a file name is needed here, e.g. {output.example!r}"
    if output.kind == "directory" and resolved.exists() and not resolved.is_dir():
        return f"resolves to {resolved}, which is a file; a directory is needed here"
    return None


def _place_problem(output: OutputPath, root: Path, allowed: list[Path]) -> str | None:
    """A path outside the run directory and outside every directory ``run.allow_outside`` lists."""
    resolved = output.resolved
    if any(_within(resolved, base) for base in (root, *allowed)):
        return None
    folder = resolved if output.kind == "directory" else resolved.parent
    listed = f" (it lists {', '.join(str(a) for a in allowed)})" if allowed else ""
    return (
        f"resolves to {resolved}, outside the run directory; give a path inside it (a relative path is taken from "
        f"the run directory, e.g. {output.example!r}), or allow the folder with run.allow_outside: [{folder}]{listed}"
    )


def _creation_problem(output: OutputPath) -> str | None:
    """A directory (for a file: its folder) that is not writable or cannot be created."""
    if output.kind == "directory":
        reason = unwritable(output.resolved)
        return None if reason is None else f"resolves to {output.resolved}, which {reason}"
    folder = output.resolved.parent
    reason = unwritable(folder)
    return None if reason is None else f"resolves to {output.resolved}, whose folder {folder} {reason}"


# ---------------------------------------------------------------------------------------------------- helpers
def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def _kind(name: str) -> Kind:
    return "file" if _FILE_NAME.match(name) else "directory"


def _is_path(annotation: Any) -> bool:
    """Whether an annotation admits a path object (``os.PathLike[str]``, ``Path``), alone or in a union."""
    if typing.get_origin(annotation) is os.PathLike or annotation is os.PathLike:
        return True
    if isinstance(annotation, type):
        return issubclass(annotation, (PurePath, os.PathLike))
    return any(_is_path(a) for a in typing.get_args(annotation))
