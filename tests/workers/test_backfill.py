"""Backfill through the real broker, Redis and PostgreSQL.

* history rows (values as of each accepted event) equal the brute-force reference of
  ``tests/transforms/reference.py`` — for the file, event-log and Kafka sources;
* over a worker's event log (``--source postgres --online``), the final online state equals
  the worker's, read at several request times;
* hand-off: backfill Kafka up to a cut-over (an event time), start the worker, produce the
  rest: the online values equal a pure streaming run and the event log has no duplicate;
* chunks, shards and resume after a crash give the same rows; a rerun changes nothing;
* bad rows are counted, located and written to the rejects table; ``strict`` stops.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from types import SimpleNamespace

import orjson
import pandas as pd
import pytest

from featurestore.definitions import FileHistory
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.online import RedisOnlineStore, open_online_store
from tests.transforms.reference import Event, mismatches, reference_accept, reference_values as ref_values, value_scale
from tests.support import delete_project_keys
from tests.workers.support import (T0, build_worker, make_events, make_view, online_values, reference_values, run_until,
                                  send)
from transforms import ViewState
from workers import backfill as bf
from workers.backfill import BackfillError, BackfillOptions, run_backfill
from featurestore.processing import prepare_view

pytestmark = pytest.mark.integration

HOUR = 3_600_000


# -- helpers ---------------------------------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


async def _with_store(servers, project, schema, fn):
    store = await PostgresOfflineStore.create(servers.postgres_dsn, project, schema)
    try:
        return await fn(store)
    finally:
        await store.close()


def backfill(servers, view, project, schema, online_url=None, **options):
    pv = prepare_view(view, 1, project)
    online = open_online_store(online_url or servers.redis_url, project)
    opts = BackfillOptions(kafka_options={"bootstrap_servers": servers.kafka_bootstrap}, idle_timeout_s=5, **options)

    async def go(store):
        return await run_backfill(pv, store, online, opts)

    return run(_with_store(servers, project, schema, go))


def history(servers, view, project, schema) -> pd.DataFrame:
    return run(_with_store(servers, project, schema, lambda s: s.load_history(view, 1)))


def fetch(servers, project, schema, sql):
    async def go(store):
        async with store.pool.acquire() as conn:
            return await conn.fetch(sql.format(schema=schema, project=project))

    return run(_with_store(servers, project, schema, go))


def assert_history_equals_reference(view, events, got: pd.DataFrame, start_ms=None, end_ms=None):
    """``got`` (history rows) = the reference value as of each accepted event (ts >= start_ms)."""
    specs = view.agg_specs()
    src = view.source
    evs = [Event(e["customer_id"], e["event_time"], e, e["transaction_id"]) for e in events
           if end_ms is None or e["event_time"] <= end_ms]
    reasons = reference_accept(evs, src.allowed_lateness, has_ids=True)
    by_key = defaultdict(list)
    for ev, reason in zip(evs, reasons):
        if reason is None:
            by_key[ev.key].append(ev)
    expected = []
    for key, accepted in by_key.items():
        for ev in sorted(accepted, key=lambda ev: ev.ts):  # stable: arrival order within a ts
            if start_ms is None or ev.ts >= start_ms:
                expected.append((key, ev.ts, accepted))
    expected.sort(key=lambda x: (x[0], x[1]))
    assert len(got) == len(expected), (len(got), len(expected))
    scale = value_scale(evs, ["amount"])
    cache = {}
    for (key, ts, accepted), row in zip(expected, got.to_dict("records")):
        assert (row["key"], row["ts"]) == (key, ts)
        if (key, ts) not in cache:
            cache[key, ts] = ref_values(specs, accepted, ts)
        bad = mismatches(specs, cache[key, ts], row, scale, batch=True)
        assert not bad, (key, ts, bad)


def states_at(client, project, view, times) -> dict:
    """Per entity: the stored state evaluated at each request time (watermark + offset)."""
    specs = view.agg_specs()
    out = {}
    for k in client.scan_iter(match=f"fs:{project}:{view.name}:v1:*"):
        blob = client.hget(k, "s")
        state = ViewState.from_bytes(specs, blob, view.source.allowed_lateness)
        wm = state.watermark
        out[k.decode().rsplit(":", 1)[1]] = [state.evaluate(wm + dt) for dt in times]
    return out


def assert_values_close(a, b):
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key]):
            for name in x:
                u, v = x[name], y[name]
                if isinstance(u, float) and isinstance(v, float):
                    assert math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-9), (key, name, u, v)
                else:
                    assert u == v, (key, name, u, v)


def with_bad_rows(events):
    """The events plus refused rows: no entity key, bad timestamp, a late one, a duplicate id."""
    rows = [dict(e) for e in events]
    rows.insert(10, {"transaction_id": "bad1", "customer_id": None, "amount": 3.0, "event_time": T0})
    rows.insert(20, {"transaction_id": "bad2", "customer_id": "C002", "amount": 5.0, "event_time": "yesterday"})
    late = dict(events[300], transaction_id="late1", event_time=events[300]["event_time"] - 3 * HOUR)
    rows.insert(320, late)
    rows.insert(330, dict(events[325]))  # a redelivery: same id, same time
    return rows


def write_parquet(tmp_path, rows) -> str:
    path = tmp_path / "history.parquet"
    from datetime import datetime, timezone

    frame = pd.DataFrame(rows)
    frame["event_time"] = [datetime.fromtimestamp(t / 1000, tz=timezone.utc).isoformat() if isinstance(t, int) else t
                           for t in frame["event_time"]]  # ISO-8601 text (one column type)
    frame.to_parquet(path)
    return str(path)


# -- tests -----------------------------------------------------------------------------------------

def test_files_history_equals_reference_rejects_and_rerun(servers, unique_name, pg_schema, tmp_path, topic_factory):
    events = make_events(800, customers=15, seed=3)
    rows = with_bad_rows(events)
    path = write_parquet(tmp_path, rows)
    view = make_view(unique_name("topic"), history=FileHistory(path=path))
    project = unique_name("p")

    rep = backfill(servers, view, project, pg_schema, source="files", chunks=3)
    assert rep.events_read == len(rows) - 2  # the two invalid rows never reach a chunk
    assert rep.rejected == 4 and rep.rejected_by_reason == {"missing_entity_key": 1, "bad_timestamp": 1, "late": 1,
                                                             "duplicate_event_id": 1}
    locations = sorted(r["location"] for r in rep.rejects)
    assert locations == sorted(f"{path}:row {i}" for i in (10, 20, 320, 330))
    rejects = fetch(servers, project, pg_schema,
                    'SELECT partition, "offset", reason FROM "{schema}"."{project}__rejects"')
    assert sorted((r[0], r[1], r[2]) for r in rejects) == [(-1, 10, "missing_entity_key"), (-1, 20, "bad_timestamp"),
                                                            (-1, 320, "late"), (-1, 330, "duplicate_event_id")]
    got = history(servers, view, project, pg_schema)
    good = [r for i, r in enumerate(rows) if i not in (10, 20)]
    assert_history_equals_reference(view, good, got)

    # the same run again: already complete, nothing done; restarted: same rows, nothing changed
    again = backfill(servers, view, project, pg_schema, source="files", chunks=3)
    assert again.already_complete and again.events_read == 0
    stamp = 'SELECT count(*), max(written_at) FROM "{schema}"."{project}__history__stats__v1"'
    before = fetch(servers, project, pg_schema, stamp)
    redo = backfill(servers, view, project, pg_schema, source="files", chunks=3, restart=True)
    assert redo.rows_written == rep.rows_written and redo.rows_changed == 0
    assert fetch(servers, project, pg_schema, stamp) == before
    pd.testing.assert_frame_equal(history(servers, view, project, pg_schema), got)

    # --start: only rows from that time on are written; earlier events still feed the windows
    start = events[400]["event_time"]
    view2 = view.model_copy(update={"name": "stats2"})
    backfill(servers, view2, project, pg_schema, source="files", chunks=2, start_ms=start)
    got2 = history(servers, view2, project, pg_schema)
    assert_history_equals_reference(view2, good, got2, start_ms=start)

    # strict: stops at the first refused row
    view3 = view.model_copy(update={"name": "stats3"})
    with pytest.raises(BackfillError, match="row 10"):
        backfill(servers, view3, project, pg_schema, source="files", strict=True)


def test_chunks_shards_and_resume_after_crash(servers, unique_name, pg_schema, tmp_path, monkeypatch):
    events = make_events(1200, customers=40, seed=5)
    path = write_parquet(tmp_path, events)
    view = make_view(unique_name("topic"), history=FileHistory(path=path))
    project = unique_name("p")

    # two shards (two processes in production), 3 chunks each, small read batches
    reps = [backfill(servers, view, project, pg_schema, source="files", shards=2, shard=i, chunks=3, read_rows=250)
            for i in range(2)]
    assert sum(r.events_read for r in reps) == len(events)
    assert all(r.events_read < len(events) for r in reps)
    assert_history_equals_reference(view, events, history(servers, view, project, pg_schema))

    # a crash after two chunks: the rerun skips them and the result is complete
    view2 = view.model_copy(update={"name": "stats_resume"})
    original = bf._Backfill._write
    calls = {"n": 0}

    async def crashing(self, chunk, bar):
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        await original(self, chunk, bar)

    monkeypatch.setattr(bf._Backfill, "_write", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        backfill(servers, view2, project, pg_schema, source="files", chunks=5)
    monkeypatch.setattr(bf._Backfill, "_write", original)
    rep = backfill(servers, view2, project, pg_schema, source="files", chunks=5)
    assert rep.chunks == 5 and rep.chunks_skipped == 2
    assert 0 < rep.events_read < len(events)
    assert_history_equals_reference(view2, events, history(servers, view2, project, pg_schema))


def test_postgres_backfill_over_worker_event_log_equals_worker(servers, topic_factory, unique_name, redis_client,
                                                               pg_schema):
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    events = make_events(700, customers=25, seed=11)
    send(servers, topic, events)
    project, group = unique_name("p"), unique_name("g")
    worker = build_worker(servers, view, project, group, pg_schema, batch_size=150)
    run_until(worker, len(events)).join(90)
    assert worker.records_done == len(events)

    times = [0, 30 * 60_000, 2 * HOUR, 3 * 86_400_000, 40 * 86_400_000]  # now ... after every window emptied
    by_worker = states_at(redis_client, project, view, times)
    offsets = RedisOnlineStore.from_url(servers.redis_url, project).load_offsets(group)
    for k in redis_client.scan_iter(match=f"fs:{project}:{view.name}:v1:*"):
        redis_client.delete(k)  # the backfill must rebuild them

    rep = backfill(servers, view, project, pg_schema, source="postgres", online=True, group=group, chunks=2)
    assert rep.events_read == len(events) and rep.rejected == 0
    assert rep.entities_online == len(by_worker)
    assert_values_close(states_at(redis_client, project, view, times), by_worker)
    assert RedisOnlineStore.from_url(servers.redis_url, project).load_offsets(group) == offsets  # unchanged
    assert_history_equals_reference(view, events, history(servers, view, project, pg_schema))


def test_handoff_interrupted_before_the_offsets_then_a_worker_counts_nothing_twice(
        servers, topic_factory, unique_name, online_url, pg_schema, monkeypatch, request):
    """A hand-off that wrote the states but died before handing off the offsets: a worker started
    anyway reads the topic from the start, and each backfilled state skips the events it holds
    (on one Redis and on a Redis Cluster)."""
    from workers import backfill as backfill_module

    topic = topic_factory(partitions=3)
    view = make_view(topic)
    events = make_events(600, customers=20, seed=23)
    send(servers, topic, events[:400])
    project, group = unique_name("p"), unique_name("g")

    def die(self, header):
        raise RuntimeError("killed before the offsets")

    monkeypatch.setattr(backfill_module._Backfill, "_commit_offsets", die)
    with pytest.raises(RuntimeError, match="killed before the offsets"):
        backfill(servers, view, project, pg_schema, online_url, source="kafka", online=True, group=group, chunks=2)
    monkeypatch.undo()
    online = open_online_store(online_url, project)
    request.addfinalizer(lambda: delete_project_keys(online_url, project))
    assert set(online.load_offsets(group).values()) <= {-1}  # nothing handed off (the fence writes -1: none)
    assert online_values(online, project, view)  # but the states are written

    send(servers, topic, events[400:])
    worker = build_worker(on_url(servers, online_url), view, project, group, pg_schema, batch_size=100)
    run_until(worker, len(events)).join(90)
    assert worker.records_done == len(events)  # it read everything again ...
    letters = {s.labels["reason"]: s.value for m in worker.metrics.dead_letters.collect() for s in m.samples
               if s.name.endswith("_total") and s.value}
    assert letters == {}  # ... refused none as late or repeated ...
    expected = reference_values(view, events)  # ... and counted each event once
    got = online_values(online, project, view)
    assert_values_close({k: [v] for k, v in got.items()}, {k: [v] for k, v in expected.items()})


def on_url(servers, online_url: str):
    """``servers`` with the online store at ``online_url``."""
    return SimpleNamespace(kafka_bootstrap=servers.kafka_bootstrap, redis_url=online_url,
                           postgres_dsn=servers.postgres_dsn)


def test_kafka_handoff_at_time_cutover_equals_streaming(servers, topic_factory, unique_name, online_url, pg_schema,
                                                        request):
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    events = make_events(900, customers=20, seed=21)
    first, rest = events[:600], events[600:]
    bad = [b"{not json", orjson.dumps({"customer_id": "C001", "amount": 1.0})]
    send(servers, topic, [], raw=bad)  # refused records inside the backfilled range
    send(servers, topic, first)
    project, group = unique_name("p"), unique_name("g")
    cut_time = first[450]["event_time"]

    request.addfinalizer(lambda: delete_project_keys(online_url, project))
    rep = backfill(servers, view, project, pg_schema, online_url, source="kafka", online=True, group=group,
                   end_ms=cut_time, chunks=2)
    assert rep.offsets_committed and rep.cutover
    covered = sum(off + 1 for off in rep.cutover.values())
    assert 0 < rep.events_read < len(first)
    online = open_online_store(online_url, project)
    stored = online.load_offsets(group)
    assert stored == rep.cutover

    send(servers, topic, rest)
    worker = build_worker(on_url(servers, online_url), view, project, group, pg_schema, batch_size=100)
    run_until(worker, len(events) + len(bad) - covered).join(90)
    assert worker.records_done == len(events) + len(bad) - covered

    # the online values equal a pure streaming run over every event, in production order
    expected = reference_values(view, events)
    got = online_values(online, project, view)
    assert_values_close({k: [v] for k, v in got.items()}, {k: [v] for k, v in expected.items()})

    # the event log: every event once (the backfill's part and the worker's part), no duplicates
    rows = fetch(servers, project, pg_schema,
                 'SELECT count(*), count(DISTINCT (partition, "offset")), count(DISTINCT event_id) '
                 'FROM "{schema}"."{project}__events__txns"')
    assert tuple(rows[0]) == (len(events), len(events), len(events))
    # the backfill's history rows: the events it covered, as of each one
    log = fetch(servers, project, pg_schema,
                'SELECT partition, "offset", event_id FROM "{schema}"."{project}__events__txns"')
    covered_ids = {r[2] for r in log if r[1] <= rep.cutover.get(f"{topic}:{r[0]}", -1)}
    assert len(covered_ids) == rep.events_read
    hist = history(servers, view, project, pg_schema)
    assert_history_equals_reference(view, [e for e in events if e["transaction_id"] in covered_ids], hist)
    rejects = fetch(servers, project, pg_schema,
                    'SELECT reason, partition, "offset" FROM "{schema}"."{project}__rejects"')
    assert len(rejects) == 2 and "malformed_json" in {r[0] for r in rejects}
    assert all(r[2] <= rep.cutover[f"{topic}:{r[1]}"] for r in rejects)

    # a second hand-off over the same group is refused: the worker is ahead of a new cut-over
    with pytest.raises(BackfillError, match="already applied"):
        backfill(servers, view, project, pg_schema, online_url, source="kafka", online=True, group=group,
                 end_ms=cut_time - HOUR, chunks=2)


def test_wild_event_times_get_the_same_decision_online_and_offline(servers, topic_factory, unique_name, redis_client,
                                                                   pg_schema, tmp_path):
    """An event 2 h after its record's reference time, and times in microseconds, nanoseconds or year
    9999: the worker (reference: the Kafka timestamp) and the file backfill (reference: the file's
    ``reference_column``) refuse the same events for the same reasons, and keep the same others."""
    from kafka import KafkaProducer

    from tests.workers.test_poison import headers_of, read_dead_letters

    events = make_events(300, customers=10, seed=8)
    rows = [(dict(e), e["event_time"] + 1_000) for e in events]
    base = {"customer_id": "C003", "amount": 9.0}
    t = events[100]["event_time"]
    wild = [({**base, "transaction_id": "ahead", "event_time": t + 2 * HOUR}, t, "future_timestamp"),
            ({**base, "transaction_id": "micros", "event_time": t * 1_000}, t, "out_of_range"),
            ({**base, "transaction_id": "nanos", "event_time": t * 1_000_000}, t, "out_of_range"),
            ({**base, "transaction_id": "y9999", "event_time": 253_402_214_400_000}, t, "out_of_range")]
    for i, (event, ref, _) in enumerate(wild):
        rows.insert(101 + 3 * i, (event, ref))
    path = tmp_path / "history.parquet"
    frame = pd.DataFrame([e for e, _ in rows])
    frame["recorded_at"] = [ref for _, ref in rows]
    frame.to_parquet(path)
    topic, dead_topic = topic_factory(partitions=2), topic_factory(partitions=1, prefix="dead")
    view = make_view(topic, history=FileHistory(path=str(path), reference_column="recorded_at"))
    expected_reasons = sorted(reason for _, _, reason in wild)

    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    for event, ref in rows:  # the Kafka timestamp is the file's reference time
        producer.send(topic, key=event["customer_id"].encode(), value=orjson.dumps(event), timestamp_ms=ref)
    producer.flush()
    producer.close()
    online_project, offline_project = unique_name("p"), unique_name("p")
    worker = build_worker(servers, view, online_project, unique_name("g"), pg_schema, dead_letter_topic=dead_topic)
    run_until(worker, len(rows)).join(90)
    assert worker.records_done == len(rows)
    letters = read_dead_letters(servers, dead_topic, len(wild))
    assert sorted(headers_of(r)["reason"] for r in letters) == expected_reasons

    rep = backfill(servers, view, offline_project, pg_schema, source="files")
    assert sorted(r for r, n in rep.rejected_by_reason.items() for _ in range(n)) == expected_reasons
    assert_history_equals_reference(view, events, history(servers, view, offline_project, pg_schema))
    streamed = states_at(redis_client, online_project, view, [0, HOUR, 30 * HOUR])
    assert streamed.keys() == {e["customer_id"] for e in events}
    assert_values_close(streamed, {k: [s.evaluate(s.watermark + dt) for dt in (0, HOUR, 30 * HOUR)]
                                   for k, s in _reference_states(view, events).items()})


def _reference_states(view, events) -> dict:
    states = defaultdict(lambda: ViewState(view.agg_specs(), view.source.allowed_lateness))
    for e in events:
        states[e["customer_id"]].apply([(e["event_time"], e, e["transaction_id"])])
    return states
