"""The catalog's data: what the console's list and detail pages show of a repository's definitions.

Everything here is built from the loaded ``Repository`` (the definitions as the Python files declare
them); the registered versions come from the registry (``featurestore.console.versions``).  The
functions return plain dicts and lists, which the templates render (escaping every string)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from featurestore.definitions._base import fmt_duration
from featurestore.definitions.views import selection_of
from featurestore.repo import Repository

__all__ = ["KINDS", "catalog_counts", "definition_source", "detail", "listing"]

#: (kind, the URL part of its pages, label, the repository's table and the definition class of the kind)
KINDS: dict[str, tuple[str, str, str]] = {
    "entity": ("entities", "Entities", "Entity"),
    "source": ("sources", "Sources", "EventSource"),
    "view": ("views", "Feature views", "FeatureView"),
    "odfv": ("on-demand", "On-demand views", "OnDemandFeatureView"),
    "service": ("services", "Feature services", "FeatureService"),
}
_TABLES = {"entity": "entities", "source": "sources", "view": "views", "odfv": "odfvs", "service": "services"}


def table_of(repo: Repository, kind: str) -> dict[str, Any]:
    """The repository's objects of ``kind`` by name."""
    return getattr(repo, _TABLES[kind])


def catalog_counts(repo: Repository) -> dict[str, int]:
    """How many objects of each kind the repository defines, and its features."""
    counts = {kind: len(table_of(repo, kind)) for kind in KINDS}
    counts["features"] = sum(len(v.features) for v in repo.views.values()) + sum(
        len(o.schema) for o in repo.odfvs.values())
    return counts


def _meta(obj: Any) -> dict[str, Any]:
    return {"name": obj.name, "description": getattr(obj, "description", "") or "",
            "owner": getattr(obj, "owner", "") or "", "tags": dict(getattr(obj, "tags", {}) or {})}


def listing(repo: Repository, kind: str) -> list[dict[str, Any]]:
    """One row per object of ``kind``: name, description, owner, tags and a short summary."""
    rows = []
    for name, obj in sorted(table_of(repo, kind).items()):
        row = _meta(obj)
        row["summary"] = _summary(kind, obj)
        rows.append(row)
    return rows


def _summary(kind: str, obj: Any) -> str:
    if kind == "entity":
        return f"join key {obj.join_key} ({obj.key_type})"
    if kind == "source":
        return f"topic {obj.topic}, {len(obj.schema)} fields"
    if kind == "view":
        return f"{len(obj.features)} features of {obj.entity.name} from {obj.source.name}, ttl {fmt_duration(obj.ttl)}"
    if kind == "odfv":
        return (f"{len(obj.schema)} features from {len(obj.inputs())} inputs and {len(obj.request_schema)} "
                f"request fields")
    return f"{len(obj.resolve())} features"


def detail(repo: Repository, kind: str, name: str) -> dict[str, Any]:
    """The detail page of one object: its metadata, its kind's own parts (schema, features with windows
    and hops, TTL, inputs, ...) and where it is used."""
    obj = repo._get(table_of(repo, kind), KINDS[kind][2], name)
    out = _meta(obj)
    out["kind"] = kind
    out["definition"] = obj.model_dump(mode="json") if kind == "entity" else obj.to_json()
    out["fields"] = _fields(kind, obj)
    out["used_by"] = _used_by(repo, kind, name)
    out["source_code"] = definition_source(repo, kind, name)
    if kind == "view":
        out["features"] = _view_features(obj)
    elif kind == "service":
        out["features"] = [{"item": item, "feature": feature, "kind": "odfv" if item in repo.odfvs else "view"}
                           for item, feature in obj.resolve()]
    elif kind == "odfv":
        out["features"] = [{"name": f, "dtype": t.name} for f, t in obj.schema.items()]
        out["inputs"] = [{"view": v, "feature": f} for v, f in obj.inputs()]
        out["request_fields"] = [{"name": f, "dtype": t.name} for f, t in obj.request_schema.items()]
    elif kind == "source":
        out["schema"] = [{"name": f, "dtype": t.name, "optional": f in obj.optional_fields,
                          "role": _field_role(obj, f)} for f, t in obj.schema.items()]
    return out


def _field_role(source: Any, field: str) -> str:
    return {source.timestamp_field: "event time", source.entity_field: "entity key",
            source.event_id_field: "event id"}.get(field, "")


def _fields(kind: str, obj: Any) -> list[tuple[str, Any]]:
    """(label, value) pairs of the object's own settings, shown as a table."""
    if kind == "entity":
        return [("join key", obj.join_key), ("key type", obj.key_type)]
    if kind == "source":
        history = obj.history.model_dump(mode="json") if obj.history is not None else None
        return [("topic", obj.topic), ("event time field", obj.timestamp_field), ("entity field", obj.entity_field),
                ("event id field", obj.event_id_field or "none"),
                ("allowed lateness", fmt_duration(obj.allowed_lateness)),
                ("max message bytes", obj.max_message_bytes), ("history", history or "none")]
    if kind == "view":
        return [("entity", obj.entity.name), ("source", obj.source.name), ("ttl", fmt_duration(obj.ttl) or "never"),
                ("version pinned", obj.version or "assigned by the registry"), ("fingerprint", obj.fingerprint()[:16])]
    if kind == "odfv":
        return [("function", obj.to_json()["fn"])]
    return []


def _view_features(view: Any) -> list[dict[str, Any]]:
    out = []
    for f, spec in zip(view.features, view.agg_specs()):
        out.append({"name": f.name, "kind": type(f).__name__, "dtype": f.dtype.name if f.dtype is not None else "",
                    "function": spec.function, "column": "" if str(spec.column).startswith("__") else spec.column,
                    "window": fmt_duration(spec.window_ms) or "lifetime", "hop": fmt_duration(spec.hop_ms) or "",
                    "description": getattr(f, "description", "") or ""})
    return out


def _used_by(repo: Repository, kind: str, name: str) -> list[tuple[str, str]]:
    """(kind, name) of the objects that refer to this one."""
    used: list[tuple[str, str]] = []
    for vname, view in sorted(repo.views.items()):
        if (kind == "entity" and view.entity.name == name) or (kind == "source" and view.source.name == name):
            used.append(("view", vname))
    for oname, odfv in sorted(repo.odfvs.items()):
        if kind == "view" and any(v == name for v, _ in odfv.inputs()):
            used.append(("odfv", oname))
    for sname, service in sorted(repo.services.items()):
        items = {item for item, _ in service.resolve()}
        if kind in ("view", "odfv") and name in items:
            used.append(("service", sname))
        elif kind == "view" and any(selection_of(s).view.name == name for o in service.odfvs() for s in o.sources):
            used.append(("service", sname))
    return list(dict.fromkeys(used))


def definition_source(repo: Repository, kind: str, name: str) -> dict[str, Any] | None:
    """The Python statement that defines the object (``{"path", "line", "code"}``), found by parsing
    the file it came from for a call of its class with ``name="<name>"``; None when not found (an
    object built in a loop or by a helper function)."""
    origin = repo.origins.get((KINDS[kind][2], name))
    if origin is None:
        return None
    try:
        text = Path(origin).read_text()
        tree = ast.parse(text)
    except (OSError, SyntaxError, ValueError):
        return None
    lines = text.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)):
            continue
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            if _calls(call, KINDS[kind][2]) and _names(call, name):
                code = "\n".join(lines[node.lineno - 1:node.end_lineno or node.lineno])
                return {"path": str(origin), "line": node.lineno, "code": code}
    return None


def _calls(call: ast.Call, cls: str) -> bool:
    func = call.func
    return (isinstance(func, ast.Name) and func.id == cls) or (isinstance(func, ast.Attribute) and func.attr == cls)


def _names(call: ast.Call, name: str) -> bool:
    for kw in call.keywords:
        if kw.arg == "name" and isinstance(kw.value, ast.Constant) and kw.value.value == name:
            return True
    first = call.args[0] if call.args else None
    return isinstance(first, ast.Constant) and first.value == name
