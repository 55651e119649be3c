"""A partition count that differs from the one a Redis Cluster's keys were placed for: the worker refuses
to start, naming the command; after ``reset --online-only`` the next worker rebuilds every state from the
event log at the topic's count and goes on, counting each event once.

The embedded broker does not implement CreatePartitions, so the test changes the recorded count
instead of the topic's: to the worker, the two differ either way."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from featurestore.exceptions import ConfigurationError
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.online import open_online_store
from featurestore.online.slots import home_partition
from featurestore.reset import areset_source
from tests.support import delete_project_keys
from tests.workers.support import (assert_same, build_worker, make_events, make_view, online_values,
                                  reference_values, run_until, send)

pytestmark = pytest.mark.integration


def test_a_topic_that_gained_partitions_is_rebuilt_at_the_new_count(servers, redis_cluster_url, topic_factory,
                                                                    unique_name, pg_schema, request):
    topic = topic_factory(partitions=2)
    view = make_view(topic, lateness="1d")
    project, group = unique_name("p"), unique_name("g")
    request.addfinalizer(lambda: delete_project_keys(redis_cluster_url, project))
    on = SimpleNamespace(kafka_bootstrap=servers.kafka_bootstrap, redis_url=redis_cluster_url,
                         postgres_dsn=servers.postgres_dsn)
    events = make_events(600, customers=30, seed=3)
    first, rest = events[:300], events[300:]
    send(servers, topic, first)
    worker = build_worker(on, view, project, group, pg_schema, batch_size=50)
    run_until(worker, len(first)).join(60)
    assert worker.records_done == len(first)
    online = open_online_store(redis_cluster_url, project)
    view_key = f"{project}:{view.name}:v1"
    assert online.partitions_of(view_key) == 2

    online.client.hset(online.partitions_key, view_key, 5)  # keys placed for 5 partitions, the topic has 2
    with pytest.raises(ConfigurationError, match=r"has 2 partitions.*placed for 5.*reset --source NAME --online-only"):
        build_worker(on, view, project, group, pg_schema)

    async def reset() -> None:
        offline = await PostgresOfflineStore.create(servers.postgres_dsn, project, pg_schema)
        try:
            await areset_source(online, offline, view.source, [f"{project}:{view.name}:v*"], online_only=True)
        finally:
            await offline.close()

    asyncio.run(reset())
    assert online.partitions_of(view_key) is None and not online_values(online, project, view)
    send(servers, topic, rest)
    worker = build_worker(on, view, project, group, pg_schema, batch_size=50)
    run_until(worker, len(rest)).join(90)
    assert worker.records_done == len(rest)  # the first 300 were rebuilt from the event log, not re-read
    fresh = open_online_store(redis_cluster_url, project)
    assert fresh.partitions_of(view_key) == 2
    got = online_values(fresh, project, view)
    assert_same(got, reference_values(view, events))
    # every state sits in the slot group of its home partition
    keys = {k.decode() for batch in fresh.scan_view(view_key) for k in batch}
    assert keys == {f"fs:{fresh.tag(home_partition(c, 2))}:{view_key}:{c}" for c in got}
