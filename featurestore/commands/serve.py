"""``featurestore serve``: the feature server (online features over HTTP/JSON in Feast's shapes, push,
materialize) on uvicorn; docs/server.md.

The command resolves the servers (starting the embedded stack when none is configured) and checks the
repository, then hands its options to uvicorn's worker processes through the environment
(``OPTIONS_ENV``, and the resolved ``FEATURESTORE_*`` server addresses), where
``app_from_environment`` builds each process's app."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import tempfile

from featurestore.cli import common_options, load_settings
from featurestore.exceptions import InvalidInputError

__all__ = ["OPTIONS_ENV", "app_from_environment", "register"]

#: the options of ``featurestore serve`` (JSON) for the worker processes uvicorn starts
OPTIONS_ENV = "FEATURESTORE_SERVE_OPTIONS"
_SERVER_ENV = {"kafka_bootstrap_servers": "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS", "redis_url": "FEATURESTORE_REDIS_URL",
               "postgres_dsn": "FEATURESTORE_POSTGRES_DSN"}


def register(subparsers: argparse._SubParsersAction) -> None:
    helptext = ("serve online features over HTTP/JSON in Feast's request and response shapes "
                "(/get-online-features, /push, /materialize, /registry, probes, /metrics, /docs)")
    p = subparsers.add_parser("serve", parents=[common_options()], help=helptext,
                              description=helptext + ". The bearer token comes from FEATURESTORE_SERVER_TOKEN "
                                                     "(never from the command line, which other users can see).")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface, "
                        "e.g. in a container; set FEATURESTORE_SERVER_TOKEN then)")
    p.add_argument("--port", type=int, default=6566, help="TCP port (default 6566, as Feast's server)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes sharing the port, each with its own event loop (default 1); /metrics adds up "
                        "all of them")
    p.add_argument("--read-only", action="store_true",
                   help="switch /push and /materialize off (they answer 403): a server that only reads")
    p.add_argument("--ssl-certfile", help="TLS certificate chain (PEM): serve HTTPS; needs --ssl-keyfile")
    p.add_argument("--ssl-keyfile", help="private key (PEM) of --ssl-certfile")
    p.add_argument("--max-entities", type=int, default=None,
                   help="most entity rows of one /get-online-features request (env FEATURESTORE_SERVER_MAX_ENTITIES, "
                        "default 1000)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body read; larger ones get 413 (env FEATURESTORE_SERVER_MAX_BODY_BYTES, "
                        "default 1048576)")
    p.add_argument("--registry-poll-seconds", type=float, default=5.0,
                   help="seconds between two looks at the registry and the repository's files: what `featurestore "
                        "apply` changed is served without a restart (default 5; 0: never)")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per request (at INFO: with --log-level INFO)")
    p.set_defaults(handler=run_serve)


def _check(args: argparse.Namespace) -> None:
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise InvalidInputError("--ssl-certfile and --ssl-keyfile go together: pass both to serve HTTPS")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path and not os.path.isfile(path):
            raise InvalidInputError(f"TLS file {path} does not exist")
    if args.workers < 1:
        raise InvalidInputError(f"--workers {args.workers}: at least 1")
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port {args.port}: a TCP port is 1 to 65535")
    if args.registry_poll_seconds < 0:
        raise InvalidInputError(f"--registry-poll-seconds {args.registry_poll_seconds}: 0 (never) or more")
    for name in ("max_entities", "max_body_bytes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} {value}: at least 1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from featurestore.runtime import open_runtime, print_stderr, repo_file
    from featurestore.server.runner import uvicorn_options

    _check(args)
    rt = open_runtime(load_settings(args), args.repo)  # the embedded stack when no server is configured
    settings = rt.settings
    token = settings.server_token.get_secret_value() if settings.server_token else ""
    if not token and not _is_loopback(args.host):
        print_stderr(f"featurestore serve: WARNING: listening on {args.host} without a token: anyone who reaches "
                     f"the port reads features (and pushes, unless --read-only); set FEATURESTORE_SERVER_TOKEN")
    metrics_dir = tempfile.mkdtemp(prefix="featurestore-serve-metrics-") if args.workers > 1 else None
    options = {"repo": str(repo_file(args.repo).resolve()), "read_only": args.read_only,
               "max_entities": args.max_entities, "max_body_bytes": args.max_body_bytes,
               "state_dir": str(settings.state_dir), "log_level": getattr(args, "log_level", None),
               "log_json": bool(getattr(args, "log_json", False)), "metrics_dir": metrics_dir,
               "registry_poll_s": args.registry_poll_seconds}
    os.environ[OPTIONS_ENV] = json.dumps(options)
    for name, variable in _SERVER_ENV.items():  # the workers use the servers resolved here
        value = settings.as_dict(plaintext_secrets=True)[name]
        if value:
            os.environ[variable] = value
    if metrics_dir is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    scheme = "https" if args.ssl_certfile else "http"
    print_stderr(f"featurestore serve: {scheme}://{args.host}:{args.port} ({args.workers} worker process(es); "
                 f"token {'required' if token else 'not required'}; "
                 f"{'read-only' if args.read_only else 'push and materialize on'}; API at /docs)")
    try:
        uvicorn.run("featurestore.commands.serve:app_from_environment", factory=True, workers=args.workers,
                    **uvicorn_options(args.host, args.port, ssl_certfile=args.ssl_certfile,
                                      ssl_keyfile=args.ssl_keyfile, access_log=args.access_log))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def app_from_environment():
    """The app of one worker process of ``featurestore serve`` (uvicorn's factory): settings from the
    environment, the options of the command from ``OPTIONS_ENV``."""
    from featurestore.client import FeatureStore
    from featurestore.logging import configure_logging
    from featurestore.runtime import PG_SCHEMA, open_runtime
    from featurestore.server import ServerConfig, create_app
    from featurestore.settings import Settings

    options = json.loads(os.environ[OPTIONS_ENV])
    settings = Settings(state_dir=options["state_dir"])
    configure_logging(options["log_level"] or settings.log_level, json=options["log_json"],
                      secrets=settings.secret_values())
    rt = open_runtime(settings, options["repo"])
    store = FeatureStore(rt.repo, rt.online(), {}, rt.project, postgres_dsn=rt.postgres_dsn, pg_schema=PG_SCHEMA)
    token = settings.server_token.get_secret_value() if settings.server_token else ""
    config = ServerConfig(token=token or None, read_only=options["read_only"],
                          max_entities=options["max_entities"] or settings.server_max_entities,
                          max_body_bytes=options["max_body_bytes"] or settings.server_max_body_bytes,
                          secrets=tuple(settings.secret_values()), metrics_dir=options["metrics_dir"],
                          registry_poll_s=options.get("registry_poll_s", 5.0))
    return create_app(store, config)
