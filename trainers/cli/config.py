"""``stepbus config show|validate``: the resolved config as YAML, or whether ``stepbus train`` would accept it.

``validate`` runs the preflight (``trainers.config.preflight``): the config is loaded and checked, then the trainer
and its callbacks are built and set up as ``train`` builds them, against the run directory ``train`` would use
(``--run-dir DIR``, else a new ``<run.dir>/<run.name>-<timestamp>``), and torn down again. Nothing is written. So a
config that ``validate`` calls valid is one that ``train`` starts, and each refusal is the config error ``train``
reports.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from callbacks.console_width import console_for
from trainers.cli.common import print_yaml

__all__ = ["config_command"]


def config_command(args: argparse.Namespace) -> int:
    """``stepbus config show`` or ``validate``; returns 0 (a bad config raises ``ConfigError``, which ``main``
    reports with exit code 2)."""
    from trainers.config.builder import load_config
    from trainers.config.registry import Registry

    registry = Registry.default()
    config = load_config(args.file, overrides=args.overrides, registry=registry)
    console = console_for()
    if args.action == "show":
        print_yaml(console, config.data)
        return 0
    from trainers.config.builder import new_run_dir
    from trainers.config.preflight import preflight

    run_dir = args.run_dir if args.run_dir is not None else new_run_dir(config)
    preflight(config, run_dir, registry, objects={"console": Console(quiet=True)})
    enabled = [spec.key for spec in config.callbacks if spec.enabled]
    console.print(
        f"{escape(config.source)}: valid; trainer {escape(config.trainer.name)}, callbacks: "
        f"{escape(', '.join(enabled) or 'none')}",
        highlight=False,
    )
    return 0
