"""The full scans ``load_events`` picks (parallel block ranges, segments plus rows: ``_scan_events``)
against one ordered SELECT (``_select_events``), on a real PostgreSQL server: same rows, arrival
order and dtypes (NULL ints/bools, NaN floats), with and without key / end filters, over many ranges
and connections; and the same training set from ``get_historical_features`` whichever read path is
taken."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView, Latest
from featurestore.historical import get_historical_features
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.repo import Repository
from featurestore.schema import validate_frame

T0 = 1_767_225_600_000
MIN = 60_000


@pytest.fixture
def offline(servers, pg_schema, unique_name):
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(servers.postgres_dsn, unique_name("p"), pg_schema))
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


def _source() -> EventSource:
    return EventSource(name="clicks", topic="clicks",
                       schema={"uid": "int64", "score": "float64", "n": "int64", "ok": "bool", "m": "int64",
                               "at": "timestamp"},
                       timestamp_field="at", entity_field="uid", allowed_lateness="2m",
                       optional_fields=("score", "n", "ok"))


def _write(loop, store: PostgresOfflineStore, src: EventSource, n: int = 6000, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    raw = pd.DataFrame({
        "uid": rng.integers(0, 300, size=n),
        "score": np.where(rng.random(n) < 0.1, np.nan, np.round(rng.normal(size=n), 3)),
        "n": pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(0, 50, size=n)), dtype="Int64"),
        "ok": pd.array(np.where(rng.random(n) < 0.1, None, rng.random(n) < 0.5), dtype="boolean"),
        "m": rng.integers(-5, 5, size=n),
        # mostly increasing times with some late and some equal ones (arrival order matters)
        "at": T0 + np.sort(rng.integers(0, 600 * MIN, size=n)) - np.where(rng.random(n) < 0.05, 5 * MIN, 0),
    })
    valid, rejects = validate_frame(src, raw)
    assert rejects.empty
    # Arrival order (partition, offset) differs from the physical order: written in 3 batches,
    # the later batches holding smaller offsets of partition 0 and rows of partition -1.
    valid["__partition"] = np.tile([2, 0, -1], n // 3 + 1)[:n]
    valid["__offset"] = np.arange(n)[::-1].copy()
    for part in np.array_split(np.arange(n), 3):
        loop.run_until_complete(store.write_events(src, valid.iloc[part].reset_index(drop=True)))


def test_scan_equals_load_events(offline) -> None:
    loop, store = offline
    src = _source()
    loop.run_until_complete(store.migrate([src]))
    _write(loop, store, src)

    async def analyze() -> None:
        async with store.pool.acquire() as conn:
            await conn.execute(f"ANALYZE {store.qualified(store.events_table(src.name))}")
            pages = await conn.fetchval(f"SELECT relpages FROM pg_class WHERE oid = "
                                        f"'{store.qualified(store.events_table(src.name))}'::regclass")
        return pages

    pages = loop.run_until_complete(analyze())
    assert pages >= 20
    store.SCAN_RANGE_PAGES = 3  # many ranges, shared by the connections
    keys = list(range(0, 300, 2)) + [10_000]  # half the keys (above SCAN_KEY_FRACTION) and an unknown one
    assert loop.run_until_complete(store._many_keys(src, len(keys)))
    for ks, end in ((None, None), (None, T0 + 300 * MIN), (keys, None), (keys, T0 + 200 * MIN)):
        slow = loop.run_until_complete(store._select_events(src, keys=ks, end_ms=end))
        fast = loop.run_until_complete(store.load_events(src, keys=ks, end_ms=end))
        pd.testing.assert_frame_equal(fast, slow)
        assert slow["n"].dtype == "Int64" and slow["ok"].dtype == "boolean" and slow["m"].dtype == "int64"
        sub = loop.run_until_complete(store.load_events(src, keys=ks, end_ms=end, fields=["score"]))
        pd.testing.assert_frame_equal(sub, slow[list(sub.columns)])
        assert "n" not in sub.columns and "ok" not in sub.columns
    # One connection and one range give the same frame.
    store.SCAN_RANGE_PAGES = 1 << 20
    store.SCAN_CONNECTIONS = 1
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src)),
                                  loop.run_until_complete(store._select_events(src)))


def test_historical_same_whichever_read_path(offline) -> None:
    loop, store = offline
    src = _source()
    visitor = Entity(name="visitor", join_key="uid", key_type="int64")
    view = FeatureView(name="click_stats", entity=visitor, source=src, ttl="3h",
                       features=[Aggregate("score_sum_1h", "score", "sum", "1h"),
                                 Aggregate("score_max_30m", "score", "max", "30m"),
                                 Aggregate("n_count_1h", "n", "count", "1h"),
                                 Latest("last_m", "m")])
    repo = Repository(path=None)  # type: ignore[arg-type]
    repo.entities[visitor.name] = visitor
    repo.sources[src.name] = src
    repo.views[view.name] = view
    loop.run_until_complete(store.migrate([src]))
    _write(loop, store, src, n=3000, seed=5)

    async def analyze() -> None:  # statistics: what the choice of read path looks at
        async with store.pool.acquire() as conn:
            await conn.execute(f"ANALYZE {store.qualified(store.events_table(src.name))}")

    loop.run_until_complete(analyze())
    rng = np.random.default_rng(9)
    entity_df = pd.DataFrame({"uid": rng.integers(0, 320, size=2000),
                              "event_timestamp": T0 + rng.integers(-10 * MIN, 700 * MIN, size=2000)})
    refs = [f"click_stats:{f.name}" for f in view.features]
    store.SCAN_RANGE_PAGES = 2
    store.SCAN_KEY_FRACTION = 0.0  # every key set: the parallel scan
    assert loop.run_until_complete(store._many_keys(src, 1))
    scanned = loop.run_until_complete(get_historical_features(store, repo, None, entity_df, refs))
    store.SCAN_KEY_FRACTION = float("inf")  # never: the ordered COPY through the index
    copied = loop.run_until_complete(get_historical_features(store, repo, None, entity_df, refs))
    pd.testing.assert_frame_equal(scanned, copied)
    assert scanned["score_sum_1h"].notna().sum() > 100


def _no_block_scan(*_args, **_kwargs):
    raise AssertionError("the block scan ran: the segments were not read")


def test_segments_equal_rows(offline) -> None:
    """``compact_events`` segments (several per partition) plus the rows after them give the frames
    the SELECT gives, filtered or not; compaction adds only new rows; partition -1 stays rows."""
    loop, store = offline
    src = _source()
    loop.run_until_complete(store.migrate([src]))
    _write(loop, store, src)  # 6,000 rows: 2,000 each in partitions 2, 0 and -1
    added = loop.run_until_complete(store.compact_events(src, segment_rows=300))
    assert added == {"segments": 14, "events": 4000}  # 7 segments of at most 300 per Kafka partition
    assert loop.run_until_complete(store.compact_events(src, segment_rows=300)) == {"segments": 0, "events": 0}

    async def storage() -> bytes:
        async with store.pool.acquire() as conn:
            return await conn.fetchval("SELECT attstorage FROM pg_attribute WHERE attname = 'data' AND attrelid = "
                                       f"'{store.qualified(store.segments_table(src.name))}'::regclass")

    assert loop.run_until_complete(storage()) == b"e"  # packed values stored uncompressed ("char" column)
    # Rows after the segments: later offsets of partitions 0 and 2, a partition never compacted, pushes.
    rng = np.random.default_rng(9)
    n = 900
    more, rejects = validate_frame(src, pd.DataFrame({
        "uid": rng.integers(0, 300, size=n), "score": np.round(rng.normal(size=n), 3),
        "n": pd.array(rng.integers(0, 50, size=n), dtype="Int64"), "ok": pd.array(rng.random(n) < 0.5, dtype="boolean"),
        "m": rng.integers(-5, 5, size=n), "at": T0 + 610 * MIN + np.arange(n) * 1000}))
    assert rejects.empty
    more["__partition"] = np.repeat([0, 2, 5, -1], [300, 200, 200, 200])
    more["__offset"] = np.concatenate([np.arange(6000, 6300), np.arange(7000, 7200), np.arange(200),
                                       np.arange(6000, 6200)])
    loop.run_until_complete(store.write_events(src, more))

    keys = list(range(0, 300, 2)) + [10_000]
    cases = [(None, None), (None, T0 + 300 * MIN), (keys, None), (keys, T0 + 615 * MIN)]
    expected = [loop.run_until_complete(store._select_events(src, keys=ks, end_ms=end)) for ks, end in cases]
    block_scan, store._block_scan = store._block_scan, _no_block_scan
    for (ks, end), slow in zip(cases, expected):
        pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src, keys=ks, end_ms=end)), slow)
        sub = loop.run_until_complete(store.load_events(src, keys=ks, end_ms=end, fields=["score"]))
        pd.testing.assert_frame_equal(sub, slow[list(sub.columns)])
    assert loop.run_until_complete(store.compact_events(src, segment_rows=300)) == {"segments": 3, "events": 700}
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src)), expected[0])
    # Without segments: the block scan, same frame.
    store._block_scan = block_scan
    store.USE_SEGMENTS = False
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src)), expected[0])


def test_segments_after_a_field_is_added(offline) -> None:
    """Segments written before a field existed are not used for it (the rows are read) until
    ``compact_events(rebuild=True)``; a source with no event log is named in the error."""
    loop, store = offline
    src = _source()
    loop.run_until_complete(store.migrate([src]))
    _write(loop, store, src, n=1200)
    loop.run_until_complete(store.compact_events(src))
    wider = EventSource(name=src.name, topic=src.topic, schema={**src.schema, "extra": "float64"},
                        timestamp_field="at", entity_field="uid", allowed_lateness="2m",
                        optional_fields=("score", "n", "ok", "extra"))
    loop.run_until_complete(store.migrate([wider]))
    slow = loop.run_until_complete(store._select_events(wider))
    assert slow["extra"].isna().all()
    block_scan, store._block_scan = store._block_scan, _no_block_scan
    with pytest.raises(AssertionError, match="block scan ran"):
        loop.run_until_complete(store.load_events(wider))
    store._block_scan = block_scan
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(wider)), slow)
    assert loop.run_until_complete(store.compact_events(wider, rebuild=True)) == {"segments": 2, "events": 800}
    store._block_scan = _no_block_scan
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(wider)), slow)

    from featurestore.exceptions import UnknownNameError
    unknown = EventSource(name="never_applied", topic="t", schema={"uid": "string", "at": "timestamp"},
                          timestamp_field="at", entity_field="uid")
    with pytest.raises(UnknownNameError, match="never_applied"):
        loop.run_until_complete(store.compact_events(unknown))


def test_forgotten_rows_leave_the_segments(offline) -> None:
    """Rows ``forget_events`` deletes after they were compacted are in no read: the segments holding
    them and the later ones of their partition are dropped (the rows there are read instead), and
    compaction packs those rows again, without the forgotten ones."""
    loop, store = offline
    src = _source()
    loop.run_until_complete(store.migrate([src]))
    _write(loop, store, src)  # 6,000 rows: 2,000 each in partitions 2, 0 and -1
    assert loop.run_until_complete(store.compact_events(src, segment_rows=300)) == {"segments": 14, "events": 4000}
    logged = loop.run_until_complete(store._select_events(src, positions=True))
    offsets = {p: logged.loc[logged["__partition"] == p, "__offset"].tolist() for p in (0, 2, -1)}
    # the 4th of partition 0's 7 segments, partition 2's last one, a pushed row, a position never logged
    forget = [(0, offsets[0][1000]), (2, offsets[2][1950]), (-1, offsets[-1][5]), (0, 999_999)]
    assert loop.run_until_complete(store.forget_events(src, forget)) == 3
    rows = loop.run_until_complete(store._select_events(src))
    assert len(rows) == 6000 - 3
    block_scan, store._block_scan = store._block_scan, _no_block_scan
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src)), rows)
    # partition 0: 4 segments of 1,100 rows less 1; partition 2: 1 of 200 less 1
    assert loop.run_until_complete(store.compact_events(src, segment_rows=300)) == {"segments": 5, "events": 1298}
    pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src)), rows)
    store._block_scan = block_scan


def test_compaction_waits_for_writes_in_flight(offline, servers) -> None:
    """A write in flight (holding the log's lock shared, not committed) holds compaction back, and
    its rows land in the segments once it commits: no row is left between segments and tail."""
    import asyncpg

    loop, store = offline
    src = _source()
    loop.run_until_complete(store.migrate([src]))
    _write(loop, store, src, n=600)
    table = store.qualified(store.events_table(src.name))

    async def scenario():
        conn = await asyncpg.connect(servers.postgres_dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", store._log_lock(src))
            await conn.execute(f'INSERT INTO {table} ("partition", "offset", "entity_key", "event_time", "uid", "m") '
                               f"VALUES (0, 5000, 7, {T0}, 7, 1)")
            task = asyncio.ensure_future(store.compact_events(src))
            await asyncio.sleep(1.0)
            assert not task.done(), "compaction ran while a write was in flight"
            await tx.commit()
            return await task
        finally:
            await conn.close()

    assert loop.run_until_complete(scenario()) == {"segments": 2, "events": 401}
    block_scan, store._block_scan = store._block_scan, _no_block_scan
    fast = loop.run_until_complete(store.load_events(src))
    store._block_scan = block_scan
    pd.testing.assert_frame_equal(fast, loop.run_until_complete(store._select_events(src)))
    assert ((fast["key"] == 7) & (fast["ts"] == T0)).any()


def test_text_keys_ids_and_strings_scan_and_segments(offline) -> None:
    """String keys, an event id and string fields (NULL, empty, non-ASCII) through the block scan
    and through segments plus rows: the frames the SELECT gives."""
    loop, store = offline
    src = EventSource(name="orders", topic="orders",
                      schema={"buyer": "string", "txn": "string", "city": "string", "amount": "float64",
                              "n": "int64", "at": "timestamp"},
                      timestamp_field="at", entity_field="buyer", event_id_field="txn",
                      optional_fields=("city", "n"))
    loop.run_until_complete(store.migrate([src]))
    rng = np.random.default_rng(4)
    cities = np.array(["Zürich", "東京", "", "Lyon", None], dtype=object)

    def rows(lo: int, n: int, partitions) -> pd.DataFrame:
        raw = pd.DataFrame({
            "buyer": [f"u{int(k):03d}" for k in rng.integers(0, 200, size=n)],
            "txn": [f"t{i}" for i in range(lo, lo + n)],
            "city": cities[rng.integers(0, len(cities), size=n)],
            "amount": np.round(rng.normal(size=n), 3),
            "n": pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(0, 9, size=n)), dtype="Int64"),
            "at": T0 + np.arange(lo, lo + n) * 1000})
        valid, rejects = validate_frame(src, raw)
        assert rejects.empty
        valid["__partition"] = np.resize(partitions, n)
        valid["__offset"] = np.arange(lo, lo + n)
        return valid

    loop.run_until_complete(store.write_events(src, rows(0, 4000, [0, 1, -1])))

    async def analyze() -> None:
        async with store.pool.acquire() as conn:
            await conn.execute(f"ANALYZE {store.qualified(store.events_table(src.name))}")

    loop.run_until_complete(analyze())
    store.SCAN_RANGE_PAGES = 3
    keys = [f"u{k:03d}" for k in range(0, 200, 2)] + ["nobody"]
    assert loop.run_until_complete(store._many_keys(src, len(keys)))
    cases = [(None, None), (keys, T0 + 3000 * 1000)]

    def check() -> None:
        for ks, end in cases:
            slow = loop.run_until_complete(store._select_events(src, keys=ks, end_ms=end))
            fast = loop.run_until_complete(store.load_events(src, keys=ks, end_ms=end))
            pd.testing.assert_frame_equal(fast, slow)
            assert slow["city"].isna().any() and (slow["city"] == "").any() and (slow["city"] == "東京").any()

    check()  # block scan
    assert loop.run_until_complete(store.compact_events(src, segment_rows=500)) == {"segments": 6, "events": 2667}
    loop.run_until_complete(store.write_events(src, rows(4000, 600, [1, 2, -1])))
    block_scan, store._block_scan = store._block_scan, _no_block_scan
    check()  # segments plus rows
    store._block_scan = block_scan


def test_empty_event_log(offline) -> None:
    """An event log without a row: every read path gives an empty frame of the source's columns, and a
    training set gives each label row what it gives an entity without events in a log holding others'."""
    loop, store = offline
    src = _source()
    visitor = Entity(name="visitor", join_key="uid", key_type="int64")
    view = FeatureView(name="click_stats", entity=visitor, source=src, ttl="3h",
                       features=[Aggregate("score_sum_1h", "score", "sum", "1h"),
                                 Aggregate("n_count_1h", "n", "count", "1h"), Latest("last_m", "m")])
    repo = Repository(path=None)  # type: ignore[arg-type]
    repo.entities[visitor.name] = visitor
    repo.sources[src.name] = src
    repo.views[view.name] = view
    loop.run_until_complete(store.migrate([src]))
    expected = loop.run_until_complete(store._select_events(src))
    assert expected.empty and list(expected.columns)
    entity_df = pd.DataFrame({"uid": [1, 2], "event_timestamp": [T0, T0 + MIN]})
    refs = [f"click_stats:{f.name}" for f in view.features]
    empty = {}
    for fraction in (0.0, float("inf")):  # the parallel scan, then the ordered COPY
        store.SCAN_KEY_FRACTION = fraction
        for keys in (None, [1, 2]):
            pd.testing.assert_frame_equal(loop.run_until_complete(store.load_events(src, keys=keys)), expected,
                                          check_index_type=False)
        empty[fraction] = loop.run_until_complete(get_historical_features(store, repo, None, entity_df, refs))
    assert len(empty[0.0]) == 2 and empty[0.0]["uid"].tolist() == [1, 2]
    pd.testing.assert_frame_equal(empty[0.0], empty[float("inf")])
    _write(loop, store, src, n=300, seed=5)
    others = loop.run_until_complete(get_historical_features(
        store, repo, None, pd.DataFrame({"uid": [10_001, 10_002], "event_timestamp": [T0, T0 + MIN]}), refs))
    assert others["score_sum_1h"].isna().all() and others["last_m"].isna().all()
    pd.testing.assert_frame_equal(empty[0.0].drop(columns="uid"), others.drop(columns="uid"))
