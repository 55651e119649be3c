"""PostgresOfflineStore: idempotent event log, arrival order, history upserts, rejects (real PostgreSQL)."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView
from featurestore.offline import PostgresOfflineStore
from featurestore.schema import validate_frame, validator_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
src = EventSource(
    name="clicks", topic="clicks",
    schema={"uid": "int64", "score": "float64", "page": "string", "ok": "bool", "at": "timestamp",
            "partition": "int64", "tags": "list<int64>"},
    timestamp_field="at", entity_field="uid", optional_fields=("page", "tags"),
)
view = FeatureView(name="click_stats", entity=Entity(name="member", join_key="member_id", key_type="int64"),
                   source=src,
                   features=[Aggregate("score_sum", "score", "sum"), Aggregate("last_page", "page", "last")])


def frame(n: int, partition: int = 0, start: int = 0) -> pd.DataFrame:
    raw = pd.DataFrame({
        "uid": [i % 3 for i in range(start, start + n)],
        "score": [float(i) for i in range(start, start + n)],
        "page": [None if i % 4 == 0 else f"p{i}" for i in range(start, start + n)],
        "ok": [i % 2 == 0 for i in range(start, start + n)],
        "at": [T0 + (n - i) * 1000 for i in range(start, start + n)],   # decreasing: order must not be by time
        "partition": [i * 10 for i in range(start, start + n)],            # a field named like a system column
        "tags": [[i, i + 1] if i % 5 else None for i in range(start, start + n)],
    })
    valid, rejects = validate_frame(src, raw)
    assert rejects.empty
    valid["__partition"] = partition
    valid["__offset"] = np.arange(start, start + n)
    return valid


@pytest.fixture
def store(pg_dsn: str, pg_schema: str):
    loop = asyncio.new_event_loop()
    s = loop.run_until_complete(PostgresOfflineStore.create(pg_dsn, "proj", pg_schema))
    loop.run_until_complete(s.migrate([src], [(view, 1)]))
    yield loop, s
    loop.run_until_complete(s.close())
    loop.close()


def test_write_events_idempotent(store) -> None:
    loop, s = store
    df = frame(50)
    assert loop.run_until_complete(s.write_events(src, df)) == 50
    assert loop.run_until_complete(s.write_events(src, df)) == 0          # replay: nothing new
    assert loop.run_until_complete(s.count_events(src)) == 50
    # Partial overlap: only the new rows are inserted.
    assert loop.run_until_complete(s.write_events(src, pd.concat([df.iloc[40:], frame(10, start=50)]))) == 10
    assert loop.run_until_complete(s.count_events(src)) == 60
    assert loop.run_until_complete(s.write_events(src, df.iloc[:0])) == 0


def test_worker_rows_equal_frame_rows(store, pg_dsn: str, pg_schema: str) -> None:
    """``write_valid_events`` (the worker's path: validated events, no DataFrame) logs exactly what
    ``write_events`` logs for the same events, nulls and lists included, and is as idempotent."""
    loop, s = store
    df = frame(30)
    loop.run_until_complete(s.write_events(src, df))
    validate = validator_for(src)
    raw = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if not k.startswith("__")}
           for row in df.drop(columns=[c for c in df.columns if c.startswith("__")]).to_dict("records")]
    events = [validate({k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in r.items()}) for r in raw]
    assert all(e.ok for e in events)
    other = loop.run_until_complete(PostgresOfflineStore.create(pg_dsn, "proj2", pg_schema))
    try:
        loop.run_until_complete(other.migrate([src], [(view, 1)]))
        triples = [(0, int(o), e) for o, e in zip(df["__offset"], events)]
        assert loop.run_until_complete(other.write_valid_events(src, triples)) == 30
        assert loop.run_until_complete(other.write_valid_events(src, triples[10:] + [(0, 30, events[0])])) == 1
        mine = loop.run_until_complete(other.load_events(src)).iloc[:30].reset_index(drop=True)
        theirs = loop.run_until_complete(s.load_events(src))
        pd.testing.assert_frame_equal(mine, theirs)
    finally:
        loop.run_until_complete(other.close())


def test_load_order_filters_and_types(store) -> None:
    loop, s = store
    loop.run_until_complete(s.write_events(src, frame(10, partition=1)))
    loop.run_until_complete(s.write_events(src, frame(10, partition=0)))
    ev = loop.run_until_complete(s.load_events(src))
    assert len(ev) == 20
    # Arrival order = (partition, offset), not event time.
    assert ev["score"].tolist() == [float(i) for i in range(10)] * 2
    assert ev["ts"].tolist() == ev["at"].tolist() and ev["ts"].dtype == np.int64
    assert ev["key"].dtype == np.int64 and ev["partition"].tolist()[:3] == [0, 10, 20]
    assert ev["page"].iloc[0] is None and ev["page"].iloc[1] == "p1"
    assert ev["ok"].dtype == bool and ev["tags"].iloc[0] is None and list(ev["tags"].iloc[1]) == [1, 2]
    assert ev["event_id"].isna().all()
    only = loop.run_until_complete(s.load_events(src, keys=[1], start_ms=T0 + 3000, end_ms=T0 + 8000))
    assert set(only["key"]) == {1}
    assert only["ts"].between(T0 + 3000, T0 + 8000).all()
    assert len(only) == 4
    assert len(loop.run_until_complete(s.load_events(src, keys=[]))) == 0
    # With positions (the worker rebuilds from them) a schema field named "partition" keeps its values.
    pos = loop.run_until_complete(s.load_events(src, positions=True))
    assert pos["__partition"].tolist() == [0] * 10 + [1] * 10 and pos["__offset"].tolist() == list(range(10)) * 2
    assert pos["partition"].tolist() == ev["partition"].tolist()
    assert set(loop.run_until_complete(s.logged_keys(src, [0, 1, 7]))) == {0, 1}
    assert loop.run_until_complete(s.logged_keys(src, [0, 1], partitions=[5])) == set()
    # entity_events: load_events(positions=True) of the keys; of keys with no row, the same empty frame
    # (columns and dtypes) without reading the log, and a fresh one at each call
    some = loop.run_until_complete(s.entity_events(src, [1, 7]))
    pd.testing.assert_frame_equal(some, pos[pos["key"] == 1].reset_index(drop=True))
    none = loop.run_until_complete(s.entity_events(src, [7, 8]))
    pd.testing.assert_frame_equal(none, pos.iloc[:0].reset_index(drop=True), check_index_type=False)
    none["caller_column"] = 1  # a caller changing its frame does not change the next one
    assert loop.run_until_complete(s.entity_events(src, [0], partitions=[5])).columns.tolist() == pos.columns.tolist()

    async def by_bucket():
        return [f async for f in s.iter_events_by_bucket(src, 1, [0])]
    (bucket,) = loop.run_until_complete(by_bucket())
    assert bucket["__partition"].tolist() == pos["__partition"].tolist()
    assert bucket["partition"].tolist() == ev["partition"].tolist()


def test_history_upsert(store) -> None:
    loop, s = store
    df = pd.DataFrame({"key": [1, 1, 1, 2], "ts": [T0, T0, T0 + 1, T0],
                       "score_sum": [1.0, 2.0, 3.0, np.nan], "last_page": ["a", None, "c", "d"]})
    assert loop.run_until_complete(s.write_history(view, 1, df)) == 4
    df2 = df.assign(score_sum=[10.0, 20.0, 30.0, 40.0])
    assert loop.run_until_complete(s.write_history(view, 1, df2)) == 4
    got = loop.run_until_complete(s.load_history(view, 1))
    assert len(got) == 4 and got["score_sum"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert got["seq"].tolist() == [0, 1, 0, 0] and got["last_page"].tolist() == ["a", None, "c", "d"]


def test_rejects(store) -> None:
    loop, s = store
    rows = [{"source": "clicks", "partition": 0, "offset": 5, "reason": "wrong_type", "detail": "field 'x'",
             "payload": b'{"x": 1}'},
            {"source": "clicks", "partition": -1, "offset": 0, "reason": "missing_field", "payload": "{}"}]
    assert loop.run_until_complete(s.write_rejects(rows)) == 2
    assert loop.run_until_complete(s.write_rejects(rows)) == 0
    got = loop.run_until_complete(s.load_rejects("clicks"))
    assert got["reason"].tolist() == ["missing_field", "wrong_type"]
    assert bytes(got["payload"].iloc[1]) == b'{"x": 1}' and got["detail"].iloc[0] is None
