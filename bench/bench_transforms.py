"""Benchmarks of the transforms core; prints one JSON document.

* batch: values as of every event for sum/count/mean/min/max over 1 h / 24 h / 7 d,
  ours (default hops and exact hop = 1 ms) against polars rolling_*_by and DuckDB
  window functions on the same data in the same run; the exact results are
  checked to agree with both baselines;
* streaming: events/s applying micro-batches of 1,000 events to in-memory states;
* state size: serialized bytes of one hot entity after 1M events over 7 days.

Usage: python bench/bench_transforms.py [--events 5000000] [--entities 100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np

from bench.data import T0, make_events, window_specs
from transforms import DAY, HOUR, ViewState, compute_batch
from transforms.engine import StateArena
from transforms.engine.layout import M_WM
from workers.worker import WorkerConfig

WINDOWS = ((HOUR, "1h"), (24 * HOUR, "24h"), (7 * DAY, "7d"))
FUNCS = ("sum", "count", "mean", "min", "max")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_polars(events):
    import polars as pl

    df = pl.from_pandas(events).with_columns(pl.col("ts").cast(pl.Datetime("ms")))

    def go():
        exprs = []
        for w, label in WINDOWS:
            size = f"{w // 1000}s"
            col, ts = pl.col("amount"), "ts"
            exprs += [
                col.rolling_sum_by(ts, size, closed="both").over("key").alias(f"amount_sum_{label}"),
                (col.is_not_null().cast(pl.Int64).rolling_sum_by(ts, size, closed="both").over("key")
                 .alias(f"amount_count_{label}")),
                col.rolling_mean_by(ts, size, closed="both").over("key").alias(f"amount_mean_{label}"),
                col.rolling_min_by(ts, size, closed="both").over("key").alias(f"amount_min_{label}"),
                col.rolling_max_by(ts, size, closed="both").over("key").alias(f"amount_max_{label}"),
            ]
        return df.sort(["key", "ts"], maintain_order=True).with_columns(exprs)

    return timed(go)


def run_duckdb(events):
    import duckdb

    con = duckdb.connect()
    con.register("events", events)
    selects = []
    for w, label in WINDOWS:
        frame = f"(PARTITION BY key ORDER BY ts RANGE BETWEEN {w} PRECEDING AND CURRENT ROW)"
        selects += [f"SUM(amount) OVER {frame} AS amount_sum_{label}",
                    f"COUNT(amount) OVER {frame} AS amount_count_{label}",
                    f"AVG(amount) OVER {frame} AS amount_mean_{label}",
                    f"MIN(amount) OVER {frame} AS amount_min_{label}",
                    f"MAX(amount) OVER {frame} AS amount_max_{label}"]
    sql = f"SELECT key, ts, {', '.join(selects)} FROM events ORDER BY key, ts"
    con.execute("SET threads TO 2")
    out, seconds = timed(lambda: con.execute(sql).df())
    return out, seconds


def agreement(ours, other, columns) -> dict:
    """Max relative difference per column between two frames sorted by (key, ts)."""
    result = {}
    for c in columns:
        a = ours[c].to_numpy(dtype="float64")
        b = other[c].to_numpy(dtype="float64")
        both = ~np.isnan(a) & ~np.isnan(b)
        nan_mismatch = int((np.isnan(a) != np.isnan(b)).sum())
        rel = np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-9)
        result[c] = {"max_rel_diff": float(rel.max()) if len(rel) else 0.0, "null_mismatches": nan_mismatch}
    return result


def bench_streaming(events, batch=1000):
    """In-memory streaming, twice: with Python's default garbage-collector thresholds and with the
    worker's (``WorkerConfig.gc_threshold`` and ``gc.freeze()``, as ``featurestore worker`` runs)."""
    default = _streaming(events, batch)
    saved = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WorkerConfig.gc_threshold)
    try:
        tuned = _streaming(events, batch)
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
    return {**tuned, "gc": f"worker thresholds {WorkerConfig.gc_threshold}",
            "events_per_s_default_gc": default["events_per_s"]}


def _streaming(events, batch):
    """Micro-batches applied as the worker applies them: one ``StateArena`` for every entity, a whole
    batch per compiled call, then every touched state evaluated at its watermark (no I/O)."""
    specs = window_specs()
    arena = StateArena(specs)
    keys = events["key"].to_numpy()
    ts = events["ts"].to_numpy().astype(np.int64)
    amount = events["amount"].to_numpy()
    n = len(events)
    start = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        slot = arena.slot
        slots = np.fromiter((slot(k) for k in keys[lo:hi].tolist()), dtype=np.int64, count=hi - lo)
        arena.apply(slots, ts[lo:hi], None, [{"amount": a} for a in amount[lo:hi].tolist()])
        touched = np.unique(slots)
        arena.values(touched, arena.S[touched, M_WM])
    seconds = time.perf_counter() - start
    return {"events": n, "seconds": round(seconds, 3), "events_per_s": round(n / seconds), "micro_batch": batch,
            "note": "apply and evaluate at the watermark per micro-batch, the compiled engine"}


def bench_state_size(n=1_000_000):
    specs = window_specs()
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(T0, T0 + 7 * DAY, size=n))
    amount = rng.lognormal(3.5, 1.0, size=n)
    state = ViewState(specs)
    for lo in range(0, n, 1000):
        state.apply([(int(t), {"amount": float(a)}, None) for t, a in zip(ts[lo:lo + 1000], amount[lo:lo + 1000])])
    blob, ids = state.to_parts()
    return {"events": n, "state_bytes": len(blob), "ids_bytes": len(ids), "goal_bytes": 65536,
            "meets_goal": len(blob) <= 65536}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--streaming-events", type=int, default=500_000)
    parser.add_argument("--hot-events", type=int, default=1_000_000,
                        help="events of the one hot entity whose state is sized")
    args = parser.parse_args()

    events = make_events(args.events, args.entities)
    report = {"events": args.events, "entities": args.entities, "days": 30, "features": len(window_specs())}

    # Warm-up of every contender on a slice (first-call allocation and import costs are not the steady state).
    warm = events.head(min(len(events), 200_000))
    compute_batch(window_specs(), warm)
    run_polars(warm)
    run_duckdb(warm)
    default_res, t_default = timed(lambda: compute_batch(window_specs(), events))
    exact_res, t_exact = timed(lambda: compute_batch(window_specs(hop_ms=1), events))
    pl_out, t_polars = run_polars(events)
    dd_out, t_duckdb = run_duckdb(events)
    columns = [s.name for s in window_specs()]
    ours = exact_res.values.sort_values(["key", "ts"], kind="stable").reset_index(drop=True)
    report["batch"] = {
        "ours_default_hops": {"seconds": round(t_default, 3), "events_per_s": round(args.events / t_default)},
        "ours_exact_hop_1ms": {"seconds": round(t_exact, 3), "events_per_s": round(args.events / t_exact)},
        "polars_rolling_by": {"seconds": round(t_polars, 3), "events_per_s": round(args.events / t_polars)},
        "duckdb_window": {"seconds": round(t_duckdb, 3), "events_per_s": round(args.events / t_duckdb)},
        "goal": "ours (default hops) no slower than polars",
        "meets_goal": t_default <= t_polars,
        "agreement_exact_vs_polars": agreement(ours, pl_out.to_pandas(), columns),
        "agreement_exact_vs_duckdb": agreement(ours, dd_out, columns),
    }
    report["streaming"] = bench_streaming(events.head(args.streaming_events))
    report["state_size_hot_entity"] = bench_state_size(args.hot_events)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
