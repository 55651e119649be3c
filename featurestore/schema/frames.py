"""Validation of a pandas DataFrame of events (backfill, push), by the same rules as single events."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd

from ..definitions import EventSource
from ..types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType
from .limits import TIMESTAMP_MAX_MS, TIMESTAMP_MIN_MS, _show, _value_check, future_detail

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


class _Verdicts:
    """Per row of a frame: the reason and detail of the first rule it breaks (None while valid)."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)

    def valid(self) -> np.ndarray:
        """Rows no rule has refused yet."""
        return self.reason == None  # noqa: E711 - elementwise

    def reject(self, mask: np.ndarray, code: str, make_detail: Callable[[int], str]) -> None:
        """Refuse the rows of ``mask`` still valid, with ``code`` and ``make_detail(row)``."""
        for i in np.flatnonzero(mask & self.valid()):
            self.reason[i] = code
            self.detail[i] = make_detail(int(i))


def validate_frame(source: EventSource, df: pd.DataFrame, ref_ms: int | np.ndarray | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row of ``df`` (one event per row) against ``source``.

    ``ref_ms``: the reference time of ``max_future`` (one for all rows, or one per row), or
    None to skip that check.  Returns ``(valid, rejects)``: ``valid`` keeps the index of
    ``df`` and has columns ``__key``, ``__ts`` (int64 epoch ms), ``__event_id`` (str; only
    when the source has an event id field), ``__ref`` (int64 ms; only with ``ref_ms``) and
    every schema field, converted (the timestamp field as int64 ms, missing optional fields
    as None/NaN); ``rejects`` has ``row`` (the index label in ``df``), ``reason`` and ``detail``.
    A row breaking several rules is refused for the first: the entity field's, the timestamp
    field's, the other fields' in schema order, then ``max_future``.
    """
    verdicts = _Verdicts(len(df))
    kf, tf = source.entity_field, source.timestamp_field
    order = [kf, tf] + [f for f in source.schema if f not in (kf, tf)]
    converted = {name: _field_values(source, df, name, verdicts) for name in order}
    if ref_ms is not None and source.max_future is not None:
        _reject_future(converted[tf], ref_ms, source.max_future, tf, verdicts)
    ok = verdicts.valid()
    bad_idx = np.flatnonzero(~ok)
    rejects = pd.DataFrame(
        {
            "row": df.index[bad_idx],
            "reason": pd.Series(verdicts.reason[bad_idx], dtype=object),
            "detail": pd.Series(verdicts.detail[bad_idx], dtype=object),
        }
    )
    return _valid_rows(source, df.index, converted, ref_ms, ok), rejects


def _field_values(source: EventSource, df: pd.DataFrame, name: str, verdicts: _Verdicts) -> pd.Series:
    """Field ``name`` of ``df`` converted to its schema type (None where null or missing), with the
    rows it makes invalid refused in ``verdicts``."""
    n = len(df)
    vt = source.schema[name]
    if name not in df.columns:
        if name not in source.optional_fields:
            is_key = name == source.entity_field
            code = "missing_entity_key" if is_key else "missing_field"
            text = f"entity field {name!r} is missing or empty" if is_key else f"field {name!r} is missing"
            verdicts.reject(np.ones(n, dtype=bool), code, lambda i: text)
        return pd.Series([None] * n, index=df.index, dtype=object)
    raw = df[name]
    col = _convert(raw, vt)
    null = col.null
    if name == source.entity_field and vt == STRING:
        null = null | (col.values.to_numpy(dtype=object) == "")
    _reject_nulls_and_types(source, name, raw, col, null, verdicts)
    _reject_values(source, name, col, null, verdicts)
    values = col.values
    if null.any():
        values = values.astype(object).where(~null, None)
    return values


def _reject_nulls_and_types(source: EventSource, name: str, raw: pd.Series, col: _Col, null: np.ndarray,
                            verdicts: _Verdicts) -> None:
    """Refuse the rows where field ``name`` is null (unless optional) or not of its type."""
    vt = source.schema[name]
    kf, tf = source.entity_field, source.timestamp_field
    raw_list: list = raw.tolist() if col.bad.any() else []  # read only at the bad rows
    if name == kf:
        verdicts.reject(null, "missing_entity_key", lambda i: f"entity field {kf!r} is missing or empty")
        verdicts.reject(col.bad, "wrong_type", lambda i: _detail(kf, vt, raw_list[i], "entity field"))
    elif name == tf:
        verdicts.reject(null, "missing_field", lambda i: f"timestamp field {tf!r} is missing or null")
        verdicts.reject(col.bad, "bad_timestamp", lambda i: _detail(tf, vt, raw_list[i], "timestamp field"))
    else:
        if name not in source.optional_fields:
            verdicts.reject(null, "missing_field", lambda i: f"field {name!r} is null")
        verdicts.reject(col.bad, "wrong_type", lambda i: _detail(name, vt, raw_list[i]))


def _reject_values(source: EventSource, name: str, col: _Col, null: np.ndarray, verdicts: _Verdicts) -> None:
    """Refuse the rows whose value of field ``name`` breaks a limit of the source (``_value_check``)."""
    vt = source.schema[name]
    check = _value_check(source, name, vt)
    if check is None:
        return
    todo = np.flatnonzero(_limit_candidates(col.values, vt, source.string_limit(name) if vt == STRING else 0)
                          & ~null & ~col.bad & verdicts.valid())
    if len(todo):
        vals = col.values.to_numpy(dtype=object)
        for i in todo:
            problem = check(vals[i])
            if problem is not None:
                verdicts.reason[i], verdicts.detail[i] = problem


def _reject_future(times: pd.Series, ref_ms: int | np.ndarray, max_future: int, tf: str,
                   verdicts: _Verdicts) -> None:
    """Refuse the rows whose event time (timestamp field ``tf``) is more than ``max_future`` after
    their reference time."""
    ref = np.broadcast_to(np.asarray(ref_ms, dtype="int64"), (len(times),))
    ts = pd.to_numeric(times, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    future = (ts > ref + max_future) & verdicts.valid()
    for i in np.flatnonzero(future):
        verdicts.reason[i] = "future_timestamp"
        verdicts.detail[i] = future_detail(f"timestamp field {tf!r}:", int(ts[i]), int(ref[i]), max_future)


def _valid_rows(source: EventSource, index: pd.Index, converted: dict[str, pd.Series],
                ref_ms: int | np.ndarray | None, ok: np.ndarray) -> pd.DataFrame:
    """``validate_frame``'s ``valid`` frame: the ``ok`` rows of the converted fields, typed."""
    kf = source.entity_field
    out: dict[str, pd.Series] = {"__key": converted[kf], "__ts": converted[source.timestamp_field]}
    if source.event_id_field is not None:
        eid = converted[source.event_id_field]
        out["__event_id"] = eid.map(lambda v: None if v is None else str(v)).astype(object)
    if ref_ms is not None:
        out["__ref"] = pd.Series(np.broadcast_to(np.asarray(ref_ms, dtype="int64"), (len(index),)), index=index)
    for name in source.schema:
        out[name] = converted[name]
    valid = pd.DataFrame(out, index=index)[ok]
    valid = valid.copy()
    for name, vt in list(source.schema.items()) + [("__key", source.schema[kf]), ("__ts", TIMESTAMP)]:
        valid[name] = _tidy(valid[name], vt)
    return valid


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
