"""The feature server's ASGI app (FastAPI): ``create_app(store, config)``.

Reads run on the serving event loop through the client's asyncio read path; writes (``/push``,
``/materialize``) run one at a time on a thread of their own, through the client's synchronous
methods, so a long materialize never holds the reads up."""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from featurestore import __version__
from featurestore.client import FeatureStore
from featurestore.logging import SecretFilter

from .config import ServerConfig
from .errors import HANDLED, ApiError, describe, error_body
from .jsonio import json_bytes, json_response
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .middleware import ServerGuard
from .online import OnlineReads
from .probes import Readiness
from .registry_doc import registry_document
from .schemas import (ErrorBody, GetOnlineFeaturesRequest, GetOnlineFeaturesResponse, MaterializeRequest,
                      PushRequest, PushResponse, body_schema)
from .writes import parse_materialize, parse_push, push_report

__all__ = ["ENDPOINTS", "create_app"]

logger = logging.getLogger(__name__)

ENDPOINTS = frozenset({"/get-online-features", "/push", "/materialize", "/registry", "/healthz", "/health",
                       "/readyz", "/metrics", "/docs", "/openapi.json"})
_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 422, 503)}
_HEALTHY = json_bytes({"status": "ok"})


def create_app(store: FeatureStore, config: ServerConfig | None = None) -> FastAPI:
    """The feature server of ``store``: the endpoints of ``docs/server.md``.

    At startup, a store without versions gets them from the registry (each view the registered
    version matching its definition, as ``FeatureStore.connect`` does), and every feature service's
    read plan is compiled.  At shutdown, the pools the store opened are closed."""
    config = config or ServerConfig()
    metrics = ServerMetrics(set(store.repo.services), config.metrics_dir)
    reads = OnlineReads(store, config.max_entities)
    redact = SecretFilter([*config.secrets, *([config.token] if config.token else [])]).redact
    readiness = Readiness(store, redact)
    writes = ThreadPoolExecutor(1, thread_name_prefix="featurestore-writes")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not store.versions:
            store.versions = await store.aresolve_versions()
        missing = sorted(set(store.repo.views) - set(store.versions))
        if missing:
            logger.warning("feature views not applied, answered with 404 until `featurestore apply` and a restart: "
                           "%s", ", ".join(missing))
        await _compile_services(store)
        saved_gc = gc.get_threshold()
        if config.gc_threshold is not None:
            gc.collect()
            gc.freeze()  # modules, definitions, plans: never garbage, never scanned again
            gc.set_threshold(*config.gc_threshold)
        yield
        gc.set_threshold(*saved_gc)
        await readiness.aclose()
        await store.aclose()
        await asyncio.get_running_loop().run_in_executor(writes, store.close)
        writes.shutdown(wait=True)

    app = FastAPI(title="featurestore feature server", version=__version__, lifespan=lifespan,
                  description="Online features over HTTP/JSON in Feast's request and response shapes: "
                              "docs/server.md.", docs_url="/docs", openapi_url="/openapi.json", redoc_url=None)

    _install_error_handlers(app, config, redact)
    app.add_middleware(ServerGuard, config=config, metrics=metrics, endpoints=ENDPOINTS)

    @app.post("/get-online-features", openapi_extra=body_schema(GetOnlineFeaturesRequest),
              responses={200: {"model": GetOnlineFeaturesResponse}, **_ERRORS}, summary="Read online features")
    async def get_online_features(request: Request) -> Response:
        query = reads.parse(await request.body())
        service = request.state.fs_service = metrics.service_label(query.feature_service)
        answer = await reads.answer(query)
        metrics.served(service, answer.rows, answer.features)
        return Response(answer.body, media_type="application/json")

    _add_write_routes(app, store, config, writes)

    @app.get("/registry", summary="Entities, sources, views with versions, services")
    async def registry() -> Response:
        return json_response(await registry_document(store))

    @app.get("/healthz", summary="Liveness: the process answers")
    @app.get("/health", summary="Liveness, at the path of Feast's server")
    async def healthz() -> Response:
        return Response(_HEALTHY, media_type="application/json")

    @app.get("/readyz", summary="Readiness: Redis, and PostgreSQL where configured, answer")
    async def readyz() -> Response:
        ready, report = await readiness.check()
        if ready:
            return json_response(report)
        return json_response(report, 503, {"Retry-After": str(config.retry_after_s)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _compile_services(store: FeatureStore) -> None:
    """Compile the read plan of every feature service (a read of no entity), so the first request of each
    does not pay for it; a service that cannot be read is named in a warning."""
    for name, service in store.repo.services.items():
        request_data: dict[str, list] = {f: [] for odfv in service.odfvs() for f in odfv.request_schema}
        try:
            await store.aget_online_features([], feature_service=name, request_data=request_data or None)
        except Exception as exc:  # noqa: BLE001 - reported; requests for it get the same error
            logger.warning("feature service %r cannot be read: %s", name, exc)


def _install_error_handlers(app: FastAPI, config: ServerConfig, redact) -> None:
    """Every error as a JSON body naming the problem (``describe``), secrets redacted."""

    async def on_error(request: Request, exc: Exception) -> Response:
        status, code, message, extra, headers = describe(exc, config.retry_after_s)
        request.state.fs_error = code
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, redact(message),
                         exc_info=status == 500)
        return Response(error_body(code, redact(message), extra), status, headers, media_type="application/json")

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        request.state.fs_error = code
        message = f"{request.method} {request.url.path}: {exc.detail} (endpoints: docs/server.md, /docs)"
        return Response(error_body(code, message), exc.status_code, exc.headers, media_type="application/json")

    for cls in HANDLED:
        app.add_exception_handler(cls, on_error)
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]


def _add_write_routes(app: FastAPI, store: FeatureStore, config: ServerConfig, writes: ThreadPoolExecutor) -> None:
    """``/push`` and ``/materialize``: the client's own calls, one at a time on the ``writes`` thread."""

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
