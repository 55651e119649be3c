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

Then the limits that keep every accepted event storable (PostgreSQL text holds no
NUL, a btree index entry has a size limit, ``bigint`` is int64, Redis states hold
finite numbers): a NUL character in the key or a string field is
``invalid_character``; an entity key or event id over the source's
``max_key_bytes`` (UTF-8) is ``key_too_long``; a string field over its limit
(``EventSource.string_limit``) is ``too_long``; an integer outside int64, a float
field of ±infinity, a NaN or infinity inside a float list, and a timestamp outside
[``TIMESTAMP_MIN_MS``, ``TIMESTAMP_MAX_MS``] (1900-01-01 to 2262-01-01 UTC: event
times in microseconds or nanoseconds, or year 9999, fall outside) are
``out_of_range``.  Last, with a reference time (the Kafka record's timestamp; the
push's or backfill's clock; a history's reference column), an event time more
than ``max_future`` after it is ``future_timestamp``: it never moves a watermark.

Frames only: in a float column NaN is a value, not a null (as in events); in
other columns NaN/None/NA/NaT are nulls, and integral floats are accepted for
int64 and timestamp fields (pandas turns ints with nulls into floats).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import math

import numpy as np
import pandas as pd

from .definitions import EventSource
from .types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType, parse_timestamp

__all__ = [
    "REASONS",
    "TIMESTAMP_MAX_MS",
    "TIMESTAMP_MIN_MS",
    "EventValidator",
    "Rejection",
    "ValidEvent",
    "parse_timestamp",
    "validate_event",
    "validate_frame",
    "validator_for",
]

#: Rejection reason codes of validation.
REASONS = ("not_an_object", "missing_entity_key", "missing_field", "wrong_type", "bad_timestamp",
           "invalid_character", "key_too_long", "too_long", "out_of_range", "future_timestamp")

#: Accepted event times (epoch ms): 1900-01-01 to 2262-01-01 UTC, inside pandas' datetime64[ns] range.
TIMESTAMP_MIN_MS = -2_208_988_800_000
TIMESTAMP_MAX_MS = 9_214_646_400_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_MISSING = object()


class ValidEvent(NamedTuple):
    """A valid event: entity ``key``, event time ``ts_ms``, ``event_id`` (as str, or
    None), ``values`` of every schema field (the timestamp field as epoch ms;
    missing optional fields as None) and ``ref_ms``, the reference time its event
    time was judged against (``max_future``), or None."""

    key: str | int
    ts_ms: int
    event_id: str | None
    values: dict[str, Any]
    ref_ms: int | None = None

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


def show_time(ms: int) -> str:
    """Epoch ``ms`` as ISO-8601 when it is a date ``datetime`` can hold, else the number."""
    try:
        return (_EPOCH + ms * _MS).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"{ms} ms"


def time_range_detail(what: str, ms: int) -> str:
    return (f"{what} {show_time(ms)} is outside the accepted range {show_time(TIMESTAMP_MIN_MS)} to "
            f"{show_time(TIMESTAMP_MAX_MS)} (epoch milliseconds {TIMESTAMP_MIN_MS} to {TIMESTAMP_MAX_MS}); "
            f"send event times in epoch milliseconds or ISO-8601, not seconds, microseconds or nanoseconds")


def future_detail(what: str, ts_ms: int, ref_ms: int, max_future: int) -> str:
    return (f"{what} {show_time(ts_ms)} is {(ts_ms - ref_ms) / 1000:.0f} s after the record's reference time "
            f"{show_time(ref_ms)}, more than max_future ({max_future // 1000} s); such an event would move the "
            f"entity's watermark into the future and make its later events late. Fix the producer's clock or "
            f"units, or raise the source's max_future")


def string_problem(what: str, name: str, value: str, limit: int, too_long: str) -> tuple[str, str] | None:
    """(reason, detail) when string ``value`` cannot be stored, else None."""
    if "\x00" in value:
        return ("invalid_character", f"{what} {name!r} holds a NUL character (\\u0000), which PostgreSQL text cannot "
                                     f"store; remove it from the producer's value")
    if not value.isascii() or len(value) > limit:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return ("invalid_character", f"{what} {name!r} holds a lone UTF-16 surrogate, which is not valid "
                                         f"Unicode text; send valid UTF-8")
        if size > limit:
            return (too_long, f"{what} {name!r} is {size} bytes in UTF-8, over its limit of {limit} bytes "
                              f"(EventSource max_key_bytes / max_string_bytes / string_limits)")
    return None


def _value_check(source: EventSource, name: str, vt: ValueType):
    """A function of a coerced non-null value returning (reason, detail) when the stores
    cannot hold it, or None when no check applies to the type."""
    if vt == STRING:
        limit = source.string_limit(name)
        too_long = "key_too_long" if name in (source.entity_field, source.event_id_field) else "too_long"
        what = "entity field" if name == source.entity_field else "field"
        return lambda v: string_problem(what, name, v, limit, too_long)
    if vt == INT64:
        def check_int(v: int) -> tuple[str, str] | None:
            if _INT64_MIN <= v <= _INT64_MAX:
                return None
            return ("out_of_range", f"field {name!r}: {_show(v)} is outside int64 (-2^63 to 2^63-1)")
        return check_int
    if vt == FLOAT64:
        def check_float(v: float) -> tuple[str, str] | None:
            if not math.isinf(v):
                return None
            return ("out_of_range", f"field {name!r}: {v} is not a finite number")
        return check_float
    if vt == TIMESTAMP:
        label = f"{'timestamp field' if name == source.timestamp_field else 'field'} {name!r}:"

        def check_time(v: int) -> tuple[str, str] | None:
            if TIMESTAMP_MIN_MS <= v <= TIMESTAMP_MAX_MS:
                return None
            return ("out_of_range", time_range_detail(label, v))
        return check_time
    if vt.is_list and vt.element == "int64":
        def check_ints(v: list) -> tuple[str, str] | None:
            for x in v:
                if not _INT64_MIN <= x <= _INT64_MAX:
                    return ("out_of_range", f"field {name!r}: element {_show(x)} is outside int64")
            return None
        return check_ints
    if vt.is_list and vt.element == "float64":
        def check_floats(v: list) -> tuple[str, str] | None:
            if all(map(math.isfinite, v)):
                return None
            return ("out_of_range", f"field {name!r}: holds a NaN or infinite element; list and embedding "
                                    f"elements must be finite")
        return check_floats
    return None


class EventValidator:
    """Validator of one source's events, precompiled; call it with a decoded event and,
    where there is one, the reference time of ``max_future`` (epoch ms)."""

    __slots__ = ("source", "_key", "_key_type", "_key_fast", "_key_check", "_key_quick", "_ts", "_id", "_fields",
                 "_max_future")

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self._key = source.entity_field
        self._key_type = source.schema[self._key]
        self._key_fast = _fast_type(self._key_type)
        self._key_check = _value_check(source, self._key, self._key_type)
        self._key_quick = source.max_key_bytes  # an ASCII key without NUL within it passes without a call
        self._ts = source.timestamp_field
        self._id = source.event_id_field
        self._max_future = source.max_future
        optional = set(source.optional_fields)
        self._fields = tuple(
            (name, vt, _fast_type(vt), name in optional, _value_check(source, name, vt),
             source.string_limit(name) if vt == STRING else 0)  # an ASCII string's length is its size
            for name, vt in source.schema.items()
            if name not in (self._key, self._ts)
        )

    def __call__(self, event: Any, ref_ms: int | None = None) -> ValidEvent | Rejection:
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
        if not (type(key) is str and len(key) <= self._key_quick and key.isascii() and "\x00" not in key):
            problem = self._key_check(key)
            if problem is not None:
                return Rejection(*problem)
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
        if not TIMESTAMP_MIN_MS <= ts_ms <= TIMESTAMP_MAX_MS:
            return Rejection("out_of_range", time_range_detail(f"timestamp field {tf!r}:", ts_ms))
        values = {kf: key, tf: ts_ms}
        for name, vt, fast, optional, check, quick in self._fields:
            v = get(name, _MISSING)
            if v is _MISSING or v is None:
                if optional:
                    values[name] = None
                    continue
                return Rejection("missing_field", f"field {name!r} is {'missing' if v is _MISSING else 'null'}")
            t = type(v)
            if t is not fast:
                try:
                    v = vt.coerce(v)
                except ValueError as exc:
                    return Rejection("wrong_type", f"field {name!r}: {exc}")
            elif t is str:  # the common string passes without a call: short, ASCII, no NUL
                if len(v) <= quick and v.isascii() and "\x00" not in v:
                    values[name] = v
                    continue
            elif t is float:  # finite (v - v is 0.0); NaN is a value
                if v - v == 0.0 or v != v:
                    values[name] = v
                    continue
            elif t is int:
                if _INT64_MIN <= v <= _INT64_MAX:
                    values[name] = v
                    continue
            elif t is bool:
                values[name] = v
                continue
            if check is not None:
                problem = check(v)
                if problem is not None:
                    return Rejection(*problem)
            values[name] = v
        if ref_ms is not None and self._max_future is not None and ts_ms > ref_ms + self._max_future:
            return Rejection("future_timestamp", future_detail(f"timestamp field {tf!r}:", ts_ms, ref_ms, self._max_future))
        eid = None
        if self._id is not None:
            eid = values[self._id]
            if eid is not None and type(eid) is not str:
                eid = str(eid)
        return ValidEvent(key, ts_ms, eid, values, ref_ms)


_VALIDATORS: dict[int, tuple[EventSource, EventValidator]] = {}


def validator_for(source: EventSource) -> EventValidator:
    """The cached ``EventValidator`` of ``source`` (hold it in hot loops)."""
    hit = _VALIDATORS.get(id(source))
    if hit is not None and hit[0] is source:
        return hit[1]
    v = EventValidator(source)
    _VALIDATORS[id(source)] = (source, v)
    return v


def validate_event(source: EventSource, event: Any, ref_ms: int | None = None) -> ValidEvent | Rejection:
    """Validate one decoded event (``ref_ms``: the reference time of ``max_future``); see the
    module docstring for the rules."""
    return validator_for(source)(event, ref_ms)


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


def _limit_candidates(values: pd.Series, vt: ValueType, limit: int) -> np.ndarray:
    """Rows of a converted column that a ``_value_check`` might refuse (the rest surely pass)."""
    arr = values.to_numpy()
    if arr.dtype == object:
        if vt == STRING:
            texts = pd.Series(arr, dtype=object)
            nul = texts.str.contains("\x00", regex=False).fillna(False).to_numpy(dtype=bool)
            long = (texts.str.len().fillna(0).to_numpy() > limit // 4)
            return nul | long
        return np.ones(len(arr), dtype=bool)
    if vt == FLOAT64:
        return np.isinf(arr)
    if vt == TIMESTAMP:
        return (arr < TIMESTAMP_MIN_MS) | (arr > TIMESTAMP_MAX_MS)
    return np.zeros(len(arr), dtype=bool)  # int64 and bool columns of a numpy dtype are in range


def validate_frame(source: EventSource, df: pd.DataFrame, ref_ms: int | np.ndarray | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row of ``df`` (one event per row) against ``source``.

    ``ref_ms``: the reference time of ``max_future`` (one for all rows, or one per row), or
    None to skip that check.  Returns ``(valid, rejects)``: ``valid`` keeps the index of
    ``df`` and has columns ``__key``, ``__ts`` (int64 epoch ms), ``__event_id`` (str; only
    when the source has an event id field), ``__ref`` (int64 ms; only with ``ref_ms``) and
    every schema field, converted (the timestamp field as int64 ms, missing optional fields
    as None/NaN); ``rejects`` has ``row`` (the index label in ``df``), ``reason`` and ``detail``.
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
        check = _value_check(source, name, vt)
        if check is not None:
            todo = np.flatnonzero(_limit_candidates(col.values, vt, source.string_limit(name) if vt == STRING else 0)
                                  & ~null & ~col.bad & (reason == None))  # noqa: E711 - elementwise
            if len(todo):
                vals = col.values.to_numpy(dtype=object)
                for i in todo:
                    problem = check(vals[i])
                    if problem is not None:
                        reason[i], detail[i] = problem
        values = col.values
        if null.any():
            values = values.astype(object).where(~null, None)
        converted[name] = values

    if ref_ms is not None and source.max_future is not None:
        ref = np.broadcast_to(np.asarray(ref_ms, dtype="int64"), (n,))
        ts = pd.to_numeric(converted[tf], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        future = (ts > ref + source.max_future) & (reason == None)  # noqa: E711 - elementwise
        for i in np.flatnonzero(future):
            reason[i] = "future_timestamp"
            detail[i] = future_detail(f"timestamp field {tf!r}:", int(ts[i]), int(ref[i]), source.max_future)

    ok = reason == None  # noqa: E711
    out: dict[str, pd.Series] = {"__key": converted[kf], "__ts": converted[tf]}
    if source.event_id_field is not None:
        eid = converted[source.event_id_field]
        out["__event_id"] = eid.map(lambda v: None if v is None else str(v)).astype(object)
    if ref_ms is not None:
        out["__ref"] = pd.Series(np.broadcast_to(np.asarray(ref_ms, dtype="int64"), (n,)), index=df.index)
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
