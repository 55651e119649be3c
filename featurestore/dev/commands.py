"""``featurestore dev up|status|down``: manage the embedded stack of real servers."""

from __future__ import annotations

import argparse
import json
import sys

from featurestore.cli import common_options, load_settings
from featurestore.dev.stack import EmbeddedStack

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dev`` command group."""
    dev = subparsers.add_parser("dev", parents=[common_options()], help="local embedded stack of real servers",
                                description="Run real Kafka-protocol, Redis and PostgreSQL servers locally.")
    commands = dev.add_subparsers(dest="dev_command", metavar="SUBCOMMAND", required=True)

    up = commands.add_parser("up", parents=[common_options()], help="start the stack (idempotent)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the servers (default 60)")
    up.set_defaults(handler=cmd_up)

    status = commands.add_parser("status", parents=[common_options()],
                                 help="show the servers and their health (exit 1 if any is unhealthy)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    down = commands.add_parser("down", parents=[common_options()],
                               help="stop the stack and remove its Redis and PostgreSQL data (the broker keeps none)")
    down.add_argument("--keep-data", action="store_true",
                      help="keep the Redis and PostgreSQL data: they then hold offsets and event logs of topics the "
                           "restarted broker no longer has, and workers stop on a topic reset until `featurestore "
                           "reset --source NAME`")
    down.set_defaults(handler=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    stack = EmbeddedStack(settings.state_dir)
    info = stack.up(timeout=args.timeout)
    for line in info.moved_warnings():
        print(f"WARNING: {line}", file=sys.stderr)
    print(f"embedded stack is up (state in {stack.folder})")
    for name, rec in info.servers.items():
        print(f"  {name:<9} pid {rec.pid:<8} {rec.url}")
    filled = settings.with_servers(info.kafka_bootstrap, info.redis_url, info.postgres_dsn)
    print("\n# connection settings (secrets masked):")
    for line in filled.env_lines():
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    report = EmbeddedStack(settings.state_dir).status()
    healthy = all(entry["healthy"] for entry in report.values())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'SERVER':<9} {'PID':<8} {'HEALTH':<9} {'URL':<48} DETAIL")
        for name, entry in report.items():
            health = "healthy" if entry["healthy"] else "DOWN"
            print(f"{name:<9} {entry['pid'] or '-':<8} {health:<9} {entry['url'] or '-':<48} {entry['detail']}")
    return 0 if healthy else 1


def cmd_down(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    stack = EmbeddedStack(settings.state_dir)
    stopped = stack.down(keep_data=args.keep_data)
    if stopped:
        print(f"stopped {', '.join(stopped)}")
    else:
        print(f"no embedded stack recorded in {stack.folder}")
    if args.keep_data:
        print("WARNING: Redis and PostgreSQL data kept, but the broker's topics are gone (memory only): after "
              "`dev up`, workers stop on a topic reset until `featurestore reset --source NAME`", file=sys.stderr)
    else:
        print(f"removed the Redis and PostgreSQL data of {stack.folder} (the broker's topics live in memory only; "
              "`dev down --keep-data` keeps them)")
    return 0
