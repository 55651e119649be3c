"""End to end through the real broker, Redis and PostgreSQL: values equal the transforms reference."""

from __future__ import annotations

import gc

import orjson
import pytest
from kafka import KafkaProducer

from tests.workers.support import (assert_same, build_worker, make_events, make_view, online_values,
                                  reference_values, run_until, send)

pytestmark = pytest.mark.integration


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
    assert worker.metrics.spread.labels("txns")._value.get() == 0  # keyed by customer: one partition each
    # the worker ran with its own collector thresholds and gave the process's back when it closed
    assert worker.config.gc_threshold != gc_before and gc.get_threshold() == gc_before and gc.get_freeze_count() == 0


def test_entities_on_several_partitions_are_reported(servers, topic_factory, unique_name, pg_schema, caplog):
    """Events not keyed by the entity key reach several partitions: the worker counts and logs each entity
    (several workers would hold its state and overwrite each other's commits)."""
    topic = topic_factory(partitions=2)
    view = make_view(topic, lateness="30d")
    events = make_events(60, seed=5)
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    for i, e in enumerate(events):  # round robin, as a producer without keys would
        producer.send(topic, value=orjson.dumps(e), partition=i % 2)
    producer.flush()
    producer.close()
    worker = build_worker(servers, view, unique_name("p"), unique_name("g"), pg_schema)
    with caplog.at_level("ERROR", logger="workers.worker"):
        run_until(worker, len(events)).join(90)
    assert worker.records_done == len(events)
    spread = {e["customer_id"] for i, e in enumerate(events)
              if any(o["customer_id"] == e["customer_id"] and j % 2 != i % 2 for j, o in enumerate(events))}
    assert spread and worker.metrics.spread.labels("txns")._value.get() == len(spread)
    assert "must be keyed by the entity key" in caplog.text
