"""Where a Spark backfill's events come from, validated in Spark tasks as the local backfill
validates them, in the events layout (``events_layout.event_schema``) plus the refused rows.

* ``file_events``: the source's Parquet history on any Hadoop file system (``file://``,
  ``s3a://``, ``hdfs://``; a file or a folder of files).  Arrival order is the row order: files by
  name, rows by ``_metadata.row_index``; ``__part`` = -1 and ``__off`` = the row number over the
  files (for one file, the row number in it, as the local backfill counts);
* ``event_log_events``: the PostgreSQL event log, read over JDBC (``spark.read.jdbc``, the driver
  from ``jdbc.jdbc_jar``) by Spark tasks in parallel, one per range of offsets of a partition
  (``log_ranges``: each partition's first and last offsets, probed through the primary key, split
  evenly), as ``PostgresOfflineStore.iter_events_by_bucket`` selects them (the cut-over, the end).

Each yields a DataFrame of the events layout with ``__reason`` / ``__detail`` / ``__payload``
(null on valid rows): refused rows keep their location (``__part``, ``__off``) and no key.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from ..definitions import EventSource, FileHistory
from ..exceptions import InvalidInputError
from ..schema import validate_frame
from ..events_layout import event_schema, source_fields

__all__ = ["checked_schema", "event_log_events", "file_events", "history_url", "log_ranges"]

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
    raw = batch.to_pandas(integer_object_nulls=True)  # nullable ints stay ints (float64: exact to 2^53)
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


# -- the event log over JDBC, in parallel ranges -------------------------------------------------

def event_log_events(spark, source: EventSource, dsn: str, project: str, pg_schema: str,
                     cut: dict[int, int] | None, end_ms: int | None, tasks: int):
    """Events of the PostgreSQL event log (no refused rows: the log holds accepted events), read
    over JDBC by about ``tasks`` Spark tasks, each over one range of offsets of one partition
    (``log_ranges``).  ``cut``: partition -> last offset to read (rows of other Kafka partitions
    are skipped; partition < 0 rows — files, pushes — are all read); ``end_ms``: last event time."""
    from pyspark.sql import functions as F

    from ..offline.postgres.tables import field_column, qident, table_name
    from .jdbc import driver_missing, is_driver_missing, java_message, jdbc_target

    url, props = jdbc_target(dsn)
    table = f"{qident(pg_schema)}.{qident(table_name(project, 'events', source.name))}"
    try:
        bounds = spark.read.jdbc(url, f"({_BOUNDS_SQL.format(t=table)}) AS b", properties=props).collect()
    except Exception as exc:  # Py4JJavaError, AnalysisException: the driver, the server, the table
        if is_driver_missing(exc):
            raise driver_missing() from None
        raise InvalidInputError(f"cannot read the event log {table} of source {source.name!r} over JDBC "
                                f"({url}): {java_message(exc)}") from None
    ranges = log_ranges({int(r["p"]): (int(r["lo"]), int(r["hi"])) for r in bounds}, cut, tasks)
    where = f' AND "__ts" <= {int(end_ms)}' if end_ms is not None else ""  # over the query's columns
    predicates = [f'"__part" = {p} AND "__off" BETWEEN {lo} AND {hi}{where}' for p, lo, hi in ranges]
    fields = source_fields(source)
    # fields by position (PostgreSQL cuts names past 63 bytes, so "f_" + a long field name could not be an alias)
    cols = ['"entity_key" AS "__key"', '"event_time" AS "__ts"', '"event_id" AS "__eid"', '"partition" AS "__part"',
            '"offset" AS "__off"'] + [f'{qident(field_column(f))} AS "c{i}"' for i, f in enumerate(fields)]
    query = f"(SELECT {', '.join(cols)} FROM {table}) AS ev"
    raw = spark.read.jdbc(url, query, predicates=predicates or ["FALSE"], properties=props)
    read = {**{c: c for c in ("__key", "__ts", "__eid", "__part", "__off")},
            **{f"f_{f}": f"c{i}" for i, f in enumerate(fields)}}
    schema = _spark_schema(checked_schema(source))
    return raw.select(*[(F.col(f"`{read[f.name]}`") if f.name in read else _no_refusal(f.name)).cast(f.dataType)
                        .alias(f.name) for f in schema.fields])


def _no_refusal(name: str):
    """The null of a refusal column (the event log holds accepted events only)."""
    from pyspark.sql import functions as F

    if name not in ("__reason", "__detail", "__payload"):
        raise AssertionError(f"the event log's read has no column for {name!r}")
    return F.lit(None)


#: each partition of the event log with its first and last offset, by probes of the primary key
_BOUNDS_SQL = ('WITH RECURSIVE parts AS (SELECT min("partition") AS p FROM {t} UNION ALL '
               'SELECT (SELECT min("partition") FROM {t} WHERE "partition" > parts.p) FROM parts '
               'WHERE parts.p IS NOT NULL) '
               'SELECT p, (SELECT min("offset") FROM {t} WHERE "partition" = parts.p) AS lo, '
               '(SELECT max("offset") FROM {t} WHERE "partition" = parts.p) AS hi FROM parts WHERE p IS NOT NULL')


def log_ranges(bounds: dict[int, tuple[int, int]], cut: dict[int, int] | None,
               tasks: int) -> list[tuple[int, int, int]]:
    """``(partition, first offset, last offset)`` ranges covering the event log's rows (``bounds``:
    partition -> its first and last offset) up to the ``cut``, about ``tasks`` of them, each
    partition's offsets split evenly and the ranges in proportion to the partitions' spans."""
    spans: dict[int, tuple[int, int]] = {}
    for p, (lo, hi) in sorted(bounds.items()):
        if cut is not None and p >= 0:
            if p not in cut:
                continue
            hi = min(hi, int(cut[p]))
        if hi >= lo:
            spans[p] = (lo, hi)
    total = sum(hi - lo + 1 for lo, hi in spans.values())
    out = []
    for p, (lo, hi) in spans.items():
        n = hi - lo + 1
        pieces = max(1, min(n, round(tasks * n / total)))
        edges = [lo + n * i // pieces for i in range(pieces + 1)]
        out += [(p, edges[i], edges[i + 1] - 1) for i in range(pieces)]
    return out
