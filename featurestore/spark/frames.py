"""Arrow layouts of the frames that cross the Spark boundary, and their pandas shapes.

* **events**: the layout of the local backfill's spill (``workers.backfill_spill.Spill``):
  ``__key``, ``__ts``, ``__eid``, ``__part``, ``__off`` and ``f_<field>`` per schema field, plus
  the entity ``__bucket``; ``events_frame`` turns a bucket of them into the frame ``compute_batch``
  takes, exactly as ``Spill.read`` does (arrival order ``(partition, offset)``);
* **out**: what a bucket gives back: history rows (``__kind`` "h": ``key``, ``ts``, ``seq``, the
  features), refused rows ("r": ``__part``, ``__off``, ``__reason``, ``__detail``, ``__payload``),
  final online states ("s": ``__blob``, a pickled ``OnlineRecord``) and the bucket's event count
  ("n": in ``__off``), one layout for all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ..definitions import EventSource, FeatureView
from ..offline.postgres import event_id_column
from ..offline.postgres.values import _tidy
from ..types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType

__all__ = ["arrow_type", "event_schema", "events_frame", "history_seq", "key_type", "out_schema", "table_of"]


def arrow_type(vt: ValueType | None) -> pa.DataType:
    """The Arrow type of a field or feature of type ``vt`` (timestamps as int64 epoch ms; a feature's
    dtype is always set once its view is built)."""
    if vt is None:
        return pa.string()
    if vt in (INT64, TIMESTAMP):
        return pa.int64()
    if vt == FLOAT64:
        return pa.float64()
    if vt == BOOL:
        return pa.bool_()
    if vt == STRING:
        return pa.string()
    if vt.is_list:
        return pa.list_(pa.int64() if vt.element == "int64" else pa.float64())
    return pa.string()


def key_type(source: EventSource) -> pa.DataType:
    return pa.int64() if source.schema[source.entity_field] == INT64 else pa.string()


def source_fields(source: EventSource) -> list[str]:
    """The schema fields carried as ``f_<field>`` (all but the timestamp field, which is ``__ts``)."""
    return [f for f in source.schema if f != source.timestamp_field]


def event_schema(source: EventSource, bucket: bool = True) -> pa.Schema:
    """The events layout (the local spill's, plus ``__bucket``)."""
    fields = [("__key", key_type(source)), ("__ts", pa.int64()), ("__eid", pa.string()), ("__part", pa.int32()),
              ("__off", pa.int64())]
    fields += [(f"f_{f}", arrow_type(source.schema[f])) for f in source_fields(source)]
    return pa.schema(fields + ([("__bucket", pa.int32())] if bucket else []))


def out_schema(view: FeatureView) -> pa.Schema:
    """What a bucket gives back: history rows, refused rows and online states (module docstring)."""
    src = view.source
    feats = [(f.name, arrow_type(f.dtype)) for f in view.features]
    return pa.schema([("__kind", pa.string()), ("key", key_type(src)), ("ts", pa.int64()), ("seq", pa.int32())]
                     + feats + [("__part", pa.int32()), ("__off", pa.int64()), ("__reason", pa.string()),
                                ("__detail", pa.string()), ("__payload", pa.binary()), ("__blob", pa.binary())])


def table_of(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` as a table of ``schema``: absent columns null, NaN in float columns kept."""
    n = len(frame)
    arrays = []
    for field in schema:
        if field.name not in frame.columns:
            arrays.append(pa.nulls(n, field.type))
            continue
        col = frame[field.name]
        if pa.types.is_floating(field.type):
            arrays.append(pa.array(col.to_numpy(dtype="float64", na_value=np.nan), type=field.type))
        elif col.dtype == object or pa.types.is_list(field.type):
            arrays.append(pa.array(col.astype(object).where(col.notna(), None).tolist(), type=field.type))
        else:
            arrays.append(pa.array(col, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def events_frame(source: EventSource, table: pa.Table) -> pd.DataFrame:
    """A bucket's events (events layout) in arrival order ``(partition, offset)``, shaped for
    ``compute_batch`` as the local spill gives them: ``key``, ``ts``, the schema fields, the event
    id column, ``__part``, ``__off``."""
    raw = table.to_pandas()
    raw = raw.sort_values(["__part", "__off"], kind="stable").reset_index(drop=True)
    key_vt = source.schema[source.entity_field]
    out = {"key": _tidy(raw["__key"], key_vt), "ts": raw["__ts"].astype("int64")}
    for f in source.schema:
        if f == source.timestamp_field:
            out[f] = out["ts"].copy()
        elif f != "ts":
            col = raw[f"f_{f}"]
            vt = source.schema[f]
            out[f] = col if vt.is_list else _tidy(col, vt)
    id_col = event_id_column(source)
    if id_col not in out:
        out[id_col] = raw["__eid"].astype(object).where(raw["__eid"].notna(), None)
    out["__part"] = raw["__part"].astype("int64")
    out["__off"] = raw["__off"].astype("int64")
    return pd.DataFrame(out)


def history_seq(values: pd.DataFrame) -> np.ndarray:
    """The ``seq`` of history rows sorted by key, ts: the position within each (key, ts) run, as the
    offline store numbers them."""
    n = len(values)
    if not n:
        return np.zeros(0, dtype="int32")
    codes = pd.factorize(values["key"])[0]
    ts = values["ts"].to_numpy(dtype="int64")
    idx = np.arange(n)
    change = np.ones(n, dtype=bool)
    change[1:] = (codes[1:] != codes[:-1]) | (ts[1:] != ts[:-1])
    return (idx - np.maximum.accumulate(np.where(change, idx, 0))).astype("int32")
