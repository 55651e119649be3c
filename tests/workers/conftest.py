"""Fixtures of the worker tests: worker subprocesses, the session Redis, a unique project."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from workers.kafka_client import KAFKA_CLIENTS
from workers.worker import SHUTDOWN_GRACE_S

REPO = Path(__file__).resolve().parents[2]


# -- worker subprocesses ------------------------------------------------------------------

class WorkerProcess:
    """``python -m tests.workers.worker_main`` with its stderr in a log file."""

    def __init__(self, log: Path, args: list[str]):
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.workers.worker_main", *args], cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err)

    def assignment(self) -> list[str] | None:
        """The partitions of the last ``assigned`` log line (None before the first)."""
        lines = re.findall(r"workers\.worker: assigned (\[.*\])", self.log.read_text(errors="replace"))
        return None if not lines else json.loads(lines[-1].replace("'", '"'))

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def sigterm(self, timeout: float = SHUTDOWN_GRACE_S + 15) -> tuple[int, float, dict]:
        """SIGTERM; returns (exit code, seconds to exit, the JSON it printed)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        elapsed = time.monotonic() - started
        return self.proc.returncode, elapsed, self.printed(out)

    @staticmethod
    def printed(out: bytes) -> dict:
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def kafka_client(self) -> str | None:
        """The Kafka client the worker said it consumes with (None before it started)."""
        found = re.findall(r"Kafka client (\S+); joining the group", self.log.read_text(errors="replace"))
        return found[-1] if found else None

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def spawn(servers, tmp_path, pg_schema):
    """``spawn(name, topic, project, group, *extra_args, batch_size=50, redis_url=None)`` starts
    a worker subprocess (on the session servers unless ``redis_url`` is given); all are
    killed (by their pid) at the end of the test."""
    started: list[WorkerProcess] = []

    def make(name, topic, project, group, *extra, batch_size=50, redis_url=None) -> WorkerProcess:
        args = ["--topic", topic, "--project", project, "--group", group, "--schema", pg_schema,
                "--bootstrap", servers.kafka_bootstrap, "--redis", redis_url or servers.redis_url,
                "--postgres", servers.postgres_dsn, "--batch-size", str(batch_size), *map(str, extra)]
        w = WorkerProcess(tmp_path / f"{name}.log", args)
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)
        if w.proc.stdout is not None:
            w.proc.stdout.close()


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request, monkeypatch) -> str:
    """Runs a test once per Kafka client: sets ``FEATURESTORE_KAFKA_CLIENT``, which ``build_worker`` (in this
    process) and the ``spawn``ed workers (in theirs) read.  A test that does not ask for it consumes with the
    client ``FEATURESTORE_KAFKA_CLIENT`` names (default kafka-python)."""
    monkeypatch.setenv("FEATURESTORE_KAFKA_CLIENT", request.param)
    return request.param


@pytest.fixture
def shared_redis(servers):
    client = redis.Redis.from_url(servers.redis_url, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def project(unique_name, servers):
    """A unique project name; its keys on the session Redis are deleted afterwards."""
    name = unique_name("p")
    yield name
    client = redis.Redis.from_url(servers.redis_url, socket_timeout=10)
    keys = list(client.scan_iter(match=f"fs:{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
