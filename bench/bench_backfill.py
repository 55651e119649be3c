"""Backfill throughput and memory; prints JSON.

5M events (default), 100k entities, 30 days, one Parquet history file; a view of 15 features
(sum, count, mean, min, max × 1 h / 24 h / 7 d, default hops).  Measured in the same run:

* ours, end to end (``featurestore backfill --source files`` in a fresh process: read,
  validate, shard to the spill, compute, binary COPY into the PostgreSQL history table,
  progress marks): events/s and the process's peak RSS;
* ours, compute only (the same run without writing to PostgreSQL): events/s, peak RSS;
* DuckDB computing the same windows (exact ``RANGE`` frames) from the same Parquet file;
* the PostgreSQL COPY floor: binary COPY of as many history rows (same columns, encoded
  beforehand) into a table without index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data import make_events

WINDOWS = (("1h", 3_600_000), ("24h", 86_400_000), ("7d", 7 * 86_400_000))
FUNCTIONS = ("sum", "count", "mean", "min", "max")


def make_view(path: str):
    from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView, FileHistory

    entity = Entity(name="customer", join_key="customer_id", key_type="int64")
    source = EventSource(name="bench_txns", topic="bench-txns",
                         schema={"customer_id": "int64", "amount": "float64", "event_time": "timestamp"},
                         timestamp_field="event_time", entity_field="customer_id", allowed_lateness="5m",
                         history=FileHistory(path=path))
    return FeatureView(name="bench_stats", entity=entity, source=source, ttl="30d", features=[
        Aggregate(f"amount_{f}_{label}", "amount", f, label) for label, _ in WINDOWS for f in FUNCTIONS])


def settings():
    """The parent starts (and at exit stops) an embedded stack if none is configured; children get its env."""
    from bench.servers import bench_settings

    return bench_settings()


def child(args) -> None:
    """One backfill in this (fresh) process; prints its report and peak RSS."""
    from featurestore.offline.postgres import PostgresOfflineStore
    from featurestore.online import RedisOnlineStore
    from workers.backfill import BackfillOptions, run_backfill
    from featurestore.processing import prepare_view

    s = settings()
    view = make_view(args.path)
    pv = prepare_view(view, 1, args.project)

    async def go():
        store = await PostgresOfflineStore.create(s.postgres_dsn.get_secret_value(), args.project)
        try:
            return await run_backfill(pv, store,
                                      RedisOnlineStore.from_url(s.redis_url.get_secret_value(), args.project),
                                      BackfillOptions(source="files", write=args.child == "e2e", chunks=args.chunks,
                                                      progress=False))
        finally:
            await store.close()

    t0 = time.perf_counter()
    rep = asyncio.run(go())
    wall = time.perf_counter() - t0
    out = rep.as_dict()
    out["wall_s"] = round(wall, 3)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


def run_child(kind: str, path: str, project: str, chunks: int | None) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_backfill", "--child", kind, "--path", path, "--project", project]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(time.perf_counter() - t0, 3)  # includes interpreter start and imports
    return out


def duckdb_same_windows(path: str) -> float:
    import duckdb

    con = duckdb.connect()
    agg = {"sum": "sum", "count": "count", "mean": "avg", "min": "min", "max": "max"}
    cols, windows = [], []
    for label, ms in WINDOWS:
        windows.append(f"w{label} AS (PARTITION BY customer_id ORDER BY event_time "
                       f"RANGE BETWEEN {ms} PRECEDING AND CURRENT ROW)")
        cols += [f"{agg[f]}(amount) OVER w{label} AS {f}_{label}" for f in FUNCTIONS]
    names = [f"{f}_{label}" for label, _ in WINDOWS for f in FUNCTIONS]
    sql = (f"SELECT count(*), {', '.join(f'sum({n})' for n in names)} FROM "
           f"(SELECT {', '.join(cols)} FROM read_parquet('{path}') WINDOW {', '.join(windows)})")
    t0 = time.perf_counter()
    con.execute(sql).fetchall()
    seconds = time.perf_counter() - t0
    con.close()
    return seconds


async def postgres_copy_floor(dsn: str, n: int, chunk: int = 500_000) -> float:
    """Binary COPY of ``n`` rows shaped like the history rows (int8 key, int8 ts, int4 seq, 15
    float8) into a table without index; encoding is done before the clock starts per chunk."""
    import asyncpg

    from featurestore.offline.postgres import _chunks_of, encode_copy_binary

    conn = await asyncpg.connect(dsn)
    names = [f"{f}_{label}" for label, _ in WINDOWS for f in FUNCTIONS]
    await conn.execute("DROP TABLE IF EXISTS bench_copy_floor")
    await conn.execute("CREATE TABLE bench_copy_floor (entity_key bigint, event_time bigint, seq int, "
                       + ", ".join(f"{c} double precision" for c in names) + ")")
    rng = np.random.default_rng(3)
    seconds = 0.0
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        cols = [("int8", np.sort(rng.integers(0, 100_000, m))), ("int8", np.arange(lo, lo + m)),
                ("int4", np.zeros(m, dtype=np.int64))] + [("float8", rng.random(m)) for _ in names]
        payload = encode_copy_binary(cols, m)
        t0 = time.perf_counter()
        await conn.copy_to_table("bench_copy_floor", source=_chunks_of(payload), format="binary",
                                 columns=["entity_key", "event_time", "seq"] + names)
        seconds += time.perf_counter() - t0
    await conn.execute("DROP TABLE bench_copy_floor")
    await conn.close()
    return seconds


async def drop_project(dsn: str, project: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    for (name,) in await conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{project}__%"):
        await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=None, help="chunks (default: automatic, ~400k events each)")
    parser.add_argument("--keep", action="store_true", help="keep the history table afterwards")
    parser.add_argument("--child", choices=["e2e", "compute"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    s = settings()
    env_servers = {"FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                   "FEATURESTORE_REDIS_URL": s.redis_url.get_secret_value(),
                   "FEATURESTORE_POSTGRES_DSN": s.postgres_dsn.get_secret_value()}
    os.environ.update(env_servers)  # the children use the same servers
    dsn = env_servers["FEATURESTORE_POSTGRES_DSN"]
    work = Path(tempfile.mkdtemp(prefix="fsbench-backfill-"))
    path = str(work / "events.parquet")
    ev = make_events(args.events, args.entities, days=30)
    pd.DataFrame({"customer_id": ev["key"], "amount": ev["amount"], "event_time": ev["ts"]}).to_parquet(
        path, row_group_size=500_000)
    del ev
    project = f"benchbf{int(time.time())}"

    e2e = run_child("e2e", path, project, args.chunks)
    compute = run_child("compute", path, project + "c", args.chunks)
    duck_s = duckdb_same_windows(path)
    floor_s = asyncio.run(postgres_copy_floor(dsn, e2e["rows_written"]))
    if not args.keep:
        asyncio.run(drop_project(dsn, project))
    n = args.events
    ours = e2e["events_per_s"]
    print(json.dumps({
        "events": n, "entities": args.entities, "days": 30, "features": len(WINDOWS) * len(FUNCTIONS),
        "windows": [w for w, _ in WINDOWS], "chunks": e2e["chunks"],
        "end_to_end": {"events_per_s": ours, "seconds": e2e["seconds"], "peak_rss_mb": e2e["peak_rss_mb"],
                       "history_rows": e2e["rows_written"], "phases_s": e2e["phases"],
                       "process_wall_s": e2e["process_wall_s"]},
        "compute_only": {"events_per_s": compute["events_per_s"], "seconds": compute["seconds"],
                         "peak_rss_mb": compute["peak_rss_mb"], "phases_s": compute["phases"],
                         "compute_batch_events_per_s": round(n / compute["phases"]["compute_s"])},
        "baselines": {"duckdb_same_windows": {"seconds": round(duck_s, 3), "events_per_s": round(n / duck_s),
                                              "note": "exact RANGE frames, all cores, result aggregated (not written)"},
                      "postgres_copy_floor": {"seconds": round(floor_s, 3),
                                              "rows_per_s": round(e2e["rows_written"] / floor_s),
                                              "note": "binary COPY of pre-encoded rows, same columns, no index"}},
        "goal": ">= 150k events/s end to end, peak RSS < 2 GB",
        "meets_goal": ours >= 150_000 and e2e["peak_rss_mb"] < 2048,
    }, indent=2))


if __name__ == "__main__":
    main()
