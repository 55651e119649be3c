"""A worker rebuilding lost online states from the event log includes the pushed events.

Events pushed with ``push(..., to="online_and_offline")`` are in the online states and in the event
log (partition -1), not in Kafka.  When Redis loses its data, the worker rebuilds the states of its
partitions from the event log: the pushed rows of the entities it owns must be part of that, or the
online store silently serves windows without them (and disagrees with the training sets, which
read the whole log).
"""

from __future__ import annotations

import pandas as pd
import pytest
import redis
from kafka.partitioner.default import murmur2

from featurestore.client import FeatureStore
from featurestore.online import RedisOnlineStore
from tests.workers.support import (T0, assert_same, build_worker, consumed_stream, make_events, online_values,
                                   reference_values, repo_of, run_until, send)
from workers.worker import owned_events

pytestmark = pytest.mark.integration


def _pushed() -> list[dict]:
    """Two events for C003 (also on Kafka) and two for each of P0..P7 (pushed only), inside the
    Kafka events' time range (the 1-day lateness accepts them in any order)."""
    out = []
    for customer in ["C003"] + [f"P{i}" for i in range(8)]:
        for j in range(2):
            out.append({"transaction_id": f"push-{customer}-{j}", "customer_id": customer, "amount": 7.0 + j,
                        "event_time": T0 + 40 * 20_000 + j * 1_000})
    return out


def test_rebuild_after_redis_lost_its_data_includes_pushed_events(servers, topic_factory, unique_name, pg_schema):
    view, project, group, events = consumed_stream(servers, topic_factory, unique_name, pg_schema, "rb", 21)
    topic = view.source.topic

    online = RedisOnlineStore.from_url(servers.redis_url, project)
    store = FeatureStore(repo_of(view), online, {view.name: 1}, project, postgres_dsn=servers.postgres_dsn,
                         pg_schema=pg_schema)
    pushed = _pushed()
    result = store.push("txns", pd.DataFrame(pushed), to="online_and_offline")
    assert result.online_records == 9 and result.offline_rows == len(pushed)
    client = redis.Redis.from_url(servers.redis_url)
    assert_same(online_values(client, project, view), reference_values(view, events + pushed))

    lost = list(client.scan_iter(match=f"fs:{project}*", count=1000))  # Redis lost the project's data
    assert client.delete(*lost) == len(lost)
    more = [{**e, "transaction_id": f"later-{i}", "event_time": e["event_time"] + 3_600_000}
            for i, e in enumerate(make_events(20, seed=22))]
    send(servers, topic, more)
    # Kafka holds the group's committed offsets, Redis none: the new worker rebuilds from the event log
    run_until(build_worker(servers, view, project, group, pg_schema), len(more), timeout=90).join(90)

    got = online_values(client, project, view)
    assert {f"P{i}" for i in range(8)} <= set(got)
    assert_same(got, reference_values(view, events + pushed + more))
    client.close()


def test_owned_events_splits_pushed_rows_between_the_partitions_owners() -> None:
    """Pushed rows go with their entity's Kafka partition; those of entities never seen on Kafka to
    the partition Kafka's default partitioner gives their key; each row to exactly one owner."""
    keys = ["A", "A", "B", "A", "C", "D", "E", "F"]
    frame = pd.DataFrame({"key": keys, "__partition": [0, 0, 1, -1, -1, -1, -1, -1],
                          "__offset": [0, 1, 0, 0, 1, 2, 3, 4]})
    on_kafka = {"D"}  # D has Kafka rows, on a partition of neither frame (another topic size, say)
    mine = [owned_events(frame[frame["__partition"].isin([p, -1])], [p], 2, on_kafka) for p in (0, 1)]
    assert list(mine[0]["key"][mine[0]["__partition"] >= 0]) == ["A", "A"]
    assert list(mine[1]["key"][mine[1]["__partition"] >= 0]) == ["B"]
    pushed = [set(m["key"][m["__partition"] == -1]) for m in mine]
    assert "A" in pushed[0] and "A" not in pushed[1]
    assert "D" not in pushed[0] | pushed[1]
    for key in "CEF":
        home = (murmur2(key.encode()) & 0x7FFFFFFF) % 2
        assert key in pushed[home] and key not in pushed[1 - home]
