"""``featurestore apply|plan|list|describe``: the registry of applied definitions."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any, Awaitable, Callable

from featurestore.cli import common_options, load_settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``apply``, ``plan``, ``list`` and ``describe``."""
    for name, helptext, handler in (
        ("apply", "register the repository's definitions (new versions where the computation changed) "
                  "and create the offline tables", cmd_apply),
        ("plan", "show what `apply` would change, without changing anything", cmd_plan),
    ):
        p = subparsers.add_parser(name, parents=[common_options()], help=helptext, description=helptext)
        p.add_argument("--repo", type=Path, required=True, help="repository file or folder of .py definitions")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=handler)
    ls = subparsers.add_parser("list", parents=[common_options()], help="list registered definitions")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=cmd_list)
    desc = subparsers.add_parser("describe", parents=[common_options()], help="describe a registered definition")
    desc.add_argument("name", help="feature view (or entity, source, on-demand view, service) name")
    desc.add_argument("--version", type=int, default=None, help="a specific version (default: latest)")
    desc.add_argument("--json", action="store_true", help="print JSON")
    desc.set_defaults(handler=cmd_describe)


def _run(args: argparse.Namespace, work: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """Resolve servers, open the offline store and registry, run ``work(store, registry)``."""
    from featurestore.dev.stack import resolve_servers
    from featurestore.offline import PostgresOfflineStore
    from featurestore.runtime import print_stderr
    from featurestore.registry import Registry

    settings = resolve_servers(load_settings(args), say=print_stderr)
    dsn = settings.postgres_dsn.get_secret_value()  # type: ignore[union-attr]

    async def main() -> Any:
        store = await PostgresOfflineStore.create(dsn, settings.project)
        try:
            return await work(store, Registry.for_store(store))
        finally:
            await store.close()

    return asyncio.run(main())


def _print_changes(changes: list, as_json: bool, applied: bool) -> None:
    if as_json:
        print(json.dumps([c.to_json() for c in changes], indent=2))
        return
    if not changes:
        print("no definitions found")
        return
    print(f"{'KIND':<8} {'NAME':<32} {'ACTION':<16} {'VERSION':<10} DETAIL")
    for c in changes:
        version = (f"v{c.new_version}" if c.old_version in (None, c.new_version)
                   else f"v{c.old_version}->v{c.new_version}")
        print(f"{c.kind:<8} {c.name:<32} {c.action:<16} {version:<10} {c.detail}")
    todo = [c for c in changes if c.action != "unchanged"]
    verb = "applied" if applied else "to apply"
    print(f"\n{len(todo)} change(s) {verb}, {len(changes) - len(todo)} unchanged")


def cmd_apply(args: argparse.Namespace) -> int:
    from featurestore.repo import load_repo
    from featurestore.runtime import repo_file

    repo = load_repo(repo_file(args.repo))
    changes = _run(args, lambda store, reg: reg.apply(repo, store))
    _print_changes(changes, args.json, applied=True)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from featurestore.repo import load_repo
    from featurestore.runtime import repo_file

    repo = load_repo(repo_file(args.repo))
    changes = _run(args, lambda store, reg: reg.plan(repo))
    _print_changes(changes, args.json, applied=False)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    items = _run(args, lambda store, reg: reg.list())
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("nothing registered: run `featurestore apply --repo PATH`")
        return 0
    print(f"{'KIND':<8} {'NAME':<32} {'VERSION':<8} {'OWNER':<16} DESCRIPTION")
    for it in items:
        print(f"{it['kind']:<8} {it['name']:<32} v{it['version']:<7} {it['owner'] or '-':<16} {it['description']}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    d = _run(args, lambda store, reg: reg.describe(args.name, version=args.version))
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    versions = ", ".join(f"v{v['version']}" for v in d["versions"])
    print(f"{d['kind']} {d['name']} v{d['version']} (versions: {versions})")
    if d.get("description"):
        print(f"  {d['description']}")
    for label, key in (("owner", "owner"), ("entity", "entity"), ("join key", "join_key"),
                       ("source", "source"), ("topic", "source_topic"), ("ttl", "ttl")):
        if d.get(key):
            print(f"  {label:<9} {d[key]}")
    if d.get("tags"):
        print("  tags      " + ", ".join(f"{k}={v}" for k, v in d["tags"].items()))
    print(f"  fingerprint {d['fingerprint'][:16]}")
    if d["kind"] == "service":
        print(f"\n  {'FEATURE':<48} FROM")
        for f in d.get("features", []):
            print(f"  {f['name']:<48} {f['kind']}")
        return 0
    if d.get("features"):
        print(f"\n  {'FEATURE':<28} {'DTYPE':<16} {'FUNCTION':<20} {'COLUMN':<20} {'WINDOW':<8} HOP")
        for f in d["features"]:
            print(f"  {f['name']:<28} {f['dtype'] or '-':<16} {f['function'] or '-':<20} {f['column'] or '-':<20} "
                  f"{f['window'] or '-':<8} {f['hop'] or '-'}")
    return 0
