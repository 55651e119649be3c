"""``featurestore materialize``: load the offline event log's values into the online store."""

from __future__ import annotations

import argparse

from featurestore.cli import common_options, print_store_report

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    helptext = ("recompute the online state of every entity with events in [--start, --end] from the "
                "PostgreSQL event log (all its events up to --end) and commit it to Redis")
    p = subparsers.add_parser("materialize", parents=[common_options()], help=helptext, description=helptext)
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--start", required=True, help="first event time (ISO-8601 or epoch ms)")
    p.add_argument("--end", required=True, help="last event time (ISO-8601 or epoch ms)")
    p.add_argument("--views", nargs="*", help="only these feature views (default: all applied)")
    p.add_argument("--force", action="store_true",
                   help="write even if a running worker consumes the views' topics "
                        "(its commits would overwrite these states)")
    p.set_defaults(handler=cmd_materialize)


def cmd_materialize(args: argparse.Namespace) -> int:
    return print_store_report(args, lambda store: store.materialize(args.start, args.end, views=args.views or None,
                                                                    force=args.force))
