"""Smoke tests against the three real servers: Kafka consumer groups, Redis pipelines, PostgreSQL COPY."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.integration


def test_servers_used(servers) -> None:
    print(f"servers used: {servers.describe()}")
    assert set(servers.sources) == {"kafka", "redis", "postgres"}


def _consume(consumer, want: int, timeout_s: float) -> list:
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < want and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500, max_records=want - len(records))
        for partition_records in batch.values():
            records.extend(partition_records)
    return records


def test_kafka_consumer_group_resumes_from_committed_offsets(servers, topic_factory, unique_name) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic = topic_factory(partitions=3)
    group = unique_name("group")
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, acks="all")
    sent = {f"value-{i}" for i in range(100)}
    for i in range(100):
        producer.send(topic, key=f"key-{i % 17}".encode(), value=f"value-{i}".encode())
    producer.flush(timeout=30)
    producer.close()

    def consumer() -> KafkaConsumer:
        c = KafkaConsumer(
            bootstrap_servers=servers.kafka_bootstrap, group_id=group, auto_offset_reset="earliest",
            enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000,
        )
        c.subscribe([topic])
        return c

    first = consumer()
    records = _consume(first, 60, timeout_s=60)
    assert len(records) == 60
    assert len({r.partition for r in records}) >= 1
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if tp not in offsets or offsets[tp].offset < r.offset + 1:
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
    first.commit(offsets)
    first.close()
    consumed = {r.value.decode() for r in records}

    second = consumer()
    rest = _consume(second, 40, timeout_s=60)
    extra = _consume(second, 1, timeout_s=2)  # nothing beyond the remaining 40
    second.close()
    values = [r.value.decode() for r in rest]
    assert len(values) == 40, f"expected the remaining 40 messages, got {len(values)}"
    assert set(values) == sent - consumed
    assert extra == []


def test_redis_pipeline_round_trip(redis_client) -> None:
    key = redis_client.key_prefix + "customer:42"
    pipe = redis_client.pipeline(transaction=True)
    pipe.hset(key, mapping={"txn_count_1h": "3", "amount_sum_1h": "129.5"})
    pipe.expire(key, 300)
    pipe.hgetall(key)
    pipe.ttl(key)
    hset_added, expire_set, values, ttl = pipe.execute()
    assert hset_added == 2
    assert expire_set is True
    assert values == {b"txn_count_1h": b"3", b"amount_sum_1h": b"129.5"}
    assert 0 < ttl <= 300


def test_postgres_copy_records(pg_dsn, pg_schema) -> None:
    import asyncpg

    rows = [(i, f"customer-{i % 10}", i * 0.5) for i in range(1000)]

    async def run() -> tuple[int, float]:
        conn = await asyncpg.connect(pg_dsn, timeout=10)
        try:
            await conn.execute(
                f'CREATE TABLE "{pg_schema}".events (id bigint PRIMARY KEY, customer text, amount double precision)'
            )
            await conn.copy_records_to_table("events", schema_name=pg_schema, records=rows,
                                             columns=["id", "customer", "amount"])
            row = await conn.fetchrow(f'SELECT count(*) AS n, sum(amount) AS total FROM "{pg_schema}".events')
            return row["n"], row["total"]
        finally:
            await conn.close()

    count, total = asyncio.run(run())
    assert count == 1000
    assert total == pytest.approx(sum(r[2] for r in rows))
