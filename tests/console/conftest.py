"""Fixtures of the web console tests: a small repository on a topic of its own, applied twice (so a view
has two versions), a real worker consuming its events (some of them bad: dead letters) and publishing its
status, and ``featurestore ui``'s app on a real uvicorn server on a free port, all shared by the package."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import orjson
import pytest
import uvicorn
from kafka import KafkaProducer

from featurestore.client import FeatureStore
from featurestore.console import create_console_app
from featurestore.dev.servers import free_port
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.online import RedisOnlineStore
from featurestore.processing import prepare_view
from featurestore.repo import load_repo
from featurestore.settings import Settings
from tests.support import apply_repo, drop_project
from workers.worker import Worker, WorkerConfig

#: the XSS probe: a view description that a page must show as text
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
T0 = 1_767_225_600_000
N_EVENTS = 300
BAD_RECORDS = 3
#: the bound of the view ``spend``'s failing expectation ``Range("max_7d", min=1, max=MAX_AMOUNT)``
MAX_AMOUNT = 390

REPO_TEXT = '''
import pandas as pd

from featurestore.definitions import (Aggregate, Entity, EventSource, FeatureService, FeatureView, Latest, NotNull,
                                      OnDemandFeatureView, Range, Relation)

customer = Entity(name="customer", join_key="customer_id", description="A card holder.")

payments = EventSource(
    name="payments", topic="{topic}",
    schema={{"payment_id": "string", "customer_id": "string", "amount": "float64", "event_time": "timestamp"}},
    timestamp_field="event_time", entity_field="customer_id", event_id_field="payment_id",
    allowed_lateness="1d", description="Card payments, one event per purchase.")

spend = FeatureView(
    name="spend", entity=customer, source=payments, ttl="30d", owner="risk-team",
    tags={{"team": "risk", "tier": "gold"}}, description={xss!r},
    features=[Aggregate(name="spend_24h", column="amount", function="sum", window="{window}"),
              Aggregate(name="max_7d", column="amount", function="max", window="7d"),
              Latest(name="last_amount", column="amount", description="The newest purchase's amount."),
              Latest(name="last_payment", column="payment_id")],
    expectations=[Relation("last_amount", "<=", "max_7d"),
                  Range("max_7d", min=1, max={max_amount}, description="A purchase is at most {max_amount}.")])

activity = FeatureView(
    name="activity", entity=customer, source=payments, ttl="7d", description="How often a customer pays.",
    features=[Aggregate(name="payments_1h", column="payment_id", function="count", window="1h")],
    expectations=[Range("payments_1h", min=0)])


def ratio_of(df: pd.DataFrame) -> pd.DataFrame:
    spend = pd.to_numeric(df["spend_24h"], errors="coerce").fillna(0.0)
    current = pd.to_numeric(df["current_amount"], errors="coerce").fillna(0.0)
    return pd.DataFrame({{"amount_ratio": (current / spend.clip(lower=1.0)).astype(float)}}, index=df.index)


amount_ratio = OnDemandFeatureView(
    name="amount_ratio", sources=[spend[["spend_24h"]]], request_schema={{"current_amount": "float64"}},
    schema={{"amount_ratio": "float64"}}, fn=ratio_of, description="The request's amount over the day's spend.")

fraud = FeatureService(name="fraud", features=[spend, activity[["payments_1h"]], amount_ratio],
                       description="Inputs of the fraud model.", tags={{"model": "fraud-v3"}},
                       expectations=[NotNull("spend:spend_24h")])
'''


@dataclass
class Stack:
    """The console under test: its ``url``, the project, the repository file and the worker's counts."""

    url: str
    project: str
    repo_path: Path
    topic: str
    worker: Worker
    servers: object


def _write_repo(path: Path, topic: str, window: str) -> Path:
    path.write_text(REPO_TEXT.format(topic=topic, window=window, xss=XSS, max_amount=MAX_AMOUNT))
    return path


def _create_topics(servers, *names: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1) for name in names])
    finally:
        admin.close()


def _delete_topics(servers, *names: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap, request_timeout_ms=10000)
    try:
        admin.delete_topics(list(names))
    except Exception:  # noqa: BLE001 - best-effort cleanup; names are unique anyway
        pass
    finally:
        admin.close()


def _send(servers, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    for i in range(N_EVENTS):
        customer = f"C{i % 25:03d}"
        event = {"payment_id": f"p{i}", "customer_id": customer, "amount": float(1 + (i * 37) % 400),
                 "event_time": T0 + i * 60_000}
        producer.send(topic, key=customer.encode(), value=orjson.dumps(event))
    for i in range(BAD_RECORDS):  # not JSON: dead letters
        producer.send(topic, key=b"C000", value=b"{not json " + str(i).encode())
    producer.flush()
    producer.close()


def _start_worker(servers, project: str, repo_path: Path) -> tuple[Worker, threading.Thread, threading.Event]:
    repo = load_repo(repo_path)
    store = FeatureStore(repo, None, {}, project, postgres_dsn=servers.postgres_dsn)
    versions = store._run(store.aresolve_versions())
    store.close()
    online = RedisOnlineStore.from_url(servers.redis_url, project)

    async def offline():
        return await PostgresOfflineStore.create(servers.postgres_dsn, project, "public")

    config = WorkerConfig(group=f"g_{project}", metrics_port=None, batch_size=100,
                          dead_letter_topic=f"dl_{project}", kafka_client=Settings().kafka_client,
                          kafka_options={"bootstrap_servers": servers.kafka_bootstrap})
    worker = Worker([prepare_view(v, versions[name], project) for name, v in sorted(repo.views.items())], online,
                    offline, config)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"until": lambda w: stop.is_set()}, daemon=True)
    thread.start()
    return worker, thread, stop


def _wait_for_status(online: RedisOnlineStore, n: int, timeout: float = 90.0) -> None:
    """Until a live worker announced ``n`` events applied to each of its views (announcements: every 5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in online.live_workers():
            views = (w.get("status") or {}).get("views") or {}
            if views and all(v["applied"] >= n for v in views.values()):
                return
        time.sleep(0.5)
    raise AssertionError(f"no worker announced {n} events applied within {timeout} s: {online.live_workers()}")


def serve_app(app, probe: str = "/console.css") -> tuple[uvicorn.Server, threading.Thread, str]:
    """``app`` on uvicorn on a free port, in a thread, once ``probe`` answers 200: (server, thread, URL)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                return server, thread, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url}{probe} did not answer within 30 s")


#: the two statistics runs of the fixture: as of the middle of the events (the reference), and after the last
STATS_AT = (T0 + 150 * 60_000, T0 + N_EVENTS * 60_000)


def last_amounts(at_ms: int) -> list[float]:
    """Each customer's amount of its newest event up to ``at_ms`` (what ``spend.last_amount`` serves)."""
    newest: dict[int, float] = {}
    for i in range(N_EVENTS):
        if T0 + i * 60_000 <= at_ms:
            newest[i % 25] = float(1 + (i * 37) % 400)
    return [newest[c] for c in sorted(newest)]


def max_amounts(at_ms: int) -> dict[str, float]:
    """Each customer's largest amount up to ``at_ms`` (what ``spend.max_7d`` serves: all events are in 7 days)."""
    top: dict[str, float] = {}
    for i in range(N_EVENTS):
        if T0 + i * 60_000 <= at_ms:
            key = f"C{i % 25:03d}"
            top[key] = max(top.get(key, 0.0), float(1 + (i * 37) % 400))
    return top


def _statistics_runs(servers, project: str, repo_path: Path) -> None:
    import asyncio

    from featurestore.console.stats_runs import run_statistics

    async def go() -> None:
        store = FeatureStore(load_repo(repo_path), None, {}, project, postgres_dsn=servers.postgres_dsn)
        try:
            store.versions = await store.aresolve_versions()
            for at in STATS_AT:
                await run_statistics(store, "spend", at)
        finally:
            await store.aclose()

    asyncio.run(go())


@pytest.fixture(scope="package")
def stack(servers, tmp_path_factory) -> Iterator[Stack]:
    """The repository applied with window 12h, then 24h (view ``spend`` has v1 and v2); a worker that
    consumed its events; the console of the v2 repository on a real HTTP server."""
    project = f"ui_{uuid.uuid4().hex[:10]}"
    topic = f"payments_{project}"
    folder = tmp_path_factory.mktemp("console")
    repo_path = folder / "repo.py"
    _create_topics(servers, topic, f"dl_{project}")
    apply_repo(servers, project, _write_repo(repo_path, topic, "12h"))
    apply_repo(servers, project, _write_repo(repo_path, topic, "24h"))
    _send(servers, topic)
    worker, worker_thread, stop = _start_worker(servers, project, repo_path)
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    store = FeatureStore(load_repo(repo_path), online, {}, project, postgres_dsn=servers.postgres_dsn)
    server = None
    try:
        _wait_for_status(online, N_EVENTS)
        _statistics_runs(servers, project, repo_path)
        server, server_thread, url = serve_app(create_console_app(store, servers.kafka_bootstrap, own_store=True))
        yield Stack(url, project, repo_path, topic, worker, servers)
    finally:
        if server is not None:
            server.should_exit = True
            server_thread.join(15)
        stop.set()
        worker_thread.join(60)
        online.client.close()
        drop_project(servers, project)
        _delete_topics(servers, topic, f"dl_{project}")
