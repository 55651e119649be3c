"""The state engine alone, without I/O: the JSON engine of format 2 (``transforms.legacy``) and the
compiled engine side by side on the same micro-batches; prints one JSON document.

Both paths take the same validated events of the example repository's views (BatchTransforms
included) and produce what the worker commits per touched (view, entity): the state bytes, the
values row (JSON) as of the watermark, the valid-until time and the event ids to write.  Each
path keeps its states in memory across batches, as the worker's cache does.  Also reported:
bytes per cached state (``tracemalloc`` of each engine's states after the run), online
re-evaluation of stored states, the serialized size of one hot entity (1M events over 7 days)
and the kernels' cold and warm start.

Usage: python -m bench.bench_engine [--events 200000] [--customers 5000] [--batch 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import orjson

from featurestore.processing import add_derived_columns, arena_records, prepare_view
from featurestore.repo import load_repo
from featurestore.runtime import DEFAULT_REPO
from featurestore.schema import validator_for
from transforms.engine import StateArena
from transforms.engine.jit import COMPILED
from transforms.legacy.state import ViewState as LegacyState
from transforms.state import compile_reader
from workers.producer import generate_transactions


def legacy_batch(pv, states: dict, batch) -> list:
    """The 0.2 path for one view: group by entity, ``apply``, ``snapshot_values``, ``to_parts``."""
    by_key: dict = {}
    for e in batch:
        by_key.setdefault(str(e.key), []).append((e.ts_ms, e.values, e.event_id))
    out = []
    for key, events in by_key.items():
        state = states.get(key)
        if state is None:
            state = states[key] = LegacyState(pv.specs, pv.lateness_ms)
        state.apply(events)
        values, until = state.snapshot_values(state.watermark)
        blob, ids = state.to_parts()
        out.append((key, blob, orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY), until, ids))
    return out


def engine_batch(pv, arena: StateArena, batch) -> list:
    """The compiled path for one view, as ``SourceProcessor.update`` / ``records`` run it."""
    slots, keys = [], {}
    for e in batch:
        key = str(e.key)
        s = keys.get(key)
        if s is None:
            s = keys[key] = arena.slot(key)
        slots.append(s)
    arena.apply(np.array(slots, dtype=np.int64), np.array([e.ts_ms for e in batch], dtype=np.int64),
                [e.event_id for e in batch], [e.values for e in batch])
    return arena_records(pv, arena, list(keys))


def events_of(repo, n: int, customers: int) -> list:
    frame = generate_transactions(n, customers=customers, days=7.0, end_ms=1_767_225_600_000 + 7 * 86_400_000)
    validate = validator_for(repo.source("transactions"))
    return [validate(r) for r in frame.to_dict("records")]


def run_path(prepared, batches, path: str, derive: bool = True) -> tuple[float, object]:
    """Seconds for every batch through one engine (BatchTransforms included unless ``derive`` is
    False: then the events already hold their derived columns); returns the states."""
    if path == "legacy":
        states = {pv.view_key: {} for pv in prepared}
    else:
        states = {pv.view_key: StateArena(pv.specs, pv.lateness_ms) for pv in prepared}
    derived = [bt.column for pv in prepared for bt in pv.view.batch_transforms()]
    gc.collect()
    start = time.perf_counter()
    for batch in batches:
        if derive:
            for e in batch:  # derived columns are recomputed by each path: the event dicts are shared
                for column in derived:
                    e.values.pop(column, None)
            add_derived_columns(prepared, batch)
        for pv in prepared:
            if path == "legacy":
                legacy_batch(pv, states[pv.view_key], batch)
            else:
                engine_batch(pv, states[pv.view_key], batch)
    return time.perf_counter() - start, states


def state_memory(prepared, batches, path: str) -> tuple[int, int]:
    """(bytes allocated by the states after every batch, states held).  The derived columns are in the
    events before tracing starts: values both engines hold by reference are not counted."""
    for batch in batches:
        add_derived_columns(prepared, batch)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _, states = run_path(prepared, batches, path, derive=False)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    if path == "legacy":
        count = sum(len(s) for s in states.values())
    else:
        count = sum(len(a) for a in states.values())
    return after - before, count


def reread(prepared, batches) -> dict:
    """Online re-evaluation of stored states (the reader's stale path): µs per state, both engines."""
    pv = prepared[0]
    arena = StateArena(pv.specs, pv.lateness_ms)
    legacy: dict = {}
    for batch in batches:
        engine_batch(pv, arena, batch)
        legacy_batch(pv, legacy, batch)
    keys = list(arena.slot_of)[:2000]
    new_blobs = [arena_records(pv, arena, [k])[0].state for k in keys]
    old_blobs = [legacy[k].to_bytes() for k in keys]
    t = max(arena.watermark(arena.slot_of[k]) for k in keys) + 3_600_000
    features = [s.name for s in pv.specs]
    from transforms.legacy.state import compile_reader as legacy_reader
    old_read = legacy_reader(pv.specs, features)
    new_read = compile_reader(pv.specs, features)
    old_s = new_s = float("inf")
    for _ in range(3):  # the best of three: the reader's scratch arena grows to its size on the first
        start = time.perf_counter()
        for b in old_blobs:
            old_read(b, t)
        old_s = min(old_s, time.perf_counter() - start)
        start = time.perf_counter()
        new_read.read_many(new_blobs, [t] * len(new_blobs))
        new_s = min(new_s, time.perf_counter() - start)
    return {"states": len(keys), "legacy_us_per_state": round(old_s / len(keys) * 1e6, 2),
            "engine_us_per_state": round(new_s / len(keys) * 1e6, 2), "ratio": round(new_s / old_s, 3)}


def hot_entity(repo) -> dict:
    """Serialized bytes of one entity after 1M events over 7 days (state and ids)."""
    view = repo.view("customer_stats") if "customer_stats" in repo.views else next(iter(repo.views.values()))
    pv = prepare_view(view, 1, "bench")
    n, t0 = 1_000_000, 1_767_225_600_000
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(t0, t0 + 7 * 86_400_000, size=n))
    arena = StateArena(pv.specs, pv.lateness_ms)
    s = arena.slot("hot")
    cats = ["grocery", "travel", "fuel", "dining", "online", "retail"]
    for lo in range(0, n, 50_000):
        hi = min(n, lo + 50_000)
        values = [{"amount": float(a), "merchant_category": cats[i % 6], "is_online": bool(i % 3 == 0),
                   "transaction_id": f"T{i}"} for i, a in zip(range(lo, hi), rng.lognormal(3.6, 1.1, hi - lo))]
        add_derived_columns([pv], _Events(values))
        arena.apply(np.full(hi - lo, s, dtype=np.int64), ts[lo:hi], [f"T{i}" for i in range(lo, hi)], values)
    rec = arena_records(pv, arena, ["hot"])[0]
    return {"view": view.name, "events": n, "state_bytes": len(rec.state), "ids_bytes": len(rec.ids),
            "values_bytes": len(rec.values)}


class _Events(list):
    """``add_derived_columns`` takes validated events: value dicts with the attribute it reads."""

    def __init__(self, values):
        super().__init__(_Event(v) for v in values)


class _Event:
    __slots__ = ("values",)

    def __init__(self, values):
        self.values = values


def start_times() -> dict:
    """Seconds to import the engine and run one batch in a new process: with an empty kernel cache
    (cold: numba compiles) and with the cache it left (warm)."""
    code = ("import time; t=time.perf_counter(); import numpy as np; from transforms.engine import StateArena; "
            "from transforms import AggSpec; a=StateArena((AggSpec('s','sum','x',3600000),)); "
            "a.apply(np.zeros(1,np.int64), np.zeros(1,np.int64), [None], [{'x': 1.0}]); "
            "a.values(np.zeros(1,np.int64), np.zeros(1,np.int64)); print(time.perf_counter()-t)")
    folder = f"/tmp/bench-engine-cache-{os.getpid()}"
    env = {**os.environ, "FEATURESTORE_KERNEL_CACHE": folder}
    env.pop("NUMBA_CACHE_DIR", None)
    cold = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    warm = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    subprocess.run(["rm", "-rf", folder], check=False)
    return {"cold_s": round(cold, 2), "warm_s": round(warm, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    repo = load_repo(DEFAULT_REPO)
    prepared = [prepare_view(v, 1, "bench") for v in repo.views.values()]
    events = events_of(repo, args.events, args.customers)
    batches = [events[lo:lo + args.batch] for lo in range(0, len(events), args.batch)]
    run_path(prepared, batches[:2], "engine")  # compile (or load the cached kernels) first
    runs: dict = {"legacy": [], "engine": []}
    for _ in range(args.rounds):  # interleaved
        for path in ("legacy", "engine"):
            runs[path].append(run_path(prepared, batches, path)[0])
    per_event = {p: min(v) / len(events) * 1e6 for p, v in runs.items()}
    memory = {}
    for path in ("legacy", "engine"):
        used, count = state_memory(prepared, batches, path)
        memory[path] = {"bytes": used, "states": count, "bytes_per_state": round(used / max(count, 1))}
    _, arenas = run_path(prepared, batches, "engine")
    held = sum(int(a.top[0]) * 8 + len(a) * a.S.shape[1] * 8 + int(a.hstat[1]) * 24 for a in arenas.values())
    memory["engine"]["words_in_use_per_state"] = round(held / max(sum(len(a) for a in arenas.values()), 1))
    memory["engine"]["note"] = ("bytes_per_state: every allocation (the pool's spare room, the slot table and the "
                                "entry table included); words_in_use_per_state: pool words the states hold, their "
                                "slot rows and entry-table slots")
    report = {
        "benchmark": "engine", "compiled": COMPILED, "events": len(events), "customers": args.customers,
        "batch": args.batch, "views": [pv.view.name for pv in prepared],
        "legacy_us_per_event": [round(s / len(events) * 1e6, 2) for s in runs["legacy"]],
        "engine_us_per_event": [round(s / len(events) * 1e6, 2) for s in runs["engine"]],
        "ratio": round(per_event["engine"] / per_event["legacy"], 3),
        "goal_ratio": 0.15, "meets_goal": per_event["engine"] / per_event["legacy"] <= 0.15,
        "memory": memory,
        "memory_ratio": round(memory["engine"]["bytes_per_state"] / max(memory["legacy"]["bytes_per_state"], 1), 3),
        "reread": reread(prepared, batches),
        "hot_entity": hot_entity(repo),
        "start": start_times(),
        "baseline": "transforms.legacy (the 0.2 JSON engine) on the same batches, same process, interleaved",
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
