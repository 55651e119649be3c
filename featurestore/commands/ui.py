"""The console's commands (docs/console.md): ``featurestore ui``, the web console (catalog, lineage, search,
monitoring, usage, cost, statistics) on uvicorn (``featurestore serve`` serves the same console under
``/ui``), and ``featurestore stats``, a statistics run of a feature view stored for the console."""

from __future__ import annotations

import argparse
import sys

from featurestore.cli import common_options, load_settings
from featurestore.exceptions import InvalidInputError

__all__ = ["register", "run_stats", "run_ui"]


def register(subparsers: argparse._SubParsersAction) -> None:
    helptext = ("web console: definitions, versions, lineage, search, worker monitoring, dead letters, usage "
                "and cost, rendered on the server (no network access needed)")
    p = subparsers.add_parser("ui", parents=[common_options()], help=helptext,
                              description=helptext + ". With FEATURESTORE_SERVER_TOKEN set, every page asks for "
                                                     "that token (a login form, or 'Authorization: Bearer').")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8888, help="TCP port (default 8888)")
    p.set_defaults(handler=run_ui)
    _register_stats(subparsers)


def _register_stats(subparsers: argparse._SubParsersAction) -> None:
    helptext = ("feature statistics of a view as of a time (count, null rate, mean, std, min, max, percentiles, "
                "histogram, distinct values, drift against a reference run), through the training-set path; "
                "stored in PostgreSQL for the console")
    p = subparsers.add_parser("stats", parents=[common_options()], help=helptext, description=helptext)
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--view", required=True, action="append",
                   help="the feature view (repeat for more views: one run each)")
    p.add_argument("--at", help="as of this time (ISO 8601 or epoch ms; default: now)")
    p.add_argument("--entities", type=int, default=None,
                   help="a random sample of this many entities (default: every entity with events)")
    p.add_argument("--reference", type=int, default=None,
                   help="the run id drift is measured against (default: the view's first run)")
    p.add_argument("--json", action="store_true", help="print the whole run as JSON")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when an expectation of the view (or of a service on its features) fails, "
                        "naming each failed check on stderr")
    p.add_argument("--every", default=None, metavar="DURATION",
                   help="run now and then every DURATION (e.g. 1h, 15m) until stopped; each run is as of its start")
    p.add_argument("--runs", type=int, default=None, metavar="N", help="with --every: stop after N runs")
    p.set_defaults(handler=run_stats)


def run_ui(args: argparse.Namespace) -> int:
    import uvicorn

    from featurestore.client import FeatureStore
    from featurestore.console import create_console_app
    from featurestore.runtime import PG_SCHEMA, open_runtime, print_stderr
    from featurestore.server.runner import uvicorn_options

    from .serve import _is_loopback

    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port {args.port}: a TCP port is 1 to 65535")
    rt = open_runtime(load_settings(args), args.repo)  # the embedded stack when no server is configured
    settings = rt.settings
    token = settings.server_token.get_secret_value() if settings.server_token else ""
    if not token and not _is_loopback(args.host):
        print_stderr(f"featurestore ui: WARNING: listening on {args.host} without a token: anyone who reaches the "
                     f"port sees the catalog and the workers; set FEATURESTORE_SERVER_TOKEN")
    store = FeatureStore(rt.repo, rt.online(), {}, rt.project, postgres_dsn=rt.postgres_dsn, pg_schema=PG_SCHEMA)
    app = create_console_app(store, settings.kafka_bootstrap_servers, token or None, own_store=True)
    print_stderr(f"featurestore ui: http://{args.host}:{args.port}/ (project {rt.project}; "
                 f"token {'required' if token else 'not required'})")
    options = uvicorn_options(args.host, args.port)
    options.pop("ssl_certfile"), options.pop("ssl_keyfile")
    uvicorn.run(app, **options)
    return 0


def _stats_schedule(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """``--every`` in seconds (None without it) and ``--runs``, checked."""
    from transforms.windows import parse_duration

    if args.every is None:
        if args.runs is not None:
            raise InvalidInputError("--runs: only with --every (e.g. --every 1h --runs 24)")
        return None, None
    if args.at is not None:
        raise InvalidInputError("--at with --every: a scheduled run is as of its own start; leave --at out")
    try:
        every_ms = parse_duration(args.every)
    except ValueError as exc:
        raise InvalidInputError(f"--every {args.every!r}: not a duration (e.g. 1h, 15m, 30s): {exc}") from None
    if every_ms <= 0:
        raise InvalidInputError(f"--every {args.every!r}: the interval must be positive")
    if args.runs is not None and args.runs < 1:
        raise InvalidInputError(f"--runs {args.runs}: at least 1")
    return every_ms / 1000, args.runs


def run_stats(args: argparse.Namespace) -> int:
    import asyncio

    from featurestore.client import FeatureStore
    from featurestore.console.schedule import repeat
    from featurestore.console.stats_runs import run_statistics
    from featurestore.types import parse_timestamp

    at_ms = None
    if args.at is not None:
        try:
            at_ms = parse_timestamp(int(args.at) if args.at.lstrip("-").isdigit() else args.at)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"--at {args.at!r}: not a time (ISO 8601, e.g. 2026-12-01T12:00:00Z, or epoch "
                                    f"ms): {exc}") from None
    every_s, runs = _stats_schedule(args)
    if args.reference is not None and len(args.view) > 1:
        raise InvalidInputError("--reference with several --view: a run id belongs to one view; run them apart")

    async def once(store: FeatureStore) -> int:
        code = 0
        for view in args.view:
            run = await run_statistics(store, view, at_ms, args.entities, args.reference)
            code = max(code, _report_run(run, args))
        return code

    async def go(store: FeatureStore) -> int:
        try:
            if every_s is None:
                return await once(store)
            return await repeat(lambda: once(store), every_s, runs)
        finally:
            await store.aclose()

    with FeatureStore.connect(args.repo, load_settings(args)) as store:
        return asyncio.run(go(store))


def _report_run(run: dict, args: argparse.Namespace) -> int:
    """Print one run (a table, or JSON with ``--json``); with ``--check``, 1 when a check failed."""
    import json
    from datetime import datetime, timezone

    from featurestore.console.checks import failed_checks, failure_line
    from featurestore.runtime import print_stderr

    failed = failed_checks(run)
    if args.json:
        print(json.dumps(run, indent=2, default=str), flush=True)
    else:
        at = datetime.fromtimestamp(run["at_ms"] / 1000, timezone.utc).isoformat(timespec="seconds")
        print(f"run {run['run_id']}: view {run['view']} v{run['version']} as of {at}, {run['entities']} "
              f"entities{' (sampled)' if run['sampled'] else ''}, {run['seconds']} s; drift against run "
              f"{run['reference_run'] if run['reference_run'] is not None else '- (this is the reference)'}")
        print(f"  {'FEATURE':<28} {'KIND':<8} {'NULLS':>7} {'MEAN':>12} {'P50':>12} {'P99':>12} {'PSI':>8}  DRIFT")
        for name, s in run["stats"].items():
            def num(key: str) -> str:
                value = s.get(key)
                return "-" if value is None else f"{value:.4g}"
            print(f"  {name:<28} {s['kind']:<8} {s['null_rate'] or 0:>7.2%} {num('mean'):>12} {num('p50'):>12} "
                  f"{num('p99'):>12} {num('psi'):>8}  {s.get('drift', '-')}")
        checks = run.get("checks") or []
        if checks:
            print(f"  checks: {len(checks) - len(failed)} of {len(checks)} passed")
            for c in checks:
                print(f"    {'ok  ' if c['ok'] else 'FAIL'} {c['check']:<44} {c['failed']:>9,} of {c['rows']:,} rows "
                      f"failed ({c['declared_by']})")
        sys.stdout.flush()
    if args.check and failed:
        print_stderr(f"featurestore stats: {len(failed)} of {len(run['checks'])} checks failed on view {run['view']} "
                     f"(run {run['run_id']}):")
        for c in failed:
            print_stderr("  " + failure_line(run["view"], c))
        return 1
    return 0
