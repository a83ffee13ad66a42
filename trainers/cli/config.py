"""``stepbus config show|validate``: the resolved config as YAML, or whether it is valid."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from trainers.cli.common import print_yaml

__all__ = ["config_command"]


def config_command(args: argparse.Namespace) -> int:
    """``stepbus config show`` or ``validate``; returns 0 (a bad config raises ``ConfigError``, which ``main``
    reports with exit code 2)."""
    from trainers.config.builder import load_config

    config = load_config(args.file, overrides=args.overrides)
    console = Console()
    if args.action == "show":
        print_yaml(console, config.data)
        return 0
    enabled = [spec.key for spec in config.callbacks if spec.enabled]
    console.print(
        f"{escape(config.source)}: valid; trainer {escape(config.trainer.name)}, callbacks: "
        f"{escape(', '.join(enabled) or 'none')}",
        highlight=False,
    )
    return 0
