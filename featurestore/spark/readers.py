"""Where a Spark backfill's events come from, validated in Spark tasks as the local backfill
validates them, in the events layout (``frames.event_schema``) plus the refused rows.

* ``file_events``: the source's Parquet history on any Hadoop file system (``file://``,
  ``s3a://``, ``hdfs://``; a file or a folder of files).  Arrival order is the row order: files by
  name, rows by ``_metadata.row_index``; ``__part`` = -1 and ``__off`` = the row number over the
  files (for one file, the row number in it, as the local backfill counts);
* ``event_log_events``: the PostgreSQL event log, read by Spark tasks in parallel, one task per
  range of entity buckets (``hashtext`` of the key, computed by the server), each through the
  offline store's own ``iter_events_by_bucket`` over asyncpg.

Each yields a DataFrame of the events layout with ``__reason`` / ``__detail`` / ``__payload``
(null on valid rows): refused rows keep their location (``__part``, ``__off``) and no key.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from ..definitions import EventSource, FileHistory
from ..exceptions import InvalidInputError
from ..offline.postgres import event_id_column
from ..schema import validate_frame
from .frames import event_schema, source_fields

__all__ = ["checked_schema", "event_log_events", "file_events", "history_url"]

_ROW = "__fs_row"


def checked_schema(source: EventSource) -> pa.Schema:
    """The events layout without the bucket, with the refusal columns."""
    base = event_schema(source, bucket=False)
    return pa.schema(list(base) + [("__reason", pa.string()), ("__detail", pa.string()), ("__payload", pa.binary())])


def history_url(source: EventSource, override: str | None = None) -> str:
    """The history to read: ``override`` (any Hadoop URL) or the source's ``FileHistory`` path."""
    if override:
        return override
    history = source.history
    if not isinstance(history, FileHistory):
        raise InvalidInputError(f"event source {source.name!r} has no history file (history={history!r}): "
                                f"give --history-path URL or use --source postgres")
    if history.format != "parquet":
        raise InvalidInputError(f"the Spark engine reads Parquet histories; {history.path} of source "
                                f"{source.name!r} is {history.format}: convert it to Parquet or use --engine local")
    return history.path


def file_events(spark, source: EventSource, url: str, started_ms: int | None = None):
    """The Parquet history at ``url`` validated in tasks (module docstring)."""
    from pyspark.sql import functions as F

    try:
        raw = spark.read.parquet(url)
    except Exception as exc:  # AnalysisException: the path does not exist, or is not Parquet
        raise InvalidInputError(f"cannot read the Parquet history {url} of source {source.name!r}: "
                                f"{str(exc).splitlines()[0]}") from None
    if len(raw.inputFiles()) == 1:  # the row number in the file
        rows = raw.select("*", F.col("_metadata.row_index").alias(_ROW))
    else:  # files by name, the row number over them
        raw = raw.select("*", F.col("_metadata.file_path").alias("__file"),
                         F.col("_metadata.row_index").alias("__ri"))
        counts = sorted((r["__file"], r["n"]) for r in raw.groupBy("__file").agg(F.count("*").alias("n")).collect())
        base, first = [], 0
        for name, n in counts:
            base.append((name, first))
            first += int(n)
        offsets = spark.createDataFrame(base, "__file string, __base long")
        rows = (raw.join(F.broadcast(offsets), "__file").withColumn(_ROW, F.col("__base") + F.col("__ri"))
                .drop("__file", "__ri", "__base"))
    ref = int(time.time() * 1000) if started_ms is None else started_ms
    schema = checked_schema(source)
    history = source.history if isinstance(source.history, FileHistory) else None
    ref_col = history.reference_column if history is not None else None

    def check(batches):
        for batch in batches:
            yield from _check_batch(source, batch, ref, ref_col, url, schema)

    return rows.mapInArrow(check, _spark_schema(schema))


def _check_batch(source: EventSource, batch: pa.RecordBatch, ref_ms: int, ref_col: str | None, url: str,
                 schema: pa.Schema):
    """One batch of raw rows validated with ``validate_frame``: the valid rows and the refused ones."""
    raw = batch.to_pandas()
    rows = raw.pop(_ROW).to_numpy(dtype="int64")
    raw.index = pd.Index(rows)
    ref: Any = ref_ms
    if ref_col is not None:
        if ref_col not in raw.columns:
            raise InvalidInputError(f"history file {url} of source {source.name!r} has no column {ref_col!r} "
                                    f"(FileHistory reference_column)")
        ref = pd.to_numeric(raw[ref_col], errors="coerce").fillna(ref_ms).to_numpy("int64")
    valid, rejects = validate_frame(source, raw, ref)
    out = {"__key": valid["__key"], "__ts": valid["__ts"],
           "__eid": valid["__event_id"] if "__event_id" in valid.columns else None,
           "__part": -1, "__off": valid.index.to_numpy(dtype="int64")}
    for f in source_fields(source):
        out[f"f_{f}"] = valid[f]
    yield from _tables(source, pd.DataFrame(out).reset_index(drop=True), schema)
    if len(rejects):
        bad = {"__part": np.full(len(rejects), -1, dtype="int32"), "__off": rejects["row"].to_numpy(dtype="int64"),
               "__reason": rejects["reason"].astype(str).tolist(), "__detail": rejects["detail"].astype(str).tolist(),
               "__payload": [orjson.dumps(raw.loc[r].to_dict(), default=str) for r in rejects["row"].tolist()]}
        yield from _tables(source, pd.DataFrame(bad), schema)


def _tables(source: EventSource, frame: pd.DataFrame, schema: pa.Schema):
    """``frame`` (events layout columns) as record batches of ``schema``."""
    from .frames import table_of

    if len(frame):
        yield from table_of(frame, schema).to_batches()


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


# -- the event log, in parallel bucket ranges ----------------------------------------------------

def event_log_events(spark, source: EventSource, dsn: str, project: str, pg_schema: str, n_buckets: int,
                     cut: dict[int, int] | None, end_ms: int | None, tasks: int):
    """Events of the PostgreSQL event log (no refused rows: the log holds accepted events), read
    by ``tasks`` Spark tasks, each over its range of the ``n_buckets`` entity buckets."""
    schema = checked_schema(source)
    ranges = [(i, b) for b in range(n_buckets) for i in [b * tasks // n_buckets]]
    plan = spark.createDataFrame(ranges, "__task int, __bucket int").repartition(tasks, "__task")
    id_col = event_id_column(source)

    def read(batches):
        mine = sorted({int(b) for batch in batches for b in batch.column("__bucket").to_pylist()})
        if mine:
            yield from _read_buckets(source, dsn, project, pg_schema, n_buckets, mine, cut, end_ms, id_col, schema)

    return plan.mapInArrow(read, _spark_schema(schema))


def _read_buckets(source, dsn, project, pg_schema, n_buckets, buckets, cut, end_ms, id_col, schema):
    from ..offline.postgres import PostgresOfflineStore

    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(dsn, project, pg_schema, max_size=1))
    frames = store.iter_events_by_bucket(source, n_buckets, buckets, end_ms, cut)
    try:
        while True:
            try:
                frame = loop.run_until_complete(frames.__anext__())
            except StopAsyncIteration:
                break
            yield from _frame_batches(source, frame, id_col, schema)
    finally:
        loop.run_until_complete(frames.aclose())
        loop.run_until_complete(store.close())
        loop.close()


def _frame_batches(source: EventSource, frame: pd.DataFrame, id_col: str, schema: pa.Schema):
    """An event-log frame (``iter_events_by_bucket``) as record batches of the events layout."""
    ev = {"__key": frame["key"], "__ts": frame["ts"], "__eid": frame[id_col] if id_col in frame.columns else None,
          "__part": frame["__partition"], "__off": frame["__offset"]}
    for f in source_fields(source):
        ev[f"f_{f}"] = frame[f] if f in frame.columns else None
    yield from _tables(source, pd.DataFrame(ev), schema)
