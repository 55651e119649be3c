"""get_historical_features against ViewState fed the events <= t in arrival order (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pandas as pd
import pytest

from featurestore.definitions import (
    Activity,
    Aggregate,
    BatchTransform,
    Entity,
    EventSource,
    FeatureView,
    Latest,
    OnDemandFeatureView,
)
from featurestore.exceptions import InvalidInputError, RegistryError, UnknownNameError
from featurestore.historical import get_historical_features
from featurestore.offline import PostgresOfflineStore
from featurestore.registry import Registry
from featurestore.repo import Repository
from featurestore.schema import validate_frame
from transforms import ViewState

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
S = 1000

customer = Entity(name="customer", join_key="customer_id")
purchases = EventSource(
    name="purchases", topic="purchases",
    schema={"customer_id": "string", "amount": "float64", "category": "string", "ts": "timestamp", "pid": "string"},
    timestamp_field="ts", entity_field="customer_id", event_id_field="pid", allowed_lateness=5 * S,
    optional_fields=("category",),
)


def double_amount(df: pd.DataFrame) -> pd.Series:
    return df["amount"] * 2.0


stats = FeatureView(
    name="stats", entity=customer, source=purchases, ttl=60 * S,
    features=[
        Aggregate("spend_10s", "amount", "sum", window=10 * S, hop=S),
        Aggregate("avg_10s", "amount", "mean", window=10 * S, hop=S),
        Aggregate("max_30s", "amount", "max", window=30 * S, hop=S),
        Aggregate("n_amounts", "amount", "count", default=-1),
        Aggregate("first_cat_10s", "category", "first", window=10 * S, hop=S),
        Aggregate("last3", "amount", "last_n", window=30 * S, hop=S, n=3),
        Aggregate("var_30s", "amount", "var", window=30 * S, hop=S),
        Aggregate("cats_30s", "category", "count_distinct", window=30 * S, hop=S),
        Activity("events_life", "count_events"),
        Activity("since_last", "seconds_since_last"),
        Latest("last_category", "category"),
        BatchTransform("doubled", ["amount"], double_amount, "float64"),
    ],
)


def score(df: pd.DataFrame) -> pd.DataFrame:
    spend = pd.to_numeric(df["spend_10s"], errors="coerce").fillna(0.0)
    return pd.DataFrame({"spend_plus": spend + df["bonus"].astype(float)}, index=df.index)


scored = OnDemandFeatureView(name="scored", sources=[stats[["spend_10s"]]], request_schema={"bonus": "float64"},
                             schema={"spend_plus": "float64"}, fn=score)

# (customer, ts offset s, amount, category, id) in arrival order.
EVENTS = [
    ("a", 0, 10.0, "x", "p1"),
    ("a", 2, 20.0, "y", "p2"),
    ("b", 1, 5.0, None, "p3"),
    ("a", 2, 20.0, "y", "p2"),        # redelivery: duplicate id
    ("a", 12, 1.0, "x", "p4"),
    ("a", 3, 7.0, "z", "p5"),         # late (watermark 12 s, lateness 5 s) once 12 s is visible
    ("b", 40, 3.5, "q", "p6"),
    ("a", 11, float("nan"), "x", "p7"),  # NaN amount: skipped by column aggregations
    ("c", 100, 1.0, "x", "p8"),
    ("b", 30, 4.0, "q", "p9"),        # late relative to 40 s, on time before it
]


def _raw() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": [e[0] for e in EVENTS],
        "ts": [T0 + e[1] * S for e in EVENTS],
        "amount": [e[2] for e in EVENTS],
        "category": [e[3] for e in EVENTS],
        "pid": [e[4] for e in EVENTS],
    })


def _expected(key: str, t: int) -> dict | None:
    """ViewState fed the entity's events with ts <= t in arrival order, evaluated at t; None = missing."""
    raw = _raw()
    state = ViewState(stats.agg_specs(), lateness_ms=purchases.allowed_lateness)
    batch = []
    for _, r in raw.iterrows():
        if r["customer_id"] != key or r["ts"] > t:
            continue
        values = {"amount": r["amount"], "category": r["category"], "__bt_doubled": r["amount"] * 2.0}
        batch.append((int(r["ts"]), values, r["pid"]))
    rejected = {rej.index for rej in state.apply(batch)}
    accepted = [b[0] for i, b in enumerate(batch) if i not in rejected]
    if not accepted or max(accepted) < t - stats.ttl:
        return None
    return state.evaluate(t)


def _same(got, want) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None or got is pd.NA or (isinstance(got, float) and math.isnan(got))
    if isinstance(want, list):
        return list(got) == want
    if isinstance(want, float):
        return math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-12)
    return got == want


def _repo() -> Repository:
    repo = Repository(path=None)  # type: ignore[arg-type]
    for obj in (customer, purchases, stats, scored):
        repo._add(obj, origin=__import__("pathlib").Path(__file__))
    return repo


@pytest.fixture
def loaded(pg_dsn: str, pg_schema: str):
    """An offline store holding EVENTS and a registry where the repo is applied."""

    async def setup():
        store = await PostgresOfflineStore.create(pg_dsn, "proj", pg_schema)
        registry = Registry.for_store(store)
        repo = _repo()
        await registry.apply(repo, store)
        valid, rejects = validate_frame(purchases, _raw())
        assert rejects.empty
        valid["__partition"] = 0
        valid["__offset"] = np.arange(len(valid))
        await store.write_events(purchases, valid)
        return store, registry, repo

    loop = asyncio.new_event_loop()
    store, registry, repo = loop.run_until_complete(setup())
    yield loop, store, registry, repo
    loop.run_until_complete(store.close())
    loop.close()


QUERY_TIMES = [-1, 0, 1, 2, 3, 5, 11, 12, 13, 15, 20, 25, 30, 35, 39, 40, 41, 45, 60, 71, 72, 99, 100, 101, 200]


def test_values_equal_viewstate(loaded) -> None:
    loop, store, registry, repo = loaded
    rows = [(k, T0 + s * S + extra) for k in ("a", "b", "c", "zzz") for s in QUERY_TIMES for extra in (0, 1)]
    entity_df = pd.DataFrame({"customer_id": [r[0] for r in rows], "event_timestamp": [r[1] for r in rows]})
    refs = [("stats", f) for f in stats.feature_names]
    out = loop.run_until_complete(get_historical_features(store, repo, registry, entity_df, refs))
    assert list(out["customer_id"]) == list(entity_df["customer_id"])
    assert out["spend_10s"].dtype == np.float64
    mismatches = []
    for i, (key, t) in enumerate(rows):
        want = _expected(key, t)
        for f in stats.features:
            got = out[f.name].iloc[i]
            w = f.default if want is None else want[f.name]
            if not _same(got, w):
                mismatches.append((key, (t - T0) / S, f.name, got, w))
    assert not mismatches, mismatches[:10]


def test_window_empties_and_ttl_defaults(loaded) -> None:
    loop, store, registry, repo = loaded
    entity_df = pd.DataFrame({
        "customer_id": ["a", "a", "a", "zzz"],
        "event_timestamp": pd.to_datetime([T0 + 12 * S, T0 + 30 * S, T0 + 80 * S, T0 + 12 * S], unit="ms"),
    })
    out = loop.run_until_complete(get_historical_features(
        store, repo, registry, entity_df, [("stats", "spend_10s"), ("stats", "n_amounts"), ("stats", "avg_10s")]))
    assert out["spend_10s"].tolist()[:2] == [21.0, 0.0]   # events at 2 s and 12 s; window empty at 30 s
    assert math.isnan(out["avg_10s"].iloc[1])             # empty mean -> NaN in a float column
    assert out["n_amounts"].tolist() == [3, 3, -1, -1]  # 10, 20, 1 (NaN skipped, 3 s late); 80 s: ttl expired
    assert math.isnan(out["spend_10s"].iloc[2]) and math.isnan(out["spend_10s"].iloc[3])


def test_odfv_and_naming(loaded) -> None:
    loop, store, registry, repo = loaded
    entity_df = pd.DataFrame({"customer_id": ["a", "b"], "event_timestamp": [T0 + 3 * S, T0 + 3 * S],
                              "bonus": [1.0, 2.0], "since_last": ["x", "y"]})
    out = loop.run_until_complete(get_historical_features(
        store, repo, registry, entity_df, ["scored", ("stats", "since_last")]))
    assert out["spend_plus"].tolist() == [38.0, 7.0]  # a: 10 + 20 + 7 (the 3 s event is on time at t=3 s) + 1
    assert out["stats__since_last"].tolist() == [0.0, 2.0]   # collides with an input column
    assert out["since_last"].tolist() == ["x", "y"]


def test_bad_input(loaded) -> None:
    loop, store, registry, repo = loaded
    run = lambda df, refs: loop.run_until_complete(get_historical_features(store, repo, registry, df, refs))  # noqa: E731
    with pytest.raises(InvalidInputError, match="event_timestamp"):
        run(pd.DataFrame({"customer_id": ["a"]}), [("stats", "spend_10s")])
    with pytest.raises(InvalidInputError, match="customer_id"):
        run(pd.DataFrame({"event_timestamp": [T0]}), [("stats", "spend_10s")])
    with pytest.raises(InvalidInputError, match="bonus"):
        run(pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0]}), ["scored"])
    with pytest.raises(UnknownNameError, match="nope"):
        run(pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0]}), [("stats", "nope")])
    with pytest.raises(UnknownNameError, match="nosuchview"):
        run(pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0]}), [("nosuchview", "x")])
    with pytest.raises(InvalidInputError, match="null"):
        run(pd.DataFrame({"customer_id": ["a"], "event_timestamp": [None]}), [("stats", "spend_10s")])


def test_unapplied_view_is_an_error(loaded) -> None:
    loop, store, registry, repo = loaded
    changed = FeatureView(name="stats", entity=customer, source=purchases,
                          features=[Aggregate("spend_10s", "amount", "sum", window=20 * S)])
    repo2 = Repository(path=None)  # type: ignore[arg-type]
    repo2._add(changed, origin=__import__("pathlib").Path(__file__))
    with pytest.raises(RegistryError, match="not applied"):
        loop.run_until_complete(get_historical_features(
            store, repo2, registry, pd.DataFrame({"customer_id": ["a"], "event_timestamp": [T0]}),
            [("stats", "spend_10s")]))
