"""No single message stops a partition: every poison input becomes a dead letter with a reason,
the worker keeps consuming, and the valid events give the results they give without the poison.

Real broker, Redis and PostgreSQL; the worker runs in a thread (or a subprocess, for the SIGKILL)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import asyncpg
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from featurestore.definitions import Aggregate, BatchTransform, Entity, EventSource, FeatureView, Latest
from featurestore.offline.postgres import qident, table_name
from tests.workers.support import T0, assert_same, build_worker, make_events, online_values, reference_values
from tests.workers.test_worker_faults import produce, run_in_thread, wait_for

# Every test here runs over both Kafka clients (the ``kafka_client`` fixture): each reads its records through
# the worker's consumer.
pytestmark = pytest.mark.usefixtures("kafka_client")

POISON_AMOUNT = 13.13


def refuse_unlucky(df):
    """A user function that raises on one value (a bug that only some input reaches)."""
    if (df["amount"] == POISON_AMOUNT).any():
        raise ValueError(f"cannot score an amount of {POISON_AMOUNT}")
    return df["amount"] * 2


def poison_view(topic: str, with_transform: bool = False) -> FeatureView:
    source = EventSource(
        name="txns", topic=topic,
        schema={"transaction_id": "string", "customer_id": "string", "amount": "float64", "quantity": "int64",
                "note": "string", "event_time": "timestamp"},
        timestamp_field="event_time", entity_field="customer_id", event_id_field="transaction_id",
        allowed_lateness="5m")
    features = [Aggregate("spend_1h", "amount", "sum", "1h"), Aggregate("n_24h", "amount", "count", "24h"),
                Aggregate("qty_7d", "quantity", "sum", "7d"), Latest("last_note", "note")]
    if with_transform:
        features.append(BatchTransform("doubled", ["amount"], refuse_unlucky, "float64"))
    return FeatureView(name="stats", entity=Entity(name="customer", join_key="customer_id"), source=source,
                       ttl="30d", features=features)


def valid_events(n: int, seed: int) -> list[dict]:
    events = make_events(n, customers=8, seed=seed)
    for i, e in enumerate(events):
        e["quantity"] = i % 5
        e["note"] = f"n{i % 3}"
    return events


def poison_messages(now_ms: int) -> dict[str, tuple[bytes, bytes | None, str]]:
    """name -> (Kafka key, value, expected reason): each message of the issue's table, and more."""
    base = {"transaction_id": "p", "customer_id": "C001", "amount": 1.0, "quantity": 1, "note": "x",
            "event_time": T0 + 1_000}

    def event(**changes) -> bytes:
        return orjson.dumps({**base, **changes})

    return {
        "nul_in_string": (b"C001", event(transaction_id="p1", note="a\x00b"), "invalid_character"),
        "nul_in_key": (b"C001", event(transaction_id="p2", customer_id="C0\x0001"), "invalid_character"),
        "key_3000": (b"C001", event(transaction_id="p3", customer_id="K" * 3000), "key_too_long"),
        "key_100k": (b"C001", event(transaction_id="p4", customer_id="K" * 100_000), "key_too_long"),
        "time_ns": (b"C001", event(transaction_id="p5", event_time=(T0 + 5_000) * 1_000_000), "out_of_range"),
        "time_int64_max": (b"C001", event(transaction_id="p6", event_time=2**63 - 1), "out_of_range"),
        "time_int64_min_new_entity": (b"NEW1", event(transaction_id="p7", customer_id="NEW1", event_time=-(2**63)),
                                      "out_of_range"),
        "int_2_64": (b"C001", event(transaction_id="p8", quantity=18446744073709551615), "out_of_range"),
        "value_1_2mb": (b"C001", event(transaction_id="p9", note="y" * 1_200_000), "oversize"),
        "value_10mb": (b"C001", event(transaction_id="p10", note="y" * 10_000_000), "oversize"),
        "time_us": (b"C001", event(transaction_id="p11", event_time=(T0 + 5_000) * 1_000), "out_of_range"),
        "year_9999": (b"C001", event(transaction_id="p12", event_time="9999-12-31T00:00:00Z"), "out_of_range"),
        "year_3000": (b"C001", event(transaction_id="p13", event_time="3000-01-01T00:00:00Z"), "out_of_range"),
        "two_hours_ahead": (b"C001", event(transaction_id="p14", event_time=now_ms + 2 * 3_600_000),
                            "future_timestamp"),
        "empty_value": (b"C001", b"", "empty_message"),
        "string_too_long": (b"C001", event(transaction_id="p15", note="z" * 70_000), "too_long"),
    }


def read_dead_letters(servers, topic: str, expected: int, timeout: float = 30) -> list:
    consumer = KafkaConsumer(bootstrap_servers=servers.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024)
    consumer.assign([TopicPartition(topic, 0)])
    letters: list = []
    deadline = time.monotonic() + timeout
    while len(letters) < expected and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            letters += recs
    # a little longer: a duplicate would arrive after the expected count
    for recs in consumer.poll(timeout_ms=1500).values():
        letters += recs
    consumer.close()
    return letters


def headers_of(rec) -> dict[str, str]:
    return {k: v.decode() for k, v in rec.headers}


def fetch(dsn: str, sql: str, *args) -> list:
    async def go():
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(go())


def run_to_end(worker, n_records: int, timeout: float = 90) -> dict:
    stop = threading.Event()
    thread, outcome = run_in_thread(worker, stop)
    try:
        wait_for(lambda: worker.records_done >= n_records or "error" in outcome or "code" in outcome, timeout,
                 lambda: f"{n_records} records committed (have {worker.records_done})", interval=0.05)
    finally:
        stop.set()
        thread.join(30)
    return outcome


@pytest.mark.integration
def test_every_poison_message_is_dead_lettered_and_the_partition_moves_on(
        servers, topic_factory, unique_name, project, shared_redis, pg_schema):
    topic = topic_factory(partitions=1)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    view = poison_view(topic)
    poison = poison_messages(int(time.time() * 1000))
    good = valid_events(2 * len(poison) + 2, seed=3)
    # each poison message alone between two valid events of customer C001 (one partition: in this order)
    for e in good:
        e["customer_id"] = "C001"
    records, it = [], iter(good)
    for key, value, _ in poison.values():
        records.append((b"C001", orjson.dumps(next(it)), None))
        records.append((key, value, None))
    records += [(b"C001", orjson.dumps(e), None) for e in it]
    positions = produce(servers, topic, records)

    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=7,
                          dead_letter_topic=dead_topic)
    outcome = run_to_end(worker, len(records))
    assert "error" not in outcome, outcome
    assert worker.records_done == len(records)

    letters = read_dead_letters(servers, dead_topic, len(poison))
    by_offset = {int(headers_of(r)["offset"]): r for r in letters}
    assert len(letters) == len(poison), [headers_of(r)["reason"] for r in letters]
    for (name, (_, value, reason)), (_, offset) in zip(poison.items(), positions[1::2]):
        rec = by_offset[offset]
        headers = headers_of(rec)
        assert headers["reason"] == reason, (name, headers["reason"], headers["detail"])
        assert headers["detail"] and headers["dead_letter_id"] == f"{topic}/0/{offset}"
        if len(value) > 1_000_000:  # oversize beyond the dead-letter value limit: sent cut, the size in a header
            assert headers["truncated"] == "true" and int(headers["original_size"]) == len(value), name
            assert rec.value == value[:1_000_000]
        else:
            assert "truncated" not in headers and rec.value == value, name
    # the valid events count exactly as without the poison: no watermark moved, no later event late
    assert_same(online_values(shared_redis, project, view), reference_values(view, good))
    # every dead letter is in the rejects table too, marked sent
    rows = fetch(servers.postgres_dsn, f'SELECT "offset", reason, sent_at, length(payload) AS n FROM '
                 f'{qident(pg_schema)}.{qident(table_name(project, "rejects"))} WHERE source = $1', "txns")
    assert sorted((r["offset"], r["reason"]) for r in rows) == sorted(
        (off, reason) for (_, (_, _, reason)), (_, off) in zip(poison.items(), positions[1::2]))
    assert all(r["sent_at"] is not None for r in rows)
    assert max(r["n"] for r in rows) == len(poison["value_10mb"][1])  # the whole record is kept


@pytest.mark.integration
def test_a_record_that_raises_is_dead_lettered_as_processing_error(
        servers, topic_factory, unique_name, project, shared_redis, pg_schema):
    topic, clean_topic = topic_factory(partitions=2), topic_factory(partitions=2)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    good = valid_events(300, seed=4)
    bad = {**good[150], "transaction_id": "unlucky", "amount": POISON_AMOUNT}
    stream = good[:150] + [bad] + good[150:]
    produce(servers, topic, [(e["customer_id"].encode(), orjson.dumps(e), None) for e in stream])
    produce(servers, clean_topic, [(e["customer_id"].encode(), orjson.dumps(e), None) for e in good])

    view = poison_view(topic, with_transform=True)
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=100,
                          dead_letter_topic=dead_topic)
    outcome = run_to_end(worker, len(stream))
    assert "error" not in outcome, outcome

    letters = read_dead_letters(servers, dead_topic, 1)
    assert [headers_of(r)["reason"] for r in letters] == ["processing_error"]
    assert orjson.loads(letters[0].value)["transaction_id"] == "unlucky"
    assert headers_of(letters[0])["detail"] == ("InvalidInputError: BatchTransform 'doubled': fn raised ValueError: "
                                                f"cannot score an amount of {POISON_AMOUNT}")
    assert worker.metrics.isolations.labels("InvalidInputError")._value.get() >= 1

    # the same events without the poison, through a worker of another project: the same values
    clean_project = unique_name("p")
    clean = build_worker(servers, poison_view(clean_topic, with_transform=True), clean_project, unique_name("g"),
                         pg_schema, batch_size=100, dead_letter_topic=dead_topic)
    assert "error" not in run_to_end(clean, len(good))
    try:
        assert_same(online_values(shared_redis, project, view), online_values(shared_redis, clean_project, view))
    finally:
        keys = list(shared_redis.scan_iter(match=f"fs:{clean_project}:*"))
        if keys:
            shared_redis.delete(*keys)
    logged = fetch(servers.postgres_dsn, f'SELECT event_id FROM {qident(pg_schema)}.'
                   f'{qident(table_name(project, "events", "txns"))}')
    assert len(logged) == len(good) and "unlucky" not in {r["event_id"] for r in logged}


@pytest.mark.integration
def test_a_record_whose_commit_raises_is_dead_lettered_and_its_logged_row_removed(
        servers, topic_factory, unique_name, project, shared_redis, pg_schema):
    """The failure comes after the event log was written (in the Redis commit): the record's
    logged row goes with it, so training sets do not hold an event serving never counted."""
    topic = topic_factory(partitions=1)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    good = valid_events(120, seed=5)
    bad = {**good[60], "transaction_id": "cursed", "customer_id": "CURSED"}
    stream = good[:60] + [bad] + good[60:]
    produce(servers, topic, [(e["customer_id"].encode(), orjson.dumps(e), None) for e in stream])
    view = poison_view(topic)
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=50,
                          dead_letter_topic=dead_topic)
    commit = worker.online.commit

    def commit_refusing_cursed(records, *args, **kwargs):  # a store-side error that only this entity reaches
        if any(r.key == "CURSED" for r in records):
            raise RuntimeError("state of CURSED cannot be written")
        return commit(records, *args, **kwargs)

    worker.online.commit = commit_refusing_cursed
    outcome = run_to_end(worker, len(stream))
    assert "error" not in outcome, outcome
    letters = read_dead_letters(servers, dead_topic, 1)
    assert [(headers_of(r)["reason"], headers_of(r)["detail"]) for r in letters] == [
        ("processing_error", "RuntimeError: state of CURSED cannot be written")]
    assert_same(online_values(shared_redis, project, view), reference_values(view, good))
    logged = fetch(servers.postgres_dsn, f'SELECT event_id FROM {qident(pg_schema)}.'
                   f'{qident(table_name(project, "events", "txns"))}')
    assert sorted(r["event_id"] for r in logged) == sorted(e["transaction_id"] for e in good)


@pytest.mark.integration
def test_a_dead_letter_the_producer_refuses_is_kept_and_the_partition_moves_on(
        servers, topic_factory, unique_name, project, shared_redis, pg_schema, caplog):
    """A Kafka key of 2 MB: the record fits the consumer, its dead letter (value and key) does not fit
    the dead-letter producer's request limit.  Logged at ERROR, counted, kept in PostgreSQL."""
    topic = topic_factory(partitions=1)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    good = valid_events(40, seed=6)
    records = [(e["customer_id"].encode(), orjson.dumps(e), None) for e in good[:20]]
    records.append((b"k" * 2_000_000, b"not json", None))
    records += [(e["customer_id"].encode(), orjson.dumps(e), None) for e in good[20:]]
    positions = produce(servers, topic, records)
    view = poison_view(topic)
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=10,
                          dead_letter_topic=dead_topic)
    with caplog.at_level("ERROR", logger="workers.dead_letters"):
        outcome = run_to_end(worker, len(records))
    assert "error" not in outcome, outcome
    assert worker.metrics.dead_letters_refused.labels("malformed_json")._value.get() == 1
    assert any("refused the dead letter" in r.getMessage() for r in caplog.records)
    assert read_dead_letters(servers, dead_topic, 1, timeout=3) == []
    rows = fetch(servers.postgres_dsn, f'SELECT "offset", reason, sent_at, send_error, length("key") AS k FROM '
                 f'{qident(pg_schema)}.{qident(table_name(project, "rejects"))}')
    assert [(r["offset"], r["reason"], r["sent_at"], r["k"]) for r in rows] == [
        (positions[20][1], "malformed_json", None, 2_000_000)]
    assert "MessageSizeTooLargeError" in rows[0]["send_error"]
    assert_same(online_values(shared_redis, project, view), reference_values(view, good))


@pytest.mark.integration
def test_a_sigkill_before_the_commit_sends_no_dead_letter_twice(
        servers, topic_factory, unique_name, project, shared_redis, pg_schema, spawn):
    """Killed after its dead letters were sent and before the batch committed, the worker runs the
    batch again on restart: the dead letters already marked sent are not sent again."""
    topic = topic_factory(partitions=2)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    good = make_events(400, seed=7)
    records = []
    for i, e in enumerate(good):
        records.append((e["customer_id"].encode(), orjson.dumps(e), None))
        if i % 10 == 0:
            records.append((e["customer_id"].encode(), b"{broken", None))
    produce(servers, topic, records)
    n_bad = len(records) - len(good)
    group = unique_name("g")
    crashed = spawn("crash", topic, project, group, "--dead-letter-topic", dead_topic, "--crash-at",
                    "before_redis_commit", "--crash-after-batches", "3", batch_size=40)
    assert crashed.proc.wait(60) != 0, crashed.tail()
    assert "crashing on purpose" in crashed.log.read_text()
    sent_before_restart = len(read_dead_letters(servers, dead_topic, 1, timeout=5))
    assert sent_before_restart > 0  # the kill came after some dead letters were sent
    restarted = spawn("restart", topic, project, group, "--dead-letter-topic", dead_topic,
                      "--exit-after-idle", "3", batch_size=40)
    assert restarted.proc.wait(90) == 0, restarted.tail()
    letters = read_dead_letters(servers, dead_topic, n_bad)
    ids = Counter(headers_of(r)["dead_letter_id"] for r in letters)
    assert len(ids) == n_bad
    assert [i for i, n in ids.items() if n > 1] == []


def test_an_invalid_dead_letter_topic_is_refused_before_the_worker_starts():
    from featurestore.exceptions import ConfigurationError
    from workers.worker import Worker, WorkerConfig

    for name in ("bad topic!", "x" * 250, ".."):
        with pytest.raises(ConfigurationError, match="not a valid Kafka topic name"):
            Worker([], None, None, WorkerConfig(group="g", dead_letter_topic=name))
