"""``featurestore reset --source NAME``: start a source over after its topic was reset."""

from __future__ import annotations

import asyncio
import sys

from featurestore.cli import common_options, load_settings
from featurestore.runtime import open_runtime

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reset", parents=[common_options()], help="clear a source's offsets, states and event log (topic reset)",
        description="Delete what the stores derived from a source's topic: every consumer group's applied offsets "
                    "of the topic, the online states of the source's views (every version), its event log and its "
                    "rejects. Use it when the topic was deleted and created again or the broker lost its log (a "
                    "worker stops with exit code 3 and names this command). Stop the source's workers first.")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--source", required=True, help="the event source to start over")
    p.add_argument("--yes", action="store_true", help="delete without asking (after printing what is deleted)")
    p.add_argument("--online-only", action="store_true",
                   help="keep the event log and rejects: delete the online states, the topic's applied offsets and "
                        "(Redis Cluster) the views' recorded partition counts, so that the source's workers rebuild "
                        "every state from the event log when they start (after the topic gained partitions on a "
                        "Redis Cluster; docs/redis-cluster.md)")
    p.set_defaults(handler=run_reset)


def run_reset(args) -> int:
    from featurestore.reset import aplan_reset, areset_source

    rt = open_runtime(load_settings(args), args.repo)
    source = rt.repo.source(args.source)
    view_keys = [f"{rt.project}:{v.name}:v*" for v in rt.repo.views.values() if v.source.name == source.name]
    online = rt.online()

    async def go() -> int:
        offline = await rt.offline()
        try:
            plan = await aplan_reset(online, offline, source, view_keys, args.online_only)
            print("featurestore reset will delete:")
            for line in plan.lines():
                print(line)
            if not args.yes:
                if not sys.stdin.isatty():
                    print("not deleted: pass --yes to confirm (no terminal to ask on)", file=sys.stderr)
                    return 1
                if input("delete? [y/N] ").strip().lower() not in ("y", "yes"):
                    print("nothing deleted")
                    return 1
            await areset_source(online, offline, source, view_keys, args.online_only)
            if args.online_only:
                print(f"source {source.name!r}: online states deleted; its workers rebuild them from the event log")
            else:
                print(f"source {source.name!r} reset: its workers read topic {source.topic!r} from its start")
            return 0
        finally:
            await offline.close()

    return asyncio.run(go())
