"""The ``featurestore`` command line: subcommands are registered by the modules in COMMAND_MODULES."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

import pydantic

from featurestore import __version__
from featurestore.exceptions import ConfigurationError, FeatureStoreError
from featurestore.logging import configure_logging
from featurestore.settings import Settings

__all__ = ["COMMAND_MODULES", "build_parser", "common_options", "load_settings", "main", "print_store_report"]

# Each module has `register(subparsers)` adding its subcommands; a leaf parser sets
# `handler=<callable(args) -> int>` with set_defaults.
COMMAND_MODULES: tuple[str, ...] = ("featurestore.dev.commands", "featurestore.commands.stream",
                                    "featurestore.commands.demo", "featurestore.commands.registry",
                                    "featurestore.commands.materialize", "featurestore.commands.compact",
                                    "featurestore.commands.reset", "featurestore.commands.serve",
                                    "featurestore.commands.ui")


def common_options(suppress: bool = True) -> argparse.ArgumentParser:
    """Parent parser with the global options, for ``parents=[...]`` so they also work after a subcommand.

    With *suppress*, unset options leave the value parsed earlier (by the main parser) alone.
    """
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("global options")
    group.add_argument("--state-dir", type=Path, default=default,
                       help="folder for local state and the embedded stack (env FEATURESTORE_STATE_DIR, "
                            "default .featurestore)")
    group.add_argument("--log-level", default=argparse.SUPPRESS if suppress else None,
                       type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log level (env FEATURESTORE_LOG_LEVEL, default WARNING)")
    group.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="log structured JSON lines")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with the subcommands of every module in COMMAND_MODULES."""
    parser = argparse.ArgumentParser(
        prog="featurestore", parents=[common_options(suppress=False)],
        description="Streaming feature store: Kafka events -> windowed features -> Redis and PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with command line overrides (``--state-dir``)."""
    overrides = {}
    if getattr(args, "state_dir", None) is not None:
        overrides["state_dir"] = args.state_dir
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from exc


def print_store_report(args: argparse.Namespace, call) -> int:
    """Connect a ``FeatureStore`` to the repository ``--repo`` and the configured servers, print
    ``call(store)`` (a report) as JSON; the exit code."""
    from featurestore.client import FeatureStore

    with FeatureStore.connect(args.repo, load_settings(args)) as store:
        report = call(store)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for feature store errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # the environment is read by the settings object only
        settings: Settings | None = Settings()
    except pydantic.ValidationError:
        settings = None  # the command reports invalid settings itself
    level = args.log_level or (settings.log_level if settings else "WARNING")
    configure_logging(level, json=args.log_json, secrets=settings.secret_values() if settings else ())
    handler = getattr(args, "handler", None)
    if handler is None:  # a command group without its subcommand
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        return int(handler(args) or 0)
    except FeatureStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
