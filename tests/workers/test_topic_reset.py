"""A topic reset is a loud stop, never a silent skip: a topic deleted and created again under a
running group, and a broker restarted empty while Redis and PostgreSQL keep their data.

Real brokers: the session's, and a private Tansu broker of the test's own for the restart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import UnknownTopicOrPartitionError

from featurestore.dev.servers import _kafka_url, _start_kafka, free_port, port_answers
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.reset import aplan_reset, areset_source
from tests.workers.support import T0, assert_same, build_worker, make_events, make_view, online_values, reference_values
from tests.workers.test_poison import fetch, run_to_end
from tests.workers.test_worker_faults import run_in_thread, send_events, wait_for
from workers.topic_reset import TOPIC_RESET_EXIT

pytestmark = pytest.mark.integration


def later_events(n: int, seed: int) -> list[dict]:
    """Events of the recreated topic: new ids, times after the first stream's."""
    events = make_events(n, seed=seed)
    for e in events:
        e["transaction_id"] = "new-" + e["transaction_id"]
        e["event_time"] += 30 * 86_400_000
    return events


def recreate(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
                break
            except Exception:  # noqa: BLE001 - the deletion is still under way: try again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        admin.close()


def logged_ids(servers, schema: str, project: str) -> list[str]:
    from featurestore.offline.postgres import qident, table_name
    rows = fetch(servers.postgres_dsn,
                 f'SELECT event_id FROM {qident(schema)}.{qident(table_name(project, "events", "txns"))}')
    return sorted(r["event_id"] for r in rows)


# kafka-python whatever FEATURESTORE_KAFKA_CLIENT says: the confluent client can crash the process here (the
# next test, in a process of its own)
@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_topic_recreated_under_a_running_worker_stops_it_loudly(kafka_client, servers, topic_factory, unique_name,
                                                                project, shared_redis, pg_schema, caplog):
    topic = topic_factory(partitions=2)
    view = make_view(topic, lateness="1d")
    first = make_events(200, seed=21)
    send_events(servers, topic, first)
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=50)
    with caplog.at_level(logging.ERROR, logger="workers.worker"):
        thread, outcome = run_in_thread(worker, threading.Event())
        wait_for(lambda: worker.records_done >= len(first), 60, "the first stream committed", interval=0.05)
        recreate(servers.kafka_bootstrap, topic, 2)
        send_events(servers, topic, later_events(40, seed=22))
        thread.join(90)
    assert not thread.is_alive(), "the worker kept running after its topic was recreated"
    assert outcome.get("code") == TOPIC_RESET_EXIT, outcome
    assert worker.topic_reset is not None and worker.topic_reset.topic == topic
    assert not worker.metrics.ready
    assert sum(worker.metrics.topic_resets.labels(topic, str(p))._value.get() for p in (0, 1)) >= 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"topic reset: partition {topic}:" in text and "featurestore reset --source txns" in text
    assert "our last applied offset" in text and "end offset" in text
    # nothing of the new topic was applied, nothing of the old one lost
    assert_same(online_values(shared_redis, project, view), reference_values(view, first))


def test_topic_recreated_under_a_running_confluent_worker_is_never_skipped(servers, topic_factory, unique_name,
                                                                           project, shared_redis, spawn, monkeypatch):
    """The confluent client (``workers.kafka_client``), in a process of its own: librdkafka 2.16 crashes
    (SIGSEGV) on the embedded broker's answer to a fetch of a topic deleted under it, so the worker stops
    loudly (exit 3) or by that crash; either way nothing of the new topic is applied, and a worker started
    again stops with exit 3 naming the reset (in a group of its own: the crashed member would hold the
    partitions until its session expires; the check reads the event log's offsets too)."""
    monkeypatch.setenv("FEATURESTORE_KAFKA_CLIENT", "confluent")
    topic, group = topic_factory(partitions=2), unique_name("g")
    view = make_view(topic)  # the view of tests.workers.worker_main
    first = make_events(200, seed=28)
    sent = send_events(servers, topic, first)
    running = spawn("first", topic, project, group)
    wait_for(lambda: {k.decode(): int(v) for k, v in shared_redis.hgetall(f"fs:{project}:offsets:{group}").items()}
             == sent.ends, 60, lambda: f"the first stream committed:\n{running.tail()}", interval=0.05)
    recreate(servers.kafka_bootstrap, topic, 2)
    send_events(servers, topic, later_events(40, seed=29))
    assert running.proc.wait(90) in (TOPIC_RESET_EXIT, -signal.SIGSEGV), running.tail()
    assert running.kafka_client() == "confluent"
    restarted = spawn("restarted", topic, project, unique_name("g"))
    assert restarted.proc.wait(90) == TOPIC_RESET_EXIT, restarted.tail()
    assert f"topic reset: partition {topic}:" in restarted.log.read_text()
    assert_same(online_values(shared_redis, project, view), reference_values(view, first))


def test_reprocess_starts_the_source_over_on_the_recreated_topic(servers, topic_factory, unique_name, project,
                                                                 shared_redis, pg_schema):
    topic = topic_factory(partitions=2)
    view = make_view(topic, lateness="1d")
    first, second = make_events(200, seed=23), later_events(60, seed=24)
    send_events(servers, topic, first)
    group = unique_name("g")
    assert "error" not in run_to_end(build_worker(servers, view, project, group, pg_schema, batch_size=50), len(first))
    recreate(servers.kafka_bootstrap, topic, 2)
    send_events(servers, topic, second)
    worker = build_worker(servers, view, project, group, pg_schema, batch_size=50, on_topic_reset="reprocess")
    outcome = run_to_end(worker, len(second))
    assert "error" not in outcome, outcome
    assert worker.records_done == len(second)
    assert_same(online_values(shared_redis, project, view), reference_values(view, second))
    assert logged_ids(servers, pg_schema, project) == sorted(e["transaction_id"] for e in second)


@pytest.fixture
def private_broker(tmp_path):
    """``start()`` starts an empty Tansu broker on one port (again after ``stop()``): its address."""
    port = free_port()
    procs = []

    def start() -> str:
        proc = _start_kafka(port, tmp_path, tmp_path / "broker.log")
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not port_answers(port):
            assert time.monotonic() < deadline, "private broker did not start"
            time.sleep(0.1)
        return _kafka_url(port)

    def stop() -> None:
        procs[-1].kill()
        procs[-1].wait(10)

    yield type("Broker", (), {"start": staticmethod(start), "stop": staticmethod(stop)})
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_broker_restarted_empty_with_the_stores_kept(servers, unique_name, project, shared_redis, pg_schema,
                                                     private_broker):
    bootstrap = private_broker.start()
    mine = dataclasses.replace(servers, kafka_bootstrap=bootstrap)
    topic = unique_name("topic")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    view = make_view(topic, lateness="1d")
    first, second = make_events(150, seed=25), later_events(30, seed=26)
    send_events(mine, topic, first)
    group = unique_name("g")
    assert "error" not in run_to_end(build_worker(mine, view, project, group, pg_schema, batch_size=50), len(first))

    private_broker.stop()  # the broker's log is memory only: it comes back empty
    bootstrap = private_broker.start()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    except UnknownTopicOrPartitionError:
        pass
    admin.close()
    send_events(mine, topic, second)
    worker = build_worker(mine, view, project, group, pg_schema, batch_size=50)
    outcome = run_to_end(worker, len(second), timeout=60)
    assert outcome.get("code") == TOPIC_RESET_EXIT, outcome
    assert worker.records_done == 0
    assert_same(online_values(shared_redis, project, view), reference_values(view, first))

    # the resolution the error names: reset the source, then the worker applies every new event
    async def reset():
        store = await PostgresOfflineStore.create(servers.postgres_dsn, project, pg_schema)
        try:
            plan = await aplan_reset(worker.online, store, view.source, [f"{project}:stats:v1"])
            assert plan.event_log_rows == len(first) and plan.states[f"{project}:stats:v1"] == 20
            assert set(plan.offsets[group]) == {f"{topic}:0", f"{topic}:1"}
            await areset_source(worker.online, store, view.source, [f"{project}:stats:v1"])
        finally:
            await store.close()

    asyncio.run(reset())
    again = build_worker(mine, view, project, group, pg_schema, batch_size=50)
    assert "error" not in run_to_end(again, len(second))
    assert again.records_done == len(second)
    assert_same(online_values(shared_redis, project, view), reference_values(view, second))
    assert T0 < min(e["event_time"] for e in second)


def test_reset_command_lists_then_deletes(servers, topic_factory, unique_name, project, shared_redis, pg_schema,
                                          tmp_path):
    """`featurestore reset --source NAME`: without --yes and without a terminal it deletes nothing; with
    --yes it lists what it deletes, deletes it, and a worker then reads the topic from its start."""
    import os
    import subprocess
    import sys

    topic = topic_factory(partitions=2)
    events = make_events(80, seed=27)
    send_events(servers, topic, events)
    repo = tmp_path / "repo.py"
    repo.write_text("from tests.workers.support import make_view\n"
                    f"stats = make_view({topic!r}, lateness='1d')\n"
                    "customer, txns = stats.entity, stats.source\n")
    view = make_view(topic, lateness="1d")
    group = unique_name("g")
    assert "error" not in run_to_end(build_worker(servers, view, project, group, "public", batch_size=40), len(events))
    env = {**os.environ, "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": servers.kafka_bootstrap,
           "FEATURESTORE_REDIS_URL": servers.redis_url, "FEATURESTORE_POSTGRES_DSN": servers.postgres_dsn,
           "FEATURESTORE_PROJECT": project, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "featurestore", "reset", "--repo", str(repo), "--source", "txns"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert refused.returncode == 1 and "pass --yes" in refused.stderr, refused.stderr
    assert len(online_values(shared_redis, project, view)) > 0
    done = subprocess.run([*cmd, "--yes"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"applied offsets of consumer group {group!r}" in done.stdout and "80 event-log rows" in done.stdout
    assert online_values(shared_redis, project, view) == {}
    assert shared_redis.hgetall(f"fs:{project}:offsets:{group}") == {}
    assert logged_ids(servers, "public", project) == []
    again = build_worker(servers, view, project, group, "public", batch_size=40)
    assert "error" not in run_to_end(again, len(events))
    assert_same(online_values(shared_redis, project, view), reference_values(view, events))
