"""The web console's ASGI app (Starlette): ``create_console_app(store, ...)``, and ``mount_console(app,
store, ...)`` to serve it under ``/ui`` of the feature server.  Every page is rendered on the server from
the package's templates; charts and the lineage graph are inline SVG; nothing is fetched from the network."""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from featurestore.exceptions import FeatureStoreError, UnknownNameError

from . import catalog, charts, cost, monitoring
from .catalog import KINDS
from .lineage import lineage_graph, lineage_svg
from .pages import render
from .search import search
from .stats_runs import load_runs
from .usage import FEATURE_LISTS, read_usage
from .versions import registered_versions, version_diff

__all__ = ["COOKIE", "Console", "create_console_app", "mount_console"]

#: the cookie a browser keeps the console's token in after ``/login``
COOKIE = "featurestore_console_token"
logger = logging.getLogger(__name__)
_PARTS = {part: kind for kind, (part, _, _) in KINDS.items()}
_CSS = (resources.files(__package__) / "static" / "console.css").read_text()


@dataclass
class Console:
    """What the pages read: the ``FeatureStore`` (its repository, online and offline stores, versions),
    the Kafka bootstrap servers for the health check (None: not shown), and the optional token."""

    store: Any
    kafka_bootstrap: str | None = None
    token: str | None = None

    async def registry(self) -> Any:
        try:
            return (await self.store.astores())[1]
        except (FeatureStoreError, OSError):
            return None

    async def live(self) -> tuple[int, list[dict]]:
        return await asyncio.to_thread(self.store.online._live_workers)


def _console(request: Request) -> Console:
    return request.app.state.console


async def home(request: Request) -> Response:
    c = _console(request)
    now, live = await c.live()
    return render(request, "home.html", counts=catalog.catalog_counts(c.store.repo),
                  health=await monitoring.health(c.store, c.kafka_bootstrap),
                  workers=monitoring.worker_rows(live, now), versions=c.store.versions)


async def listing(request: Request) -> Response:
    kind = _PARTS[request.url.path.rstrip("/").rsplit("/", 1)[-1]]
    return render(request, "listing.html", kind=kind, part=KINDS[kind][0], title=KINDS[kind][1],
                  rows=catalog.listing(_console(request).store.repo, kind))


async def detail(request: Request) -> Response:
    c = _console(request)
    part, name = request.path_params["part"], request.path_params["name"]
    kind = _PARTS.get(part)
    if kind is None:
        return _not_found(request, f"no page {request.url.path}")
    try:
        page = catalog.detail(c.store.repo, kind, name)
    except UnknownNameError as exc:
        return _not_found(request, str(exc))
    registry = await c.registry()
    versions = await registered_versions(registry, kind, name)
    diff, diff_error = None, None
    if "old" in request.query_params and registry is not None:
        try:
            diff = await version_diff(registry, kind, name, int(request.query_params["old"]),
                                      int(request.query_params.get("new", versions[-1]["version"] if versions else 0)))
        except (ValueError, UnknownNameError) as exc:
            diff_error = f"cannot compare these versions: {exc}"
    return render(request, "detail.html", page=page, kind=kind, label=KINDS[kind][2], versions=versions,
                  served=c.store.versions.get(name) if kind == "view" else None, diff=diff, diff_error=diff_error,
                  parts={k: p for k, (p, _, _) in KINDS.items()})


async def lineage(request: Request) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    graph = lineage_graph(_console(request).store.repo, base)
    return render(request, "lineage.html", svg=lineage_svg(graph), graph=graph)


async def lineage_json(request: Request) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    return JSONResponse(lineage_graph(_console(request).store.repo, base))


async def search_page(request: Request) -> Response:
    query = request.query_params.get("q", "")
    base = request.scope.get("root_path", "").rstrip("/")
    return render(request, "search.html", query=query, hits=search(_console(request).store.repo, query, base))


async def monitoring_page(request: Request) -> Response:
    c = _console(request)
    now, live = await c.live()
    views = monitoring.view_monitoring(c.store.repo, c.store.versions, live, now)
    freshness = charts.bar_chart([(v["view"], v["freshness_s"]) for v in views if v["freshness_s"] is not None], "s")
    return render(request, "monitoring.html", views=views, workers=monitoring.worker_rows(live, now),
                  dead=await monitoring.dead_letters(c.store), freshness_chart=freshness, now_ms=now)


async def usage_page(request: Request) -> Response:
    c = _console(request)
    services = {name: [f"{item}:{f}" for item, f in s.resolve()] for name, s in c.store.repo.services.items()}
    usage = await asyncio.to_thread(read_usage, c.store.online.client, c.store.project, services)
    return render(request, "usage.html", usage=usage, feature_lists=FEATURE_LISTS,
                  chart=charts.line_chart(dict(usage["series"]), "rows"),
                  services_chart=charts.bar_chart(usage["services"], "rows"),
                  features_chart=charts.bar_chart(usage["features"][:30], "reads"))


async def cost_page(request: Request) -> Response:
    c = _console(request)
    view_keys = {name: c.store.online.view_key(name, v) for name, v in sorted(c.store.versions.items())}
    redis_rows = await asyncio.to_thread(cost.redis_bytes, c.store.online, view_keys)
    pg = await cost.postgres_bytes(c.store)
    _, live = await c.live()
    cpu = cost.worker_cpu(live)
    return render(request, "cost.html", redis=redis_rows, pg=pg, cpu=cpu,
                  redis_chart=charts.bar_chart([(r["view"], r["bytes"]) for r in redis_rows], "bytes"),
                  pg_chart=charts.bar_chart([(f'{t["part"]}: {t["name"]}', t["bytes"]) for t in pg["tables"]],
                                            "bytes"),
                  cpu_chart=charts.bar_chart([(r["view"], r["cpu_s"]) for r in cpu], "CPU s"))


async def statistics_page(request: Request) -> Response:
    c = _console(request)
    try:
        offline, _ = await c.store.astores()
        latest: dict[str, dict | None] = {}
        for name in sorted(c.store.repo.views):
            runs = await load_runs(offline, name, limit=1)
            latest[name] = runs[-1] if runs else None
    except FeatureStoreError as exc:
        return render(request, "error.html", 503, message=f"the offline store cannot be read: {exc}")
    return render(request, "statistics.html", latest=latest)


async def view_statistics(request: Request) -> Response:
    c = _console(request)
    name = request.path_params["name"]
    try:
        c.store.repo.view(name)
        offline, _ = await c.store.astores()
    except UnknownNameError as exc:
        return _not_found(request, str(exc))
    runs = await load_runs(offline, name)
    if not runs:
        return render(request, "view_statistics.html", view=name, run=None, runs=[])
    run = runs[-1]
    drift = {f: [(r["computed_ms"], r["stats"][f].get("psi", 0.0) if r["reference_run"] is not None else 0.0)
                 for r in runs if f in r["stats"]] for f in run["stats"]}  # a reference run: 0 against itself
    histograms = {f: charts.histogram(s["histogram"]["edges"], s["histogram"]["counts"])
                  for f, s in run["stats"].items() if s.get("histogram")}
    return render(request, "view_statistics.html", view=name, run=run, runs=runs, histograms=histograms,
                  drift_chart=charts.line_chart({f: pts for f, pts in drift.items() if pts}, "PSI"))


async def stylesheet(request: Request) -> Response:
    return Response(_CSS, media_type="text/css", headers={"Cache-Control": "max-age=300"})


async def login(request: Request) -> Response:
    c = _console(request)
    base = request.scope.get("root_path", "").rstrip("/")
    if request.method == "POST":
        form = (await request.body()).decode(errors="replace")
        given = dict(p.partition("=")[::2] for p in form.split("&")).get("token", "")
        from urllib.parse import unquote_plus

        if c.token and hmac.compare_digest(unquote_plus(given).encode(), c.token.encode()):
            answer = RedirectResponse(f"{base}/", 303)
            answer.set_cookie(COOKIE, c.token, httponly=True, samesite="strict", path=base or "/")
            return answer
        return render(request, "login.html", 401, error="that token is not this console's")
    return render(request, "login.html", error=None)


def _not_found(request: Request, message: str) -> Response:
    return render(request, "error.html", 404, message=message)


class _TokenGuard:
    """Asks for the token (``Authorization: Bearer`` or the cookie set by ``/login``) on every page but
    ``/login`` and the stylesheet; a browser without it gets the login page."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"][len(scope.get("root_path", "")):] in ("/login", "/console.css"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if hmac.compare_digest(given.encode(), self.expected):
            await self.app(scope, receive, send)
            return
        base = scope.get("root_path", "").rstrip("/")
        await RedirectResponse(f"{base}/login", 303)(scope, receive, send)


def create_console_app(store: Any, kafka_bootstrap: str | None = None, token: str | None = None,
                       own_store: bool = False) -> Any:
    """The console of ``store`` (a ``FeatureStore``).  With ``token``, every page asks for it (a bearer
    header, or a browser's login form).  With ``own_store`` (the console runs alone), the app resolves the
    store's versions at startup and closes the store at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if own_store and not store.versions:
            try:
                store.versions = await store.aresolve_versions()
            except FeatureStoreError as exc:
                logger.warning("the registry cannot be read (pages show no versions): %s", exc)
        yield
        if own_store:
            await store.aclose()

    routes = [Route("/", home), Route("/console.css", stylesheet), Route("/login", login, methods=["GET", "POST"]),
              *[Route(f"/{part}", listing) for part in _PARTS],
              Route("/lineage", lineage), Route("/lineage.json", lineage_json), Route("/search", search_page),
              Route("/monitoring", monitoring_page), Route("/usage", usage_page), Route("/cost", cost_page),
              Route("/statistics", statistics_page), Route("/statistics/{name}", view_statistics),
              Route("/{part}/{name}", detail)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = Console(store, kafka_bootstrap, token)
    if token:
        app.add_middleware(_TokenGuard, token=token)
    return app


def mount_console(app: Any, store: Any, path: str = "/ui", kafka_bootstrap: str | None = None,
                  metrics: Any = None) -> None:
    """Serve the console of ``store`` under ``path`` of the feature server ``app`` (whose own guard asks
    for its token), and, given the server's ``metrics``, count the reads it answers per service in Redis
    (``featurestore.console.usage``)."""
    app.mount(path, create_console_app(store, kafka_bootstrap))
    url = getattr(store.online, "url", None)
    if metrics is not None and url:
        from .usage import UsageRecorder

        app.add_middleware(UsageRecorder, rows_counter=metrics.rows, redis_url=url, project=store.project,
                           cluster=store.online.places_by_partition)
