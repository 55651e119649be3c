"""The event log read over JDBC (``readers.event_log_events``) against real PostgreSQL: the rows, values
and arrival positions the offline store's own reader (``iter_events_by_bucket`` over asyncpg) selects,
for every column type of an event log, nulls, Kafka partitions and partition -1 (files, pushes), with
a cut-over and an end time."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pandas as pd
import pytest

from featurestore.definitions import EventSource
from featurestore.exceptions import InvalidInputError
from featurestore.offline import PostgresOfflineStore
from featurestore.schema import validate_frame
from featurestore.spark.readers import checked_schema, event_log_events

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000


def typed_source() -> EventSource:
    return EventSource(
        name="typed", topic="typed",
        schema={"id": "string", "user_id": "int64", "amount": "float64", "flag": "bool", "n": "int64",
                "tags": "list<int64>", "vec": "list<float64>", "emb": "embedding<2>", "seen_at": "timestamp",
                "event_time": "timestamp"},
        timestamp_field="event_time", entity_field="user_id", event_id_field="id",
        optional_fields=("amount", "flag", "n", "tags", "vec", "emb", "seen_at"))


def typed_events(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        rows.append({"id": f"e{i}", "user_id": int(rng.integers(-3, 40)) * 1_000_003,
                     "amount": None if i % 7 == 0 else (float("nan") if i % 11 == 0 else float(rng.normal())),
                     "flag": None if i % 5 == 0 else bool(i % 2), "n": None if i % 3 == 0 else 2**62 + i,
                     "tags": None if i % 4 == 0 else [int(x) for x in rng.integers(-9, 9, i % 3)],
                     "vec": None if i % 6 == 0 else [float(x) for x in rng.normal(size=2)],
                     "emb": None if i % 9 == 0 else [0.1 * i, -1.5],
                     "seen_at": None if i % 8 == 0 else T0 + 7 * i,
                     "event_time": T0 + 1000 * i - int(rng.integers(0, 50_000))})
    return pd.DataFrame(rows)


def _same(u, v) -> bool:
    """Equal values; null and NaN alike as missing (the offline store's frames hold NaN for a null float)."""
    if isinstance(u, (list, np.ndarray)) or isinstance(v, (list, np.ndarray)):
        return u is not None and v is not None and [float(x) for x in u] == [float(x) for x in v]
    missing = [x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)) for x in (u, v)]
    return all(missing) if any(missing) else (type(u) is type(v) or {type(u), type(v)} <= {int, float}) and u == v


def test_jdbc_read_yields_what_the_offline_store_reads(spark, pg_dsn, pg_schema, unique_name):
    src = typed_source()
    project = unique_name("p")
    raw = typed_events(900)
    valid, rejects = validate_frame(src, raw)
    assert rejects.empty
    part = np.arange(len(valid)) % 3 - 1  # partitions -1, 0, 1
    valid["__partition"] = part
    valid["__offset"] = np.arange(len(valid)) // 3 + np.where(part < 0, 1, 0)  # pushes count from 1

    async def setup_and_read(cut, end_ms):
        store = await PostgresOfflineStore.create(pg_dsn, project, pg_schema)
        try:
            await store.migrate([src])
            if not await store.count_events(src):
                await store.write_events(src, valid)
            frames = [f async for f in store.iter_events_by_bucket(src, 1, [0], end_ms, cut)]
            return pd.concat(frames, ignore_index=True)
        finally:
            await store.close()

    for cut, end_ms in ((None, None), ({0: 120, 2: 5}, T0 + 500_000)):
        want = asyncio.run(setup_and_read(cut, end_ms))
        frame = event_log_events(spark, src, pg_dsn, project, pg_schema, cut, end_ms, tasks=5)
        assert [f.name for f in frame.schema.fields] == checked_schema(src).names
        assert frame.rdd.getNumPartitions() > 1  # parallel ranges
        got = sorted((r.asDict() for r in frame.collect()), key=lambda r: (r["__part"], r["__off"]))
        want = want.sort_values(["__partition", "__offset"]).reset_index(drop=True)
        assert 0 < len(got) == len(want)
        if cut is not None:
            assert {r["__part"] for r in got} == {-1, 0} and max(r["__off"] for r in got if r["__part"] == 0) == 120
            assert max(r["__ts"] for r in got) <= end_ms
        assert all(r["__reason"] is None and r["__payload"] is None for r in got)
        pairs = [("__part", "__partition"), ("__off", "__offset"), ("__key", "key"), ("__ts", "ts"),
                 ("__eid", "event_id")] + [(f"f_{f}", f) for f in src.schema if f != src.timestamp_field]
        for mine, theirs in pairs:
            bad = [(i, r[mine], v) for i, (r, v) in enumerate(zip(got, want[theirs].tolist())) if not _same(r[mine], v)]
            assert not bad, (mine, bad[:5])
            assert not all(_same(r[mine], None) for r in got), mine  # values, not only nulls, compared


def test_an_event_log_that_is_not_there_is_named(spark, pg_dsn, pg_schema, unique_name):
    project = unique_name("p")
    expected = (f"cannot read the event log .*{project}__events__typed.* over JDBC "
                r"\(jdbc:postgresql://.*\): org.postgresql.util.PSQLException: .*does not exist")
    with pytest.raises(InvalidInputError, match=expected):
        event_log_events(spark, typed_source(), pg_dsn, project, pg_schema, None, None, tasks=2)
