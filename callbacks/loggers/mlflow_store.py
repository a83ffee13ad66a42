"""Where the ``MLflowLogger`` writes and what an MLflow run accepts (not a callback).

* **The store.** MLflow 3 refuses its plain file store (``file:``, ``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE``
  is true in the environment, so the default store is an SQLite database under the run directory,
  ``sqlite:////abs/<run_dir>/mlruns/mlflow.db``, with the artifacts in ``<run_dir>/mlruns/artifacts``: one
  self-contained folder per run directory, readable with ``mlflow ui --backend-store-uri``. Creating the database
  runs MLflow's migrations (about a second, once). Any other tracking URI MLflow knows may be given instead; its
  scheme is checked when the logger is made (:func:`check_tracking_uri`), so a typo is a ``ValueError`` then rather
  than a failure at the first step. A new experiment in any SQLite store keeps its artifacts in ``artifacts/``
  beside the database (MLflow's own default is ``./mlruns`` in the current directory).
* **Params.** The resolved config flattened to dotted keys, each value as text (MLflow's params are strings; a
  list as JSON). MLflow
  caps a value at ``MAX_PARAM_VALUE`` characters and a key at ``MAX_KEY`` and allows only some characters in keys:
  a longer value is cut (ending in ``...``: the whole config is also logged as the ``config.json`` artifact), a key
  MLflow would refuse is left out of the params (:func:`config_params` returns it). Params cannot change once
  logged, so on a resumed run only the new keys are logged (:func:`new_params`).
* **Exactly once.** MLflow cannot delete a metric point. A resumed run (or one continued by id) first reads back,
  per metric key, the last step the run already has (:func:`last_steps`); the logger then skips every value at or
  before that step -- stepbus resumes bit-exactly, so those are the values a killed process had already written.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

__all__ = [
    "MAX_KEY",
    "MAX_PARAM_VALUE",
    "artifact_path",
    "check_tracking_uri",
    "checked_tags",
    "chunks",
    "config_params",
    "default_store",
    "experiment_id",
    "last_steps",
    "new_params",
    "param",
    "sqlite_file",
    "tag",
    "valid_key",
]

#: MLflow's limits (``mlflow.utils.validation``): characters in a param value, in a key; entities per ``log_batch``
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_TAG_VALUE = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

#: the tracking URI schemes MLflow itself handles (the SQL ones also with a driver: ``postgresql+psycopg2``)
_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks", "databricks-uc", "uc")
_KEY = re.compile(r"[/\w.\- :]+")


def _plugin_schemes() -> list[str]:
    """Schemes that installed packages add through MLflow's ``mlflow.tracking_store`` entry points."""
    from importlib.metadata import entry_points

    return [entry.name for entry in entry_points(group="mlflow.tracking_store")]


def check_tracking_uri(uri: object, owner: str) -> str:
    """``uri`` checked: a string with a scheme MLflow knows; a ``file:`` URI only with ``MLFLOW_ALLOW_FILE_STORE``
    set (MLflow refuses it otherwise). Else a ``ValueError`` naming ``owner``, the value and what would work."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"{owner}: tracking_uri must be a non-empty string, got {uri!r}")
    scheme = urlsplit(uri).scheme.lower()
    if not scheme or len(scheme) == 1:  # a path (a Windows drive letter is not a scheme)
        raise ValueError(
            f"{owner}: tracking_uri must be a URI with a scheme (sqlite:///path/to/mlflow.db, http://host:5000, "
            f"...), got the path {uri!r}; for a local store pass dir={uri!r} instead (an SQLite database in it)"
        )
    known = (*_SCHEMES, *_plugin_schemes())
    if scheme.split("+", 1)[0] not in known:
        raise ValueError(
            f"{owner}: tracking_uri {uri!r} has the scheme {scheme!r}, which MLflow does not know; valid schemes: "
            f"{', '.join(known)}"
        )
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
        raise ValueError(
            f"{owner}: tracking_uri {uri!r} is MLflow's file store, which MLflow 3 refuses unless the environment "
            "has MLFLOW_ALLOW_FILE_STORE=true; set it, or leave tracking_uri out for the default SQLite store "
            "(<run_dir>/mlruns/mlflow.db), or give an sqlite:/// URI"
        )
    return uri


def default_store(directory: Path) -> str:
    """The tracking URI of the default store in ``directory`` (its artifacts go in ``<directory>/artifacts``)."""
    return f"sqlite:///{(directory.resolve() / 'mlflow.db').as_posix()}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (its folder is created before MLflow opens it), else ``None``."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path(path)


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of the experiment ``name``, created (with ``artifact_location``) when the store has none."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ValueError(
                f"the experiment {name!r} was deleted in this store; restore it (mlflow experiments restore) or log "
                "to another experiment"
            )
        return str(found.experiment_id)
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another process: use that one
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def valid_key(key: str) -> bool:
    """Whether MLflow accepts ``key`` as a param, metric or tag name."""
    if not key or len(key) > MAX_KEY or not _KEY.fullmatch(key):
        return False
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


def config_params(config: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``config`` as MLflow params: flattened to dotted keys, values as text (lists and tuples as JSON), a value
    over ``MAX_PARAM_VALUE`` characters cut to end in ``...``; and the keys MLflow would refuse (left out)."""
    params: dict[str, str] = {}
    refused: list[str] = []
    for key, value in _flat(config, ""):
        if not valid_key(key):
            refused.append(key)
            continue
        text = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)
        params[key] = text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."
    return params, refused


def _flat(config: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def new_params(params: Mapping[str, str], logged: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Of ``params``, those the run has not logged yet, and the keys it logged with another value (MLflow refuses to
    change a param: those keep their first value)."""
    fresh = {k: v for k, v in params.items() if k not in logged}
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
    return fresh, changed


def last_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """Per metric key of the run, the last step it has (read back from each key's history)."""
    run = client.get_run(run_id)
    return {
        key: max(point.step for point in history)
        for key in run.data.metrics
        if (history := client.get_metric_history(run_id, key))
    }


def artifact_path(*parts: str) -> str:
    """A relative artifact path from ``parts`` (each may hold ``/``): empty, ``.`` and ``..`` segments become
    ``_``, so a logged name never leaves the run's artifact folder."""
    segments = [s for part in parts for s in part.replace("\\", "/").split("/")]
    return "/".join("_" if s in ("", ".", "..") else s for s in segments)


def checked_tags(tags: object, owner: str) -> dict[str, str]:
    """``tags`` checked as MLflow run tags (names MLflow accepts, text values within its limit), or a ``ValueError``
    naming ``owner``."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ValueError(f"{owner}: tags must map names to strings, got {tags!r}")
    for key, value in tags.items():
        if not valid_key(key):
            raise ValueError(
                f"{owner}: tag name {key!r} is not one MLflow accepts (letters, digits, _ - . / : and spaces, at "
                f"most {MAX_KEY} characters, no empty, '.' or '..' part)"
            )
        if len(value) > MAX_TAG_VALUE:
            raise ValueError(f"{owner}: tag {key!r} has {len(value)} characters; MLflow allows {MAX_TAG_VALUE}")
    return dict(tags)


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    """``items`` in lists of at most ``size`` (MLflow's limits per ``log_batch``)."""
    return (items[i : i + size] for i in range(0, len(items), size))


def param(key: str, value: str) -> Any:
    """An MLflow ``Param`` entity."""
    from mlflow.entities import Param

    return Param(key, value)


def tag(key: str, value: str) -> Any:
    """An MLflow ``RunTag`` entity."""
    from mlflow.entities import RunTag

    return RunTag(key, value)
