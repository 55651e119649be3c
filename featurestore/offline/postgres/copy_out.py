"""Ordered ``COPY ... TO STDOUT`` reads of the event log: the columns a COPY selects, and how its
output is decoded (binary with one numpy ``frombuffer`` when every column is fixed-width, else CSV
parsed by pyarrow).  Pure functions on SQL text and bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from ...definitions import EventSource
from ...exceptions import StoreUnavailableError
from ...types import BOOL, FLOAT64, INT64, TIMESTAMP, ValueType
from .tables import qident
from .values import _tidy

#: A column of an ordered COPY: output name, SQL expression, kind (i8 i4 f8 b text), the field's type.
CopyColumn = tuple[str, str, str, ValueType | None]

_WIDTH = {"i8": 8, "i4": 4, "f8": 8, "b": 1}
_WIRE = {"i8": ">i8", "i4": ">i4", "f8": ">f8", "b": "?"}
_NATIVE = {"i8": "int64", "i4": "int32", "f8": "float64", "b": "bool"}


def copy_columns(src: EventSource, items: list[tuple[str, str, ValueType]]) -> tuple[list[CopyColumn], bool]:
    """What an ordered COPY of ``items`` selects (key, time, the event id, the fields; a NULL float read
    as NaN, as the rows give it), and whether the binary format can carry it: every column fixed-width
    and none NULL-able but floats (a NULL changes the binary row width)."""
    key_vt = src.schema[src.entity_field]
    cols: list[CopyColumn] = [
        ("key", '"entity_key"', "i8" if key_vt == INT64 else "text", None), ("ts", '"event_time"', "i8", None)]
    if src.event_id_field is not None:
        cols.append(("__eid", '"event_id"', "text", None))
    nullable_fixed = False
    for field, col, vt in items:
        if vt == FLOAT64:
            cols.append((field, f"coalesce({qident(col)}, 'NaN'::float8)", "f8", vt))
        elif vt in (INT64, TIMESTAMP):
            cols.append((field, qident(col), "i8", vt))
            nullable_fixed |= field in src.optional_fields
        elif vt == BOOL:
            cols.append((field, qident(col), "b", vt))
            nullable_fixed |= field in src.optional_fields
        else:
            cols.append((field, qident(col), "text", vt))
    return cols, not nullable_fixed and all(c[2] != "text" for c in cols)


def decode_binary(raw: bytes, cols: list[CopyColumn]) -> dict[str, np.ndarray] | None:
    """Binary COPY output of fixed-width ``cols`` as arrays by output name; None when some value is
    NULL (its row is narrower: the caller reads the rows another way)."""
    spec = [("n", ">i2")]
    for name, _, kind, _ in cols:
        spec += [(f"len_{name}", ">i4"), (name, _WIRE[kind])]
    dtype = np.dtype(spec)
    header = 19 + int.from_bytes(raw[15:19], "big")  # signature, flags, extension area
    body = memoryview(raw)[header:len(raw) - 2]  # trailer: int16 -1
    if len(body) % dtype.itemsize:
        raise StoreUnavailableError("load_events: unexpected binary COPY layout")
    rows = np.frombuffer(body, dtype=dtype)
    if len(rows) and not all(np.all(rows[f"len_{c[0]}"] == _WIDTH[c[2]]) for c in cols):
        return None  # a NULL in a column no optional field should leave NULL
    return {name: rows[name].astype(_NATIVE[kind]) for name, _, kind, _ in cols}


def decode_csv(raw: bytes, cols: list[CopyColumn]) -> dict[str, Any]:
    """CSV COPY output of ``cols`` by output name: text as object Series of ``str`` / None, floats as
    arrays, ints and bools as nullable Series."""
    import pyarrow as pa

    types = {"i8": pa.int64(), "i4": pa.int32(), "f8": pa.float64(), "b": pa.bool_(), "text": pa.string()}
    if not raw:  # no row: Arrow's reader refuses an empty file
        table = pa.table({c[0]: pa.array([], type=types[c[2]]) for c in cols})
    else:
        table = _read_csv(raw, cols, types)
    data: dict[str, Any] = {}
    for name, _, kind, _ in cols:
        arr = table.column(name)
        if kind == "text":
            data[name] = pd.Series(arr.to_pylist(), dtype=object)
        elif kind == "f8":
            data[name] = arr.to_numpy(zero_copy_only=False).astype("float64")
        else:
            data[name] = pd.Series(arr.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(),
                                                               pa.bool_(): pd.BooleanDtype()}.get))
    return data


def _read_csv(raw: bytes, cols: list[CopyColumn], types: dict):
    import pyarrow.csv as pcsv

    return pcsv.read_csv(
        io.BytesIO(raw),
        read_options=pcsv.ReadOptions(column_names=[c[0] for c in cols], block_size=1 << 24),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={c[0]: types[c[2]] for c in cols}, strings_can_be_null=True,
            quoted_strings_can_be_null=False, null_values=[""], true_values=["t"], false_values=["f"]))


def copy_output(data: dict[str, Any], cols: list[CopyColumn], key_vt: ValueType, with_id: bool) -> dict[str, Any]:
    """Decoded COPY columns as a read's output: key and time typed, the event id as ``__eid``, each
    field in the dtype ``validate_frame`` gives it."""
    out: dict[str, Any] = {"key": pd.Series(data["key"], dtype="int64" if key_vt == INT64 else object),
                           "ts": pd.Series(data["ts"], dtype="int64")}
    if with_id:
        out["__eid"] = pd.Series(data["__eid"], dtype=object)
    for name, _, _, vt in cols[2 + with_id:]:
        if vt is not None:  # every field's column carries its type
            out[name] = _tidy(pd.Series(data[name]), vt)
    return out
