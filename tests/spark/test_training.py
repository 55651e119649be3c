"""Training sets on a local Spark (``local[2]``): ``get_historical_features(..., engine="spark")``
equals the local path and the brute-force reference (ViewState fed the events <= t), over the
event log of real PostgreSQL, with BatchTransforms, on-demand views, TTL defaults, unknown and
null keys; and over out-of-order events, redeliveries, nulls, ties and a hot entity."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pandas as pd
import pytest

from featurestore.client import FeatureStore
from featurestore.historical import get_historical_features
from featurestore.offline import PostgresOfflineStore
from featurestore.registry import Registry
from featurestore.repo import Repository
from featurestore.schema import validate_frame
from featurestore.spark import spark_historical_features
from tests.featurestore.test_historical import QUERY_TIMES, S, T0, _expected, _same, loaded, stats
from tests.spark.data import HOT, tricky_events
from tests.workers.support import make_view

pytestmark = pytest.mark.integration

__all__ = ["loaded"]  # the fixture, shared with the local path's tests


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns and values (floats within 1e-9; NaN, None and <NA> alike as missing)."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in want.columns:
        for i, (u, v) in enumerate(zip(got[col].tolist(), want[col].tolist())):
            if isinstance(v, (list, np.ndarray)) or isinstance(u, (list, np.ndarray)):
                assert list(u) == list(v), (col, i, u, v)
            elif _missing(u) or _missing(v):
                assert _missing(u) and _missing(v), (col, i, u, v)
            elif isinstance(v, float):
                assert math.isclose(float(u), v, rel_tol=1e-9, abs_tol=1e-12), (col, i, u, v)
            else:
                assert u == v, (col, i, u, v)


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def test_spark_training_set_equals_local_and_reference(spark, loaded, pg_dsn, pg_schema) -> None:
    loop, store, registry, repo = loaded
    rows = [(k, T0 + s * S + extra) for k in ("a", "b", "c", "zzz", None) for s in QUERY_TIMES for extra in (0, 1)]
    entity_df = pd.DataFrame({"customer_id": [r[0] for r in rows], "event_timestamp": [r[1] for r in rows],
                              "bonus": [float(i % 3) for i in range(len(rows))]})
    refs = [("stats", f) for f in stats.feature_names] + ["scored"]
    local = loop.run_until_complete(get_historical_features(store, repo, registry, entity_df, refs))
    frame = spark_historical_features(spark, repo, entity_df, refs,
                                      pg={"dsn": pg_dsn, "project": "proj", "schema": pg_schema}, buckets=3)
    got = frame.toPandas()
    assert_frames_equal(got, local)
    mismatches = []
    for i, (key, t) in enumerate(rows):
        want = _expected(key, t) if key is not None else None
        for f in stats.features:
            w = f.default if want is None else want[f.name]
            if not _same(got[f.name].iloc[i], w):
                mismatches.append((key, (t - T0) / S, f.name, got[f.name].iloc[i], w))
    assert not mismatches, mismatches[:10]


def test_client_engine_spark_on_tricky_events(spark, pg_dsn, pg_schema, unique_name) -> None:
    view = make_view(unique_name("topic"), optional_fields=("amount",)).model_copy(update={"ttl": 2 * 3_600_000})
    repo = Repository(path=None)  # type: ignore[arg-type]
    for obj in (view.entity, view.source, view):
        repo._add(obj, origin=__import__("pathlib").Path(__file__))
    events = tricky_events(1200, seed=3)
    project = unique_name("p")

    async def setup():
        offline = await PostgresOfflineStore.create(pg_dsn, project, pg_schema)
        await Registry.for_store(offline).apply(repo, offline)
        raw = pd.DataFrame(events)
        valid, rejects = validate_frame(view.source, raw)
        assert rejects.empty
        valid["__partition"] = np.arange(len(valid)) % 2  # two partitions, arrival order within each
        valid["__offset"] = np.arange(len(valid)) // 2
        await offline.write_events(view.source, valid)
        await offline.close()

    asyncio.run(setup())
    rng = random.Random(9)
    times = [e["event_time"] for e in events]
    keys = [HOT, "C001", "C002", "C017", "nobody"]
    labels = pd.DataFrame({"customer_id": [rng.choice(keys) for _ in range(400)] + [HOT] * 3,
                           "event_timestamp": [rng.randrange(min(times) - 60_000, max(times) + 4 * 3_600_000)
                                               for _ in range(400)] + [times[50]] * 3})  # ties in the labels too
    labels["event_timestamp"] = pd.to_datetime(labels["event_timestamp"], unit="ms", utc=True)
    store = FeatureStore(repo, None, {view.name: 1}, project, postgres_dsn=pg_dsn, pg_schema=pg_schema)
    try:
        refs = [f"{view.name}:{f}" for f in view.feature_names]
        local = store.get_historical_features(labels, features=refs)
        frame = store.get_historical_features(labels, features=refs, engine="spark", spark=spark)
        got = frame.toPandas()
    finally:
        store.close()
    got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
    assert_frames_equal(got.drop(columns="event_timestamp"), local.drop(columns="event_timestamp"))
    assert (got["event_timestamp"].dt.as_unit("ms") == local["event_timestamp"].dt.as_unit("ms")).all()
    assert got["spend_1h"].notna().sum() > 100  # the labels do hit live values
