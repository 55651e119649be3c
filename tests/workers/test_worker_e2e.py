"""End to end through the real broker, Redis and PostgreSQL: values equal the transforms reference."""

from __future__ import annotations

import gc

import orjson
import pytest
from kafka import KafkaProducer

from tests.workers.support import (assert_same, build_worker, make_events, make_view, online_values,
                                  reference_values, run_until, send)
from workers.kafka_client import ConfluentConsumer

# Every test here runs over both Kafka clients (consumption, values, a two-worker group).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


def test_worker_values_equal_reference(kafka_client, servers, topic_factory, unique_name, redis_client, pg_schema):
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    events = make_events(600)
    send(servers, topic, events)
    project = unique_name("p")
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=100)
    gc_before = gc.get_threshold()
    run_until(worker, len(events)).join(90)
    assert worker.records_done == len(events)
    assert isinstance(worker.consumer, ConfluentConsumer) == (kafka_client == "confluent")
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


def test_two_workers_sharing_entities_lose_no_update(servers, topic_factory, unique_name, redis_client, pg_schema):
    """Events not keyed by the entity key: both workers of a group cache the same entities' states.  Each
    commit carries the applied offsets its writer last saw stored for each state, and is refused when
    another worker changed the state since (the batch is applied again on the stored states), so no
    worker's update is overwritten: the final values count every event once."""
    import threading
    import time

    topic = topic_factory(partitions=2)
    view = make_view(topic, lateness="30d")
    project, group = unique_name("p"), unique_name("g")
    workers = [build_worker(servers, view, project, group, pg_schema, batch_size=20) for _ in range(2)]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, kwargs={"until": lambda _w: stop.is_set()}, daemon=True) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not all(w.consumer is not None and len(w.consumer.assignment()) == 1 for w in workers):
        assert time.monotonic() < deadline, "the two workers did not share the partitions"
        time.sleep(0.1)
    events = make_events(240, customers=3, seed=11)
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=0)
    for lo in range(0, len(events), 12):  # waves, round robin over the partitions: both workers touch each entity
        for i in range(lo, lo + 12):
            producer.send(topic, value=orjson.dumps(events[i]), partition=i % 2)
        producer.flush()
        time.sleep(0.05)
    producer.close()
    while sum(w.records_done for w in workers) < len(events):
        assert time.monotonic() < deadline + 60, [w.records_done for w in workers]
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)
    assert sum(w.metrics.state_conflicts._value.get() for w in workers) > 0  # the workers did collide
    assert_same(online_values(redis_client, project, view), reference_values(view, events))
