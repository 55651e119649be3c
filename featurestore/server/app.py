"""The feature server's ASGI app (FastAPI): ``create_app(store, config)``.

Reads run on the serving event loop through the client's asyncio read path; writes (``/push``,
``/materialize``) run one at a time on a thread of their own, through the client's synchronous
methods, so a long materialize never holds the reads up."""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from featurestore import __version__
from featurestore.client import FeatureStore
from featurestore.logging import SecretFilter
from transforms.engine.jit import CACHE_DIR
from transforms.engine.warmup import warm_up

from .config import ServerConfig
from .errors import HANDLED, ApiError, describe, error_body
from .jsonio import json_bytes, json_response
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .middleware import FastRoute, ServerGuard
from .online import OnlineReads
from .probes import Readiness
from .registry_doc import registry_document
from .reload import RegistryWatch
from .schemas import (ErrorBody, GetOnlineFeaturesRequest, GetOnlineFeaturesResponse, MaterializeRequest,
                      PushRequest, PushResponse, body_schema)
from .writes import parse_materialize, parse_push, push_report

__all__ = ["ENDPOINTS", "create_app"]

logger = logging.getLogger(__name__)

ENDPOINTS = frozenset({"/get-online-features", "/push", "/materialize", "/registry", "/healthz", "/health",
                       "/readyz", "/metrics", "/docs", "/openapi.json"})
_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 422, 503)}
_HEALTHY = json_bytes({"status": "ok"})
#: FastAPI's own OpenTelemetry off: the server's metrics are its Prometheus ones (``metrics.py``), and
#: FastAPI's look-up of the global providers cost every request ~10 us
_NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}


@dataclass
class _Server:
    """The parts of one server app, built by ``create_app`` and shared by its endpoints."""

    store: FeatureStore
    config: ServerConfig
    metrics: ServerMetrics = field(init=False)
    reads: OnlineReads = field(init=False)
    readiness: Readiness = field(init=False)
    writes: ThreadPoolExecutor = field(init=False)
    redact: Callable[[str], str] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(set(self.store.repo.services), self.config.metrics_dir)
        self.reads = OnlineReads(self.store, self.config.max_entities)
        self.redact = SecretFilter([*self.config.secrets, *([self.config.token] if self.config.token else [])]).redact
        self.readiness = Readiness(self.store, self.redact)
        self.writes = ThreadPoolExecutor(1, thread_name_prefix="featurestore-writes")

    def error(self, exc: Exception, method: str, path: str, state: dict) -> tuple[int, bytes, dict[str, str]]:
        """(status, JSON body, headers) answering ``exc`` (``describe``), secrets redacted; 5xx logged."""
        status, code, message, extra, headers = describe(exc, self.config.retry_after_s)
        state["fs_error"] = code
        if status >= 500:
            logger.error("%s %s: %s", method, path, self.redact(message), exc_info=status == 500)
        return status, error_body(code, self.redact(message), extra), headers

    async def read(self, body: bytes, state: dict) -> tuple[int, bytes]:
        """``/get-online-features``: (200, Feast's response) of a request body."""
        query = self.reads.parse(body)
        service = state["fs_service"] = self.metrics.service_label(query.feature_service)
        answer = await self.reads.answer(query)
        self.metrics.served(service, answer.rows, answer.features)
        return 200, answer.body

    async def changed(self) -> None:
        """After the registry watch gave the store other versions or definitions."""
        self.reads.reset()
        self.metrics.services = set(self.store.repo.services)
        await _compile_services(self.store)


async def _healthy(body: bytes, state: dict) -> tuple[int, bytes]:
    return 200, _HEALTHY


def create_app(store: FeatureStore, config: ServerConfig | None = None) -> FastAPI:
    """The feature server of ``store``: the endpoints of ``docs/server.md``.

    At startup, a store without versions gets them from the registry (each view the registered
    version matching its definition, as ``FeatureStore.connect`` does), and every feature service's
    read plan is compiled; then the registry is polled (``RegistryWatch``) every
    ``config.registry_poll_s`` seconds.  At shutdown, the pools the store opened are closed."""
    server = _Server(store, config or ServerConfig())
    app = FastAPI(title="featurestore feature server", version=__version__, lifespan=partial(_lifespan, server),
                  description="Online features over HTTP/JSON in Feast's request and response shapes: "
                              "docs/server.md.", docs_url="/docs", openapi_url="/openapi.json", redoc_url=None,
                  telemetry=_NO_TELEMETRY)
    _install_error_handlers(app, server)
    fast: dict[tuple[str, str], FastRoute] = {("POST", "/get-online-features"): server.read,
                                              ("GET", "/healthz"): _healthy}
    app.add_middleware(ServerGuard, config=server.config, metrics=server.metrics, endpoints=ENDPOINTS, fast=fast,
                       on_error=server.error, handled=HANDLED)
    _add_read_routes(app, server)
    _add_write_routes(app, server)
    # The web console under /ui (featurestore/console, docs/console.md), behind this server's guard; it also
    # adds the rows served per service to the usage counts in Redis.
    from featurestore.console import mount_console

    mount_console(app, store, "/ui", metrics=server.metrics)
    return app


@asynccontextmanager
async def _lifespan(server: _Server, app: FastAPI):
    store, config = server.store, server.config
    if not store.versions:
        store.versions = await store.aresolve_versions()
    missing = sorted(set(store.repo.views) - set(store.versions))
    if missing:
        logger.warning("feature views not applied, answered with 404 until `featurestore apply` (the server "
                       "polls the registry): %s", ", ".join(missing))
    await _compile_services(store)
    seconds = warm_up()  # before the first request: no read of a stale state waits for numba to compile
    logger.info("state engine ready in %.2f s (kernel cache %s)", seconds, CACHE_DIR)
    watch = None
    if config.registry_poll_s:
        watch = asyncio.create_task(RegistryWatch(store, config.registry_poll_s, server.changed).run())
    saved_gc = gc.get_threshold()
    if config.gc_threshold is not None:
        gc.collect()
        gc.freeze()  # modules, definitions, plans: never garbage, never scanned again
        gc.set_threshold(*config.gc_threshold)
    try:
        yield
    finally:
        gc.set_threshold(*saved_gc)
        if watch is not None:
            watch.cancel()
            with suppress(asyncio.CancelledError):
                await watch
        await server.readiness.aclose()
        await store.aclose()
        await asyncio.get_running_loop().run_in_executor(server.writes, store.close)
        server.writes.shutdown(wait=True)


def _add_read_routes(app: FastAPI, server: _Server) -> None:
    """The endpoints that read.  ``/get-online-features`` and ``/healthz`` are answered by the guard
    (``ServerGuard``'s fast routes); they are declared here too, for ``/docs``."""
    store, config = server.store, server.config

    @app.post("/get-online-features", openapi_extra=body_schema(GetOnlineFeaturesRequest),
              responses={200: {"model": GetOnlineFeaturesResponse}, **_ERRORS}, summary="Read online features")
    async def get_online_features(request: Request) -> Response:
        state: dict = {}
        _, body = await server.read(await request.body(), state)
        request.state.fs_service = state.get("fs_service", "-")
        return Response(body, media_type="application/json")

    @app.get("/registry", summary="Entities, sources, views with versions, services")
    async def registry() -> Response:
        return json_response(await registry_document(store))

    @app.get("/healthz", summary="Liveness: the process answers")
    @app.get("/health", summary="Liveness, at the path of Feast's server")
    async def healthz() -> Response:
        return Response(_HEALTHY, media_type="application/json")

    @app.get("/readyz", summary="Readiness: Redis, and PostgreSQL where configured, answer")
    async def readyz() -> Response:
        ready, report = await server.readiness.check()
        if ready:
            return json_response(report)
        return json_response(report, 503, {"Retry-After": str(config.retry_after_s)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _compile_services(store: FeatureStore) -> None:
    """Compile the read plan of every feature service (a read of no entity), so the first request of each
    does not pay for it; a service that cannot be read is named in a warning."""
    for name, service in store.repo.services.items():
        request_data: dict[str, list] = {f: [] for odfv in service.odfvs() for f in odfv.request_schema}
        try:
            await store.aget_online_features([], feature_service=name, request_data=request_data or None)
        except Exception as exc:  # noqa: BLE001 - reported; requests for it get the same error
            logger.warning("feature service %r cannot be read: %s", name, exc)


def _install_error_handlers(app: FastAPI, server: _Server) -> None:
    """Every error as a JSON body naming the problem (``_Server.error``), secrets redacted."""

    async def on_error(request: Request, exc: Exception) -> Response:
        state: dict = {}
        status, body, headers = server.error(exc, request.method, request.url.path, state)
        request.state.fs_error = state["fs_error"]
        return Response(body, status, headers, media_type="application/json")

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        request.state.fs_error = code
        message = f"{request.method} {request.url.path}: {exc.detail} (endpoints: docs/server.md, /docs)"
        return Response(error_body(code, message), exc.status_code, exc.headers, media_type="application/json")

    for cls in HANDLED:
        app.add_exception_handler(cls, on_error)
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]


def _add_write_routes(app: FastAPI, server: _Server) -> None:
    """``/push`` and ``/materialize``: the client's own calls, one at a time on the ``writes`` thread."""
    store, config, writes = server.store, server.config, server.writes

    def refuse_if_read_only() -> None:
        if config.read_only:
            raise ApiError(403, "read_only", "this server runs with --read-only: /push and /materialize are off")

    @app.post("/push", openapi_extra=body_schema(PushRequest),
              responses={200: {"model": PushResponse}, 403: {"model": ErrorBody}, 409: {"model": ErrorBody},
                         **_ERRORS}, summary="Push events computed elsewhere")
    async def push(request: Request) -> Response:
        refuse_if_read_only()
        query = parse_push(await request.body())
        run = partial(store.push, query.source, query.frame, to=query.to)
        result = await asyncio.get_running_loop().run_in_executor(writes, run)
        return json_response(push_report(result))

    @app.post("/materialize", openapi_extra=body_schema(MaterializeRequest),
              responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}, **_ERRORS},
              summary="Offline event log -> online states")
    async def materialize(request: Request) -> Response:
        refuse_if_read_only()
        query = parse_materialize(await request.body())
        run = partial(store.materialize, query.start, query.end, views=query.views)
        return json_response(await asyncio.get_running_loop().run_in_executor(writes, run))
