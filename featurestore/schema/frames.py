"""Validation of a pandas DataFrame of events (backfill, push), by the same rules as single events."""

from __future__ import annotations

from typing import Any, NamedTuple

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
        raw_list: list = raw.tolist() if col.bad.any() else []  # read only at the bad rows
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
