"""``backfill --engine spark`` on a local Spark (``local[2]``) against real PostgreSQL, Redis and Kafka.

* the Spark history (Parquet partitioned by date, and the PostgreSQL history table) equals the
  local backfill's and the brute-force reference, refused rows included, on out-of-order events,
  redeliveries, null amounts, ties and a hot entity larger than one bucket's share;
* a task killed mid-run fails the job; the job run again leaves the same output (idempotent);
* ``--online`` from the event log hands off to a worker: the online values then equal a pure
  streaming run over every event.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from featurestore.definitions import BatchTransform, FileHistory
from featurestore.exceptions import BackfillError
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.online import RedisOnlineStore
from featurestore.processing import prepare_view
from featurestore.spark import SparkBackfillOptions, run_spark_backfill
from tests.spark.data import HOT, tricky_events
from tests.workers.support import build_worker, make_view, online_values, reference_values, run_until, send
from tests.workers.support import assert_same
from tests.workers.test_backfill import (assert_history_equals_reference, backfill, fetch, history, with_bad_rows,
                                         write_parquet)

pytestmark = pytest.mark.integration

KILL_MARKER = Path(tempfile.gettempdir()) / "featurestore-spark-test-kill-one-task"


def die_once(df: pd.DataFrame) -> pd.Series:
    """A BatchTransform that kills its Python process (a Spark task) the first time it runs while
    ``KILL_MARKER`` exists."""
    try:
        os.unlink(KILL_MARKER)
    except FileNotFoundError:
        return df["amount"].astype("float64") * 2.0
    os._exit(1)


def spark_backfill(spark, servers, view, project, schema, **options):
    """``run_spark_backfill`` with the offline store on an event loop of its own (as the CLI runs it)."""
    import asyncio

    pv = prepare_view(view, 1, project)
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    opts = SparkBackfillOptions(pg={"dsn": servers.postgres_dsn, "project": project, "schema": schema}, **options)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(servers.postgres_dsn, project, schema))
    try:
        return run_spark_backfill(spark, pv, opts, store, online, loop=loop)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def parquet_history(path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    assert "date" in frame.columns
    dates = pd.to_datetime(frame["ts"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    assert (dates.to_numpy() == frame["date"].astype(str).to_numpy()).all()  # partitioned by the UTC day
    frame = frame.drop(columns="date").sort_values(["key", "ts", "seq"], kind="stable").reset_index(drop=True)
    return frame


def assert_same_history(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a.to_dict("records"), b.to_dict("records")):
        assert x.keys() == y.keys()
        for name in x:
            u, v = x[name], y[name]
            if isinstance(u, float) or isinstance(v, float):
                if u is None or v is None or math.isnan(u) or math.isnan(v):
                    assert (u is None or math.isnan(u)) and (v is None or math.isnan(v)), (name, x, y)
                else:
                    assert math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-9), (name, x, y)
            else:
                assert u == v, (name, x, y)


def test_spark_history_equals_local_and_reference(spark, servers, unique_name, pg_schema, tmp_path):
    events = tricky_events(1500)
    rows = with_bad_rows(events)
    path = write_parquet(tmp_path, rows)
    view = make_view(unique_name("topic"), history=FileHistory(path=path), optional_fields=("amount",))
    project = unique_name("p")
    hot = sum(e["customer_id"] == HOT for e in rows)
    assert hot > len(rows) / 4  # one entity larger than a bucket's share of 4 buckets

    local = backfill(servers, view, project, pg_schema, source="files", chunks=3)
    expected = history(servers, view, project, pg_schema)
    good = [r for i, r in enumerate(rows) if i not in (10, 20)]
    assert_history_equals_reference(view, good, expected)

    out = tmp_path / "out"
    sp = unique_name("p")  # a project of its own: its rejects table holds the Spark run's only
    rep = spark_backfill(spark, servers, view, sp, pg_schema, out=f"file://{out}", buckets=4)
    got = parquet_history(out)
    assert_same_history(got, expected.assign(seq=expected["seq"].astype("int32")))
    assert_history_equals_reference(view, good, got)
    assert (rep.events_read, rep.rows_written, rep.rejected, rep.rejected_by_reason) == \
        (local.events_read, local.rows_written, local.rejected, local.rejected_by_reason)
    sql = 'SELECT partition, "offset", reason, detail FROM "{schema}"."{project}__rejects" ORDER BY 1, 2'
    assert fetch(servers, sp, pg_schema, sql) == fetch(servers, project, pg_schema, sql)
    assert {r["location"] for r in rep.rejects} >= {f"{path}:row {i}" for i in (10, 20)}

    # a folder of Parquet files (any Hadoop URL): rows numbered over the files in name order
    folder = tmp_path / "folder"
    folder.mkdir()
    whole = pd.read_parquet(path)
    whole.iloc[:700].to_parquet(folder / "part-0.parquet")
    whole.iloc[700:].to_parquet(folder / "part-1.parquet")
    sp2 = unique_name("p")
    spark_backfill(spark, servers, view, sp2, pg_schema, out=str(tmp_path / "out2"), history_path=f"file://{folder}",
                   buckets=2)
    assert_same_history(parquet_history(tmp_path / "out2"), expected.assign(seq=expected["seq"].astype("int32")))
    assert [tuple(r)[:3] for r in fetch(servers, sp2, pg_schema, sql)] == \
        [tuple(r)[:3] for r in fetch(servers, project, pg_schema, sql)]

    # --start: only rows from that time on; earlier events still feed the windows.  --strict: stops.
    start = events[700]["event_time"]
    spark_backfill(spark, servers, view, sp, pg_schema, out=str(tmp_path / "from"), buckets=4, start_ms=start)
    assert_history_equals_reference(view, good, parquet_history(tmp_path / "from"), start_ms=start)
    with pytest.raises(BackfillError, match=f"--strict: {local.rejected} row.*row 10: missing_entity_key"):
        spark_backfill(spark, servers, view, sp, pg_schema, out=str(tmp_path / "strict"), buckets=2, strict=True)
    assert not (tmp_path / "strict").exists()

    # into the PostgreSQL history table: the same rows; a rerun changes nothing
    first = spark_backfill(spark, servers, view, sp, pg_schema, buckets=3)
    assert first.rows_changed == len(expected)
    assert_same_history(history(servers, view, sp, pg_schema), expected)
    again = spark_backfill(spark, servers, view, sp, pg_schema, buckets=3)
    assert again.rows_changed == 0 and again.rows_written == len(expected)
    assert_same_history(history(servers, view, sp, pg_schema), expected)


def test_task_killed_then_job_rerun_leaves_the_same_output(spark, servers, unique_name, pg_schema, tmp_path):
    events = tricky_events(900, seed=11)
    path = write_parquet(tmp_path, events)
    view = make_view(unique_name("topic"), history=FileHistory(path=path), optional_fields=("amount",))
    view = view.model_copy(update={"features": list(view.features) + [
        BatchTransform("doubled", ["amount"], die_once, "float64")]})
    project = unique_name("p")
    whole = tmp_path / "whole"
    spark_backfill(spark, servers, view, project, pg_schema, out=str(whole), buckets=4)
    expected = parquet_history(whole)

    for out, name in ((tmp_path / "killed", None), (None, "stats_killed_pg")):
        target = view.model_copy(update={"name": name}) if name else view
        KILL_MARKER.touch()
        with pytest.raises(Exception, match="(?i)python worker|crash|exited"):
            spark_backfill(spark, servers, target, project, pg_schema, out=str(out) if out else None, buckets=4)
        assert not KILL_MARKER.exists()  # one task died
        spark_backfill(spark, servers, target, project, pg_schema, out=str(out) if out else None, buckets=4)
        got = parquet_history(out) if out else history(servers, target, project, pg_schema)
        if not out:
            got = got.assign(seq=got["seq"].astype("int32"))
        assert_same_history(got, expected)


def test_online_handoff_from_the_event_log_then_a_worker_equals_streaming(spark, servers, topic_factory, unique_name,
                                                                          redis_client, pg_schema):
    topic = topic_factory(partitions=2)
    view = make_view(topic, lateness="1d")
    events = [e for e in tricky_events(700, seed=5) if e["amount"] is not None]
    first, rest = events[:450], events[450:]
    project = unique_name("p")
    send(servers, topic, first)
    logger = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=100)
    run_until(logger, len(first)).join(90)  # the event log now holds the first part
    assert logger.records_done == len(first)
    for k in redis_client.scan_iter(match=f"fs:{project}:{view.name}:v1:*"):
        redis_client.delete(k)

    log_sql = 'SELECT count(*), count(DISTINCT event_id) FROM "{schema}"."{project}__events__txns"'
    logged = fetch(servers, project, pg_schema, log_sql)[0][0]  # accepted: no redelivery, nothing late
    group = unique_name("g")  # a new group: the hand-off gives it its offsets
    rep = spark_backfill(spark, servers, view, project, pg_schema, source="postgres", online=True, group=group,
                         out=None, buckets=3)
    assert rep.offsets_committed and rep.events_read == logged < len(first)
    assert RedisOnlineStore.from_url(servers.redis_url, project).load_offsets(group) == rep.cutover
    assert_same(online_values(redis_client, project, view), reference_values(view, first))

    send(servers, topic, rest)
    worker = build_worker(servers, view, project, group, pg_schema, batch_size=100)
    run_until(worker, len(rest)).join(90)
    assert worker.records_done == len(rest)  # resumed right after the cut-over
    assert_same(online_values(redis_client, project, view), reference_values(view, events))
    count, distinct = fetch(servers, project, pg_schema, log_sql)[0]
    assert count == distinct > logged  # the worker logged the rest, each event once
