"""``featurestore backfill --engine spark``: a view's history recomputed in Spark tasks.

1. **read and validate** (``readers``): the source's Parquet history (any Hadoop URL) or the
   PostgreSQL event log over JDBC in parallel offset ranges; the rows a file holds are validated in
   the tasks with ``validate_frame``, as the local backfill validates them;
2. **bucket and compute** (``buckets``): events repartitioned by ``crc32(key) % buckets`` and
   grouped per bucket (many entities each), sorted in arrival order inside the bucket and computed
   with ``compute_batch`` (``applyInPandas``, one call per bucket);
3. **write**: history rows as Parquet partitioned by ``date`` (the UTC day of ``ts``) with
   ``mode("overwrite")`` — Spark's commit protocol keeps a failed job's files out and a rerun
   replaces the whole output, so running a job again, or after a killed task failed it, gives the
   same dataset — or into the view's PostgreSQL history table from the tasks, with the local
   backfill's COPY upsert (a rewrite of a row with the same values changes nothing);
4. refused rows are gathered on the driver: counted, located and written to the rejects table;
5. ``online``: the final states are gathered on the driver and committed by the local backfill's
   hand-off code (``workers.backfill_handoff``): with ``--source postgres`` the cut-over is the
   event log's last offset per partition when the run starts, each commit is fenced by the group's
   offsets and the offsets are handed off last, as ``backfill --online`` does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from ..exceptions import BackfillError, InvalidInputError
from ..placement import place_views
from ..processing import PreparedView
from .buckets import bucket_column, bucket_function
from .frames import out_schema
from .readers import event_log_events, file_events, history_url
from .session import ship_repo_modules

__all__ = ["SPARK_SOURCES", "SparkBackfillOptions", "run_spark_backfill"]

SPARK_SOURCES = ("files", "postgres")
EVENTS_PER_BUCKET = 200_000  # target events per bucket when the number of buckets is automatic


@dataclass
class SparkBackfillOptions:
    source: str = "files"
    out: str | None = None  # Parquet output URL; None: the view's PostgreSQL history table
    history_path: str | None = None  # the Parquet history to read (default: the source's FileHistory)
    start_ms: int | None = None
    end_ms: int | None = None
    buckets: int | None = None  # entity buckets (None: about EVENTS_PER_BUCKET events each, at least 2 a core)
    online: bool = False
    group: str | None = None
    strict: bool = False
    pg: dict = field(default_factory=dict)  # dsn, project, schema: the event log (JDBC), the history (COPY)
    kafka_options: dict = field(default_factory=dict)  # the broker, for a Redis Cluster's placement (--online)


def run_spark_backfill(spark, pv: PreparedView, opts: SparkBackfillOptions, offline=None, online=None,
                       loop: asyncio.AbstractEventLoop | None = None):
    """Run the backfill (module docstring); returns a ``workers.backfill_options.BackfillReport``.
    ``offline`` (a ``PostgresOfflineStore`` on ``loop``) takes the rejects, the history when
    ``opts.out`` is None, and gives the event log's cut-over; ``online`` the final states."""
    from workers.backfill_options import BackfillReport

    if opts.source not in SPARK_SOURCES:
        raise InvalidInputError(f"the Spark engine reads --source {' or '.join(SPARK_SOURCES)}, not {opts.source!r} "
                                f"(read a Kafka topic with --engine local)")
    if (opts.out is None or opts.source == "postgres") and (offline is None or not opts.pg):
        raise InvalidInputError("the Spark backfill needs PostgreSQL for the event log or the history table: "
                                "give --out URL (Parquet) with --source files, or configure FEATURESTORE_POSTGRES_DSN")
    if opts.online and online is None:
        raise InvalidInputError("--online needs the online store (FEATURESTORE_REDIS_URL)")
    loop = loop or asyncio.new_event_loop()
    run = _SparkRun(spark, pv, opts, offline, online, loop, BackfillReport())
    return run.run()


class _SparkRun:
    """One Spark backfill, driven from the driver."""

    def __init__(self, spark, pv, opts, offline, online, loop, report):
        from workers.backfill_handoff import HandOffMixin

        self.spark, self.pv, self.opts = spark, pv, opts
        self.offline, self.online, self.loop, self.report = offline, online, loop, report
        self.src = pv.view.source
        handoff = opts.online and opts.source == "postgres"
        group = opts.group or (f"featurestore-{online.project}" if online is not None else None)
        self.handoff = _handoff(HandOffMixin, self.src, opts, report, online, group, handoff)

    def _await(self, coro):
        return self.loop.run_until_complete(coro)

    def run(self):
        started = time.perf_counter()
        o, rep, pv = self.opts, self.report, self.pv
        ship_repo_modules()
        if self.offline is not None:
            self._await(self.offline.migrate([self.src], [(pv.view, pv.version)]))
        header = self._header()
        self.handoff.check_cut(header, header.get("cut", {}))
        if o.online:
            place_views(self.online, [pv], o.kafka_options)
            self.online.refuse_if_consumed([self.src.topic], f"backfill of {pv.view.name!r} --online")
            self.handoff.epoch = self.online.ensure_epoch(uuid.uuid4().hex)
        events, n_buckets = self._events(header)
        apply = bucket_function(pv, o.start_ms, o.online)
        out = (events.withColumn("__bucket", bucket_column(n_buckets, refused=True))
               .groupBy("__bucket").applyInPandas(apply, _spark(out_schema(pv.view))))
        from pyspark import StorageLevel

        out = out.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            t0 = time.perf_counter()
            self._rejects(out)
            rep.phases["compute_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self._write(out.filter("__kind = 'h'"))
            if o.online:
                self._states(out.filter("__kind = 's'"))
            if self.handoff.handoff:
                self.handoff._commit_offsets(header)
            rep.phases["write_s"] += time.perf_counter() - t0
            rep.chunks = n_buckets
        finally:
            out.unpersist()
        rep.seconds = time.perf_counter() - started
        return rep

    def _header(self) -> dict:
        """The cut-over (event log) and the group's stored offsets (the hand-off's CAS base)."""
        header: dict = {}
        if self.opts.source == "postgres":
            header["cut"] = {int(p): int(v) for p, v in self._await(self.offline.event_log_offsets(self.src)).items()}
        if self.handoff.handoff:
            stored = self.online.load_offsets(self.handoff.group)
            header["stored"] = {k: v for k, v in stored.items() if k.rsplit(":", 1)[0] == self.src.topic}
            self.handoff._stored = header["stored"]
        return header

    def _events(self, header: dict):
        o = self.opts
        parallelism = max(1, self.spark.sparkContext.defaultParallelism)
        if o.source == "files":
            url = history_url(self.src, o.history_path)
            events = file_events(self.spark, self.src, url)
            if o.end_ms is not None:
                events = events.filter(f"__reason IS NOT NULL OR __ts <= {int(o.end_ms)}")
            estimate = None if o.buckets else self.spark.read.parquet(url).count()  # from the Parquet footers
        else:
            estimate = self._await(self.offline.count_events(self.src))
            pg = o.pg
            events = event_log_events(self.spark, self.src, pg["dsn"], pg["project"], pg.get("schema", "public"),
                                      header["cut"], o.end_ms, 2 * parallelism)
        n_buckets = o.buckets or max(2 * parallelism, -(-(estimate or 0) // EVENTS_PER_BUCKET))
        if n_buckets < 1:
            raise InvalidInputError("--buckets must be at least 1")
        return events, n_buckets

    def _rejects(self, out) -> None:
        """Refused rows (validation and the buckets' late / duplicate ones): counted, located, written."""
        from pyspark.sql import functions as F

        rep, o = self.report, self.opts
        where = self.src.history.path if o.source == "files" and o.history_path is None else (o.history_path or "")
        rows = out.filter("__kind = 'r'").select("__part", "__off", "__reason", "__detail", "__payload").collect()
        rows.sort(key=lambda r: (r["__part"], r["__off"]))
        counts = {r["__kind"]: r for r in out.groupBy("__kind").agg(F.count("*").alias("rows"),
                                                                    F.sum("__off").alias("events")).collect()}
        rep.rows_written = int(counts["h"]["rows"]) if "h" in counts else 0
        rep.events_read = int(counts["n"]["events"] or 0) if "n" in counts else 0
        loc = (lambda p, off: f"{where}:row {off}") if o.source == "files" else \
            (lambda p, off: f"{self.src.topic}:{p}@{off}" if p >= 0 else f"event log row {off} (partition {p})")
        for r in rows:
            rep.reject(loc(r["__part"], r["__off"]), r["__reason"], r["__detail"])
        if rows and self.offline is not None:
            self._await(self.offline.write_rejects([
                {"source": self.src.name, "partition": r["__part"], "offset": r["__off"], "reason": r["__reason"],
                 "detail": r["__detail"], "payload": r["__payload"]} for r in rows]))
        if rows and o.strict:  # nothing of the history is written
            first = rep.rejects[0]
            raise BackfillError(f"--strict: {len(rows)} row(s) refused, first at {first['location']}: "
                                f"{first['reason']}: {first['detail']}")

    def _write(self, history) -> None:
        from pyspark.sql import functions as F

        from .writers import write_postgres_history

        o, rep = self.opts, self.report
        cols = ["key", "ts", "seq"] + [f.name for f in self.pv.view.features]
        history = history.select(*cols)
        if o.out is not None:
            (history.withColumn("date", F.to_date(F.timestamp_millis("ts")))
             .write.mode("overwrite").partitionBy("date").parquet(o.out))
        else:
            rep.rows_changed = write_postgres_history(history, self.pv, o.pg)

    def _states(self, states) -> None:
        """Final online states, gathered and committed in batches by the hand-off code."""
        import pickle

        from workers.backfill_options import ONLINE_BATCH

        batch = []
        for row in states.select("__blob").toLocalIterator():
            batch.append(pickle.loads(row["__blob"]))
            if len(batch) >= ONLINE_BATCH:
                self.handoff._commit_states(batch)
                self.report.entities_online += len(batch)
                batch = []
        if batch:
            self.handoff._commit_states(batch)
            self.report.entities_online += len(batch)


def _handoff(mixin, src, opts, report, online, group, handoff):
    """The local backfill's hand-off code (``HandOffMixin``) over this run's facts."""

    class HandOff(mixin):
        def check_cut(self, header, cut):
            if self.handoff or self.opts.source == "postgres":
                self._check_cut(header, cut)

    h = HandOff()
    h.src, h.opts, h.report, h.online, h.group, h.handoff = src, opts, report, online, group, handoff
    h.epoch, h._stored = None, {}
    return h


def _spark(schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)
