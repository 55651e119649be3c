"""Full scans of the event log, block ranges or segments: what a scan reads per column (binary
send forms aggregated with ``string_agg``), and how the packed bytes are decoded into arrays,
filtered and put in arrival order.  Pure functions on SQL text and numpy arrays."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...exceptions import StoreUnavailableError
from ...types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType
from .tables import qident

#: Value types a full scan reads (``_scan_columns``); lists and embeddings are read row by row.
SCAN_TYPES = (FLOAT64, INT64, TIMESTAMP, BOOL, STRING)
TEXT = "text"  # dtype of a column of ``_scan_columns`` holding UTF-8 bytes (lengths in ``__len_<name>``)


def _text_columns(name: str, column_sql: str, nullable: bool) -> list[tuple[str, str, str]]:
    """A text column as scanned: its values' UTF-8 bytes end to end, their lengths, and (``nullable``)
    a NULL mask."""
    value = f"coalesce({column_sql}, '')" if nullable else column_sql
    cols = [(name, f"convert_to({value}, 'UTF8')", TEXT), (f"__len_{name}", f"int4send(octet_length({value}))", ">i4")]
    if nullable:
        cols.append((f"__null_{name}",
                     f"CASE WHEN {column_sql} IS NULL THEN '\\x01'::bytea ELSE '\\x00'::bytea END", "u1"))
    return cols


def _scan_columns(items: list[tuple[str, str, ValueType]], key_vt: ValueType = INT64, with_id: bool = False
                  ) -> tuple[list[tuple[str, str, str]], list[tuple[str, ValueType]], list[str]]:
    """What a full scan reads: (name, SQL of the binary value, numpy dtype or ``TEXT``) per column —
    key, time, partition, offset, the event id and each field (NULL-able int/bool fields with a
    ``__null_<field>`` mask column, text with ``_text_columns``) — the masked (field, type) pairs
    and the text columns."""
    cols: list[tuple[str, str, str]] = []
    texts: list[str] = []
    if key_vt == INT64:
        cols.append(("key", 'int8send("entity_key")', ">i8"))
    else:
        cols += _text_columns("key", '"entity_key"', nullable=False)
        texts.append("key")
    cols += [("ts", 'int8send("event_time")', ">i8"), ("__p", 'int4send("partition")', ">i4"),
             ("__o", 'int8send("offset")', ">i8")]
    if with_id:
        cols += _text_columns("__eid", '"event_id"', nullable=True)
        texts.append("__eid")
    masked: list[tuple[str, ValueType]] = []
    for field, col, vt in items:
        c = qident(col)
        if vt == FLOAT64:
            cols.append((field, f"float8send(coalesce({c}, 'NaN'::float8))", ">f8"))
            continue
        if vt == STRING:
            cols += _text_columns(field, c, nullable=True)
            texts.append(field)
            continue
        if vt == BOOL:
            cols.append((field, f"CASE WHEN {c} THEN '\\x01'::bytea ELSE '\\x00'::bytea END", "u1"))
        else:
            cols.append((field, f"int8send(coalesce({c}, 0))", ">i8"))
        cols.append((f"__null_{field}", f"CASE WHEN {c} IS NULL THEN '\\x01'::bytea ELSE '\\x00'::bytea END", "u1"))
        masked.append((field, vt))
    return cols, masked, texts


def _wire(dtype: str) -> str:
    """The dtype of a scanned column as PostgreSQL sends it (``TEXT``: its bytes)."""
    return "u1" if dtype == TEXT else dtype


def _native(dtype: str) -> str:
    """The in-memory dtype of a scanned column (``TEXT``: its bytes)."""
    return "u1" if dtype == TEXT else dtype.replace(">", "<")


def _aggs_sql(cols: list[tuple[str, str, str]], order: str = "") -> str:
    """One ``string_agg`` of the binary values per scanned column (``order``: an ORDER BY clause)."""
    return ", ".join(f"string_agg({expr}, ''::bytea{order})" for _, expr, _ in cols)


def _unpack_aggs(cols: list[tuple[str, str, str]], raws) -> dict[str, np.ndarray]:
    """The native arrays of one row of ``_aggs_sql`` values."""
    return {name: np.frombuffer(raw or b"", dtype=_wire(dtype)).astype(_native(dtype))
            for (name, _, dtype), raw in zip(cols, raws)}


def _decode_texts(native: dict[str, np.ndarray], texts: list[str]) -> None:
    """Replace each text column's bytes (and lengths, NULL mask) by an object array of ``str`` / None."""
    import pyarrow as pa

    for name in texts:
        lengths = native.pop(f"__len_{name}")
        null = native.pop(f"__null_{name}", None)
        offsets = np.zeros(len(lengths) + 1, dtype="int64")
        np.cumsum(lengths, out=offsets[1:])
        data = native[name]
        if offsets[-1] != len(data):
            raise StoreUnavailableError(f"full scan: text column {name!r} holds {len(data)} bytes, "
                                        f"its lengths add up to {offsets[-1]}")
        values = pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))
        out = values.to_numpy(zero_copy_only=False)
        if out.dtype != object:
            out = out.astype(object)
        if null is not None and null.any():
            out[null.view(bool)] = None
        native[name] = out


def _range_sql(table: str, aggs: str, bounds: list[int], i: int) -> str:
    """The query of range ``i`` of a block-range scan of ``table``: blocks ``bounds[i]`` up to the next
    range's first block (the first range from block 0, the last one open-ended), one row of ``aggs``."""
    where = []
    if i > 0:
        where.append(f"ctid >= '({bounds[i]},0)'::tid")
    if i + 1 < len(bounds):
        where.append(f"ctid < '({bounds[i + 1]},0)'::tid")
    return f"SELECT count(*), {aggs} FROM {table}" + (f" WHERE {' AND '.join(where)}" if where else "")


def _range_arrays(source: str, cols: list[tuple[str, str, str]], row: Sequence[Any]) -> list[np.ndarray]:
    """The wire-order arrays of one range's row (``count(*)`` then one aggregate per column of ``cols``);
    ``StoreUnavailableError`` when a fixed-width column does not hold one value per row."""
    count = int(row[0])
    arrays = []
    for (name, _, dtype), raw in zip(cols, row[1:]):
        arr = np.frombuffer(raw or b"", dtype=_wire(dtype))
        if len(arr) != count and dtype != TEXT:
            raise StoreUnavailableError(f"load_events({source!r}): column {name!r} has "
                                        f"{len(arr)} values for {count} rows")
        arrays.append(arr)
    return arrays


def _finish_scan(native: dict[str, np.ndarray], masked: list[tuple[str, ValueType]], keys: Sequence[Any] | None,
                 end_ms: int | None, start_ms: int | None = None) -> dict[str, Any]:
    """Scanned columns filtered by ``keys`` / ``start_ms`` / ``end_ms`` and put in arrival order
    ``(partition, offset)``."""
    keep = None
    if end_ms is not None:
        keep = native["ts"] <= int(end_ms)
    if start_ms is not None:
        after = native["ts"] >= int(start_ms)
        keep = after if keep is None else keep & after
    if keys is not None:
        if native["key"].dtype == object:  # text keys: a hash lookup (np.isin would sort the strings)
            wanted = pd.Series(native["key"], copy=False, dtype=object).isin([str(k) for k in keys]).to_numpy()
        else:
            wanted = np.isin(native["key"], np.asarray([int(k) for k in keys], dtype="int64"))
        keep = wanted if keep is None else keep & wanted
    rows = np.flatnonzero(keep) if keep is not None and not keep.all() else None
    # Arrival order: usually the physical order already; else sort by (partition, offset).
    p, o = native.pop("__p"), native.pop("__o")
    p, o = (p, o) if rows is None else (p[rows], o[rows])
    if len(p) > 1 and not np.all((p[1:] > p[:-1]) | ((p[1:] == p[:-1]) & (o[1:] > o[:-1]))):
        order = np.lexsort((o, p))
        rows = order if rows is None else rows[order]
    data: dict[str, Any] = {}
    for name, arr in native.items():
        if name.startswith("__null_"):
            continue
        data[name] = arr if rows is None else arr[rows]
    for field, vt in masked:
        null = native[f"__null_{field}"].view(bool)
        null = null if rows is None else null[rows]
        values = data[field].astype(bool) if vt == BOOL else data[field]
        if null.any():
            data[field] = (pd.arrays.BooleanArray(values, null.copy()) if vt == BOOL
                           else pd.arrays.IntegerArray(values, null.copy()))
        else:
            data[field] = values
    return data
