"""The worker's Kafka consumer, kafka-python against confluent-kafka (librdkafka), on the embedded stack; prints JSON.

One topic of ``--events`` demo transactions (small JSON events, 4 partitions, keyed by customer) is
consumed to its end by each client in turn, ``--runs`` times, interleaved (the order rotates from one
round to the next); every run is a new consumer group in a process of its own.  The clients:

* ``kafka-python`` (the baseline): the worker's consumer as ``workers.kafka_client.open_consumer``
  builds it for ``kafka_client="kafka-python"``;
* ``confluent``: the same for ``kafka_client="confluent"`` (``ConfluentConsumer``: librdkafka's
  consumer, its messages turned into the worker's records) — what the worker gets;
* ``confluent_messages``: that consumer's librdkafka ``consume()`` alone, the same settings, its
  messages not turned into records: what the adapter's record building costs on top.

A run polls with the worker's batch size, poll timeout and garbage-collector thresholds and reads
each record's offset and value (no decoding: the clients' own cost).  ``events_per_s``: records
over the time from the assignment (the rebalance callback: fetching starts then) to the last
record; ``cpu_seconds``: the process's CPU time over the same span (every thread, so librdkafka's
own count); ``..._with_join``: from creating the consumer; ``rss_growth_mb``: resident memory at the
last record minus before the consumer was created (librdkafka prefetches into a queue of its own).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import time

from bench.servers import bench_settings
from featurestore.repo import load_repo
from featurestore.runtime import DEFAULT_REPO
from workers.config import WorkerConfig
from workers.producer import ensure_topic, generate_transactions, produce

CLIENTS = ("kafka-python", "confluent", "confluent_messages")
BASELINE = "kafka-python"
PARTITIONS = 4


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def consume_all(client: str, bootstrap: str, topic: str, n: int, batch_size: int) -> dict:
    """One run, in a child process: consume ``topic`` (``n`` records) from its start in a new group."""
    from workers.kafka_client import open_consumer

    gc.collect()
    gc.freeze()
    gc.set_threshold(*WorkerConfig.gc_threshold)  # as the worker runs
    config = WorkerConfig(group=f"bench-{client}-{time.time_ns()}", batch_size=batch_size,
                          kafka_client="kafka-python" if client == "kafka-python" else "confluent",
                          kafka_options={"bootstrap_servers": bootstrap})
    rss0, cpu0, wall0 = _rss_bytes(), time.process_time(), time.perf_counter()
    at: dict[str, float] = {}

    def assigned(partitions) -> None:  # fetching starts now: the clock too
        if partitions and "wall" not in at:
            at.update(wall=time.perf_counter(), cpu=time.process_time())

    consumer = open_consumer(config, [topic], lambda revoked: None, assigned)
    seen = offsets = value_bytes = 0
    timeout_ms = config.poll_timeout_ms
    deadline = time.monotonic() + 300
    if client == "confluent_messages":
        raw = consumer._consumer
        while seen < n and time.monotonic() < deadline:
            messages = raw.consume(config.batch_size, timeout_ms / 1000)
            if messages and "first" not in at:
                at["first"] = time.perf_counter()
            for m in messages:
                if m.error() is None:
                    offsets += m.offset()
                    value_bytes += len(m.value())
                    seen += 1
    else:
        while seen < n and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=timeout_ms)
            if batch and "first" not in at:
                at["first"] = time.perf_counter()
            for records in batch.values():
                for r in records:
                    offsets += r.offset
                    value_bytes += len(r.value)
                seen += len(records)
    last, cpu = time.perf_counter(), time.process_time()
    rss_growth_mb = (_rss_bytes() - rss0) / 2**20
    consumer.close(autocommit=False)
    if seen < n:
        raise RuntimeError(f"{client}: {seen} of {n} records of {topic} within 300 s")
    return {"client": client, "events": seen, "offset_sum": offsets, "value_bytes": value_bytes,
            "events_per_s": round(seen / (last - at["wall"])), "seconds": round(last - at["wall"], 3),
            "cpu_seconds": round(cpu - at["cpu"], 3), "seconds_to_first_record": round(at["first"] - at["wall"], 3),
            "seconds_with_join": round(last - wall0, 3),
            "cpu_seconds_with_join": round(cpu - cpu0, 3), "rss_growth_mb": round(rss_growth_mb, 1)}


def _child(queue, *args) -> None:
    try:
        queue.put(consume_all(*args))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_once(client: str, bootstrap: str, topic: str, n: int, batch_size: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, client, bootstrap, topic, n, batch_size))
    proc.start()
    result = queue.get(timeout=400)
    proc.join(60)
    if "error" in result:
        raise RuntimeError(f"{client} run failed: {result['error']}")
    return result


def summary(runs: list[dict]) -> dict:
    rates = [r["events_per_s"] for r in runs]
    cpu = [r["cpu_seconds"] for r in runs]
    return {"events_per_s": rates, "events_per_s_median": round(statistics.median(rates)),
            "cpu_seconds": cpu, "cpu_seconds_median": round(statistics.median(cpu), 3),
            "cpu_us_per_event_median": round(statistics.median(cpu) / runs[0]["events"] * 1e6, 2),
            "seconds_to_first_record": [r["seconds_to_first_record"] for r in runs],
            "seconds_with_join": [r["seconds_with_join"] for r in runs],
            "cpu_seconds_with_join": [r["cpu_seconds_with_join"] for r in runs],
            "rss_growth_mb": [r["rss_growth_mb"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5, help="runs of each client, interleaved")
    parser.add_argument("--batch-size", type=int, default=WorkerConfig.batch_size,
                        help="records per poll (the worker's --batch-size)")
    args = parser.parse_args()
    settings = bench_settings()
    bootstrap = settings.kafka_bootstrap_servers
    source = load_repo(DEFAULT_REPO).source("transactions")
    topic = f"bench-kafka-{time.time_ns()}"
    source = source.model_copy(update={"topic": topic})
    ensure_topic(bootstrap, topic, PARTITIONS)
    produce(source, generate_transactions(args.events, args.customers, days=7), {"bootstrap_servers": bootstrap},
            progress=False)

    runs: dict[str, list[dict]] = {c: [] for c in CLIENTS}
    order = []
    for i in range(args.runs):
        for client in CLIENTS[i % len(CLIENTS):] + CLIENTS[:i % len(CLIENTS)]:
            result = run_once(client, bootstrap, topic, args.events, args.batch_size)
            runs[client].append(result)
            order.append(client)
    checks = {(r["events"], r["offset_sum"], r["value_bytes"]) for rs in runs.values() for r in rs}
    if len(checks) != 1:
        raise RuntimeError(f"the clients did not read the same records: {sorted(checks)}")
    [(events, _, value_bytes)] = checks
    report = {name: summary(rs) for name, rs in runs.items()}
    base = report[BASELINE]
    print(json.dumps({
        "events": events, "partitions": PARTITIONS, "mean_value_bytes": round(value_bytes / events, 1),
        "runs": args.runs, "batch_size": args.batch_size, "order": order, "baseline": BASELINE,
        "clients": report,
        "speedup_median": {name: round(r["events_per_s_median"] / base["events_per_s_median"], 2)
                           for name, r in report.items()},
        "cpu_ratio_median": {name: round(r["cpu_seconds_median"] / base["cpu_seconds_median"], 2)
                             for name, r in report.items()},
        "note": "every run reads the same records (count, offset sum and value bytes checked); events_per_s and "
                "cpu_seconds (the run's process, all threads) from the assignment to the last record",
    }, indent=2))


if __name__ == "__main__":
    main()
