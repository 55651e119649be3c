"""``featurestore dev up|status|down``: manage the embedded stack of real servers."""

from __future__ import annotations

import argparse
import json
import sys

from featurestore.cli import common_options, load_settings
from featurestore.dev.stack import CLUSTER_NODES, EmbeddedStack

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dev`` command group."""
    dev = subparsers.add_parser("dev", parents=[common_options()], help="local embedded stack of real servers",
                                description="Run real Kafka-protocol, Redis and PostgreSQL servers locally.")
    commands = dev.add_subparsers(dest="dev_command", metavar="SUBCOMMAND", required=True)

    up = commands.add_parser("up", parents=[common_options()], help="start the stack (idempotent)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the servers (default 60)")
    up.add_argument("--redis-cluster", action="store_true",
                    help="run a local Redis Cluster of 3 masters instead of the single Redis "
                         "(FEATURESTORE_REDIS_URL=redis+cluster://127.0.0.1:PORT); a stack already running the "
                         "other one must be stopped first (`featurestore dev down`)")
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
    info = stack.up(timeout=args.timeout, redis_cluster=args.redis_cluster)
    for line in info.moved_warnings():
        print(f"WARNING: {line}", file=sys.stderr)
    print(f"embedded stack is up (state in {stack.folder})")
    width = _name_width(info.servers)
    for name, rec in info.servers.items():
        print(f"  {name:<{width}} pid {rec.pid:<8} {rec.url}")
    if info.redis_cluster:
        masters = sum(name in CLUSTER_NODES for name in info.servers)
        print(f"  {'redis':<{width}} Redis Cluster of {masters} masters: {info.redis_url}")
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
        width = _name_width(report)
        print(f"{'SERVER':<{width}} {'PID':<8} {'HEALTH':<9} {'URL':<48} DETAIL")
        for name, entry in report.items():
            health = "healthy" if entry["healthy"] else "DOWN"
            print(f"{name:<{width}} {entry['pid'] or '-':<8} {health:<9} {entry['url'] or '-':<48} {entry['detail']}")
    return 0 if healthy else 1


def _name_width(names) -> int:
    """Width of the server name column: 9, or the longest name (the Redis Cluster's ``redis-node-1`` ...)."""
    return max([9, *(len(name) for name in names)])


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
