"""The events layout: how a backfill carries validated events from its readers to its computation.

The local backfill's spill files (``workers.backfill_spill.Spill``) and the Spark engine's frames
(``featurestore.spark.frames``) hold events as ``__key``, ``__ts``, ``__eid``, ``__part``,
``__off`` and ``f_<field>`` per schema field but the timestamp field (``event_schema``);
``events_frame`` turns such rows into the frame ``compute_batch`` takes, in arrival order
``(partition, offset)``.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from .definitions import EventSource
from .offline.postgres import event_id_column
from .offline.postgres.values import _tidy
from .types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType

__all__ = ["arrow_type", "event_schema", "events_frame", "key_type", "source_fields"]


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


def events_frame(source: EventSource, raw: pd.DataFrame) -> pd.DataFrame:
    """A bucket's events (events layout, as ``applyInPandas`` hands them over) in arrival order
    ``(partition, offset)``, shaped for ``compute_batch`` as the local spill gives them: ``key``,
    ``ts``, the schema fields, the event id column, ``__part``, ``__off``."""
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
