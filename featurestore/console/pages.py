"""Rendering: the Jinja2 environment of the console's templates (shipped in the package, autoescaped), its
filters, and the pages' shared context (where the console is mounted, the navigation)."""

from __future__ import annotations

import time
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from .charts import fmt_number

__all__ = ["NAV", "render"]

#: (path under the console, label) of the navigation bar
NAV = (("/", "Home"), ("/entities", "Entities"), ("/sources", "Sources"), ("/views", "Feature views"),
       ("/on-demand", "On-demand"), ("/services", "Services"), ("/lineage", "Lineage"),
       ("/monitoring", "Monitoring"), ("/usage", "Usage"), ("/cost", "Cost"), ("/statistics", "Statistics"))


def _clock(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + " UTC"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


def _number(value: Any) -> str:
    """A number as ``charts.fmt_number`` writes it; "" for a value the statistics do not have (a string
    feature's mean)."""
    return "" if isinstance(value, Undefined) else fmt_number(value)


def _state_class(state: str) -> str:
    return "ok" if state == "ok" else ("muted" if state == "not configured" else "bad")


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("featurestore.console", "templates"),
                      autoescape=select_autoescape(["html", "svg"], default=True), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(clock=_clock, seconds=_seconds, bytes=_bytes, number=_number, state_class=_state_class)
    return env


_ENV = _environment()


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The page ``template`` with ``context``, the console's base path (``base``: links work where the
    console is mounted, e.g. ``/ui`` in ``featurestore serve``) and the navigation."""
    base = request.scope.get("root_path", "").rstrip("/")
    page = _ENV.get_template(template).render(base=base, nav=NAV, path=request.url.path[len(base):] or "/",
                                              project=request.app.state.console.store.project, **context)
    return HTMLResponse(page, status)


def svg(markup: Markup) -> Markup:
    """Inline SVG built by ``featurestore.console.charts`` / ``lineage`` (already escaped)."""
    return markup
