"""The embedded dev stack: real Kafka-protocol, Redis and PostgreSQL servers as child processes.

All state lives under ``<state_dir>/stack/``: server data, one log file per
server and ``stack.json`` recording pids, ports, URLs and start times, so that
``up``, ``status`` and ``down`` work across separate CLI invocations.  ``up``
restarts a server that died on its recorded port, so the settings printed
before stay valid; only when another process holds that port does the server
get a new one (``StackInfo.moved``).

With ``up(redis_cluster=True)`` the stack runs a local Redis Cluster of three masters
(``featurestore.dev.cluster``) instead of the single Redis: each node is a server of its
own in stack.json (``redis-node-1`` ...) and the stack's Redis URL is
``redis+cluster://127.0.0.1:P1``.  A cluster that lost a node is not repaired: ``up``
stops the other nodes and creates an empty cluster, on the recorded ports when they are free.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from featurestore.dev.cluster import (
    CLUSTER_NODES,
    DATA_FOLDER as CLUSTER_DATA_FOLDER,
    cluster_url,
    create_cluster,
    free_cluster_port,
    port_usable,
)
from featurestore.dev.cluster import recorded_cluster as _recorded_cluster, server_spec as _spec, stack_names as _names
from featurestore.dev.servers import CHILDREN as _CHILDREN
from featurestore.dev.servers import SERVERS, ServerSpec, free_port, port_answers, port_is_free
from featurestore.dev.servers import is_running as _is_running
from featurestore.dev.servers import proc_stat as _proc_stat
from featurestore.dev.servers import log_tail as _log_tail
from featurestore.dev.servers import stop_process as _stop_process
from featurestore.exceptions import StackError
from featurestore.settings import Settings

__all__ = ["EmbeddedStack", "StackInfo", "ServerRecord", "resolve_servers", "CLUSTER_NODES"]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_POLL_S = 0.2
#: Folders of ``stack/`` holding server data (the broker keeps none): removed by ``down`` unless kept.
DATA_FOLDERS = ("redis", CLUSTER_DATA_FOLDER, "pgdata")
#: the servers of the Redis Cluster that replaces the single ``redis`` with ``up(redis_cluster=True)``
_PORT_RELEASE_S = 2.0  # how long a dead server's port may stay held before it is given up


@dataclass
class ServerRecord:
    """One running server as recorded in stack.json."""

    name: str
    pid: int
    port: int
    url: str
    started_at: str
    log: str
    proc_start: int | None = None  # /proc start time, guards against pid reuse


@dataclass
class StackInfo:
    """Connection details of a running embedded stack."""

    kafka_bootstrap: str
    redis_url: str
    postgres_dsn: str
    state_dir: str
    started_at: str
    servers: dict[str, ServerRecord] = field(default_factory=dict)
    #: servers this ``up`` restarted on a new port because another process held their recorded
    #: one: name -> (recorded port, new port)
    moved: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: True when Redis is a local Redis Cluster (servers ``redis-node-1`` ...), not the single ``redis``
    redis_cluster: bool = False

    def pids(self) -> dict[str, int]:
        """Server name -> recorded pid."""
        return {name: rec.pid for name, rec in self.servers.items()}

    def moved_warnings(self) -> list[str]:
        """One line per moved server: which port it left, where it is now and what to do."""
        return [f"{name} was restarted on port {new}, not on its port {old}, which another process holds: "
                f"workers and shells using the old settings must be restarted with the new ones "
                f"({self.redis_url if name in CLUSTER_NODES else self.servers[name].url})"
                for name, (old, new) in self.moved.items()]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- the stack ------------------------------------------------------------------

class EmbeddedStack:
    """Real Kafka-protocol, Redis and PostgreSQL servers on free loopback ports, state under ``<state_dir>/stack``."""

    def __init__(self, state_dir: str | os.PathLike[str] = ".featurestore") -> None:
        self.state_dir = Path(state_dir).absolute()
        self.folder = self.state_dir / "stack"
        self.state_file = self.folder / "stack.json"

    # state file
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self) -> tuple[str | None, dict[str, ServerRecord]]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None, {}
        except (OSError, ValueError) as exc:
            raise StackError(f"cannot read {self.state_file}: {exc}") from exc
        records = {name: ServerRecord(**rec) for name, rec in data.get("servers", {}).items()}
        return data.get("started_at"), records

    def _save(self, started_at: str, records: dict[str, ServerRecord]) -> None:
        data = {"version": STATE_VERSION, "started_at": started_at,
                "servers": {name: asdict(rec) for name, rec in records.items()}}
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _info(self, started_at: str, records: dict[str, ServerRecord]) -> StackInfo:
        cluster = bool(_recorded_cluster(records))
        redis_url = cluster_url([records[name].port for name in CLUSTER_NODES]) if cluster else records["redis"].url
        return StackInfo(kafka_bootstrap=records["kafka"].url, redis_url=redis_url,
                         postgres_dsn=records["postgres"].url, state_dir=str(self.state_dir),
                         started_at=started_at, servers={name: records[name] for name in _names(cluster)},
                         redis_cluster=cluster)

    def info(self) -> StackInfo | None:
        """The recorded stack, or None when none is recorded (says nothing about health)."""
        started_at, records = self._load()
        if started_at is None or set(records) != set(_names(bool(_recorded_cluster(records)))):
            return None
        return self._info(started_at, records)

    def _mode_conflict(self, records: dict[str, ServerRecord], redis_cluster: bool) -> str:
        if redis_cluster:
            rec = records["redis"]
            return (f"the embedded stack in {self.folder} runs a single Redis (redis, pid {rec.pid}, {rec.url}), "
                    f"not a Redis Cluster: run `featurestore dev down` first, then `featurestore dev up "
                    f"--redis-cluster`")
        nodes = [records[name] for name in CLUSTER_NODES if name in records]
        ports = ", ".join(str(rec.port) for rec in nodes)
        return (f"the embedded stack in {self.folder} runs a Redis Cluster of {len(nodes)} nodes (ports {ports}), "
                f"not a single Redis: run `featurestore dev down` first, then `featurestore dev up`; "
                f"or keep using the cluster with `featurestore dev up --redis-cluster`")

    # lifecycle
    def up(self, timeout: float = 60, redis_cluster: bool | None = None) -> StackInfo:
        """Start the servers that are not running and wait until all answer; idempotent.

        *redis_cluster*: True runs a local Redis Cluster of three masters instead of the single Redis,
        False the single Redis; None keeps what stack.json records (the single Redis when nothing).
        StackError when it asks for the other one than the recorded stack runs (`dev down` first)."""
        with self._lock():
            started_at, records = self._load()
            recorded = _recorded_cluster(records)
            if redis_cluster is None:
                redis_cluster = bool(recorded)
            elif recorded is not None and recorded != redis_cluster:
                raise StackError(self._mode_conflict(records, redis_cluster))
            started_at = started_at or _now()
            started: dict[str, subprocess.Popen] = {}
            dead: dict[str, ServerRecord] = {}
            moved: dict[str, tuple[int, int]] = {}
            self._start_missing(records, redis_cluster, started, dead, moved)
            new_cluster = redis_cluster and self._start_cluster_nodes(records, started, dead, moved)
            records = {name: records[name] for name in _names(redis_cluster) if name in records}
            self._save(started_at, records)  # recorded before waiting, so `down` can always clean up
            deadline = time.monotonic() + timeout
            try:
                if new_cluster:
                    create_cluster([records[name].port for name in CLUSTER_NODES], deadline)
                self._wait_healthy(records, started, deadline)
            except BaseException:
                for name in started:
                    with contextlib.suppress(StackError):
                        _stop_process(records.pop(name), _spec(name))
                    if name in dead:  # keeps its port for the next `up`
                        records[name] = dead[name]
                if records:
                    self._save(started_at, records)
                else:
                    self.state_file.unlink(missing_ok=True)
                raise
            info = self._info(started_at, records)
            info.moved = moved
            return info

    def _start_missing(self, records: dict[str, ServerRecord], redis_cluster: bool,
                       started: dict[str, subprocess.Popen], dead: dict[str, ServerRecord],
                       moved: dict[str, tuple[int, int]]) -> None:
        """Start the servers (the cluster's nodes aside) that are not running, on their recorded port when free."""
        for name, spec in SERVERS.items():
            if name == "redis" and redis_cluster:
                continue
            rec = records.get(name)
            if rec is not None and _is_running(rec.pid, rec.proc_start):
                continue
            if rec is None:
                port = free_port()
            else:
                dead[name] = rec
                port = rec.port if port_is_free(rec.port, _PORT_RELEASE_S) else free_port()
                if port != rec.port:
                    moved[name] = (rec.port, port)
                logger.warning("%s (pid %s) is no longer running; restarting it on port %s", name, rec.pid, port)
            proc = self._start(spec, port)
            started[name] = proc
            records[name] = rec = ServerRecord(
                name=name, pid=proc.pid, port=port, url=spec.url(port),
                started_at=_now(), log=str(self.folder / f"{name}.log"),
                proc_start=(_proc_stat(proc.pid) or (None, None))[1],
            )
            logger.info("started %s (pid %s) on port %s", name, rec.pid, rec.port)

    def _start_cluster_nodes(self, records: dict[str, ServerRecord], started: dict[str, subprocess.Popen],
                             dead: dict[str, ServerRecord], moved: dict[str, tuple[int, int]]) -> bool:
        """Start empty nodes for a fresh cluster unless every recorded node runs; True when it did.

        A cluster that lost a node loses its data: the nodes still running are stopped first.  The nodes
        come back on their recorded ports when these (and their bus ports) are free."""
        recorded = {name: records[name] for name in CLUSTER_NODES if name in records}
        running = {name: rec for name, rec in recorded.items() if _is_running(rec.pid, rec.proc_start)}
        if len(running) == len(CLUSTER_NODES):
            return False
        if recorded:
            gone = ", ".join(f"{name} (pid {rec.pid})" for name, rec in recorded.items() if name not in running)
            logger.warning("Redis Cluster node %s is no longer running; stopping the other nodes and starting a "
                           "fresh cluster: the cluster's data was lost", gone)
        for rec in running.values():
            _stop_process(rec, _spec(rec.name))
            _CHILDREN.pop(rec.pid, None)
        shutil.rmtree(self.folder / CLUSTER_DATA_FOLDER, ignore_errors=True)
        taken = [rec.port for rec in recorded.values()]
        chosen: list[int] = []
        for name in CLUSTER_NODES:
            rec = recorded.get(name)
            if rec is not None and rec.port not in chosen and port_usable(rec.port, _PORT_RELEASE_S):
                port = rec.port
            else:
                port = free_cluster_port(taken + chosen)
            chosen.append(port)
            if rec is not None:
                dead[name] = rec
                if port != rec.port and name == CLUSTER_NODES[0]:  # the seed node: the cluster's URL changes
                    moved[name] = (rec.port, port)
            spec = _spec(name)
            proc = self._start(spec, port)
            started[name] = proc
            records[name] = ServerRecord(
                name=name, pid=proc.pid, port=port, url=spec.url(port),
                started_at=_now(), log=str(self.folder / f"{name}.log"),
                proc_start=(_proc_stat(proc.pid) or (None, None))[1],
            )
            logger.info("started %s (pid %s) on port %s", name, proc.pid, port)
        return True

    def _start(self, spec: ServerSpec, port: int) -> subprocess.Popen:
        log = self.folder / f"{spec.name}.log"
        with open(log, "a") as handle:
            handle.write(f"--- {_now()} starting {spec.name} on port {port}\n")
        try:
            proc = spec.start(port, self.folder, log)
        except (OSError, subprocess.SubprocessError) as exc:
            raise StackError(f"could not start {spec.name}: {exc}\n{_log_tail(log)}") from exc
        _CHILDREN[proc.pid] = proc
        return proc

    def _wait_healthy(self, records: dict[str, ServerRecord], started: dict[str, subprocess.Popen],
                      deadline: float) -> None:
        pending = dict(records)
        last_error: dict[str, str] = {}
        while pending:
            for name, rec in list(pending.items()):
                proc = started.get(name)
                if proc is not None and proc.poll() is not None:
                    raise StackError(f"{name} exited with code {proc.returncode} while starting; "
                                     f"log {rec.log}:\n{_log_tail(rec.log)}")
                if not port_answers(rec.port, timeout=0.5):
                    last_error[name] = f"port {rec.port} not answering"
                    continue
                try:
                    _spec(name).check(rec.url)
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error[name] = f"{type(exc).__name__}: {exc}"
                    continue
                del pending[name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                details = "; ".join(f"{n}: {last_error.get(n, '?')}" for n in pending)
                raise StackError(f"embedded stack not ready in time ({details}); logs in {self.folder}")
            time.sleep(_POLL_S)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per server: pid, port, url, healthy (answers a real protocol request) and a detail line.

        A Redis Cluster's nodes are servers of their own; a node is healthy when it reports
        ``cluster_state:ok`` with all 16384 slots assigned."""
        _, records = self._load()
        result: dict[str, dict[str, Any]] = {}
        for name in _names(bool(_recorded_cluster(records))):
            spec = _spec(name)
            rec = records.get(name)
            if rec is None:
                result[name] = {"pid": None, "port": None, "url": None, "healthy": False, "detail": "not started"}
                continue
            entry = {"pid": rec.pid, "port": rec.port, "url": rec.url, "healthy": False}
            if not _is_running(rec.pid, rec.proc_start):
                entry["detail"] = f"process {rec.pid} is not running"
            else:
                try:
                    entry["detail"] = spec.check(rec.url)
                    entry["healthy"] = True
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    entry["detail"] = f"{type(exc).__name__}: {exc}"
            result[name] = entry
        return result

    def down(self, keep_data: bool = False) -> list[str]:
        """Stop exactly the recorded processes, remove stack.json; returns the names that were recorded.

        The broker keeps topics in memory only, so it comes back empty; unless ``keep_data``, the
        Redis and PostgreSQL data go too (``DATA_FOLDERS``), and the next ``up`` starts a consistent,
        empty stack.  Kept, they hold offsets and event logs of topics that no longer exist: a worker
        then stops on a topic reset until ``featurestore reset --source NAME``.  A Redis Cluster's nodes
        are stopped one by one, and their data folders (``redis-cluster``) go unless ``keep_data``."""
        with self._lock():
            _, records = self._load()
            errors = []
            for name in reversed(_names(bool(_recorded_cluster(records)))):
                rec = records.get(name)
                if rec is None:
                    continue
                try:
                    _stop_process(rec, _spec(name))
                    _CHILDREN.pop(rec.pid, None)
                except StackError as exc:
                    errors.append(str(exc))
            self.state_file.unlink(missing_ok=True)
            if errors:
                raise StackError("; ".join(errors))
            if not keep_data:
                for folder in DATA_FOLDERS:
                    shutil.rmtree(self.folder / folder, ignore_errors=True)
            return list(records)


def resolve_servers(settings: Settings, timeout: float = 60, say=None) -> Settings:
    """Settings with every server named: unchanged if all three are set, else filled from the embedded
    stack, started if needed.  Then one line says so: to ``say(line)`` (a command prints it to
    stderr), else as a WARNING of this module's logger (a library call)."""
    if not settings.uses_embedded():
        return settings
    stack = EmbeddedStack(settings.state_dir)
    info = stack.up(timeout=timeout)
    for line in info.moved_warnings():
        logger.warning("%s", line)
    unset = [f"FEATURESTORE_{n}" for n, v in (("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
                                              ("REDIS_URL", settings.redis_url),
                                              ("POSTGRES_DSN", settings.postgres_dsn))
             if not v]
    line = (f"featurestore: using the embedded stack of local servers (data in {stack.folder}; "
            f"`featurestore dev down` stops it) because {', '.join(unset)} "
            f"{'is' if len(unset) == 1 else 'are'} not set")
    if say is not None:
        say(line)
    else:
        logger.warning("%s", line)
    return settings.with_servers(
        kafka=None if settings.kafka_bootstrap_servers else info.kafka_bootstrap,
        redis_url=None if settings.redis_url else info.redis_url,
        postgres_dsn=None if settings.postgres_dsn else info.postgres_dsn,
    )
