"""``featurestore demo``: the README's main job, end to end on the embedded stack (or configured servers)."""

from __future__ import annotations

import asyncio
import logging
import time

import pandas as pd

from ..cli import common_options, load_settings
from ..dev.stack import EmbeddedStack
from ..runtime import open_runtime

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", parents=[common_options()],
                              help="start the stack, apply the example, stream events, read features, stop")
    p.add_argument("--repo", help="feature repository (default: the bundled example)")
    p.add_argument("--events", type=int, default=20_000, help="transactions to produce (default 20000)")
    p.add_argument("--customers", type=int, default=500, help="distinct customers among them (default 500)")
    p.add_argument("--keep", action="store_true", help="leave the embedded stack running afterwards")
    p.set_defaults(handler=run_demo)


def _say(step: str) -> None:
    print(f"\n== {step}", flush=True)


def run_demo(args) -> int:
    """The six steps of the demo, each printed under its heading; the embedded stack is stopped and
    its data removed at the end unless ``--keep``."""
    settings = load_settings(args)
    embedded = settings.uses_embedded()
    _say("1/6 servers" + (" (embedded: Tansu broker, redis-server, PostgreSQL 18)" if embedded else ""))
    rt = open_runtime(settings, args.repo)
    shown = rt.settings.as_dict()  # secrets masked
    for label, key in (("Kafka", "kafka_bootstrap_servers"), ("Redis", "redis_url"), ("PostgreSQL", "postgres_dsn"),
                       ("project", "project"), ("state folder", "state_dir")):
        print(f"  {label:<13} {shown[key]}")
    try:
        versions = _apply_step(rt)
        events = _produce_step(rt, args.events, args.customers)
        _worker_step(rt, versions, events)
        _online_step(rt, versions, events)
        _training_step(rt, versions, events)
        return 0
    finally:
        if embedded and not args.keep:
            EmbeddedStack(rt.settings.state_dir).down()
            print("\nembedded stack stopped, its data removed (use --keep to leave it running)")


def _apply_step(rt) -> dict[str, int]:
    """Step 2: apply the repository, print what changed; returns the registered version of each view."""
    _say("2/6 apply the feature repository")
    changes = asyncio.run(_apply(rt))
    print(f"  {'KIND':<8} {'NAME':<28} {'ACTION':<12} VERSION")
    for c in changes:
        print(f"  {c.kind:<8} {c.name:<28} {c.action:<12} v{c.new_version}")
    return rt.versions()


def _produce_step(rt, n_events: int, customers: int) -> pd.DataFrame:
    """Step 3: produce ``n_events`` generated transactions of the last 7 days; returns them."""
    from workers.producer import ensure_topic, generate_transactions, produce

    source = rt.repo.source("transactions")
    _say(f"3/6 produce {n_events} transactions for {customers} customers to topic {source.topic!r}")
    end_ms = time.time_ns() // 1_000_000
    events = generate_transactions(n_events, customers, days=7.0, end_ms=end_ms)
    opts = rt.kafka_options()
    ensure_topic(opts.pop("bootstrap_servers"), source.topic, 4, **opts)
    produce(source, events, rt.kafka_options(), progress=False)
    return events


def _worker_step(rt, versions: dict[str, int], events: pd.DataFrame) -> None:
    """Step 4: run a worker of every view until it has consumed ``events`` (at most 2 minutes)."""
    from featurestore.processing import prepare_view
    from workers.worker import Worker, WorkerConfig

    _say("4/6 run a worker until every event is consumed")
    views = [prepare_view(v, versions[n], rt.project) for n, v in rt.repo.views.items()]
    worker = Worker(views, rt.online(), rt.offline, WorkerConfig(
        group=f"featurestore-{rt.project}-demo", metrics_port=None, kafka_options=rt.kafka_options()))
    started = time.perf_counter()
    deadline = started + 120
    worker.run(until=lambda w: w.records_done >= len(events) or time.monotonic() > deadline)
    seconds = time.perf_counter() - started
    print(f"  consumed {worker.records_done} records in {seconds:.1f} s (group join included)")


def _online_step(rt, versions: dict[str, int], events: pd.DataFrame) -> None:
    """Step 5: print the online feature vector of the last event's customer."""
    from ..client import FeatureStore

    store = FeatureStore(rt.repo, rt.online(), versions, rt.project)
    customer = events["customer_id"].iloc[-1]
    _say(f"5/6 online feature vector for customer {customer} (service fraud_detection, now)")
    resp = store.get_online_features([{"customer_id": customer}], feature_service="fraud_detection",
                                     request_data={"current_amount": [250.0]})
    print(f"  {'FEATURE':<32} {'STATUS':<8} VALUE")
    for name, values in resp.columns.items():
        status = resp.statuses.get(name, ["key"])[0]
        print(f"  {name:<32} {status:<8} {_show(values[0])}")


def _training_step(rt, versions: dict[str, int], events: pd.DataFrame) -> None:
    """Step 6: print a point-in-time training frame of three customers at three times each."""
    from ..client import FeatureStore

    _say("6/6 point-in-time training frame (values as served at each time)")
    print("  three times per customer: the middle of its events, its last event, and 2 h after it. The last\n"
          "  shows what serving returns as time passes with no new event: the 1 h windows have emptied.")
    frame = _training_rows(events)
    offline_store = FeatureStore(rt.repo, rt.online(), versions, rt.project)
    training = _historical(rt, offline_store, frame)
    with pd.option_context("display.max_columns", 12, "display.width", 160):
        print(training)


async def _apply(rt):
    from ..registry import Registry

    offline = await rt.offline()
    try:
        registry = Registry(offline.pool, rt.project, "public")
        return await registry.apply(rt.repo, offline)
    finally:
        await offline.close()


def _show(value) -> str:
    """A feature value for the table: floats to 4 decimals, lists shortened."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        inner = ", ".join(_show(v) for v in value[:4])
        return f"[{inner}{', ...' if len(value) > 4 else ''}] ({len(value)})"
    return "-" if value is None else str(value)


def _training_rows(events: pd.DataFrame) -> pd.DataFrame:
    customers = events["customer_id"].value_counts().index[:3]
    ts = pd.to_datetime(events["event_time"], utc=True)
    rows = []
    for c in customers:
        times = ts[events["customer_id"] == c]
        for q in (times.iloc[len(times) // 2], times.iloc[-1], times.iloc[-1] + pd.Timedelta(hours=2)):
            rows.append({"customer_id": c, "event_timestamp": q})
    return pd.DataFrame(rows)


def _historical(rt, store, frame: pd.DataFrame) -> pd.DataFrame:
    async def go():
        from ..historical import get_historical_features

        offline = await rt.offline()
        try:
            registry = await rt.registry(offline)
            refs = [("customer_stats", "spend_24h"), ("customer_stats", "purchases_24h"),
                    ("customer_stats", "avg_amount_7d"), ("transaction_stats", "events_1h")]
            return await get_historical_features(offline, rt.repo, registry, frame, refs)
        finally:
            await offline.close()

    return asyncio.run(go())
