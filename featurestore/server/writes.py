"""``/push`` and ``/materialize`` bodies, read into the arguments of ``FeatureStore.push`` and
``FeatureStore.materialize`` (which validate the rest: schema, all-or-nothing, the worker guard)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from featurestore.responses import PushResult

from .errors import ApiError
from .jsonio import load_object

__all__ = ["MaterializeQuery", "PushQuery", "parse_materialize", "parse_push", "push_report"]


@dataclass
class PushQuery:
    source: str
    frame: pd.DataFrame
    to: str


@dataclass
class MaterializeQuery:
    start: object
    end: object
    views: list[str] | None


def _document(body: bytes) -> dict:
    try:
        return load_object(body)
    except ValueError as exc:
        raise ApiError(400, "malformed_body", str(exc)) from None


def _one_of(doc: dict, names: tuple[str, str], what: str, required: bool = True) -> object:
    """The value of whichever of the two ``names`` (Feast's and ours) the body has."""
    given = [n for n in names if doc.get(n) is not None]
    if len(given) > 1:
        raise ApiError(400, "malformed_body", f"pass one of {names[0]!r} and {names[1]!r} ({what}), not both")
    if not given:
        if required:
            raise ApiError(400, "malformed_body", f"{names[0]!r} (or {names[1]!r}) is missing: {what}")
        return None
    return doc[given[0]]


def parse_push(body: bytes) -> PushQuery:
    """``{"push_source_name" | "source": name, "df": {column: [...]} | "rows": [{...}], "to": ...}``."""
    doc = _document(body)
    source = _one_of(doc, ("push_source_name", "source"), "the event source to push to")
    if not isinstance(source, str):
        raise ApiError(400, "malformed_body", "the source name must be a string")
    columns = doc.get("df")
    rows = doc.get("rows")
    if (columns is None) == (rows is None):
        raise ApiError(400, "malformed_body", "pass one of 'df' (an object of columns, Feast's shape) and 'rows' "
                                              "(an array of event objects)")
    if columns is not None:
        if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
            raise ApiError(400, "malformed_body", "'df' must be an object of arrays, one value per event")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{k}: {len(v)}" for k, v in columns.items())
            raise ApiError(400, "malformed_body", f"the arrays of 'df' must have one length, got {sizes}")
        frame = pd.DataFrame(columns)
    else:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ApiError(400, "malformed_body", "'rows' must be an array of objects, one per event")
        frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    to = doc.get("to", "online")
    if not isinstance(to, str):
        raise ApiError(400, "malformed_body", "'to' must be a string: online, offline or online_and_offline")
    return PushQuery(source, frame, to)


def push_report(result: PushResult) -> dict:
    refused = [{"row": row, "reason": reason, "detail": detail} for row, reason, detail in
               zip(result.refused["row"].tolist(), result.refused["reason"].tolist(),
                   result.refused["detail"].tolist())]
    return {"rows": result.rows, "online_records": result.online_records, "offline_rows": result.offline_rows,
            "skipped_existing": result.skipped_existing, "refused": refused}


def parse_materialize(body: bytes) -> MaterializeQuery:
    """``{"start_ts" | "start": T, "end_ts" | "end": T, "feature_views" | "views": [...]}``; T in epoch ms
    or ISO-8601."""
    doc = _document(body)
    start = _one_of(doc, ("start_ts", "start"), "the first event time, epoch ms or ISO-8601")
    end = _one_of(doc, ("end_ts", "end"), "the last event time, epoch ms or ISO-8601")
    views = _one_of(doc, ("feature_views", "views"), "the views to materialize", required=False)
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ApiError(400, "malformed_body", f"{name!r} must be epoch ms (an integer) or an ISO-8601 string")
    if views is not None and (not isinstance(views, list) or not all(isinstance(v, str) for v in views)):
        raise ApiError(400, "malformed_body", "'feature_views' must be an array of view names")
    return MaterializeQuery(start, end, views)
