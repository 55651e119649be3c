"""End to end through the real broker, Redis and PostgreSQL: values equal the transforms reference."""

from __future__ import annotations

import gc
import math

import orjson
import pytest
from kafka import KafkaProducer

from tests.workers.support import build_worker, make_events, make_view, online_values, reference_values, run_until

pytestmark = pytest.mark.integration


def send(servers, topic, events, extra_raw=()):
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    for e in events:
        producer.send(topic, key=e["customer_id"].encode(), value=orjson.dumps(e))
    for raw in extra_raw:
        producer.send(topic, key=b"C000", value=raw)
    producer.flush()
    producer.close()


def assert_same(actual: dict, expected: dict):
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        for name, value in exp.items():
            got = actual[key][name]
            if isinstance(value, float):
                assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), (key, name, got, value)
            else:
                assert got == value, (key, name, got, value)


def test_worker_values_equal_reference(servers, topic_factory, unique_name, redis_client, pg_schema):
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    events = make_events(600)
    send(servers, topic, events)
    project = unique_name("p")
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=100)
    gc_before = gc.get_threshold()
    run_until(worker, len(events)).join(90)
    assert worker.records_done == len(events)
    expected = reference_values(view, events)
    assert_same(online_values(redis_client, project, view), expected)
    # the worker ran with its own collector thresholds and gave the process's back when it closed
    assert worker.config.gc_threshold != gc_before and gc.get_threshold() == gc_before and gc.get_freeze_count() == 0
