"""``featurestore worker``, ``produce`` and ``get``: the streaming side of the command line."""

from __future__ import annotations

import json
import logging
import sys
import time

from ..cli import common_options, load_settings
from ..exceptions import InvalidInputError
from ..runtime import open_runtime
from .spark_options import add_spark_arguments, add_training_set, refuse_spark_options, run_spark_backfill_cmd

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``worker``, ``produce``, ``backfill``, ``training-set`` and ``get``."""
    common = common_options()
    _add_worker(subparsers, common)
    _add_produce(subparsers, common)
    _add_backfill(subparsers, common)
    add_training_set(subparsers, common)
    _add_get(subparsers, common)


def _add_worker(subparsers, common) -> None:
    p = subparsers.add_parser("worker", parents=[common], help="consume events and keep features up to date")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--views", nargs="*", help="only these feature views (default: all)")
    p.add_argument("--group", help="consumer group (default featurestore-<project>)")
    p.add_argument("--dead-letter-topic", default="features-dead-letter",
                   help="topic of the records the worker refuses, with their reason (default features-dead-letter)")
    p.add_argument("--on-topic-reset", choices=["fail", "reprocess"], default="fail",
                   help="when the broker no longer holds the records this group applied (topic recreated, broker "
                        "emptied): fail stops the worker (exit 3) naming `featurestore reset`; reprocess clears "
                        "the source and reads its topic from the start (default fail)")
    p.add_argument("--batch-size", type=int, default=20000,
                   help="most records per micro-batch (a poll returns what is there, up to this): larger batches "
                        "write each busy entity once for several events")
    p.add_argument("--max-cached-states", type=int, default=350_000,
                   help="entity states kept in memory per view (least recently used evicted; reloaded from Redis)")
    p.add_argument("--commit-chunk", type=int, default=250,
                   help="entity states per Redis commit script (0: the whole batch in one): a script blocks "
                        "every reader while it runs, about 4 us per state")
    p.add_argument("--metrics-port", type=int, default=9108, help="Prometheus /metrics, /healthz, /readyz (0: off)")
    p.add_argument("--metrics-host", default=None,
                   help="address the metrics port listens on: 0.0.0.0 for a scraper or probe from another host "
                        "or container (env FEATURESTORE_METRICS_HOST, default 127.0.0.1)")
    p.add_argument("--kafka-client", choices=["kafka-python", "confluent"], default=None,
                   help="the Kafka library the worker consumes with: kafka-python, or confluent (librdkafka's "
                        "consumer: records parsed in C, under a quarter of kafka-python's CPU per record) (env "
                        "FEATURESTORE_KAFKA_CLIENT, default kafka-python)")
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="stop after this long without new records (for demos and batch-like runs)")
    p.set_defaults(handler=run_worker)


def _add_produce(subparsers, common) -> None:
    p = subparsers.add_parser("produce", parents=[common], help="send events to a source's topic")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--source", required=True, help="the event source whose topic receives the events")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--file", help=".jsonl, .csv or .parquet events")
    g.add_argument("--generate", type=int, metavar="N", help="generate N demo transactions")
    p.add_argument("--customers", type=int, default=1000, help="distinct customers of --generate (default 1000)")
    p.add_argument("--days", type=float, default=7.0,
                   help="days of event time --generate spans, ending now (default 7)")
    p.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    p.add_argument("--partitions", type=int, default=4, help="partitions when the topic is created")
    p.set_defaults(handler=run_produce)


def _add_backfill(subparsers, common) -> None:
    p = subparsers.add_parser("backfill", parents=[common], help="rebuild a view's history with the same transforms")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--view", required=True, help="the feature view to rebuild")
    p.add_argument("--source", choices=["files", "postgres", "kafka"], default="files",
                   help="history file of the source, the PostgreSQL event log, or the Kafka topic")
    p.add_argument("--start",
                   help="first event time to write (ISO-8601 or epoch ms); earlier events still feed windows")
    p.add_argument("--end", help="last event time to read (ISO-8601 or epoch ms); with kafka, each partition is read "
                                 "up to its first record after it (the cut-over)")
    p.add_argument("--online", action="store_true",
                   help="also write each entity's final state to the online store; with kafka/postgres, also the "
                        "per-partition cut-over offsets of --group (a worker started afterwards resumes after them)")
    p.add_argument("--group", help="worker group for the --online hand-off (default featurestore-<project>)")
    p.add_argument("--shards", type=int, default=1, help="processes splitting this rebuild by entity hash")
    p.add_argument("--shard", type=int, default=0, help="this process's shard, in [0, --shards)")
    p.add_argument("--chunks", type=int, default=None,
                   help="chunks per shard (default: about 400k events each; bounds memory)")
    p.add_argument("--restart", action="store_true", help="forget this run's progress and recompute every chunk")
    p.add_argument("--spill-dir", help="folder for the per-chunk spill files (default: the system temp folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    p.add_argument("--strict", action="store_true", help="stop (exit 1) at the first rejected row")
    add_spark_arguments(p)
    p.set_defaults(handler=run_backfill_cmd)


def _add_get(subparsers, common) -> None:
    p = subparsers.add_parser("get", parents=[common], help="print an online feature vector")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--entity", action="append", required=True, metavar="KEY=VALUE",
                   help="join key and value of the entity (repeat for several join keys)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--service", help="a feature service: read its features")
    g.add_argument("--features", nargs="+", metavar="VIEW:FEATURE", help="read these features")
    p.add_argument("--request", action="append", default=[], metavar="NAME=VALUE",
                   help="request data for on-demand features")
    p.set_defaults(handler=run_get)


def run_worker(args) -> int:
    from featurestore.processing import prepare_view
    from workers.worker import Worker, WorkerConfig

    rt = open_runtime(load_settings(args), args.repo)
    versions = rt.versions()
    names = args.views or list(rt.repo.views)
    views = [prepare_view(rt.repo.view(n), versions[n], rt.project) for n in names]
    config = WorkerConfig(group=args.group or f"featurestore-{rt.project}", dead_letter_topic=args.dead_letter_topic,
                          batch_size=args.batch_size, max_cached_states=args.max_cached_states,
                          commit_chunk=args.commit_chunk or None, metrics_port=args.metrics_port or None,
                          metrics_host=args.metrics_host or rt.settings.metrics_host, kafka_options=rt.kafka_options(),
                          kafka_client=args.kafka_client or rt.settings.kafka_client,
                          on_topic_reset=args.on_topic_reset)
    worker = Worker(views, rt.online(), rt.offline, config)
    worker.install_signal_handlers()
    until = None
    if args.exit_when_idle is not None:
        state = {"seen": -1, "since": time.monotonic()}

        def until(w):
            if w.records_done != state["seen"]:
                state["seen"], state["since"] = w.records_done, time.monotonic()
            return time.monotonic() - state["since"] > args.exit_when_idle

    logger.info("worker starting: views %s, group %s", names, config.group)
    code = worker.run(until=until)
    print(json.dumps({"records": worker.records_done, "batches": worker.batches}))
    return code


def run_produce(args) -> int:
    from workers.producer import ensure_topic, generate_transactions, produce, read_events

    rt = open_runtime(load_settings(args), args.repo)
    source = rt.repo.source(args.source)
    events = read_events(args.file) if args.file else generate_transactions(args.generate, args.customers, args.days)
    opts = rt.kafka_options()
    ensure_topic(opts.pop("bootstrap_servers"), source.topic, args.partitions, **opts)
    n = produce(source, events, rt.kafka_options(), rate=args.rate)
    print(json.dumps({"topic": source.topic, "events": n}))
    return 0


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"{what} {item!r} must look like NAME=VALUE")
        out[key] = value
    return out


def run_get(args) -> int:
    from ..client import FeatureStore

    rt = open_runtime(load_settings(args), args.repo)
    store = FeatureStore(rt.repo, rt.online(), rt.versions(), rt.project)
    row = _pairs(args.entity, "--entity")
    request = {k: [float(v) if _is_number(v) else v] for k, v in _pairs(args.request, "--request").items()}
    if args.service:
        for odfv in rt.repo.service(args.service).odfvs():
            for name in odfv.request_schema:
                request.setdefault(name, [0.0])
    resp = store.get_online_features([row], features=args.features, feature_service=args.service,
                                     request_data=request or None)
    out = {name: {"value": values[0], "status": resp.statuses.get(name, ["key"])[0]}
           for name, values in resp.columns.items()}
    print(json.dumps(out, indent=2, default=str))
    statuses = [s[0] for s in resp.statuses.values()]
    if statuses and all(s == "missing" for s in statuses):
        shown = ", ".join(f"{k}={v}" for k, v in row.items())
        print(f"note: no data for entity {shown}: every feature is missing (no event of it has been applied; "
              f"check the key, or that a worker consumed its source)", file=sys.stderr)
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _time_ms(text: str | None) -> int | None:
    if text is None:
        return None
    from ..types import parse_timestamp

    return int(text) if text.isdigit() else parse_timestamp(text)


def run_backfill_cmd(args) -> int:
    import asyncio
    import sys

    from workers.backfill import BackfillError, BackfillOptions, run_backfill
    from featurestore.processing import prepare_view

    if args.engine == "spark":
        return run_spark_backfill_cmd(args, _time_ms)
    refuse_spark_options(args)
    if not 0 <= args.shard < args.shards:
        raise InvalidInputError(f"--shard {args.shard} must be in [0, --shards {args.shards})")
    rt = open_runtime(load_settings(args), args.repo)
    pv = prepare_view(rt.repo.view(args.view), rt.versions()[args.view], rt.project)
    opts = BackfillOptions(source=args.source, start_ms=_time_ms(args.start), end_ms=_time_ms(args.end),
                           shards=args.shards, shard=args.shard, online=args.online,
                           group=args.group or f"featurestore-{rt.project}", strict=args.strict, chunks=args.chunks,
                           restart=args.restart, progress=not args.no_progress and sys.stderr.isatty(),
                           spill_dir=args.spill_dir,
                           kafka_options=rt.kafka_options()
                           if args.source == "kafka" or rt.settings.kafka_bootstrap_servers else {})

    async def go():
        offline = await rt.offline()
        try:
            return await run_backfill(pv, offline, rt.online(), opts)
        finally:
            await offline.close()

    try:
        report = asyncio.run(go())
    except BackfillError as exc:
        print(f"backfill stopped: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), indent=2))
    if report.already_complete:
        print("this run was already complete: nothing done (--restart recomputes it)", file=sys.stderr)
    print_rejects(report)
    return 0


def print_rejects(report) -> None:
    """A backfill's rejected rows on stderr: how many by reason, and the first ones with their location."""
    if report.rejected:
        print(f"{report.rejected} row(s) rejected ({report.rejected_by_reason}), recorded in the rejects table; "
              f"first ones:", file=sys.stderr)
        for r in report.rejects[:20]:
            print(f"  {r['location']}: {r['reason']}: {r['detail']}", file=sys.stderr)
