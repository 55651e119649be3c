"""``featurestore compact``: pack the event log into segments for fast full scans."""

from __future__ import annotations

import argparse

from featurestore.cli import common_options, print_store_report

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    helptext = ("copy the PostgreSQL event log's rows not yet compacted into columnar segments, so "
                "training sets over many entities read packed columns instead of every row (the rows stay; "
                "safe while workers run)")
    p = subparsers.add_parser("compact", parents=[common_options()], help=helptext, description=helptext)
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--sources", nargs="*", help="only these sources (default: every source that can have segments)")
    p.add_argument("--rebuild", action="store_true",
                   help="drop the segments first (after adding a field to a source's schema)")
    p.set_defaults(handler=cmd_compact)


def cmd_compact(args: argparse.Namespace) -> int:
    return print_store_report(args, lambda store: store.compact(args.sources or None, rebuild=args.rebuild))
