"""End to end through the real broker, Redis and PostgreSQL: values equal the transforms reference."""

from __future__ import annotations

import gc

import pytest

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
    # the worker ran with its own collector thresholds and gave the process's back when it closed
    assert worker.config.gc_threshold != gc_before and gc.get_threshold() == gc_before and gc.get_freeze_count() == 0
