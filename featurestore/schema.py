"""Validation of raw events against an ``EventSource``.

``validate_event`` checks one decoded JSON event (the Kafka worker and the push
path call it per event; it uses a validator precompiled per source, no
pydantic).  ``validate_frame`` does the same over a pandas DataFrame (backfill).

Rules, identical in both: the entity field must be present, non-null and not
``""`` (else ``missing_entity_key``); the timestamp field must be present
(``missing_field``) and an ISO-8601 string (naive = UTC), epoch-ms int or
datetime (else ``bad_timestamp``); every other schema field must be present and
non-null unless listed in ``optional_fields`` (``missing_field``) and of its
type (``wrong_type``; ints are accepted for floats, bools are not ints, NaN is a
valid float).  Checks run in that order and the first failure is reported.
Fields not in the schema are ignored.

Frames only: in a float column NaN is a value, not a null (as in events); in
other columns NaN/None/NA/NaT are nulls, and integral floats are accepted for
int64 and timestamp fields (pandas turns ints with nulls into floats).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .definitions import EventSource
from .types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType, parse_timestamp

__all__ = [
    "REASONS",
    "EventValidator",
    "Rejection",
    "ValidEvent",
    "parse_timestamp",
    "validate_event",
    "validate_frame",
    "validator_for",
]

#: Rejection reason codes.
REASONS = ("not_an_object", "missing_entity_key", "missing_field", "wrong_type", "bad_timestamp")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_MISSING = object()


class ValidEvent(NamedTuple):
    """A valid event: entity ``key``, event time ``ts_ms``, ``event_id`` (as str, or
    None) and ``values`` of every schema field (the timestamp field as epoch ms;
    missing optional fields as None)."""

    key: str | int
    ts_ms: int
    event_id: str | None
    values: dict[str, Any]

    @property
    def ok(self) -> bool:
        return True


class Rejection(NamedTuple):
    """An invalid event: ``reason`` (one of ``REASONS``) and a sentence ``detail``."""

    reason: str
    detail: str

    @property
    def ok(self) -> bool:
        return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fast_type(vt: ValueType) -> type | None:
    return {INT64: int, FLOAT64: float, STRING: str, BOOL: bool}.get(vt)


class EventValidator:
    """Validator of one source's events, precompiled; call it with a decoded event."""

    __slots__ = ("source", "_key", "_key_type", "_key_fast", "_ts", "_id", "_fields")

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self._key = source.entity_field
        self._key_type = source.schema[self._key]
        self._key_fast = _fast_type(self._key_type)
        self._ts = source.timestamp_field
        self._id = source.event_id_field
        optional = set(source.optional_fields)
        self._fields = tuple(
            (name, vt, _fast_type(vt), name in optional)
            for name, vt in source.schema.items()
            if name not in (self._key, self._ts)
        )

    def __call__(self, event: Any) -> ValidEvent | Rejection:
        if type(event) is not dict:
            if not isinstance(event, dict):
                return Rejection("not_an_object", f"event is {type(event).__name__} {_show(event)}, expected a JSON object")
        get = event.get
        kf = self._key
        key = get(kf)
        if key is None or key == "":
            return Rejection("missing_entity_key", f"entity field {kf!r} is missing or empty")
        if type(key) is not self._key_fast:
            try:
                key = self._key_type.coerce(key)
            except ValueError as exc:
                return Rejection("wrong_type", f"entity field {kf!r}: {exc}")
        tf = self._ts
        ts = get(tf)
        if ts is None:
            return Rejection("missing_field", f"timestamp field {tf!r} is missing or null")
        if type(ts) is int:
            ts_ms = ts
        elif type(ts) is str:
            try:
                dt = datetime.fromisoformat(ts)
            except ValueError:
                return Rejection("bad_timestamp", f"timestamp field {tf!r}: cannot parse {_show(ts)} as ISO-8601")
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            ts_ms = (dt - _EPOCH) // _MS
        else:
            try:
                ts_ms = parse_timestamp(ts)
            except ValueError as exc:
                return Rejection("bad_timestamp", f"timestamp field {tf!r}: {exc}")
        values = {kf: key, tf: ts_ms}
        for name, vt, fast, optional in self._fields:
            v = get(name, _MISSING)
            if v is _MISSING or v is None:
                if optional:
                    values[name] = None
                    continue
                return Rejection("missing_field", f"field {name!r} is {'missing' if v is _MISSING else 'null'}")
            if type(v) is not fast:
                try:
                    v = vt.coerce(v)
                except ValueError as exc:
                    return Rejection("wrong_type", f"field {name!r}: {exc}")
            values[name] = v
        eid = None
        if self._id is not None:
            eid = values[self._id]
            if eid is not None and type(eid) is not str:
                eid = str(eid)
        return ValidEvent(key, ts_ms, eid, values)


_VALIDATORS: dict[int, tuple[EventSource, EventValidator]] = {}


def validator_for(source: EventSource) -> EventValidator:
    """The cached ``EventValidator`` of ``source`` (hold it in hot loops)."""
    hit = _VALIDATORS.get(id(source))
    if hit is not None and hit[0] is source:
        return hit[1]
    v = EventValidator(source)
    _VALIDATORS[id(source)] = (source, v)
    return v


def validate_event(source: EventSource, event: Any) -> ValidEvent | Rejection:
    """Validate one decoded event; see the module docstring for the rules."""
    return validator_for(source)(event)


# ---------------------------------------------------------------------------------------
# Frames


def _is_null(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, (float, np.floating)) and v != v


class _Col(NamedTuple):
    values: pd.Series  # converted values (garbage where null/bad)
    null: np.ndarray
    bad: np.ndarray


def _elementwise(s: pd.Series, vt: ValueType) -> _Col:
    n = len(s)
    out: list[Any] = [None] * n
    null = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    nan_is_value = vt == FLOAT64
    for i, v in enumerate(s.tolist()):
        if _is_null(v) and not (nan_is_value and isinstance(v, float) and v is not pd.NA):
            null[i] = True
            continue
        try:
            out[i] = vt.coerce(v)
        except ValueError:
            bad[i] = True
    return _Col(pd.Series(out, index=s.index, dtype=object), null, bad)


def _convert(s: pd.Series, vt: ValueType) -> _Col:
    """Vectorised where the dtype allows, element by element otherwise."""
    n = len(s)
    none = np.zeros(n, dtype=bool)
    dtype = s.dtype
    kind = dtype.kind if isinstance(dtype, np.dtype) else None
    nullable = pd.api.types.is_extension_array_dtype(dtype) and not isinstance(dtype, pd.StringDtype)
    if vt == FLOAT64:
        if kind in ("f", "i", "u"):
            return _Col(s.astype("float64"), none, none)
        if nullable and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            null = s.isna().to_numpy()
            return _Col(s.astype("Float64").fillna(0.0).astype("float64"), null, none)
    elif vt == INT64:
        if kind in ("i", "u"):
            return _Col(s.astype("int64"), none, none)
        if kind == "f":
            arr = s.to_numpy()
            null = np.isnan(arr)
            bad = ~null & (arr != np.floor(np.where(null, 0.0, arr)))
            vals = pd.Series(np.where(null | bad, 0, arr).astype("int64"), index=s.index)
            return _Col(vals, null, bad)
        if nullable and pd.api.types.is_integer_dtype(dtype):
            null = s.isna().to_numpy()
            return _Col(s.fillna(0).astype("int64"), null, none)
    elif vt == BOOL:
        if kind == "b":
            return _Col(s, none, none)
        if nullable and pd.api.types.is_bool_dtype(dtype):
            null = s.isna().to_numpy()
            return _Col(s.fillna(False).astype("bool"), null, none)
    elif vt == STRING:
        if isinstance(dtype, pd.StringDtype):
            null = s.isna().to_numpy()
            return _Col(s.astype(object).where(~null, None), null, none)
    elif vt == TIMESTAMP:
        if kind == "M" or isinstance(dtype, pd.DatetimeTZDtype):
            null = s.isna().to_numpy()
            dt = pd.to_datetime(s, utc=True)
            ms = dt.dt.as_unit("ms").astype("int64").where(~null, 0)
            return _Col(ms.astype("int64"), null, none)
        if kind in ("i", "u"):
            return _Col(s.astype("int64"), none, none)
        if kind == "f":
            return _convert(s, INT64)
    if kind in ("f", "i", "u", "b", "M", "m") and vt in (INT64, FLOAT64, BOOL, STRING):
        # A typed numeric column of the wrong type: every non-null row is wrong.
        null = s.isna().to_numpy() if vt != FLOAT64 else none
        return _Col(pd.Series([None] * n, index=s.index, dtype=object), null, ~null)
    return _elementwise(s, vt)


def _detail(name: str, vt: ValueType, value: Any, what: str = "field") -> str:
    try:
        vt.coerce(value)
    except ValueError as exc:
        return f"{what} {name!r}: {exc}"
    return f"{what} {name!r}: value {_show(value)} is not {vt.name}"


def validate_frame(source: EventSource, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row of ``df`` (one event per row) against ``source``.

    Returns ``(valid, rejects)``: ``valid`` keeps the index of ``df`` and has
    columns ``__key``, ``__ts`` (int64 epoch ms), ``__event_id`` (str; only when
    the source has an event id field) and every schema field, converted (the
    timestamp field as int64 ms, missing optional fields as None/NaN);
    ``rejects`` has ``row`` (the index label in ``df``), ``reason`` and ``detail``.
    """
    n = len(df)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    kf, tf = source.entity_field, source.timestamp_field
    optional = set(source.optional_fields)
    order = [kf, tf] + [f for f in source.schema if f not in (kf, tf)]
    converted: dict[str, pd.Series] = {}

    def reject(mask: np.ndarray, code: str, make_detail) -> None:
        todo = np.flatnonzero(mask & (reason == None))  # noqa: E711 - elementwise
        for i in todo:
            reason[i] = code
            detail[i] = make_detail(i)

    for name in order:
        vt = source.schema[name]
        is_key, is_ts = name == kf, name == tf
        if name not in df.columns:
            if name in optional:
                converted[name] = pd.Series([None] * n, index=df.index, dtype=object)
                continue
            code = "missing_entity_key" if is_key else "missing_field"
            text = f"entity field {name!r} is missing or empty" if is_key else f"field {name!r} is missing"
            reject(np.ones(n, dtype=bool), code, lambda i, t=text: t)
            converted[name] = pd.Series([None] * n, index=df.index, dtype=object)
            continue
        raw = df[name]
        col = _convert(raw, vt)
        null = col.null
        if is_key and vt == STRING:
            null = null | (col.values.to_numpy(dtype=object) == "")
        raw_list = raw.tolist() if (col.bad.any()) else None
        if is_key:
            reject(null, "missing_entity_key", lambda i: f"entity field {kf!r} is missing or empty")
            reject(col.bad, "wrong_type", lambda i: _detail(kf, vt, raw_list[i], "entity field"))
        elif is_ts:
            reject(null, "missing_field", lambda i: f"timestamp field {tf!r} is missing or null")
            reject(col.bad, "bad_timestamp", lambda i: _detail(tf, vt, raw_list[i], "timestamp field"))
        else:
            if name not in optional:
                reject(null, "missing_field", lambda i, nm=name: f"field {nm!r} is null")
            reject(col.bad, "wrong_type", lambda i, nm=name, t=vt: _detail(nm, t, raw_list[i]))
        values = col.values
        if null.any():
            values = values.astype(object).where(~null, None)
        converted[name] = values

    ok = reason == None  # noqa: E711
    out: dict[str, pd.Series] = {"__key": converted[kf], "__ts": converted[tf]}
    if source.event_id_field is not None:
        eid = converted[source.event_id_field]
        out["__event_id"] = eid.map(lambda v: None if v is None else str(v)).astype(object)
    for name in source.schema:
        out[name] = converted[name]
    valid = pd.DataFrame(out, index=df.index)[ok]
    valid = valid.copy()
    for name, vt in list(source.schema.items()) + [("__key", source.schema[kf]), ("__ts", TIMESTAMP)]:
        valid[name] = _tidy(valid[name], vt)
    bad_idx = np.flatnonzero(~ok)
    rejects = pd.DataFrame(
        {
            "row": df.index[bad_idx],
            "reason": pd.Series(reason[bad_idx], dtype=object),
            "detail": pd.Series(detail[bad_idx], dtype=object),
        }
    )
    return valid, rejects


def typed_column(values: list, vt: ValueType) -> pd.Series:
    """Values of one field (plain Python, None for missing) as ``validate_frame`` types its column,
    so a BatchTransform sees the same dtypes in the worker as in the batch path."""
    return _tidy(pd.Series(values, dtype=object), vt)


def _tidy(s: pd.Series, vt: ValueType) -> pd.Series:
    """Give the surviving values their natural dtype."""
    has_null = s.isna().any() if s.dtype != object else any(v is None for v in s.tolist())
    if vt in (INT64, TIMESTAMP):
        return s.astype("Int64") if has_null else s.astype("int64")
    if vt == FLOAT64:
        return s.astype("float64") if not has_null else s.astype(object).where(s.notna(), np.nan).astype("float64")
    if vt == BOOL:
        return s.astype("boolean") if has_null else s.astype("bool")
    return s.astype(object)
