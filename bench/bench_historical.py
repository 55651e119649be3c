"""Point-in-time training sets: ``get_historical_features`` against ``merge_asof`` and DuckDB ASOF JOIN; prints JSON.

Setup (not timed): ``--events`` synthetic transactions (``bench.data.make_events``: Zipf-skewed
entities over 30 days) are validated and written into the PostgreSQL event log with
``write_events``; ``--labels`` label rows (entity, event_timestamp) are drawn with the same
entity skew at uniform times.

Timed:

* ours: ``FeatureStore.get_historical_features`` for 15 features (sum/count/mean/min/max over
  1 h / 24 h / 7 d, default hops) — loading the entities' events from PostgreSQL, computing the
  windows as of each label time with ``transforms.compute_batch``, lateness/TTL handling; the
  load (``load_events``) and compute split are reported too, and the load alone once more.
  The setup compacts the log into segments (``compact_events``, what ``featurestore compact``
  does; timed and reported); the same request reading every row instead (no segments) is
  timed too and must return the same frame;
* baselines on the same data already in memory: pandas ``merge_asof`` and DuckDB ``ASOF JOIN``
  of the labels with the event rows — the simpler "last row at or before t" join (no window
  aggregation, no database read).

Usage: python -m bench.bench_historical [--events 5000000] [--labels 1000000] [--entities 100000]
       [--string-keys] [--event-ids] [--schema NAME --keep]   (reuse / keep a loaded schema between runs)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import numpy as np
import pandas as pd

from bench.data import T0, make_events
from featurestore.client import FeatureStore
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.registry import Registry
from featurestore.repo import Repository
from transforms import DAY

PROJECT = "benchhist"
WINDOWS = ("1h", "24h", "7d")
FUNCS = ("sum", "count", "mean", "min", "max")


def build_repo(string_keys: bool = False, event_ids: bool = False) -> tuple[Repository, EventSource, FeatureView]:
    """The benchmark's repository: int64 keys and no event id, or (``string_keys``) keys like
    ``C000042`` and (``event_ids``) a ``txn`` event-id field, as the example's transactions have."""
    key_type = "string" if string_keys else "int64"
    customer = Entity(name="customer", join_key="customer_id", key_type=key_type)
    schema = {"customer_id": key_type, "amount": "float64", "event_time": "timestamp"}
    if event_ids:
        schema["txn"] = "string"
    source = EventSource(name="txns", topic="bench_txns", schema=schema, event_id_field="txn" if event_ids else None,
                         timestamp_field="event_time", entity_field="customer_id", allowed_lateness="5m")
    view = FeatureView(name="amount_stats", entity=customer, source=source, ttl="90d",
                       features=[Aggregate(f"amount_{f}_{w}", "amount", f, w) for w in WINDOWS for f in FUNCS])
    repo = Repository(path=None)  # type: ignore[arg-type]
    repo.entities[customer.name] = customer
    repo.sources[source.name] = source
    repo.views[view.name] = view
    return repo, source, view


def make_labels(n_labels: int, n_entities: int, days: int = 30, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_entities + 1) ** 0.8
    keys = rng.choice(n_entities, size=n_labels, p=weights / weights.sum())
    ts = rng.integers(T0, T0 + days * DAY, size=n_labels)
    return pd.DataFrame({"customer_id": keys.astype("int64"), "event_timestamp": ts.astype("int64")})


def string_key(keys) -> np.ndarray:
    return np.array([f"C{int(k):06d}" for k in keys], dtype=object)


async def load(store: PostgresOfflineStore, source: EventSource, events: pd.DataFrame, chunk: int = 500_000) -> float:
    started = time.perf_counter()
    for lo in range(0, len(events), chunk):
        part = events.iloc[lo:lo + chunk]
        frame = pd.DataFrame({
            "__partition": 0, "__offset": np.arange(lo, lo + len(part), dtype="int64"),
            "__key": part["key"].to_numpy(), "__ts": part["ts"].to_numpy(),
            "customer_id": part["key"].to_numpy(), "amount": part["amount"].to_numpy(),
            "event_time": part["ts"].to_numpy(),
        })
        if "txn" in source.schema:
            frame["__event_id"] = frame["txn"] = np.array([f"t{i}" for i in range(lo, lo + len(part))], dtype=object)
        await store.write_events(source, frame)
    async with store.pool.acquire() as conn:
        await conn.execute(f"ANALYZE {store.qualified(store.events_table(source.name))}")
    return time.perf_counter() - started


def run_merge_asof(events: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    started = time.perf_counter()
    left = labels.rename(columns={"customer_id": "key", "event_timestamp": "ts"}).sort_values("ts", kind="stable")
    right = events.sort_values("ts", kind="stable")
    out = pd.merge_asof(left, right, on="ts", by="key", direction="backward")
    return out, time.perf_counter() - started


def run_duckdb(events: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.register("events", events)
    con.register("labels", labels)
    sql = ("SELECT l.customer_id, l.event_timestamp, e.amount FROM labels l ASOF LEFT JOIN events e "
           "ON l.customer_id = e.key AND l.event_timestamp >= e.ts")
    started = time.perf_counter()
    out = con.execute(sql).df()
    return out, time.perf_counter() - started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--schema", default=None, help="PostgreSQL schema to use (reused when it holds the events)")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    parser.add_argument("--string-keys", action="store_true", help="keys like C000042 instead of int64")
    parser.add_argument("--event-ids", action="store_true", help="an event-id field (acceptance then checks repeats)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of ours to stderr")
    parser.add_argument("--profile-sort", default="cumulative", help="cProfile sort key (e.g. tottime)")
    return parser.parse_args()


def set_up(loop, store: PostgresOfflineStore, repo, source, events: pd.DataFrame, n_events: int) -> tuple:
    """Apply the repository, write the events unless the schema holds them, compact the log (what
    ``featurestore compact`` does); returns the registry and what the setup reports."""
    registry = Registry.for_store(store)
    loop.run_until_complete(registry.apply(repo, store))
    report: dict = {}
    have = loop.run_until_complete(store.count_events(source))
    if have != n_events:
        if have:
            raise SystemExit(f"schema {store.schema} holds {have} events, not {n_events}: use another --schema")
        report["setup_write_events_seconds"] = round(loop.run_until_complete(load(store, source, events)), 3)
    started = time.perf_counter()
    compacted = loop.run_until_complete(store.compact_events(source))
    report["setup_compact"] = {**compacted, "seconds": round(time.perf_counter() - started, 3)}
    return registry, report


def timed_historical(fs: FeatureStore, labels: pd.DataFrame, refs: list[str], profile: str | None
                     ) -> tuple[pd.DataFrame, float, dict]:
    """``get_historical_features`` of every label after a warm-up on a slice (imports, first
    allocations): the frame, the seconds and the client's split; ``profile``: a cProfile sort key,
    the profile printed to stderr."""
    fs.get_historical_features(labels.head(10_000), features=refs)
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    started = time.perf_counter()
    ours = fs.get_historical_features(labels, features=refs)
    seconds = time.perf_counter() - started
    if prof is not None:
        import pstats
        import sys
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats(profile).print_stats(35)
    return ours, seconds, dict(fs.last_timings)


def main() -> None:
    args = parse_args()

    from bench.servers import bench_settings

    settings = bench_settings()
    dsn = settings.postgres_dsn.get_secret_value()
    schema = args.schema or f"bench_{uuid.uuid4().hex[:10]}"
    repo, source, view = build_repo(args.string_keys, args.event_ids)
    events = make_events(args.events, args.entities)
    labels = make_labels(args.labels, args.entities)
    if args.string_keys:
        events["key"] = string_key(events["key"])
        labels["customer_id"] = string_key(labels["customer_id"])
    report: dict = {"events": args.events, "labels": args.labels, "entities": args.entities, "days": 30,
                    "features": len(view.features), "keys": "string" if args.string_keys else "int64",
                    "event_ids": args.event_ids}

    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(dsn, PROJECT, schema))
    registry, setup = set_up(loop, store, repo, source, events, args.events)
    report.update(setup)
    fs = FeatureStore(repo, None, {view.name: 1}, PROJECT, offline=store, registry=registry)
    refs = [f"{view.name}:{f.name}" for f in view.features]
    ours, t_ours, timings = timed_historical(fs, labels, refs, args.profile_sort if args.profile else None)
    # The event load alone (the same call as inside ours), for the split.
    keys = pd.unique(labels["customer_id"])
    started = time.perf_counter()
    loaded = loop.run_until_complete(store.load_events(source, keys=list(keys),
                                                       end_ms=int(labels["event_timestamp"].max()),
                                                       fields=["amount"]))
    t_load = time.perf_counter() - started

    # The same request reading every row of the log instead of its segments (before `compact`).
    store.USE_SEGMENTS = False
    started = time.perf_counter()
    rows_only = fs.get_historical_features(labels, features=refs)
    t_rows = time.perf_counter() - started
    rows_timings = dict(fs.last_timings)
    store.USE_SEGMENTS = True
    pd.testing.assert_frame_equal(ours, rows_only)

    _, t_asof = run_merge_asof(events, labels)
    _, t_duck = run_duckdb(events, labels)
    report["ours"] = {"seconds": round(t_ours, 3), "label_rows_per_s": round(args.labels / t_ours),
                      "split_seconds": {k: round(v, 3) for k, v in timings.items()},
                      "load_events_alone_seconds": round(t_load, 3), "events_loaded": len(loaded)}
    report["ours_rows_without_segments"] = {"seconds": round(t_rows, 3),
                                            "split_seconds": {k: round(v, 3) for k, v in rows_timings.items()}}
    report["pandas_merge_asof_in_memory"] = {"seconds": round(t_asof, 3)}
    report["duckdb_asof_join_in_memory"] = {"seconds": round(t_duck, 3)}
    report["goal"] = "ours under 2 s"
    report["meets_goal"] = t_ours < 2.0
    report["checks"] = {"rows": len(ours), "spend_1h_non_null": int(ours["amount_sum_1h"].notna().sum())}
    finish(loop, store, schema, args.keep, report)
    print(json.dumps(report, indent=2))


def finish(loop, store: PostgresOfflineStore, schema: str, keep: bool, report: dict) -> None:
    """Drop the schema (``keep``: name it in the report instead) and close the store and the loop."""
    if not keep:
        async def drop():
            async with store.pool.acquire() as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        loop.run_until_complete(drop())
    else:
        report["schema"] = schema
    loop.run_until_complete(store.close())
    loop.close()


if __name__ == "__main__":
    main()
