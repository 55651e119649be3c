"""The lineage graph of a repository: source topics -> sources -> feature views -> on-demand views (with
their request fields) -> feature services, as nodes and edges (``lineage_graph``, served as JSON) and
as an inline SVG drawing (``lineage_svg``), laid out in columns by this module: no script, no network."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

from featurestore.definitions.views import selection_of
from featurestore.repo import Repository

from .catalog import KINDS

__all__ = ["COLUMNS", "lineage_graph", "lineage_svg"]

#: column of each node kind, left to right
COLUMNS = {"topic": 0, "source": 1, "view": 2, "request": 2, "odfv": 3, "service": 4}
_COLUMN_TITLES = ("Kafka topics", "Sources", "Feature views / request data", "On-demand views", "Services")
_W, _H, _COL_GAP, _ROW_GAP, _PAD = 170, 34, 60, 16, 20


def _node(kind: str, name: str, base: str, label: str | None = None) -> dict[str, Any]:
    url = f"{base}/{KINDS[kind][0]}/{name}" if kind in KINDS else None
    return {"id": f"{kind}:{name}", "kind": kind, "name": name, "label": label or name, "column": COLUMNS[kind],
            "url": url}


def lineage_graph(repo: Repository, base: str = "") -> dict[str, Any]:
    """``{"nodes": [...], "edges": [...]}``: each node has id (``kind:name``), kind, name, label, column and
    the URL of its page (``base``: where the console is mounted); each edge from, to and the features it
    carries (an edge into an on-demand view or a service lists the features read)."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], list[str]] = {}

    def edge(a: str, b: str, feature: str | None = None) -> None:
        carried = edges.setdefault((a, b), [])
        if feature is not None and feature not in carried:
            carried.append(feature)

    for name, source in sorted(repo.sources.items()):
        nodes[f"topic:{source.topic}"] = _node("topic", source.topic, base)
        nodes[f"source:{name}"] = _node("source", name, base)
        edge(f"topic:{source.topic}", f"source:{name}")
    for name, view in sorted(repo.views.items()):
        nodes[f"view:{name}"] = _node("view", name, base)
        edge(f"source:{view.source.name}", f"view:{name}")
    for name, odfv in sorted(repo.odfvs.items()):
        nodes[f"odfv:{name}"] = _node("odfv", name, base)
        for view_name, feature in odfv.inputs():
            edge(f"view:{view_name}", f"odfv:{name}", feature)
        if odfv.request_schema:
            nodes[f"request:{name}"] = _node("request", name, base, "request: " + ", ".join(odfv.request_schema))
            for field in odfv.request_schema:
                edge(f"request:{name}", f"odfv:{name}", field)
    for name, service in sorted(repo.services.items()):
        nodes[f"service:{name}"] = _node("service", name, base)
        for item, feature in service.resolve():
            kind = "odfv" if item in repo.odfvs else "view"
            edge(f"{kind}:{item}", f"service:{name}", feature)
        for odfv in service.odfvs():  # the views an on-demand view reads are read for the service too
            for sel in odfv.sources:
                edges.setdefault((f"view:{selection_of(sel).view.name}", f"odfv:{odfv.name}"), [])
    return {"nodes": list(nodes.values()),
            "edges": [{"from": a, "to": b, "features": f} for (a, b), f in edges.items()]}


def _positions(nodes: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    rows: dict[int, int] = {}
    out = {}
    for node in nodes:
        col = node["column"]
        row = rows.get(col, 0)
        rows[col] = row + 1
        out[node["id"]] = (_PAD + col * (_W + _COL_GAP), _PAD + 24 + row * (_H + _ROW_GAP))
    return out


def lineage_svg(graph: dict[str, Any]) -> Markup:
    """The graph drawn as an SVG element: a column per kind, a box per node linking to its page, a curve
    per edge (its title lists the features carried).  Every name is escaped."""
    pos = _positions(graph["nodes"])
    n_rows = max((y for _, y in pos.values()), default=_PAD) + _H + _PAD
    width = _PAD * 2 + len(_COLUMN_TITLES) * _W + (len(_COLUMN_TITLES) - 1) * _COL_GAP
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" role="img" aria-label="lineage graph" '
             f'width="{width}" height="{n_rows}" viewBox="0 0 {width} {n_rows}">']
    for col, title in enumerate(_COLUMN_TITLES):
        parts.append(f'<text class="col-title" x="{_PAD + col * (_W + _COL_GAP)}" y="{_PAD}">{escape(title)}</text>')
    for e in graph["edges"]:
        (x1, y1), (x2, y2) = pos[e["from"]], pos[e["to"]]
        x1, y1, y2 = x1 + _W, y1 + _H // 2, y2 + _H // 2
        mid = (x1 + x2) // 2
        title = escape(f'{e["from"]} -> {e["to"]}' + (f': {", ".join(e["features"])}' if e["features"] else ""))
        parts.append(f'<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" '
                     f'data-from="{escape(e["from"])}" data-to="{escape(e["to"])}"><title>{title}</title></path>')
    for node in graph["nodes"]:
        x, y = pos[node["id"]]
        label = node["label"] if len(node["label"]) <= 24 else node["label"][:23] + "…"
        box = (f'<g class="node {node["kind"]}" data-id="{escape(node["id"])}"><rect x="{x}" y="{y}" width="{_W}" '
               f'height="{_H}" rx="6"/><text x="{x + 10}" y="{y + 21}">{escape(label)}</text>'
               f'<title>{escape(node["kind"])} {escape(node["label"])}</title></g>')
        if node["url"]:
            box = f'<a href="{escape(node["url"])}">{box}</a>'
        parts.append(box)
    parts.append("</svg>")
    return Markup("".join(parts))
