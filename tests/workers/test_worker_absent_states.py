"""A state the online store lost alone is rebuilt from the event log, not started afresh.

An entity's hash leaves Redis while its events stay in the event log: it expires ``ttl + grace``
after its last write (an entity idle that long — the idle customer who comes back), or an operator
deletes it.  A worker that does not cache the state (restarted, or evicted it) must not start such an
entity afresh at its next event: lifetime aggregates and windows longer than the idle time would restart
and disagree with the training sets, which read the whole log.
"""

from __future__ import annotations

import pytest
import redis

from featurestore.online import RedisOnlineStore
from tests.workers.support import (assert_same, build_worker, consumed_stream, make_events, online_values,
                                   reference_values, run_until, send)

pytestmark = pytest.mark.integration


def test_a_state_gone_from_redis_is_rebuilt_from_the_event_log(servers, topic_factory, unique_name, pg_schema):
    view, project, group, events = consumed_stream(servers, topic_factory, unique_name, pg_schema, "ab", 41)
    topic = view.source.topic

    client = redis.Redis.from_url(servers.redis_url)
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    gone = ["C003", "C011", "C017"]
    assert client.delete(*[online.entity_key(f"{project}:{view.name}:v1", k) for k in gone]) == len(gone)
    more = [{**e, "transaction_id": f"later-{i}", "event_time": e["event_time"] + 3_600_000}
            for i, e in enumerate(make_events(60, seed=42))]
    assert set(gone) <= {e["customer_id"] for e in more}
    send(servers, topic, more)
    worker = build_worker(servers, view, project, group, pg_schema)  # a new worker: nothing cached
    # Its first Redis commit fails after the batch reached the event log: the retried batch finds
    # its own events in the log beyond the committed offsets, which the rebuilt states must not count.
    commit, failed = worker.online.commit, []

    def failing_once(*args, **kwargs):
        if not failed:
            failed.append(True)
            raise redis.exceptions.ConnectionError("injected: Redis went away before the commit")
        return commit(*args, **kwargs)

    worker.online.commit = failing_once
    run_until(worker, len(more), timeout=90).join(90)
    assert failed

    got = online_values(client, project, view)
    assert_same(got, reference_values(view, events + more))  # lifetime totals count the events before too
    assert worker.metrics.from_log.labels("txns")._value.get() == 2 * len(gone)  # the batch ran twice
    client.close()
