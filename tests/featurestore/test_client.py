"""FeatureStore client against the real servers: connect, push, materialize, versions, bad input, CLI."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from featurestore.client import FeatureStore
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView, Latest
from featurestore.exceptions import InvalidInputError, UnknownNameError
from featurestore.offline import PostgresOfflineStore
from featurestore.online import RedisOnlineStore
from featurestore.registry import Registry
from featurestore.repo import Repository
from featurestore.schema import validate_frame
from featurestore.settings import Settings
from featurestore.repo import load_repo
from tests.support import apply_repo, delete_project_keys, drop_project, ensure_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "repo.py"
T0 = 1_767_225_600_000
MIN, HOUR = 60_000, 3_600_000


def txns(n: int, customers=("C1", "C2"), start: int = T0, prefix: str = "t") -> pd.DataFrame:
    return pd.DataFrame({
        "transaction_id": [f"{prefix}{i}" for i in range(n)],
        "customer_id": [customers[i % len(customers)] for i in range(n)],
        "amount": [float(5 + 7 * i) for i in range(n)],
        "merchant_category": [["grocery", "travel", "fuel"][i % 3] for i in range(n)],
        "is_online": [i % 2 == 0 for i in range(n)],
        "event_time": [start + i * 10 * MIN for i in range(n)],
    })


def close(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float):
        return math.isclose(a, float(b), rel_tol=1e-9)
    return a == b


@pytest.fixture
def connected(servers, unique_name, online_url):
    """The example repository applied under a unique project (tables in schema public, dropped
    afterwards), on one Redis and on a Redis Cluster; yields (settings, env for subprocesses)."""
    project = unique_name("p")
    settings = Settings(project=project, redis_url=online_url, postgres_dsn=servers.postgres_dsn,
                        kafka_bootstrap_servers=servers.kafka_bootstrap)
    apply_repo(servers, project, EXAMPLE)
    # a Redis Cluster places entities by the partition count of their topic, read from the broker
    ensure_topic(servers, load_repo(EXAMPLE).source("transactions").topic, partitions=3)
    env = dict(os.environ, FEATURESTORE_PROJECT=project, FEATURESTORE_REDIS_URL=online_url,
               FEATURESTORE_POSTGRES_DSN=servers.postgres_dsn,
               FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap)
    yield settings, env

    drop_project(servers, project)
    delete_project_keys(online_url, project)


def test_connect_push_offline_materialize_and_cli(connected) -> None:
    settings, env = connected
    refs = ["customer_stats:total_spend", "customer_stats:spend_1h", "customer_stats:recent_amounts",
            "transaction_stats:events_1h", "transaction_stats:txn_embedding"]
    with FeatureStore.connect(EXAMPLE, settings) as store:
        assert set(store.versions) == {"customer_stats", "transaction_stats"}
        frame = txns(12)
        res = store.push("transactions", frame, to="offline")
        assert (res.rows, res.offline_rows, res.online_records) == (12, 12, 0)
        wm = int(frame["event_time"].max())
        before = store.get_online_features([{"customer_id": "C2"}], features=refs, at_ms=wm)
        assert before.statuses["total_spend"] == ["missing"]
        # Re-pushing the same rows appends nothing (same entity, event id and time already logged); an id
        # reused at another time is a new event (the lateness horizon decides when it is read), so it is logged.
        again = store.push("transactions", frame, to="offline")
        assert (again.offline_rows, again.skipped_existing) == (0, 12)
        reused = frame.iloc[[0]].copy()
        reused["event_time"] = reused["event_time"] + 90 * 86_400_000
        later = store.push("transactions", reused, to="offline")
        assert (later.offline_rows, later.skipped_existing) == (1, 0)

        report = store.materialize(T0 + 30 * MIN, wm)
        assert report["views"]["customer_stats"]["entities"] == 2
        entity_df = pd.DataFrame({"customer_id": ["C1", "C2"], "event_timestamp": [wm, wm]})
        hist = store.get_historical_features(entity_df, features=refs)
        online = store.get_online_features([{"customer_id": "C1"}, {"customer_id": "C2"}], features=refs, at_ms=wm)
        assert set(online.statuses["total_spend"]) == {"present"}
        for col in ("total_spend", "spend_1h", "recent_amounts", "events_1h", "txn_embedding"):
            for i in range(2):
                assert close(online.columns[col][i], hist[col].iloc[i]), (col, i)
        assert online.columns["total_spend"][1] == sum(frame["amount"][1::2])

        # The asyncio form on the caller's loop.
        async def go():
            out = await store.aget_historical_features(entity_df, features=refs)
            await store.aclose()
            return out
        pd.testing.assert_frame_equal(asyncio.run(go()), hist)

    # CLI: get prints the online vector of a service; materialize runs.
    out = subprocess.run([sys.executable, "-m", "featurestore", "get", "--repo", str(EXAMPLE),
                          "--entity", "customer_id=C2", "--service", "fraud_detection"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    vector = json.loads(out.stdout)
    assert vector["customer_id"] == {"value": "C2", "status": "key"}
    assert vector["spend_1h"]["status"] in ("present", "expired")
    assert {"events_1h", "txn_embedding", "purchase_frequency_score", "high_value_customer"} <= set(vector)
    out = subprocess.run([sys.executable, "-m", "featurestore", "materialize", "--repo", str(EXAMPLE),
                          "--start", str(T0), "--end", "2026-01-02T00:00:00Z", "--views", "transaction_stats"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["views"]["transaction_stats"]["entities"] == 2


def test_materialize_skips_a_state_that_holds_a_later_event(connected) -> None:
    """materialize never moves a state back in time: an entity whose online state holds an event after
    ``end`` keeps it (``skipped_newer``); the others are recomputed from the log up to ``end``."""
    settings, _ = connected
    refs = ["customer_stats:total_spend", "customer_stats:recent_amounts", "transaction_stats:events_1h"]
    with FeatureStore.connect(EXAMPLE, settings) as store:
        frame = txns(6)
        store.push("transactions", frame, to="offline")
        end = int(frame["event_time"].max())
        store.materialize(T0, end)
        later = txns(1, customers=("C1",), start=end + HOUR, prefix="later")  # online only: after `end`
        assert store.push("transactions", later, to="online").online_records == 2
        keys = {name: store.online.entity_keys(store.online.view_key(name, version), ["C1"])[0]
                for name, version in store.versions.items()}
        stored = {name: store.online.client.hgetall(key) for name, key in keys.items()}
        rows = [{"customer_id": "C1"}, {"customer_id": "C2"}]
        before = store.get_online_features(rows, features=refs, at_ms=end + 2 * HOUR).columns

        report = store.materialize(T0, end)
        for name in ("customer_stats", "transaction_stats"):
            assert report["views"][name]["skipped_newer"] == 1, report  # C1
            assert report["views"][name]["entities"] == 1, report  # C2
        assert {name: store.online.client.hgetall(key) for name, key in keys.items()} == stored
        assert store.get_online_features(rows, features=refs, at_ms=end + 2 * HOUR).columns == before
        assert before["total_spend"][0] == sum(frame["amount"][0::2]) + later["amount"][0]


def test_compact_cli_keeps_training_sets(connected) -> None:
    """``featurestore compact`` packs the Kafka-partition rows of the example log (string keys, event
    ids, text fields) into segments, leaves pushed rows (partition -1) as rows, and training sets read
    through the segments equal those read from the rows."""
    settings, env = connected
    refs = ["customer_stats:total_spend", "customer_stats:distinct_categories_30d", "customer_stats:customer_segment",
            "transaction_stats:events_1h", "transaction_stats:txn_embedding"]
    entity_df = pd.DataFrame({"customer_id": ["C1", "C2", "C1", "C3"],
                              "event_timestamp": [T0 + 2 * HOUR, T0 + 5 * HOUR, T0 + 9 * HOUR, T0 + 9 * HOUR]})
    with FeatureStore.connect(EXAMPLE, settings) as store:
        store.push("transactions", txns(6, prefix="p"), to="offline")  # partition -1

        async def log_kafka_rows() -> None:
            offline, _ = await store._stores()
            source = store.repo.source("transactions")
            valid, rejects = validate_frame(source, txns(30, customers=("C1", "C2", "C3"), prefix="k", start=T0 + HOUR))
            assert rejects.empty
            valid["__partition"] = [i % 2 for i in range(30)]
            valid["__offset"] = range(30)
            await offline.write_events(source, valid)
            async with offline.pool.acquire() as conn:  # statistics: the full-scan path is taken
                await conn.execute(f"ANALYZE {offline.qualified(offline.events_table(source.name))}")

        store._run(log_kafka_rows())
        from_rows = store.get_historical_features(entity_df, features=refs)
    out = subprocess.run([sys.executable, "-m", "featurestore", "compact", "--repo", str(EXAMPLE)],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"transactions": {"segments": 2, "events": 30}}
    with FeatureStore.connect(EXAMPLE, settings) as store:
        offline = store._run(store._stores())[0]
        offline._block_scan = offline._copy_events = None  # a read not served by the segments fails
        pd.testing.assert_frame_equal(store.get_historical_features(entity_df, features=refs), from_rows)
    assert from_rows["total_spend"].notna().all()


def test_push_online_and_offline_all_or_nothing(connected) -> None:
    settings, _ = connected
    with FeatureStore.connect(EXAMPLE, settings) as store:
        frame = txns(6)
        res = store.push("transactions", frame, to="online_and_offline")
        assert (res.online_records, res.offline_rows, len(res.refused)) == (4, 6, 0)  # 2 views x 2 entities
        wm = int(frame["event_time"].max())
        refs = ["customer_stats:total_spend", "transaction_stats:events_1h"]
        first = store.get_online_features([{"customer_id": "C1"}], features=refs, at_ms=wm).columns
        # Invalid rows: nothing is written anywhere, the error names every bad row and why.
        bad = txns(5, prefix="u", start=T0 + 2 * HOUR)
        bad["amount"] = bad["amount"].astype(object)
        bad.loc[1, "amount"] = "lots"
        bad.loc[3, "customer_id"] = None
        with pytest.raises(InvalidInputError) as err:
            store.push("transactions", bad, to="online_and_offline")
        text = str(err.value)
        assert "2 of 5 rows" in text and "row 1: wrong_type" in text and "row 3: missing_entity_key" in text
        assert list(err.value.rejects["row"]) == [1, 3]
        assert store.get_online_features([{"customer_id": "C1"}], features=refs, at_ms=wm).columns == first

        async def count():
            offline, _ = await store._stores()
            return await offline.count_events("transactions")
        assert store._run(count()) == 6
        # Redelivered rows are refused by the states (as the worker dead-letters them), not logged twice.
        again = store.push("transactions", frame.tail(2), to="online_and_offline")
        assert list(again.refused["reason"]) == ["duplicate_event_id"] * 2 and again.offline_rows == 0
        assert store.get_online_features([{"customer_id": "C1"}], features=refs, at_ms=wm).columns == first
        with pytest.raises(InvalidInputError, match="to="):
            store.push("transactions", frame, to="elsewhere")
        with pytest.raises(UnknownNameError, match="nosuchsource"):
            store.push("nosuchsource", frame)


def test_push_to_an_entity_gone_from_redis_goes_on_from_its_logged_events(connected) -> None:
    """An entity whose hash left Redis (expired after an idle spell, or deleted) while its events stay
    in the event log: a push goes on from those events, as a worker does, instead of starting afresh;
    its lifetime totals then equal what a training set counts."""
    settings, _ = connected
    with FeatureStore.connect(EXAMPLE, settings) as store:
        first = txns(6)
        store.push("transactions", first, to="online_and_offline")
        for view in ("customer_stats", "transaction_stats"):  # C1's hashes go, C2's stay
            assert store.online.client.delete(store.online.entity_keys(f"{settings.project}:{view}:v1", ["C1"])[0]) == 1
        later = txns(4, start=T0 + 30 * 86_400_000, prefix="v")
        store.push("transactions", later, to="online_and_offline")
        at = int(later["event_time"].max())
        refs = ["customer_stats:total_purchases", "customer_stats:total_spend"]
        got = store.get_online_features([{"customer_id": "C1"}, {"customer_id": "C2"}], features=refs, at_ms=at)
        rows = pd.concat([first, later])
        for i, key in enumerate(["C1", "C2"]):
            mine = rows[rows["customer_id"] == key]
            assert got.to_dict()["total_purchases"][i] == len(mine)
            assert close(got.to_dict()["total_spend"][i], float(mine["amount"].sum()))
        training = store.get_historical_features(pd.DataFrame({"customer_id": ["C1"], "event_timestamp": [at]}),
                                                 features=refs)
        assert int(training["total_purchases"].iloc[0]) == got.to_dict()["total_purchases"][0]


# -- a small repository in a private schema --------------------------------------------------------

customer = Entity(name="customer", join_key="customer_id")
source = EventSource(name="pay", topic="pay", schema={"customer_id": "string", "amount": "float64", "ts": "timestamp"},
                     timestamp_field="ts", entity_field="customer_id")


def small_repo(window: str = "1h") -> Repository:
    view = FeatureView(name="pay_stats", entity=customer, source=source, ttl="1d",
                       features=[Aggregate("spend", "amount", "sum", window), Latest("last_amount", "amount")])
    repo = Repository(path=None)  # type: ignore[arg-type]
    repo._add(view, origin=Path(__file__))
    return repo


@pytest.fixture
def small(servers, pg_schema, unique_name):
    project = unique_name("p")
    loop = asyncio.new_event_loop()
    offline = loop.run_until_complete(PostgresOfflineStore.create(servers.postgres_dsn, project, pg_schema))
    registry = Registry.for_store(offline)
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    yield loop, offline, registry, online, project
    loop.run_until_complete(offline.close())
    loop.close()
    keys = list(online.client.scan_iter(match=f"fs:{project}*", count=1000))
    if keys:
        online.client.delete(*keys)


def test_version_change_keeps_old_version_readable(small) -> None:
    loop, offline, registry, online, project = small
    repo1 = small_repo("1h")
    loop.run_until_complete(registry.apply(repo1, offline))
    v1 = loop.run_until_complete(registry.version_of("pay_stats", repo1.view("pay_stats").fingerprint()))
    store1 = FeatureStore(repo1, online, {"pay_stats": v1}, project, offline=offline, registry=registry)
    events = pd.DataFrame({"customer_id": ["a", "a"], "amount": [1.0, 2.0], "ts": [T0, T0 + MIN]})
    store1.push("pay", events, to="online_and_offline")

    repo2 = small_repo("2h")
    changes = loop.run_until_complete(registry.apply(repo2, offline))
    change = next(c for c in changes if c.name == "pay_stats")
    assert (change.action, change.old_version, change.new_version) == ("new_version", v1, v1 + 1)
    # The old version stays readable online (its own keys) and in describe.
    got = store1.get_online_features([{"customer_id": "a"}], features=["pay_stats:spend"], at_ms=T0 + 90 * MIN)
    assert got.columns["spend"] == [0.0] and got.statuses["spend"] == ["present"]  # 1 h window emptied
    store2 = FeatureStore(repo2, online, {"pay_stats": v1 + 1}, project, offline=offline, registry=registry)
    assert (store2.get_online_features([{"customer_id": "a"}], features=["pay_stats:spend"]).statuses["spend"]
            == ["missing"])
    old = loop.run_until_complete(registry.describe("pay_stats", version=v1))
    assert old["version"] == v1 and old["latest_version"] == v1 + 1
    assert next(f for f in old["features"] if f["name"] == "spend")["window"] == "1h"
    # The new version is filled from the event log by materialize; both read their own windows.
    store2.materialize(T0, T0 + HOUR)
    got2 = store2.get_online_features([{"customer_id": "a"}], features=["pay_stats:spend"], at_ms=T0 + 90 * MIN)
    assert got2.columns["spend"] == [3.0]
    hist = store2.get_historical_features(pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0 + 90 * MIN]}),
                                          features=["pay_stats:spend"])
    assert hist["spend"].tolist() == [3.0]
    # The historical check refuses a definition that is not applied.
    with pytest.raises(Exception, match="not applied"):
        FeatureStore(small_repo("3h"), online, {"pay_stats": v1}, project, offline=offline,
                     registry=registry).get_historical_features(
            pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0]}), features=["pay_stats:spend"])


def test_bad_input_names_the_problem(small) -> None:
    loop, offline, registry, online, project = small
    repo = small_repo()
    loop.run_until_complete(registry.apply(repo, offline))
    store = FeatureStore(repo, online, {"pay_stats": 1}, project, offline=offline, registry=registry)
    row = [{"customer_id": "a"}]
    with pytest.raises(UnknownNameError, match="nope"):
        store.get_online_features(row, features=["pay_stats:nope"])
    with pytest.raises(UnknownNameError, match="noview"):
        store.get_online_features(row, features=["noview:spend"])
    with pytest.raises(UnknownNameError, match="noservice"):
        store.get_online_features(row, feature_service="noservice")
    with pytest.raises(InvalidInputError, match="view:feature"):
        store.get_online_features(row, features=["spend"])
    with pytest.raises(InvalidInputError, match="customer_id"):
        store.get_online_features([{"user_id": "a"}], features=["pay_stats:spend"])
    with pytest.raises(InvalidInputError, match="customer_id.*expected string"):
        store.get_online_features([{"customer_id": 12}], features=["pay_stats:spend"])
    df = pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0]})
    with pytest.raises(InvalidInputError, match="event_timestamp"):
        store.get_historical_features(df.drop(columns=["event_timestamp"]), features=["pay_stats:spend"])
    with pytest.raises(InvalidInputError, match="customer_id"):
        store.get_historical_features(df.drop(columns=["customer_id"]), features=["pay_stats:spend"])
    with pytest.raises(InvalidInputError, match="string keys"):
        store.get_historical_features(pd.DataFrame({"customer_id": [5], "event_timestamp": [T0]}),
                                      features=["pay_stats:spend"])
    with pytest.raises(UnknownNameError, match="nope"):
        store.get_historical_features(df, features=["pay_stats:nope"])
    with pytest.raises(InvalidInputError, match="exactly one"):
        store.get_historical_features(df)
    # Push with an invalid row writes nothing (online or offline).
    bad = pd.DataFrame({"customer_id": ["a", "b"], "amount": [1.0, "x"], "ts": [T0, None]})
    with pytest.raises(InvalidInputError, match="row 1: missing_field"):
        store.push("pay", bad, to="online_and_offline")
    assert loop.run_until_complete(offline.count_events("pay")) == 0
    assert (store.get_online_features([{"customer_id": "a"}], features=["pay_stats:spend"]).statuses["spend"]
            == ["missing"])
    with pytest.raises(InvalidInputError, match="start"):
        store.materialize("yesterday", T0)


def test_load_events_equals_select(small) -> None:
    loop, offline, registry, online, project = small
    src = EventSource(name="mixed", topic="mixed",
                      schema={"uid": "int64", "score": "float64", "page": "string", "ok": "bool", "at": "timestamp",
                              "n": "int64", "eid": "string"},
                      timestamp_field="at", entity_field="uid", event_id_field="eid",
                      optional_fields=("page", "n", "ok"))
    loop.run_until_complete(offline.migrate([src]))
    raw = pd.DataFrame({"uid": [1, 2, 1, 3, 2], "score": [1.5, float("nan"), -0.1, 1e300, 2.0],
                        "page": ["a,b", None, "", 'q"x', "ü\nz"], "ok": [True, None, False, True, True],
                        "at": [T0 + 5, T0 + 1, T0 + 3, T0 + 2, T0 + 4], "n": [1, None, 3, 4, 5],
                        "eid": ["e1", "e2", "e3", "e4", "e5"]})
    valid, rejects = validate_frame(src, raw)
    assert rejects.empty
    valid["__partition"] = [1, 0, 0, 1, 0]
    valid["__offset"] = [7, 3, 1, 2, 9]
    loop.run_until_complete(offline.write_events(src, valid))
    for keys, end in ((None, None), ([1, 2], T0 + 4)):
        slow = loop.run_until_complete(offline._select_events(src, keys=keys, end_ms=end))
        fast = loop.run_until_complete(offline.load_events(src, keys=keys, end_ms=end))
        pd.testing.assert_frame_equal(fast, slow)
        sub = loop.run_until_complete(offline.load_events(src, keys=keys, end_ms=end, fields=["score"]))
        pd.testing.assert_frame_equal(sub, slow[list(sub.columns)])
        assert "page" not in sub.columns
    # Only fixed-width columns (int key, float with NULL/NaN): the binary COPY path, arrival order.
    nums = EventSource(name="nums", topic="nums", schema={"uid": "int64", "score": "float64", "at": "timestamp"},
                       timestamp_field="at", entity_field="uid", optional_fields=("score",))
    loop.run_until_complete(offline.migrate([nums]))
    valid, _ = validate_frame(nums, raw[["uid", "score", "at"]].assign(score=[1.5, None, float("nan"), 2.0, -3.0]))
    valid["__partition"] = [1, 0, 0, 1, 0]
    valid["__offset"] = [7, 3, 1, 2, 9]
    loop.run_until_complete(offline.write_events(nums, valid))
    fast = loop.run_until_complete(offline.load_events(nums))
    pd.testing.assert_frame_equal(fast, loop.run_until_complete(offline._select_events(nums)))
    assert fast["ts"].tolist() == [T0 + 3, T0 + 1, T0 + 4, T0 + 2, T0 + 5]
