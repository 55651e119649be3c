"""A PostgreSQL outage, end to end: a PostgreSQL of this module alone (the embedded stack's binaries) is
stopped under a running server and started again.  Reads go on from Redis; what needs PostgreSQL
(``/readyz``, ``/push`` to the offline store, ``/materialize``) answers 503 with ``Retry-After``; the
registry poll fails quietly; everything answers again once PostgreSQL is back."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from types import SimpleNamespace

import pytest

from featurestore.dev.servers import _check_postgres, _postgres_url, _start_postgres, free_port
from featurestore.online import RedisOnlineStore
from tests.support import apply_repo

from .conftest import EXAMPLE, wait_for
from .test_errors import ONE, refused

pytestmark = pytest.mark.integration

ROW = {"transaction_id": "pg1", "customer_id": "PG1", "amount": 3.5, "merchant_category": "fuel", "is_online": True,
       "event_time": 1_767_225_600_000}


def start_postgres(port: int, folder) -> subprocess.Popen:
    """This test's PostgreSQL on ``port``, data in ``folder`` (kept across a stop and a start)."""
    process = _start_postgres(port, folder, folder / "postgres.log")
    deadline = time.monotonic() + 60
    while True:
        try:
            _check_postgres(_postgres_url(port))
            return process
        except Exception:  # noqa: BLE001 - not up yet
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"postgres did not start: {(folder / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.2)


def stop_postgres(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown: sessions rolled back, clients cut
        process.wait(30)


def push(served, to: str):
    return served.client.post("/push", json={"source": "transactions", "rows": [ROW], "to": to})


def test_a_postgres_outage_is_503_where_postgres_is_used_and_the_server_recovers(servers, serve, tmp_path) -> None:
    port = free_port()
    postgres = start_postgres(port, tmp_path)
    name = f"pgout_{uuid.uuid4().hex[:10]}"
    dsn = _postgres_url(port)
    try:
        apply_repo(SimpleNamespace(postgres_dsn=dsn), name, EXAMPLE)
        env = {"FEATURESTORE_PROJECT": name, "FEATURESTORE_REDIS_URL": servers.redis_url,
               "FEATURESTORE_POSTGRES_DSN": dsn, "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": servers.kafka_bootstrap}
        served = serve({**_base_env(), **env}, "--registry-poll-seconds", "0.2", "--log-level", "INFO")
        assert served.client.get("/readyz").json()["postgres"] == "ok"
        assert push(served, "offline").json()["offline_rows"] == 1

        stop_postgres(postgres)
        ready = served.client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1", ready.text
        assert ready.json()["postgres"].startswith("unavailable") and ready.json()["redis"] == "ok"
        # an online push too: the states of a source with event ids are rebuilt with the event log's history
        for response in (push(served, "offline"), push(served, "online_and_offline"), push(served, "online"),
                         served.client.post("/materialize", json={"start_ts": 0, "end_ts": 1_767_225_700_000})):
            refused(response, 503, "store_unavailable", "retry after 1 s")
            assert response.headers["retry-after"] == "1"
        assert served.client.post("/get-online-features", json=ONE).status_code == 200  # Redis alone serves reads
        assert served.client.get("/healthz").status_code == 200
        wait_for(lambda: "registry poll failed" in served.log_text())  # the poll (every 0.2 s) meets the outage

        postgres = start_postgres(port, tmp_path)
        wait_for(lambda: served.client.get("/readyz").status_code == 200)  # the pools reconnect at their next use
        assert served.client.get("/readyz").json()["postgres"] == "ok"
        again = push(served, "offline")
        assert again.status_code == 200 and again.json()["skipped_existing"] == 1, again.text
        wait_for(lambda: "registry poll succeeds again" in served.log_text())
        served.stop()
        log = served.log_text()
        assert "registry poll succeeds again" in log, log[-3000:]
        assert log.count("registry poll failed") == 1  # once per outage, not once per poll
    finally:
        stop_postgres(postgres)
        online = RedisOnlineStore.from_url(servers.redis_url, name)
        keys = list(online.client.scan_iter(match=f"fs:{name}*", count=1000))
        if keys:
            online.client.delete(*keys)
        online.client.close()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_")}
