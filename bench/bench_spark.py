"""The Spark backfill (``--engine spark``, ``local[2]``) against the local engine and DuckDB on the
same Parquet history and the same windows (``bench_backfill``'s view: 15 features over 1 h, 24 h
and 7 d); prints one JSON document.

Each engine runs in a fresh process, at ``--events`` and again at ``--scale`` times as many (the
scaling ratio is the second run's seconds over the first's).  Reported: seconds, events/s and the
peak memory of the process tree (the Spark driver's JVM and its Python workers included).  The
local engine is timed compute-only (read, validate, spill, compute: no write); Spark reads the
Parquet and writes the history as Parquet partitioned by date.  No PostgreSQL or Redis is used.

Usage: python -m bench.bench_spark [--events 5000000] [--entities 100000] [--scale 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from bench.bench_backfill import duckdb_same_windows, make_view
from bench.data import make_events

SPARK_CONF = {"spark.driver.memory": "4g", "spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false"}


def child(kind: str, path: str, out: str) -> None:
    """One run in this process; prints its seconds."""
    from featurestore.processing import prepare_view

    pv = prepare_view(make_view(path), 1, "bench")
    if kind == "local":
        from workers.backfill import BackfillOptions, run_backfill

        t0 = time.perf_counter()
        asyncio.run(run_backfill(pv, None, None, BackfillOptions(source="files", write=False, progress=False)))
        print(json.dumps({"seconds": round(time.perf_counter() - t0, 3)}))
        return
    from featurestore.spark import SparkBackfillOptions, run_spark_backfill, spark_session

    t0 = time.perf_counter()
    spark = spark_session("local[2]", SPARK_CONF)
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = run_spark_backfill(spark, pv, SparkBackfillOptions(out=out))
    seconds = time.perf_counter() - t0
    spark.stop()
    print(json.dumps({"seconds": round(seconds, 3), "session_start_s": round(started, 2), "buckets": rep.chunks,
                      "history_rows": rep.rows_written}))


def run(kind: str, path: str, out: str, n: int) -> dict:
    """``kind`` in a fresh process, its tree's peak RSS sampled every 0.2 s."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_spark", "--child", kind, "--path", path, "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        me = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{stderr[-3000:]}")
    got = json.loads(stdout.strip().splitlines()[-1])
    got["events_per_s"] = round(n / got["seconds"])
    got["peak_memory_mb"] = round(peak[0] / 2**20)
    return got


def one_size(n: int, entities: int, work: Path) -> dict:
    path = str(work / f"events_{n}.parquet")
    ev = make_events(n, entities, days=30)
    pd.DataFrame({"customer_id": ev["key"], "amount": ev["amount"], "event_time": ev["ts"]}).to_parquet(
        path, row_group_size=500_000)
    del ev
    out = (work / f"history_{n}").as_uri()
    spark = run("spark", path, out, n)
    local = run("local", path, out, n)
    duck_s = duckdb_same_windows(path)
    os.remove(path)
    shutil.rmtree(work / f"history_{n}", ignore_errors=True)
    return {"events": n, "entities": entities, "spark_local2": spark, "local_engine_compute_only": local,
            "duckdb_same_windows": {"seconds": round(duck_s, 3), "events_per_s": round(n / duck_s)},
            "spark_vs_local": round(spark["seconds"] / local["seconds"], 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--scale", type=int, default=4, help="the second run's size, in times --events (1: no second run)")
    ap.add_argument("--child", choices=["local", "spark"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.path, args.out)
        return {}
    work = Path(tempfile.mkdtemp(prefix="fsbench-spark-"))
    try:
        runs = [one_size(args.events, args.entities, work)]
        if args.scale > 1:
            runs.append(one_size(args.events * args.scale, args.entities, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict = {"benchmark": "spark", "cores": os.cpu_count(), "spark_master": "local[2]", "runs": runs,
                    "baseline": "the local engine (compute only) and DuckDB's window functions on the same Parquet, "
                                "each in the same run"}
    if len(runs) == 2:
        report["scaling_seconds_ratio"] = {
            kind: round(runs[1][kind]["seconds"] / runs[0][kind]["seconds"], 2)
            for kind in ("spark_local2", "local_engine_compute_only")}
        first = runs[0]["spark_local2"]
        report["spark_marginal_events_per_s"] = round(
            (runs[1]["events"] - runs[0]["events"]) / (runs[1]["spark_local2"]["seconds"] - first["seconds"]))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
