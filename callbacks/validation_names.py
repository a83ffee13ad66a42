"""How a validator's values and requests are named (shared by callbacks; not a callback).

A ``Validator`` with prefix ``p`` publishes the latest value of its metric ``m`` as ``p/m`` and the best so far as
``best/m`` for the default prefix ``val`` (``best/psnr`` for ``val/psnr``, the names early stopping, the
checkpointer and older runs know) and ``best/p/m`` for any other (``best/render/psnr`` for ``render/psnr``), so two
validators never write one key. A prefix whose first part is ``best`` would collide with those names and is refused.

``trainer.request_validation(name)`` asks for the request kind ``validation:<name>``; each validator serves it under
its prefix and under its ``state_key``. The ``Validator`` publishes under these names and the ``ProgressBar`` reads
them back, without either importing the other.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PREFIX", "best_key", "check_prefix", "metric_key", "metric_name", "request_kind"]

#: the prefix of the default validator: its best values are ``best/<m>``, without the prefix
DEFAULT_PREFIX = "val"


def metric_key(prefix: str, name: str) -> str:
    """``val/psnr``: where a validator with ``prefix`` publishes the latest value of ``name``."""
    return f"{prefix}/{name}"


def best_key(prefix: str, name: str) -> str:
    """``best/psnr`` for the default prefix, ``best/<prefix>/psnr`` for another: where the best value goes."""
    return f"best/{name}" if prefix == DEFAULT_PREFIX else f"best/{prefix}/{name}"


def metric_name(prefix: str, key: str) -> str:
    """The metric's own name in a published ``key`` (``psnr`` of ``render/psnr``); ``key`` itself when it is not
    under ``prefix``."""
    return key[len(prefix) + 1 :] if key.startswith(prefix + "/") else key


def request_kind(name: str) -> str:
    """The request kind ``trainer.request_validation(name)`` asks for: ``validation:<name>``."""
    return f"validation:{name}"


def check_prefix(prefix: object, owner: str) -> str:
    """``prefix`` when it can name a validator's metrics, else a ``ValueError`` prefixed with ``owner``."""
    if not isinstance(prefix, str) or not prefix.strip() or prefix.strip("/") != prefix:
        raise ValueError(f"{owner}: prefix must be a non-empty name without '/' at its ends, got {prefix!r}")
    if prefix.split("/", 1)[0] == "best":
        raise ValueError(
            f"{owner}: prefix {prefix!r} would publish into best/, where validators keep their best values; "
            "choose another prefix"
        )
    return prefix
