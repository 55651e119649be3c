"""``featurestore stats`` end to end on ``--entities`` entities × 20 features; prints JSON.

Setup (not timed): ``--events-per-entity`` synthetic transactions per entity on average (every entity has
at least one; amounts lognormal, times uniform over 30 days) written into the PostgreSQL event log and
compacted into segments (what ``featurestore compact`` does).  The view has 20 features: sum, count, mean,
min and max of the amount over 1 h, 24 h, 7 d and 30 d; two expectations (a relation and a range).

Timed:

* ``run_statistics`` (what ``featurestore stats --view`` runs): the entities with events up to the end of
  the data, their 20 features as of that time through ``get_historical_features`` (the training-set
  path), the statistics of each feature (percentiles, a 20-bucket histogram, drift against a first run),
  the expectations, and the run stored in PostgreSQL;
* the same-run baseline: the training-set read alone, ``get_historical_features`` for the same entities,
  time and features.  ``stats_overhead_seconds`` is the difference.

Usage: python -m bench.bench_stats [--entities 1000000] [--events-per-entity 2] [--sample N]
       [--schema NAME --keep]   (reuse / keep a loaded schema between runs)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import numpy as np
import pandas as pd

from bench.bench_historical import finish, load
from bench.data import T0
from featurestore.client import FeatureStore
from featurestore.console.stats_runs import run_statistics
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView, Range, Relation
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.registry import Registry
from featurestore.repo import Repository
from transforms import DAY

PROJECT = "benchstats"
WINDOWS = ("1h", "24h", "7d", "30d")
FUNCS = ("sum", "count", "mean", "min", "max")
DAYS = 30


def build_repo() -> tuple[Repository, EventSource, FeatureView]:
    customer = Entity(name="customer", join_key="customer_id", key_type="int64")
    source = EventSource(name="txns", topic="bench_stats_txns",
                         schema={"customer_id": "int64", "amount": "float64", "event_time": "timestamp"},
                         timestamp_field="event_time", entity_field="customer_id", allowed_lateness="5m")
    view = FeatureView(name="amount_stats", entity=customer, source=source, ttl="90d",
                       features=[Aggregate(f"amount_{f}_{w}", "amount", f, w) for w in WINDOWS for f in FUNCS],
                       expectations=[Relation("amount_mean_7d", "<=", "amount_max_7d", tolerance=1e-6),
                                     Range("amount_min_30d", min=0)])
    repo = Repository(path=None)  # type: ignore[arg-type]
    repo.entities[customer.name] = customer
    repo.sources[source.name] = source
    repo.views[view.name] = view
    return repo, source, view


def make_events(n_entities: int, per_entity: float, seed: int = 5) -> pd.DataFrame:
    """Events in time order: each entity once, then ``per_entity - 1`` more per entity drawn uniformly."""
    rng = np.random.default_rng(seed)
    extra = int(n_entities * max(0.0, per_entity - 1))
    keys = np.concatenate([np.arange(n_entities), rng.integers(0, n_entities, size=extra)])
    ts = rng.integers(T0, T0 + DAYS * DAY, size=len(keys))
    order = np.argsort(ts, kind="stable")
    return pd.DataFrame({"key": keys[order].astype("int64"), "ts": ts[order].astype("int64"),
                         "amount": np.round(rng.lognormal(3.5, 1.0, size=len(keys)), 2)})


def set_up(loop, store: PostgresOfflineStore, repo: Repository, source: EventSource, events: pd.DataFrame) -> dict:
    loop.run_until_complete(Registry.for_store(store).apply(repo, store))
    report: dict = {}
    have = loop.run_until_complete(store.count_events(source))
    if have != len(events):
        if have:
            raise SystemExit(f"schema {store.schema} holds {have} events, not {len(events)}: use another --schema")
        report["setup_write_events_seconds"] = round(loop.run_until_complete(load(store, source, events)), 3)
    started = time.perf_counter()
    compacted = loop.run_until_complete(store.compact_events(source))
    report["setup_compact"] = {**compacted, "seconds": round(time.perf_counter() - started, 3)}
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--events-per-entity", type=float, default=2.0)
    parser.add_argument("--sample", type=int, default=None, help="the stats run's --entities (default: all)")
    parser.add_argument("--schema", default=None, help="PostgreSQL schema to use (reused when it holds the events)")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    return parser.parse_args()


async def measure(fs: FeatureStore, view: FeatureView, at_ms: int, sample: int | None) -> dict:
    """A reference run (not timed), the timed run, and the timed training-set read of the same entities."""
    await run_statistics(fs, view.name, at_ms, sample)  # the reference of the timed run's drift; warms up
    started = time.perf_counter()
    run = await run_statistics(fs, view.name, at_ms, sample)
    t_stats = time.perf_counter() - started
    offline, _ = await fs.astores()
    keys = await offline.event_keys(view.source, end_ms=at_ms)
    if sample is not None and sample < len(keys):
        import random
        keys = sorted(random.Random(0).sample(keys, sample))
    frame = pd.DataFrame({view.entity.join_key: keys, "event_timestamp": pd.to_datetime(at_ms, unit="ms", utc=True)})
    started = time.perf_counter()
    values = await fs.aget_historical_features(frame, features=[f"{view.name}:{f.name}" for f in view.features],
                                               full_feature_names=True)
    t_read = time.perf_counter() - started
    n = run["entities"]
    return {"run": run, "stats_seconds": t_stats, "read_seconds": t_read, "read_rows": len(values), "n": n}


def main() -> None:
    args = parse_args()

    from bench.servers import bench_settings

    settings = bench_settings()
    dsn = settings.postgres_dsn.get_secret_value()
    schema = args.schema or f"bench_{uuid.uuid4().hex[:10]}"
    repo, source, view = build_repo()
    events = make_events(args.entities, args.events_per_entity)
    at_ms = int(events["ts"].max())
    report: dict = {"entities": args.entities, "events": len(events), "features": len(view.features),
                    "days": DAYS, "sample": args.sample}
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(dsn, PROJECT, schema))
    report.update(set_up(loop, store, repo, source, events))
    fs = FeatureStore(repo, None, {view.name: 1}, PROJECT, offline=store, registry=Registry.for_store(store))
    m = loop.run_until_complete(measure(fs, view, at_ms, args.sample))
    run, n = m["run"], m["n"]
    report["stats_run"] = {"seconds": round(m["stats_seconds"], 3), "entities": n,
                           "rows_per_s": round(n / m["stats_seconds"]),
                           "features_drifting": sum(1 for s in run["stats"].values() if s.get("drift") not in
                                                    (None, "stable")),
                           "checks": {c["check"]: c["failed"] for c in run["checks"]}}
    report["training_set_read_alone"] = {"seconds": round(m["read_seconds"], 3), "rows": m["read_rows"],
                                         "rows_per_s": round(m["read_rows"] / m["read_seconds"])}
    report["stats_overhead_seconds"] = round(m["stats_seconds"] - m["read_seconds"], 3)
    report["goal"] = "1M entities x 20 features under 60 s"
    report["meets_goal"] = m["stats_seconds"] < 60.0 * n / 1_000_000 if n else False
    finish(loop, store, schema, args.keep, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
