"""The bucketed apply: events repartitioned by entity hash into buckets of many entities, each
bucket computed in one Spark task by the functions the local backfill calls.

``bucket_column`` is ``crc32(key's text) % n_buckets`` — the bucket of the local backfill's
``crc_buckets``.  ``compute_bucket`` turns a bucket's events into its output (``frames.out_schema``):
``events_frame`` (arrival order, as the local spill), ``add_batch_transforms`` (the view's
BatchTransforms), ``compute_history`` (``transforms.compute_batch``: values as of each accepted
event, lateness and duplicate ids decided over the entity's whole history) and, for ``online``,
``final_states`` (each entity's state after all its accepted events, as online records).
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pyarrow as pa

from ..processing import PreparedView
from ..events_layout import events_frame
from .frames import history_seq, out_schema, spark_pandas, table_of

__all__ = ["bucket_column", "bucket_function", "compute_bucket"]


def bucket_column(n_buckets: int, refused: bool = False):
    """The Spark column of an event's entity bucket in ``[0, n_buckets)``; with ``refused``, rows
    refused by validation (``__reason`` set) go to buckets ``[-n_buckets, 0)`` by their offset."""
    from pyspark.sql import functions as F

    n = F.lit(int(n_buckets))
    bucket = F.pmod(F.crc32(F.col("__key").cast("string").cast("binary")), n).cast("int")
    if not refused:
        return bucket
    return F.when(F.col("__reason").isNull(), bucket).otherwise((-1 - F.pmod(F.col("__off"), n)).cast("int"))


def compute_bucket(pv: PreparedView, frame: pd.DataFrame, start_ms: int | None, online: bool) -> pa.Table:
    """One bucket's history rows, refused rows and (``online``) final states (module docstring), from
    the bucket's events as ``applyInPandas`` hands them over.  Rows that validation refused
    (``__reason`` set; negative buckets) pass through as refused rows."""
    from workers.backfill_chunk import add_batch_transforms, compute_history, final_states

    view = pv.view
    schema = out_schema(view)
    if "__reason" in frame.columns:
        refused_mask = frame["__reason"].notna().to_numpy()
        if refused_mask.any():
            bad = frame.loc[refused_mask, ["__part", "__off", "__reason", "__detail", "__payload"]]
            return table_of(bad.assign(__kind="r"), schema)
    events = events_frame(view.source, frame)
    events = add_batch_transforms(view, events)
    values, rejects, accepted = compute_history(view, events, start_ms)
    values = values.copy()
    values["seq"] = history_seq(values)
    values["__kind"] = "h"
    parts = [table_of(values, schema), table_of(pd.DataFrame({"__kind": ["n"], "__off": [len(events)]}), schema)]
    if len(rejects):
        rows = rejects["row"].to_numpy(dtype="int64")
        refused = pd.DataFrame({"__kind": "r", "__part": events["__part"].to_numpy()[rows].astype("int32"),
                                "__off": events["__off"].to_numpy()[rows],
                                "__reason": rejects["reason"].astype(str).to_numpy(dtype=object),
                                "__detail": rejects["detail"].astype(str).to_numpy(dtype=object)})
        parts.append(table_of(refused, schema))
    if online:
        records = final_states(pv, events[np.asarray(accepted, dtype=bool)].reset_index(drop=True))
        if records:
            blobs = pd.DataFrame({"__kind": "s", "key": [r.key for r in records],
                                  "__blob": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]})
            if pa.types.is_integer(schema.field("key").type):
                blobs["key"] = blobs["key"].astype("int64")
            parts.append(table_of(blobs, schema))
    return pa.concat_tables(parts)


def bucket_function(pv: PreparedView, start_ms: int | None, online: bool):
    """The ``applyInPandas`` function of a bucket (a closure shipped to the tasks)."""

    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        return spark_pandas(compute_bucket(pv, frame, start_ms, online))

    return apply
