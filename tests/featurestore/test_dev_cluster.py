"""The local Redis Cluster of the dev stack: the cluster itself, its URLs, and `featurestore dev up --redis-cluster`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import time
from pathlib import Path

import pytest

from featurestore.dev.cluster import CLUSTER_SLOTS, check_cluster, cluster_url, redis_py_url
from featurestore.dev.servers import LOOPBACK, RECOMMENDED_HASH_VALUE_BYTES, is_running, port_is_free
from tests.integration.test_stack_cli import _cli

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES = ["redis-node-1", "redis-node-2", "redis-node-3"]


# --- URLs -------------------------------------------------------------------

def test_cluster_url_names_the_first_node_as_seed() -> None:
    assert cluster_url([7001, 7002, 7003]) == "redis+cluster://127.0.0.1:7001"
    with pytest.raises(ValueError):
        cluster_url([])


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+cluster://127.0.0.1:7001", "redis://127.0.0.1:7001"),
    ("redis+cluster://127.0.0.1:7001/0", "redis://127.0.0.1:7001"),
    ("redis+cluster://u:pw@h1:7001,h2:7002/?socket_timeout=3", "redis://u:pw@h1:7001?socket_timeout=3"),
    ("rediss+cluster://h:7001", "rediss://h:7001"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_redis_py_url(url: str, expected: str) -> None:
    assert redis_py_url(url) == expected


@pytest.mark.parametrize("url", ["redis+cluster://h:7001/1", "http://h:7001", "redis+cluster:///0"])
def test_redis_py_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        redis_py_url(url)


# --- the cluster ------------------------------------------------------------

@pytest.mark.integration
def test_cluster_has_three_masters_covering_every_slot(redis_cluster_url: str) -> None:
    import redis

    client = redis.RedisCluster.from_url(redis_py_url(redis_cluster_url), socket_timeout=10)
    try:
        masters = client.get_primaries()
        assert len(masters) == 3
        slots = client.cluster_slots()
        covered = sum(end - start + 1 for start, end in slots)
        assert covered == CLUSTER_SLOTS
        owners = {(node["primary"][0], node["primary"][1]) for node in slots.values()}
        assert owners == {(node.host, node.port) for node in masters}

        limits = client.config_get("hash-max-ziplist-value", target_nodes=redis.RedisCluster.PRIMARIES)
        assert all(value == {"hash-max-ziplist-value": str(RECOMMENDED_HASH_VALUE_BYTES)}
                   for value in limits.values()), limits

        keys = [f"test_cluster:{i}" for i in range(30)]
        assert len({client.keyslot(key) for key in keys}) == len(keys)
        assert len({client.get_node_from_key(key).name for key in keys}) == 3  # every master holds some
        for key in keys:
            assert client.set(key, key.upper())
        assert [client.get(key) for key in keys] == [key.upper().encode() for key in keys]
        client.delete(*keys)
    finally:
        client.close()


@pytest.mark.integration
def test_check_cluster_passes_on_every_node(redis_cluster_url: str) -> None:
    import redis

    client = redis.RedisCluster.from_url(redis_py_url(redis_cluster_url), socket_timeout=10)
    try:
        ports = [node.port for node in client.get_primaries()]
    finally:
        client.close()
    assert "cluster_state:ok" in check_cluster(ports)


# --- `featurestore dev up --redis-cluster` ----------------------------------

def _gone(pid: int) -> bool:
    """True when *pid* no longer runs (a zombie counts: an init that does not reap leaves one)."""
    return not is_running(pid)


def _exports(stdout: str) -> dict[str, str]:
    return dict(shlex.split(line)[1].split("=", 1) for line in stdout.splitlines() if line.startswith("export "))


def _recorded(state: str) -> dict[str, dict]:
    return json.loads((Path(state) / "stack" / "stack.json").read_text())["servers"]


@pytest.mark.integration
@pytest.mark.slow
def test_dev_up_redis_cluster_status_down(tmp_path: Path) -> None:
    import redis

    state = str(tmp_path / "state")
    pids: dict[str, int] = {}
    up = _cli("dev", "up", "--redis-cluster", "--state-dir", state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        recorded = _recorded(state)
        pids = {name: rec["pid"] for name, rec in recorded.items()}
        assert list(recorded) == ["kafka", *NODES, "postgres"]
        ports = [recorded[name]["port"] for name in NODES]
        assert _exports(up.stdout)["FEATURESTORE_REDIS_URL"] == f"redis+cluster://127.0.0.1:{ports[0]}"
        assert f"FEATURESTORE_REDIS_URL=redis+cluster://127.0.0.1:{ports[0]}\n" in up.stdout
        for name in NODES:
            assert Path(recorded[name]["log"]).is_file()
            assert (Path(state) / "stack" / "redis-cluster" / str(recorded[name]["port"]) / "nodes.conf").is_file()

        status = _cli("dev", "status", "--json", "--state-dir", state)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert list(report) == ["kafka", *NODES, "postgres"]
        assert all(entry["healthy"] for entry in report.values()), report
        for name in NODES:
            assert "cluster_state:ok" in report[name]["detail"]
            assert report[name]["pid"] == pids[name]
        table = _cli("dev", "status", "--state-dir", state)
        assert table.returncode == 0, table.stdout
        for name in NODES:
            line = next(line for line in table.stdout.splitlines() if line.startswith(name + " "))
            assert "healthy" in line.split()

        client = redis.RedisCluster.from_url(redis_py_url(_exports(up.stdout)["FEATURESTORE_REDIS_URL"]))
        assert len(client.get_primaries()) == 3
        client.set("cli:a", "1")
        client.close()

        again = _cli("dev", "up", "--redis-cluster", "--state-dir", state)  # idempotent: same processes
        assert again.returncode == 0, again.stderr
        assert _recorded(state) == recorded

        single = _cli("dev", "up", "--state-dir", state)  # the other Redis: refused, nothing changes
        assert single.returncode == 2
        assert "Redis Cluster" in single.stderr and "featurestore dev down" in single.stderr, single.stderr
        assert _recorded(state) == recorded
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (Path(state) / "stack" / "stack.json").exists()
    assert not (Path(state) / "stack" / "redis-cluster").exists()
    for name, pid in pids.items():
        assert _gone(pid), f"{name} (pid {pid}) still running after `dev down`"


@pytest.mark.integration
@pytest.mark.slow
def test_dev_up_replaces_a_cluster_that_lost_a_node(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    pids: list[int] = []
    up = _cli("dev", "up", "--redis-cluster", "--state-dir", state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        before = _recorded(state)
        pids += [rec["pid"] for rec in before.values()]
        victim = before["redis-node-2"]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _gone(victim):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        status = _cli("dev", "status", "--json", "--state-dir", state)
        assert status.returncode == 1
        report = json.loads(status.stdout)
        assert not report["redis-node-2"]["healthy"]
        assert "not running" in report["redis-node-2"]["detail"]
        assert report["kafka"]["healthy"] and report["postgres"]["healthy"]

        again = _cli("dev", "up", "--redis-cluster", "--state-dir", state)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "data was lost" in again.stderr
        after = _recorded(state)
        pids += [rec["pid"] for rec in after.values()]
        assert all(after[name]["pid"] != before[name]["pid"] for name in NODES)
        assert after["kafka"] == before["kafka"] and after["postgres"] == before["postgres"]
        assert _exports(again.stdout)["FEATURESTORE_REDIS_URL"] == _exports(up.stdout)["FEATURESTORE_REDIS_URL"]
        assert all(_gone(before[name]["pid"]) for name in NODES)  # the survivors were stopped
        check_cluster([after[name]["port"] for name in NODES])
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids:
        assert _gone(pid)


@pytest.mark.integration
@pytest.mark.slow
def test_dev_up_names_the_new_cluster_url_when_the_seed_port_is_taken(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    up = _cli("dev", "up", "--redis-cluster", "--state-dir", state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        seed = _recorded(state)["redis-node-1"]
        os.kill(seed["pid"], signal.SIGKILL)
        assert port_is_free(seed["port"], wait_s=10)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((LOOPBACK, seed["port"]))
            squatter.listen()
            again = _cli("dev", "up", "--redis-cluster", "--state-dir", state)
        assert again.returncode == 0, again.stdout + again.stderr
        new = _recorded(state)["redis-node-1"]
        assert new["port"] != seed["port"]
        url = _exports(again.stdout)["FEATURESTORE_REDIS_URL"]
        assert url == f"redis+cluster://127.0.0.1:{new['port']}"
        warning = [line for line in again.stderr.splitlines() if line.startswith("WARNING: redis-node-1")]
        assert warning and f"port {seed['port']}" in warning[0] and url in warning[0], again.stderr
        check_cluster([rec["port"] for name, rec in _recorded(state).items() if name in NODES])
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0, down.stdout + down.stderr


def test_dev_up_redis_cluster_refuses_a_stack_with_a_single_redis(tmp_path: Path) -> None:
    """The choice is checked before any server starts: a recorded single Redis (here a dead one) is named."""
    folder = tmp_path / "state" / "stack"
    folder.mkdir(parents=True)
    record = {"name": "redis", "pid": 2 ** 22 + 1, "port": 1, "url": "redis://127.0.0.1:1/0",
              "started_at": "2026-01-01T00:00:00+00:00", "log": str(folder / "redis.log"), "proc_start": None}
    (folder / "stack.json").write_text(json.dumps({"version": 1, "started_at": record["started_at"],
                                                   "servers": {"redis": record}}))
    proc = _cli("dev", "up", "--redis-cluster", "--state-dir", str(tmp_path / "state"), timeout=60)
    assert proc.returncode == 2
    assert "single Redis" in proc.stderr and "featurestore dev down" in proc.stderr, proc.stderr
    assert json.loads((folder / "stack.json").read_text())["servers"] == {"redis": record}
