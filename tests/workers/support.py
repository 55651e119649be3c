"""Shared pieces of the worker tests: a small feature repository on a unique topic, and a reference."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict

import orjson
import redis
from kafka import KafkaProducer

from featurestore.definitions import Activity, Aggregate, Entity, EventSource, FeatureView, Latest
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.online import RedisOnlineStore, open_online_store
from featurestore.online.redis import unpack_row
from featurestore.repo import Repository
from featurestore.settings import Settings
from transforms import ViewState
from featurestore.processing import prepare_view
from workers.worker import Worker, WorkerConfig

T0 = 1_767_225_600_000


def make_view(topic: str, lateness: str = "5m", **source_options) -> FeatureView:
    """``source_options``: more EventSource fields (e.g. ``max_message_bytes``)."""
    customer = Entity(name="customer", join_key="customer_id")
    source = EventSource(
        name="txns", topic=topic,
        schema={"transaction_id": "string", "customer_id": "string", "amount": "float64", "event_time": "timestamp"},
        timestamp_field="event_time", entity_field="customer_id", event_id_field="transaction_id",
        allowed_lateness=lateness, **source_options)
    return FeatureView(name="stats", entity=customer, source=source, ttl="30d", features=[
        Aggregate("spend_1h", "amount", "sum", "1h"),
        Aggregate("n_24h", "amount", "count", "24h"),
        Aggregate("avg_7d", "amount", "mean", "7d"),
        Aggregate("max_1h", "amount", "max", "1h", hop=1),
        Aggregate("total", "amount", "sum"),
        Activity("events_1h", "count_events", "1h"),
        Latest("last_amount", "amount"),
    ])


def make_events(n: int, customers: int = 20, seed: int = 1) -> list[dict]:
    import random
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({"transaction_id": f"t{i}", "customer_id": f"C{rng.randrange(customers):03d}",
                    "amount": round(rng.uniform(1, 300), 2),
                    "event_time": T0 + i * 20_000 - rng.randrange(0, 120_000)})
    return out


def reference_values(view: FeatureView, events: list[dict]) -> dict[str, dict]:
    """Per customer: ViewState fed that customer's events in production order, at its watermark."""
    specs = view.agg_specs()
    states: dict[str, ViewState] = defaultdict(lambda: ViewState(specs, view.source.allowed_lateness))
    for e in events:
        states[e["customer_id"]].apply([(e["event_time"], e, e["transaction_id"])])
    return {k: s.evaluate(s.watermark) for k, s in states.items()}


def online_values(client, project: str, view: FeatureView, version: int = 1) -> dict[str, dict]:
    """Every stored entity's values of ``view``; ``client`` a redis.Redis, or an online store (any layout)."""
    specs = view.agg_specs()
    out = {}
    for entity, key in stored_entities(client, project, view, version):
        values, _, _ = unpack_row(store_client(client).hget(key, "v"))
        out[entity] = dict(zip([s.name for s in specs], orjson.loads(values)))
    return out


def store_client(client):
    """The redis-py client of ``client`` (an online store, or a redis-py client itself)."""
    return client.client if isinstance(client, RedisOnlineStore) else client


def stored_entities(client, project: str, view: FeatureView, version: int = 1):
    """(entity, full key) of every state of ``view`` stored (``client``: as ``online_values``)."""
    view_key = f"{project}:{view.name}:v{version}"
    if isinstance(client, RedisOnlineStore):
        for batch in client.scan_view(view_key):
            for key in batch:
                text = key.decode()
                yield text.split(f"{view_key}:", 1)[1], key
        return
    prefix = f"fs:{view_key}:"
    for key in client.scan_iter(match=prefix + "*"):
        yield key.decode()[len(prefix):], key


def repo_of(view: FeatureView) -> Repository:
    """A repository holding ``view`` (its entity and source too)."""
    repo = Repository(path=None)  # type: ignore[arg-type]
    repo.entities[view.entity.name] = view.entity
    repo.sources[view.source.name] = view.source
    repo.views[view.name] = view
    return repo


def build_worker(servers, view, project, group, schema, **config) -> Worker:
    online = open_online_store(servers.redis_url, project)
    pv = prepare_view(view, 1, project)

    async def offline():
        store = await PostgresOfflineStore.create(servers.postgres_dsn, project, schema)
        await store.migrate([view.source], [view])
        return store

    config.setdefault("kafka_client", Settings().kafka_client)  # FEATURESTORE_KAFKA_CLIENT: the kafka_client fixture
    cfg = WorkerConfig(group=group, metrics_port=None, kafka_options={"bootstrap_servers": servers.kafka_bootstrap},
                       **config)
    return Worker([pv], online, offline, cfg)


def run_until(worker: Worker, n_records: int, timeout: float = 60.0) -> threading.Thread:
    deadline = time.monotonic() + timeout
    thread = threading.Thread(target=worker.run, kwargs={
        "until": lambda w: w.records_done >= n_records or time.monotonic() > deadline}, daemon=True)
    thread.start()
    return thread


def consumed_stream(servers, topic_factory, unique_name, schema, prefix: str, seed: int, n: int = 200):
    """A 2-partition topic with ``n`` events (1-day lateness) consumed by a worker that then stopped:
    ``(view, project, group, events)``."""
    topic = topic_factory(partitions=2)
    project, group = unique_name(prefix), unique_name("g")
    view = make_view(topic, lateness="1d")
    events = make_events(n, seed=seed)
    send(servers, topic, events)
    run_until(build_worker(servers, view, project, group, schema), len(events)).join(60)
    return view, project, group, events


def assert_same(actual: dict, expected: dict) -> None:
    """Same entities and feature values (floats within 1e-9)."""
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        for name, value in exp.items():
            got = actual[key][name]
            if isinstance(value, float):
                assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), (key, name, got, value)
            else:
                assert got == value, (key, name, got, value)


def send(servers, topic, events, raw=()):
    """Events as JSON keyed by customer, then ``raw`` byte strings (bad input) keyed C000."""
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    for e in events:
        producer.send(topic, key=e["customer_id"].encode(), value=orjson.dumps(e))
    for r in raw:
        producer.send(topic, key=b"C000", value=r)
    producer.flush()
    producer.close()


def wait_for(predicate, timeout: float, what, interval: float = 0.01):
    """Poll ``predicate`` until it returns a true value (returned); ``what`` (a string or a
    function giving one, called at the timeout) describes it in the error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)
