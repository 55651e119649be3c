"""push, materialize and backfill --online refuse to write online states of a topic a running worker
consumes.

The worker keeps its states in memory: a state written behind its back would be overwritten at
the worker's next commit.  Running workers announce their topics in the online store
(renewed, expiring); the client and the backfill check before writing anything.
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from featurestore.client import FeatureStore
from featurestore.exceptions import WorkerRunningError
from featurestore.online import RedisOnlineStore
from tests.workers.support import T0, build_worker, make_events, make_view, repo_of, send, wait_for
from tests.workers.test_backfill import backfill


def _rows(customer: str, n: int = 2) -> pd.DataFrame:
    return pd.DataFrame({"transaction_id": [f"push-{customer}-{i}" for i in range(n)], "customer_id": [customer] * n,
                         "amount": [10.0 * (i + 1) for i in range(n)],
                         "event_time": [T0 + 10 * 86_400_000 + i * 1000 for i in range(n)]})


def view_hashes(online: RedisOnlineStore, view_key: str) -> dict:
    """Every stored (entity, view) hash of one view version, field by field."""
    return {key: online.client.hgetall(key) for key in online.client.scan_iter(match=f"fs:{view_key}:*")}


def test_push_materialize_and_backfill_refused_while_a_worker_consumes_the_topic(servers, topic_factory, unique_name,
                                                                                  pg_schema):
    topic = topic_factory(partitions=2)
    project, group = unique_name("guard"), unique_name("g")
    view = make_view(topic)
    events = make_events(200, seed=3)
    send(servers, topic, events)
    worker = build_worker(servers, view, project, group, pg_schema)
    thread = threading.Thread(target=worker.run, daemon=True)  # runs until asked to stop
    thread.start()
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    store = FeatureStore(repo_of(view), online, {view.name: 1}, project, postgres_dsn=servers.postgres_dsn,
                         pg_schema=pg_schema)
    view_key = f"{project}:stats:v1"
    try:
        wait_for(online.live_workers, 30, "the worker's announcement", interval=0.05)
        [announced] = online.live_workers()
        assert announced["group"] == group and announced["topics"] == [topic]
        wait_for(lambda: worker.records_done == len(events), 60, "every event applied and logged", interval=0.05)
        states = view_hashes(online, view_key)
        assert len(states) == len({e["customer_id"] for e in events})

        with pytest.raises(WorkerRunningError, match=rf"group '{group}'.*consumes {topic}"):
            store.push("txns", _rows("P1"), to="online")
        with pytest.raises(WorkerRunningError, match="materialize"):
            store.materialize(T0, T0 + 86_400_000)
        with pytest.raises(WorkerRunningError,
                           match=rf"backfill of 'stats' --online.*group '{group}'.*consumes {topic}"):
            backfill(servers, view, project, pg_schema, source="postgres", online=True)
        assert view_hashes(online, view_key) == states  # nothing written

        forced = store.push("txns", _rows("P2"), to="online", force=True)  # the caller takes the risk
        assert forced.online_records == 1
        report = store.materialize(T0, T0 + 86_400_000, force=True)
        assert report["views"]["stats"]["entities"] == len(states)  # recomputed from the worker's event log
        assert report["views"]["stats"]["events"] == len(events)
    finally:
        worker.request_stop()
        thread.join(30)
    assert not thread.is_alive()
    assert online.live_workers() == []  # a stopped worker withdraws its announcement
    result = store.push("txns", _rows("P1"), to="online")
    assert result.online_records == 1
    values = store.get_online_features([{"customer_id": "P1"}], features=["stats:total"],
                                       at_ms=T0 + 10 * 86_400_000 + 5000).to_dict()
    assert values["total"] == [30.0]


def test_announcement_of_a_killed_worker_expires(servers, unique_name):
    online = RedisOnlineStore.from_url(servers.redis_url, unique_name("live"))
    announced = online.announce_worker("g", "w1", ["t1"], ttl_ms=3000)
    online.announce_worker("g", "w2", ["t2"], ttl_ms=60_000)
    with pytest.raises(WorkerRunningError, match="t1"):
        online.refuse_if_consumed(["t1", "t3"], "push")
    online.refuse_if_consumed(["t3"], "push")  # nobody consumes t3
    wait_for(lambda: [w["worker"] for w in online.live_workers()] == ["w2"], 10, "w1's announcement to expire",
             interval=0.05)
    assert online._server_ms() >= announced + 3000  # not before its ttl
    assert [w["worker"] for w in online.live_workers()] == ["w2"]
    assert online.client.hkeys(online.live_key) == [b"g:w2"]  # the expired announcement was removed
    online.refuse_if_consumed(["t1"], "push")  # w1 never renewed: expired
    online.retire_worker("g", "w2")
    assert online.live_workers() == []


def test_worker_refuses_a_group_whose_workers_compute_other_views(servers, topic_factory, unique_name, pg_schema,
                                                                   monkeypatch):
    """Workers of one group share its partitions: a worker computing other views (another --views, another
    repository version) would leave each view without the events of the partitions the others hold."""
    import workers.worker as worker_module
    from featurestore.exceptions import GroupConflictError

    topic = topic_factory(partitions=2)
    project, group = unique_name("guard"), unique_name("g")
    view = make_view(topic)
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    mine = [f"{project}:stats:v1"]
    # a worker of an older release (no views announced) and one of another group are not in the way
    online.announce_worker(group, "old-release", [topic])
    online.announce_worker("another-group", "w0", [topic], views=[f"{project}:other:v1"])
    online.announce_worker(group, "same-views", [topic], views=mine)
    online.announce_worker(group, "w1", [topic], views=[f"{project}:stats:v2", f"{project}:other:v1"])
    worker = build_worker(servers, view, project, group, pg_schema)
    with pytest.raises(GroupConflictError, match=rf"group '{group}'.*worker w1 .* computes {project}:other:v1, "
                                                 rf"{project}:stats:v2; this worker computes {project}:stats:v1"):
        worker.run()
    assert worker.consumer is None  # refused before joining the group: no partition was taken
    online.retire_worker(group, "w1")

    # Two workers that passed the check at the same moment: the one started later stops (exit code 2).
    monkeypatch.setattr(worker_module, "LAG_PERIOD_S", 0.2)  # the announcement period, where it is checked
    send(servers, topic, make_events(50, seed=4))
    worker = build_worker(servers, view, project, group, pg_schema)
    thread = threading.Thread(target=lambda: setattr(worker, "returned", worker.run()), daemon=True)
    thread.start()
    wait_for(lambda: worker.started_ms is not None, 30, "the worker's first announcement", interval=0.05)
    online.announce_worker(group, "later", [topic], views=[f"{project}:other:v1"], started_ms=worker.started_ms + 1)
    # The worker checks the group at each renewal of its announcement, after writing it: a renewal stamped
    # later than this moment saw "later"; the one after it shows that check finished.
    written = online._server_ms()
    renewals: set[int] = set()

    def checked_after(ms: int) -> bool:
        mine = [w["at_ms"] for w in online.live_workers() if w["worker"] == worker.worker_id]
        renewals.update(at for at in mine if at > ms)
        return worker.stopping or len(renewals) >= 2

    wait_for(lambda: checked_after(written), 30, "two renewals of the worker's announcement", interval=0.02)
    assert not worker.stopping and worker.exit_code == 0  # a worker started after this one is the one to leave
    online.retire_worker(group, "later")
    online.announce_worker(group, "earlier", [topic], views=[f"{project}:other:v1"], started_ms=worker.started_ms - 1)
    thread.join(30)
    assert not thread.is_alive() and worker.returned == 2
    assert ([w["worker"] for w in online.live_workers() if w["group"] == group]
            == ["earlier", "old-release", "same-views"])


def test_worker_refuses_two_sources_on_one_topic(servers) -> None:
    """A worker reads each topic as one source: views of a second source on the same topic would get nothing."""
    from featurestore.exceptions import ConfigurationError
    from featurestore.processing import prepare_view
    from workers.worker import Worker, WorkerConfig

    view = make_view("shared-topic")
    other = view.model_copy(update={"name": "other", "source": view.source.model_copy(update={"name": "merchants"})})
    online = RedisOnlineStore.from_url(servers.redis_url, "p")
    with pytest.raises(ConfigurationError, match="sources 'txns' and 'merchants' both read topic 'shared-topic'"):
        Worker([prepare_view(view, 1, "p"), prepare_view(other, 1, "p")], online, None, WorkerConfig(group="g"))
