"""THE parity test: what the online store serves at t equals the point-in-time training value at t, on one
Redis and on a Redis Cluster.

Events of the example repository (``examples/repo.py``: two views with every kind of feature,
a BatchTransform embedding, last_n lists, and an on-demand view) go through the streaming path
— ``SourceProcessor`` micro-batches, accepted events appended to the event log, states committed
to Redis, exactly the worker's steps — including late events and redelivered ids.  Then, for each
entity, online reads at chosen request times (at the last event, while windows hold events,
after windows emptied with no new event, after each view's TTL) are compared with
``get_historical_features`` for the same (entity, t) pairs: every feature identical (floats within
1e-9 relative).  A second test does the same through a real worker on Kafka.
"""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurestore.client import FeatureStore
from featurestore.offline import PostgresOfflineStore
from featurestore.online import open_online_store
from featurestore.registry import Registry
from featurestore.repo import load_repo
from featurestore.schema import validate_event
from featurestore.processing import SourceProcessor, prepare_view
from tests.support import delete_project_keys

pytestmark = pytest.mark.integration

REPO_PATH = Path(__file__).resolve().parents[2] / "examples" / "repo.py"
T0 = 1_767_225_600_000
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
CATEGORIES = ["grocery", "travel", "electronics", "fuel", "dining"]


def same(got, want) -> bool:
    null = lambda v: v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if null(want) or null(got):
        return null(want) and null(got)
    if isinstance(want, (list, tuple, np.ndarray)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(list(got), list(want)))
    if isinstance(want, (float, np.floating)) or isinstance(got, (float, np.floating)):
        return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return got == want


def make_stream(n: int = 240, customers: int = 4, seed: int = 5) -> list[dict]:
    """Events over ~2 days, roughly in time order with jitter; some late, some redelivered."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + i * 12 * MIN + rng.randrange(-8 * MIN, 8 * MIN)
        out.append({"transaction_id": f"tx{i}", "customer_id": f"C{rng.randrange(customers)}",
                    "amount": round(rng.uniform(1, 400), 2), "merchant_category": rng.choice(CATEGORIES),
                    "is_online": rng.random() < 0.4, "event_time": ts})
        if i % 37 == 5:  # redelivery of an earlier event (same id and time)
            out.append(dict(out[rng.randrange(len(out))]))
        if i % 41 == 7:  # far too late: older than the 5 min lateness
            late = dict(out[-1], transaction_id=f"late{i}", event_time=ts - 3 * HOUR)
            out.append(late)
    return out


class Setup:
    def __init__(self, servers, project: str, schema: str, online_url: str):
        self.repo = load_repo(REPO_PATH)
        self.loop = asyncio.new_event_loop()
        self.offline = self.loop.run_until_complete(PostgresOfflineStore.create(servers.postgres_dsn, project, schema))
        self.registry = Registry.for_store(self.offline)
        self.loop.run_until_complete(self.registry.apply(self.repo, self.offline))
        self.versions = {n: self.loop.run_until_complete(self.registry.version_of(n)) for n in self.repo.views}
        self.online = open_online_store(online_url, project)
        # a Redis Cluster places entities by their topic's partition count, as a worker records it
        self.online.use_partitions({self.online.view_key(n, v): 4 for n, v in self.versions.items()})
        self.store = FeatureStore(self.repo, self.online, self.versions, project, offline=self.offline,
                                  registry=self.registry)
        self.project = project
        self.url = online_url

    def close(self) -> None:
        self.loop.run_until_complete(self.offline.close())
        self.loop.close()
        delete_project_keys(self.url, self.project)


@pytest.fixture
def setup(servers, pg_schema, unique_name, online_url):
    s = Setup(servers, unique_name("p"), pg_schema, online_url)
    yield s
    s.close()


def stream_through_processor(s: Setup, events: list[dict], batch: int = 25) -> int:
    """The worker's steps per micro-batch: validate, apply, log accepted events, commit states."""
    source = s.repo.source("transactions")
    views = [prepare_view(v, s.versions[n], s.project) for n, v in s.repo.views.items() if v.source is source]
    processor = SourceProcessor(views, s.online)
    offset, refused_total = 0, 0
    for lo in range(0, len(events), batch):
        valid = [validate_event(source, e) for e in events[lo:lo + batch]]
        assert all(v.ok for v in valid)
        records, refused = processor.apply(valid)
        refused_total += len(refused)
        keep = [i for i in range(len(valid)) if i not in refused]
        frame = pd.DataFrame([valid[i].values for i in keep])
        frame["__partition"] = 0
        frame["__offset"] = np.arange(offset, offset + len(keep))
        frame["__key"] = [valid[i].key for i in keep]
        frame["__ts"] = [valid[i].ts_ms for i in keep]
        frame["__event_id"] = [valid[i].event_id for i in keep]
        offset += len(keep)
        s.loop.run_until_complete(s.offline.write_events(source, frame))
        assert s.online.commit(records, None, {}) == 1
    return refused_total


def request_times(events: list[dict]) -> list[tuple[str, int]]:
    last: dict[str, int] = {}
    for e in events:
        last[e["customer_id"]] = max(last.get(e["customer_id"], 0), e["event_time"])
    deltas = [0, 1, 20 * MIN, 59 * MIN, 61 * MIN + 1, 3 * HOUR, 23 * HOUR, 25 * HOUR, 3 * DAY, 8 * DAY,
              29 * DAY, 31 * DAY, 89 * DAY, 91 * DAY]
    return [(k, wm + d) for k, wm in sorted(last.items()) for d in deltas] + [("nobody", T0 + DAY)]


def compare(s: Setup, pairs: list[tuple[str, int]]) -> dict[str, list[str]]:
    """Online at each (entity, t) vs historical; returns the statuses seen per feature."""
    features = ([f"customer_stats:{f}" for f in s.repo.view("customer_stats").feature_names]
                + [f"transaction_stats:{f}" for f in s.repo.view("transaction_stats").feature_names]
                + ["customer_derived_features:purchase_frequency_score",
                   "customer_derived_features:high_value_customer"])
    amounts = [float(10 + 90 * (i % 7)) for i in range(len(pairs))]
    entity_df = pd.DataFrame({"customer_id": [k for k, _ in pairs], "event_timestamp": [t for _, t in pairs],
                              "current_amount": amounts})
    hist = s.store.get_historical_features(entity_df, features=features, full_feature_names=True)
    statuses: dict[str, list[str]] = {}
    mismatches = []
    for i, (key, t) in enumerate(pairs):
        resp = s.store.get_online_features([{"customer_id": key}], features=features,
                                           request_data={"current_amount": [amounts[i]]}, at_ms=t, full_names=True)
        for ref in features:
            col = ref.replace(":", "__")
            got, want = resp.columns[col][0], hist[col].iloc[i]
            statuses.setdefault(col, []).append(resp.statuses[col][0])
            if not same(got, want):
                mismatches.append((key, (t - T0) / HOUR, col, got, want, resp.statuses[col][0]))
    assert not mismatches, mismatches[:8]
    return statuses


def test_online_equals_historical_streaming_path(setup: Setup) -> None:
    events = make_stream()
    refused = stream_through_processor(setup, events)
    assert refused >= 8  # redeliveries and late events were refused, as the worker would
    pairs = request_times(events)
    statuses = compare(setup, pairs)
    # The request times cover present values, emptied windows and both TTLs expiring.
    assert set(statuses["transaction_stats__events_1h"]) == {"present", "expired", "missing"}
    assert "expired" in statuses["customer_stats__spend_1h"]
    # on-demand outputs of missing or expired inputs are missing online and null offline alike
    assert set(statuses["customer_derived_features__high_value_customer"]) == {"present", "expired", "missing"}
    one = setup.store.get_online_features([{"customer_id": "C0"}], features=["customer_stats:spend_1h"],
                                           at_ms=pairs[0][1] + 3 * HOUR)
    assert one.columns["spend_1h"] == [0.0] and one.statuses["spend_1h"] == ["present"]


def test_ttl_expiry_online_and_historical_defaults(setup: Setup) -> None:
    events = [e for e in make_stream(40) if e["customer_id"] == "C1"]
    stream_through_processor(setup, events)
    wm = max(e["event_time"] for e in events)
    ttl = setup.repo.view("transaction_stats").ttl
    refs = ["transaction_stats:events_1h", "transaction_stats:seconds_since_last_txn", "customer_stats:total_spend"]
    at = wm + ttl + 1
    resp = setup.store.get_online_features([{"customer_id": "C1"}], features=refs, at_ms=at)
    assert resp.statuses["events_1h"] == ["expired"] and resp.statuses["total_spend"] == ["present"]
    assert resp.event_times["events_1h"] == [wm]
    defaults = {f: setup.repo.view("transaction_stats").feature(f).default
                for f in ("events_1h", "seconds_since_last_txn")}
    assert resp.columns["events_1h"] == [defaults["events_1h"]]
    assert resp.columns["seconds_since_last_txn"] == [defaults["seconds_since_last_txn"]]
    hist = setup.store.get_historical_features(pd.DataFrame({"customer_id": ["C1", "C1"],
                                                             "event_timestamp": [at, wm + ttl]}),
                                               features=refs)
    assert same(hist["events_1h"].iloc[0], defaults["events_1h"])
    assert same(hist["seconds_since_last_txn"].iloc[0], defaults["seconds_since_last_txn"])
    assert same(hist["total_spend"].iloc[0], resp.columns["total_spend"][0])
    # At exactly ttl after the last event the view is still live on both sides.
    live = setup.store.get_online_features([{"customer_id": "C1"}], features=refs, at_ms=wm + ttl)
    assert live.statuses["events_1h"] == ["present"]
    assert same(hist["seconds_since_last_txn"].iloc[1], live.columns["seconds_since_last_txn"][0])
    df = resp.to_df(statuses=True, event_times=True)
    assert list(df.columns[:4]) == ["customer_id", "events_1h", "events_1h__status", "events_1h__event_time"]


def test_online_equals_historical_real_worker(servers, topic_factory, unique_name, pg_schema, online_url) -> None:
    """Through Kafka and a real worker (tests/workers/support.py), then the same comparison."""
    from types import SimpleNamespace

    import orjson
    from kafka import KafkaProducer

    from featurestore.repo import Repository
    from tests.workers.support import build_worker, make_events, make_view, run_until

    topic = topic_factory(partitions=2)
    view = make_view(topic)
    events = make_events(300, customers=5)
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    for e in events:
        producer.send(topic, key=e["customer_id"].encode(), value=orjson.dumps(e))
    producer.flush()
    producer.close()
    project = unique_name("p")
    on = SimpleNamespace(kafka_bootstrap=servers.kafka_bootstrap, redis_url=online_url,
                         postgres_dsn=servers.postgres_dsn)
    worker = build_worker(on, view, project, unique_name("g"), pg_schema, batch_size=50)
    run_until(worker, len(events), timeout=25).join(30)
    assert worker.records_done == len(events)

    repo = Repository(path=None)  # type: ignore[arg-type]
    repo._add(view, origin=Path(__file__))
    loop = asyncio.new_event_loop()
    offline = loop.run_until_complete(PostgresOfflineStore.create(servers.postgres_dsn, project, pg_schema))
    online = open_online_store(online_url, project)
    try:
        store = FeatureStore(repo, online, {view.name: 1}, project, offline=offline)
        last: dict[str, int] = {}
        for e in events:
            last[e["customer_id"]] = max(last.get(e["customer_id"], 0), e["event_time"])
        pairs = [(k, wm + d) for k, wm in sorted(last.items())
                 for d in (0, 30 * MIN, 61 * MIN, 25 * HOUR, 8 * DAY, 31 * DAY)]
        refs = [f"{view.name}:{f}" for f in view.feature_names]
        hist = store.get_historical_features(pd.DataFrame({"customer_id": [k for k, _ in pairs],
                                                           "event_timestamp": [t for _, t in pairs]}), features=refs)
        bad = []
        for i, (key, t) in enumerate(pairs):
            resp = store.get_online_features([{"customer_id": key}], features=refs, at_ms=t)
            for f in view.feature_names:
                if not same(resp.columns[f][0], hist[f].iloc[i]):
                    bad.append((key, t, f, resp.columns[f][0], hist[f].iloc[i]))
        assert not bad, bad[:8]
    finally:
        loop.run_until_complete(offline.close())
        loop.close()
        delete_project_keys(online_url, project)
