"""The streaming worker: Kafka -> validate -> transforms -> PostgreSQL + Redis, exactly-once effects.

Per micro-batch, in this order:

1. decode (orjson) and validate each record; bad ones become dead letters;
2. apply the valid events to the cached per-entity states (``SourceProcessor``);
   late or repeated events become dead letters too;
3. write the accepted events to the PostgreSQL event log: an idempotent upsert
   keyed by (partition, offset), so a replay cannot duplicate a row;
4. record the dead letters in PostgreSQL, send them, mark them sent
   (``workers.dead_letters``: a replay does not send them again);
5. commit the new states to Redis in scripts of ``commit_chunk`` states, each
   only if the stored offsets are still the ones this worker read (compare-and-set
   fencing), the partitions are still claimed by this worker (it claims them when
   assigned) and the store's epoch marker is ours; the last one also advances each
   partition's last applied offset.  Every state carries the highest offset per
   partition applied to it;
6. commit the Kafka offsets (for lag monitoring and as a fallback start point).

A crash anywhere replays from the offsets in Redis: records at or below them
are skipped, and so are, per state, records at or below the state's own offsets
(a crash between two chunks); the rest are applied once.  PostgreSQL ignores
rows it already has.

A batch whose processing raises an unexpected error (a bug, or a user function
that raises on some value) is split in halves, each processed and committed on its
own, down to the single records that raise: each of those is dead-lettered with
reason ``processing_error`` (the exception's class and message) and its logged row,
if any, removed.  Only errors of the stores' availability (``RETRYABLE``) retry a
batch as a whole.  No record can stop a partition.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import operator
import signal
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg
import orjson
import pandas as pd
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from featurestore.definitions import EventSource
from featurestore.definitions.sources import TOPIC_RE
from featurestore.exceptions import (ConfigurationError, GroupConflictError, RecoveryError, RegistryError,
                                     StoreUnavailableError, UnknownNameError, WorkerRunningError)
from featurestore.offline.postgres import PUSH_PARTITION, event_id_column
from featurestore.online import RedisOnlineStore
from featurestore.online.redis import LIVE_TTL_MS
from featurestore.schema import validator_for
from transforms import ViewState

from .dead_letters import HEADER_ROOM, DeadLetter, DeadLetterSender, clean_text, dead_letter_value_limit
from .metrics import ProbeServer, WorkerMetrics
from .processor import PreparedView, SourceProcessor, log_batches
from .retry import Retry
from .topic_reset import ON_TOPIC_RESET, TOPIC_RESET_EXIT, PartitionVerifier, TopicReset

logger = logging.getLogger(__name__)

#: Errors of the stores that are worth retrying (the batch is re-run from scratch).  For
#: PostgreSQL: a lost connection (class 08), a server starting up or recovering (57P03),
#: shutting down (57P01/57P02) or out of connection slots (53300).
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
             OSError, asyncio.TimeoutError, StoreUnavailableError, KafkaError,
             asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError,
             asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
             asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.InsufficientResourcesError,
             redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)

#: Errors of the environment, not of a record (a missing table, refused credentials or permissions, an
#: inconsistent configuration): the worker stops with them rather than dead-letter every record.
FATAL = (ConfigurationError, UnknownNameError, RegistryError, GroupConflictError, RecoveryError, WorkerRunningError,
         asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.UndefinedColumnError,
         asyncpg.exceptions.InsufficientPrivilegeError, asyncpg.exceptions.InvalidAuthorizationSpecificationError,
         asyncpg.exceptions.InvalidSchemaNameError,
         redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)

SHUTDOWN_GRACE_S = 30
LAG_PERIOD_S = 5.0
RESET_CHECK_PERIOD_S = 30.0
PROGRESS_PERIOD_S = 30.0  # one INFO line of progress (or of what the worker waits for) this often
_record_key = operator.attrgetter("key")


def _name(tp) -> str:
    """A partition as the online store names it: ``topic:partition``."""
    return f"{tp.topic}:{tp.partition}"


def owned_events(events: pd.DataFrame, parts: list[int], n_partitions: int, on_kafka: set) -> pd.DataFrame:
    """The rows of ``events`` (``load_events(partitions=...)``: Kafka ``parts`` and pushed rows,
    partition -1) that the worker holding ``parts`` rebuilds: its partitions' rows, and the pushed
    rows of the entities it owns — those with rows on ``parts``, and those with no row on any Kafka
    partition (not in ``on_kafka``) whose key Kafka's default partitioner (murmur2 of the key's
    text, as ``featurestore produce`` and the Java client send it) maps to one of ``parts``: where
    their first event will arrive."""
    pushed = (events["__partition"] == PUSH_PARTITION).to_numpy()
    if not pushed.any():
        return events
    keys = events["key"]
    mine = set(keys[~pushed].tolist())
    wanted = set(parts)
    for key in pd.unique(keys[pushed]):
        if key not in mine and key not in on_kafka and (murmur2(str(key).encode()) & 0x7FFFFFFF) % n_partitions in wanted:
            mine.add(key)
    return events[~pushed | keys.isin(mine).to_numpy()].reset_index(drop=True)


@dataclass
class WorkerConfig:
    """Knobs of one worker process."""

    group: str
    dead_letter_topic: str = "features-dead-letter"
    batch_size: int = 20000
    poll_timeout_ms: int = 200
    metrics_port: int | None = 9108
    #: address of the metrics and probe server: loopback unless told (``"0.0.0.0"`` in a container)
    metrics_host: str = "127.0.0.1"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    #: how long the broker may hold a fetch that found nothing new (bounds the wait of an event
    #: that arrives while a fetch is parked, if the broker does not answer it at once)
    fetch_max_wait_ms: int = 50
    kafka_options: dict = field(default_factory=dict)
    #: Python's cyclic garbage collector, set when the worker starts: the cached states are millions of
    #: small long-lived lists, and with the default (700, 10, 10) the collector rescans them every few
    #: thousand allocations (measured: 40% of the time applying events).  None keeps the default.
    gc_threshold: tuple[int, int, int] | None = (50_000, 20, 100)
    #: States kept in memory per view (least recently used evicted after a commit; an evicted entity is
    #: loaded from Redis at its next event).  A state of the example views takes ~2-5 KB.
    max_cached_states: int | None = 500_000
    #: States per Redis commit script.  A script blocks every other client of the server while it runs
    #: (~4 us per state), so a batch is committed in chunks, each fenced, the offsets advanced by the
    #: last; a state records the offsets applied to it, so a batch re-run after a crash between chunks
    #: skips what a chunk already wrote.  None: one script per batch.
    commit_chunk: int | None = 250
    #: a partition the broker no longer holds our last applied record of (``workers.topic_reset``): ``fail``
    #: stops the worker (exit 3), ``reprocess`` clears the source and reads the topic from its start
    on_topic_reset: str = "fail"


@dataclass
class _Pending:
    """Valid events of one source in a batch, with where they came from."""

    events: list = field(default_factory=list)
    where: list = field(default_factory=list)  # (partition, offset, raw record)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: "Worker"):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        self.worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.worker.on_assigned(assigned)


class Worker:
    """One worker process; several with the same ``group`` share the partitions."""

    def __init__(self, views: list[PreparedView], online: RedisOnlineStore, offline_factory, config: WorkerConfig):
        """``offline_factory``: a coroutine function returning the offline store; it is
        created inside this worker's own event loop (asyncpg pools are bound to one)."""
        if not TOPIC_RE.match(config.dead_letter_topic) or config.dead_letter_topic in (".", ".."):
            raise ConfigurationError(f"dead-letter topic {config.dead_letter_topic!r} is not a valid Kafka topic name "
                                     f"(1-249 of A-Z, a-z, 0-9, '.', '_', '-'); pass another --dead-letter-topic")
        if config.on_topic_reset not in ON_TOPIC_RESET:
            raise ConfigurationError(f"on_topic_reset must be one of {', '.join(ON_TOPIC_RESET)}, "
                                     f"not {config.on_topic_reset!r}")
        if config.commit_chunk is not None and config.commit_chunk < 1:
            raise ValueError(f"commit_chunk must be at least 1 state per script (None: the whole batch in one), "
                             f"not {config.commit_chunk}")
        self.views = views
        self.online = online
        self.config = config
        self.metrics = WorkerMetrics()
        self.sources: dict[str, EventSource] = {}
        by_source: dict[str, list[PreparedView]] = defaultdict(list)
        for pv in views:
            other = self.sources.setdefault(pv.view.source.topic, pv.view.source)
            if other.name != pv.view.source.name:
                raise ConfigurationError(f"views of sources {other.name!r} and {pv.view.source.name!r} both read topic "
                                         f"{pv.view.source.topic!r}: a worker reads each topic as one source")
            by_source[pv.view.source.name].append(pv)
        self.processors = {name: SourceProcessor(pvs, online, config.max_cached_states,
                                                 history=functools.partial(self._history, name), check_stored=True)
                           for name, pvs in by_source.items()}
        self.applied: dict[str, int] = {}
        self._unverified: list = []  # assigned partitions with no offset in the online store
        self._to_verify: list = []  # assigned partitions, paused until the broker is seen to hold our offsets
        self.verifier = PartitionVerifier(config.kafka_options)
        self.topic_reset: TopicReset | None = None
        self._reset_checked: dict = {}  # partition -> monotonic time before which it is not checked again
        self._progress_at = float("inf")
        self._period = {"applied": 0, "dead": 0, "batches": 0}  # since the last progress line
        self._next_lag_update = 0.0
        self.stopping = False
        self.stop_deadline: float | None = None
        # asyncpg runs in a loop of its own thread, so PostgreSQL writes overlap the CPU work of a batch.
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="offline-io", daemon=True)
        self._loop_thread.start()
        self.offline = self._run(offline_factory())
        candidate = uuid.uuid4().hex
        self.epoch = online.ensure_epoch(candidate)
        # The marker was missing: a new store, or one that lost its data while no worker ran
        # (Kafka may still hold committed offsets): rebuild from the event log before the first batch.
        self.rebuild_pending = self.epoch == candidate
        self.retry = Retry(RETRYABLE, should_stop=self._past_deadline)
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.probes: ProbeServer | None = None
        self.dead_letters: DeadLetterSender | None = None
        #: (topic, partition, offset) -> "Class: message" of records found to raise when processed alone
        self._poison: dict[tuple[str, int, int], str] = {}
        self._saved_gc: tuple | None = None
        self.worker_id = uuid.uuid4().hex[:12]  # names this process's announcement in the online store
        self.view_keys = sorted(pv.view_key for pv in views)  # announced: a group's workers must compute the same
        self.started_ms: int | None = None  # the online store's clock at this worker's first announcement
        self.exit_code = 0
        self.assignments = 0  # rebalances that assigned this process partitions (see token)
        self.batches = 0
        self.records_done = 0  # records committed by this process (applied or dead-lettered)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        if self.config.gc_threshold is not None:
            self._saved_gc = gc.get_threshold()
            gc.collect()
            gc.freeze()  # what exists at start-up (modules, definitions) is never collected: stop scanning it
            gc.set_threshold(*self.config.gc_threshold)
        self._refuse_conflicting_group()  # before joining: a refused worker must not take partitions
        opts = self.config.kafka_options
        self.consumer = KafkaConsumer(
            group_id=self.config.group, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.config.session_timeout_ms, heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            max_poll_records=self.config.batch_size, max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            reconnect_backoff_max_ms=2000, **opts)
        self.consumer.subscribe(sorted(self.sources), listener=_Rebalance(self))
        logger.info("worker %s started: consumer group %r, topics %s, views %s; joining the group", self.worker_id,
                    self.config.group, ", ".join(sorted(self.sources)), ", ".join(self.view_keys))
        self._progress_at = time.monotonic() + PROGRESS_PERIOD_S
        self._announce()
        limit = self.online.hash_value_limit()
        if limit is not None and limit < 1024:
            logger.warning("Redis keeps hash values up to %d bytes compact (hash-max-listpack-value); feature states "
                           "are larger, so each (entity, view) takes about a third more memory than with 8192", limit)
        # The dead-letter producer takes any record the consumer accepts (larger ones are sent truncated).
        value_limit = dead_letter_value_limit(self.sources.values())
        self.producer = KafkaProducer(linger_ms=5, acks="all", retries=5, max_request_size=value_limit + HEADER_ROOM,
                                      **opts)
        self.dead_letters = DeadLetterSender(self.producer, self.config.dead_letter_topic, value_limit, self.offline,
                                             self._run, lambda topic: self.sources[topic].name, self.metrics)
        if self.config.metrics_port is not None:
            self.probes = ProbeServer(self.metrics, host=self.config.metrics_host, port=self.config.metrics_port).start()

    def request_stop(self, *_args) -> None:
        """SIGTERM/SIGINT: finish the batch in flight, commit, leave the group."""
        if not self.stopping:
            logger.info("stop requested: finishing the batch in flight")
        self.stopping = True
        self.stop_deadline = time.monotonic() + SHUTDOWN_GRACE_S
        self.metrics.alive = False

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _past_deadline(self) -> bool:
        return self.stop_deadline is not None and time.monotonic() > self.stop_deadline

    def close(self) -> None:
        if self._saved_gc is not None:  # a worker run inside a larger process gives its GC settings back
            gc.unfreeze()
            gc.set_threshold(*self._saved_gc)
            self._saved_gc = None
        if self.consumer is not None:
            try:
                self.online.retire_worker(self.config.group, self.worker_id)
            except RETRYABLE as exc:
                logger.warning("could not remove this worker's announcement (it expires by itself): %s", exc)
            if self.applied:
                self._commit_kafka_sync()
            self.consumer.close(autocommit=False)  # leaves the group: partitions move at once
        if self.producer is not None:
            self.producer.flush(10)
            self.producer.close(5)
        self.verifier.close()
        if self.probes is not None:
            self.probes.stop()
        self._run(self.offline.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(5)
        self.loop.close()

    def run(self, until=None) -> int:
        """Poll and process until stopped (or ``until()`` returns True); returns the exit code."""
        self.start()
        try:
            while not self.stopping:
                if self._to_verify:
                    self._verify_assigned()
                    if self.stopping:
                        break
                batch = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms)
                self.metrics.ready = self.topic_reset is None
                if batch:
                    self.process_guarded(batch)
                    self.batches += 1
                if time.monotonic() >= self._progress_at:
                    self._report_progress()
                if time.monotonic() >= self._next_lag_update:  # busy or idle, every LAG_PERIOD_S
                    self._next_lag_update = time.monotonic() + LAG_PERIOD_S
                    self._update_lag()
                    self._announce()
                if until is not None and until(self):
                    break
            return self.exit_code
        finally:
            self.close()

    @property
    def token(self) -> str:
        """Owner of the partitions of the latest assignment (claimed in on_assigned)."""
        return f"{self.worker_id}:{self.assignments}"

    # -- rebalance ----------------------------------------------------------------
    def on_revoked(self, revoked) -> None:
        for processor in self.processors.values():
            processor.invalidate()
        for tp in revoked:
            self.applied.pop(_name(tp), None)

    def on_assigned(self, assigned) -> None:
        for processor in self.processors.values():
            processor.invalidate()
        # Claim the partitions: a worker that lost them (and still runs a batch) cannot commit another chunk.
        self.assignments += 1
        self.online.claim_partitions(self.config.group, [_name(tp) for tp in assigned], self.token)
        stored = self.online.load_offsets(self.config.group)
        for tp in assigned:
            name = _name(tp)
            if name in stored:
                self.applied[name] = stored[name]
                self.consumer.seek(tp, stored[name] + 1)
            else:
                self.applied.pop(name, None)
                self._unverified.append(tp)  # checked in process(): no blocking calls inside this callback
        # consumed only once the broker is seen to hold what the stores hold of them (_verify_assigned)
        self._to_verify = list(assigned)
        if assigned:
            self.consumer.pause(*assigned)
        logger.info("assigned %s", sorted(_name(tp) for tp in assigned))

    def _verify_assigned(self) -> None:
        """Resume the assigned partitions whose last applied record the broker still holds; a
        partition that lost it is a topic reset (``workers.topic_reset``)."""
        tps, self._to_verify = self._to_verify, []
        stored = self.online.load_offsets(self.config.group)
        try:
            ends = self.consumer.end_offsets(tps)
        except KafkaError as exc:
            logger.warning("could not read the end offsets of %s (%s); the fetch check decides alone", tps, exc)
            ends = {}
        good, started_over = [], set()
        for tp in tps:
            if tp.topic in started_over:  # its source was just reset (reprocess): read from the start
                good.append(tp)
                continue
            source = self.sources[tp.topic]
            ours = max(stored.get(_name(tp), -1), self._run(self.offline.last_logged_offset(source, tp.partition)))
            if ours < 0:
                # The stores hold nothing of it: read it from its start, whatever offset Kafka kept for the
                # group (after `featurestore reset`, or a broker restarted empty, that offset is stale).
                self.consumer.seek_to_beginning(tp)
                good.append(tp)
                continue
            fingerprint = self._run(self.offline.logged_fingerprint(source, tp.partition, ours)) if ours >= 0 else None
            reset = self.verifier.check(tp, source.name, ours, fingerprint, ends.get(tp))
            if reset is None:
                good.append(tp)
            elif not self._on_topic_reset(reset):
                return
            else:
                started_over.add(tp.topic)
                good.append(tp)
        for tp in good:  # from the next record to apply (also after a suspected rewind)
            if _name(tp) in self.applied:
                self.consumer.seek(tp, self.applied[_name(tp)] + 1)
        if good:
            self.consumer.resume(*good)

    def _suspect_rewind(self, tp, offset: int, done: int) -> None:
        """The consumer returned a record at or below the last applied offset, though the worker never
        seeks there: the client reset its position (offset out of range, e.g. a recreated topic).
        Consume nothing more of ``tp`` until the broker is seen to hold our last applied record."""
        logger.warning("partition %s returned offset %d at or below the last applied offset %d: checking that the "
                       "broker still holds that record before consuming on", _name(tp), offset, done)
        self.consumer.pause(tp)
        if tp not in self._to_verify:
            self._to_verify.append(tp)

    def _on_topic_reset(self, reset: TopicReset) -> bool:
        """Count and report ``reset``; True when the partition may be consumed (``reprocess``)."""
        self.metrics.topic_resets.labels(reset.topic, str(reset.partition)).inc()
        if self.config.on_topic_reset == "fail":
            logger.error("%s", reset.message())
            self.topic_reset = reset
            self.applied.pop(f"{reset.topic}:{reset.partition}", None)  # not committed to Kafka on the way out
            self.metrics.ready = False
            self.exit_code = TOPIC_RESET_EXIT
            self.request_stop()
            return False
        from featurestore.reset import areset_source

        source = self.sources[reset.topic]
        logger.error("topic reset: partition %s:%d holds no longer what this group applied (%s); --on-topic-reset "
                     "reprocess: clearing source %s's offsets, states and event log and reading topic %s from its "
                     "start", reset.topic, reset.partition, reset.why, source.name, reset.topic)
        view_keys = [pv.view_key for pv in self.processors[source.name].views]
        self._run(areset_source(self.online, self.offline, source, view_keys))
        self.online.claim_partitions(self.config.group, [_name(tp) for tp in self.consumer.assignment()], self.token)
        for processor in self.processors.values():
            processor.invalidate()
        for tp in self.consumer.assignment():
            if tp.topic == reset.topic:
                self.applied.pop(_name(tp), None)
                self.consumer.seek_to_beginning(tp)
        return True

    def _kafka_committed(self, tp) -> bool:
        try:
            committed = self.consumer.committed(tp)
        except KafkaError as exc:
            logger.warning("could not read the committed offset of %s: %s", tp, exc)
            return False
        return committed is not None and committed > 0

    def _after_failure(self, exc: BaseException) -> None:
        self.metrics.retries.labels(type(exc).__name__).inc()
        for processor in self.processors.values():
            processor.invalidate()

    # -- one micro-batch ------------------------------------------------------------
    def process_guarded(self, batch) -> None:
        """``process`` the batch, retrying errors of the stores' availability; a batch that raises
        anything else is split to dead-letter the records that raise (``_isolate``)."""
        try:
            self.retry.call(lambda: self.process(batch), on_error=self._after_failure)
        except (*RETRYABLE, *FATAL):
            raise  # past the shutdown deadline, or not a record's fault
        except Exception as exc:  # noqa: BLE001 - any error of one record must not stop the partition
            self._after_failure(exc)
            self.metrics.isolations.labels(type(exc).__name__).inc()
            logger.error("processing a batch of %d records raised %s: %s; splitting it to find the records that "
                         "raise (they are dead-lettered as processing_error, the others applied)",
                         sum(len(r) for r in batch.values()), type(exc).__name__, exc, exc_info=True)
            for tp, records in batch.items():
                self._isolate(tp, records)

    def _isolate(self, tp, records: list) -> None:
        """Process ``records`` (of partition ``tp``, in order) alone; when that raises an unexpected
        error, process each half in turn the same way, and dead-letter a single record that raises."""
        done = self.applied.get(_name(tp), -1)
        records = [r for r in records if r.offset > done]
        if not records:
            return
        try:
            self.retry.call(lambda: self.process({tp: records}), on_error=self._after_failure)
            return
        except (*RETRYABLE, *FATAL):
            raise
        except Exception as exc:  # noqa: BLE001 - see process_guarded
            self._after_failure(exc)
            if len(records) == 1:
                rec = records[0]
                text = clean_text(f"{type(exc).__name__}: {exc}", 2000)
                logger.error("record %s:%s@%s raises when processed alone (%s); dead-lettering it as processing_error",
                             tp.topic, tp.partition, rec.offset, text)
                self._poison[(tp.topic, tp.partition, rec.offset)] = text
                try:
                    self.retry.call(lambda: self.process({tp: records}), on_error=self._after_failure)
                finally:
                    self._poison.pop((tp.topic, tp.partition, rec.offset), None)
                return
        half = len(records) // 2
        self._isolate(tp, records[:half])
        self._isolate(tp, records[half:])

    def process(self, batch) -> None:
        try:
            self._recover()
        except (*RETRYABLE, *FATAL):
            raise
        except Exception as exc:
            raise RecoveryError(f"rebuilding this worker's states from the event log failed: {type(exc).__name__}: "
                                f"{exc}") from exc
        self._process_records(batch)

    def _recover(self) -> None:
        """Before a batch: rebuild the states from the event log when the online store lost them."""
        while self._unverified:
            tp = self._unverified.pop()
            if self._kafka_committed(tp):
                # Kafka says this group consumed the partition but the online store has no offset for it: the
                # store lost its data since (another worker may already have re-created the epoch marker, so
                # the marker alone does not tell). Rebuild from the event log, never apply on top of lost state.
                logger.error("%s:%s committed in Kafka but unknown to the online store: rebuilding", tp.topic, tp.partition)
                self.rebuild_pending = True
        if self.rebuild_pending:  # a rebuild failed half way (or never ran): finish it first
            self.rebuild_from_event_log()

    def _process_records(self, batch) -> None:
        started = time.perf_counter()
        pending: dict[str, _Pending] = defaultdict(_Pending)
        dead: list[DeadLetter] = []
        advance: dict[str, int] = {}
        n_new = 0
        poison = self._poison
        now_ms = int(time.time() * 1000)
        for tp, records in batch.items():
            name = _name(tp)
            done = self.applied.get(name, -1)
            source = self.sources[tp.topic]
            validate = validator_for(source)
            if records and records[0].offset <= done and not self._poison:
                self._suspect_rewind(tp, records[0].offset, done)
                continue
            for rec in records:
                if rec.offset <= done:
                    continue  # already applied (a batch split by _isolate)
                advance[name] = rec.offset
                n_new += 1
                if poison and (tp.topic, tp.partition, rec.offset) in poison:
                    dead.append(DeadLetter(rec, "processing_error", poison[(tp.topic, tp.partition, rec.offset)]))
                    continue
                raw = rec.value
                if not raw:
                    dead.append(DeadLetter(rec, "empty_message", "the record has no value" if raw is None
                                           else "the record's value is empty (0 bytes)"))
                    continue
                if len(raw) > source.max_message_bytes:
                    dead.append(DeadLetter(rec, "oversize", f"message of {len(raw)} bytes exceeds the source's "
                                                            f"max_message_bytes ({source.max_message_bytes})"))
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    dead.append(DeadLetter(rec, "malformed_json", str(exc)))
                    continue
                # max_future's reference: the record's Kafka timestamp (the worker's clock when it has none)
                result = validate(obj, rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0 else now_ms)
                if not result.ok:
                    dead.append(DeadLetter(rec, result.reason, result.detail))
                    continue
                p = pending[source.name]
                p.events.append(result)
                p.where.append((tp.partition, rec.offset, rec))
        if not advance:
            return
        touched, writes = [], []
        applied_counts: dict[str, int] = {}
        for source_name, p in pending.items():
            processor = self.processors[source_name]
            states, refused = processor.update(p.events, [(part, off) for part, off, _ in p.where])
            touched.append((processor, states))
            if processor.spread:
                self._report_spread(source_name, processor.spread)
            applied_counts[source_name] = len(p.events) - len(refused)
            for idx, rej in refused.items():
                dead.append(DeadLetter(p.where[idx][2], rej.reason, rej.detail))
            logged = [(p.where[i][0], p.where[i][1], event) for i, event in enumerate(p.events) if i not in refused]
            if logged:  # starts now, in the I/O thread, while the records are built below
                writes.append(self._submit(self.offline.write_valid_events(self._source(source_name), logged)))
        records = [r for processor, states in touched for r in processor.records(states)]
        records.sort(key=_record_key)  # an entity's views next to each other: one commit chunk holds them all
        for write in writes:
            write.result()
        if poison:  # a record dead-lettered as processing_error may have been logged by the failed attempt
            for d in dead:
                if d.reason == "processing_error":
                    self._run(self.offline.forget_events(self.sources[d.rec.topic], [(d.rec.partition, d.rec.offset)]))
        self.dead_letters.send(dead)
        offsets = {name: (self.applied.get(name, -1), off) for name, off in advance.items()}
        result = self.online.commit(records, self.config.group, offsets, self.epoch, chunk=self.config.commit_chunk,
                                    token=self.token)
        if result == 0:
            self.metrics.fenced.inc()
            logger.warning("commit fenced: another worker took or advanced %s; reloading", sorted(advance))
            self._resync()
            return
        if result == -1:
            logger.error("the online store lost its data (epoch marker changed): rebuilding from the event log")
            self.rebuild_from_event_log()
            return
        if result == -2:
            self.metrics.state_conflicts.inc()
            logger.warning("commit refused: another writer changed a state this worker cached (events of one entity "
                           "on partitions of several workers?); reloading and applying the batch again")
            for processor in self.processors.values():
                processor.invalidate()
            for tp, records_of_tp in batch.items():  # read the batch again (its earlier chunks are skipped per state)
                name = _name(tp)
                if name in advance:
                    self.consumer.seek(tp, self.applied.get(name, records_of_tp[0].offset - 1) + 1)
            return
        self.applied.update(advance)
        for processor in self.processors.values():
            processor.committed(records)
        for processor in self.processors.values():  # every cached state is in Redis now
            processor.evict()
        self.records_done += n_new
        self._period["applied"] += sum(applied_counts.values())
        self._period["dead"] += len(dead)
        self._period["batches"] += 1
        self._commit_kafka(advance)
        self._observe(pending, applied_counts, started)

    def _report_progress(self) -> None:
        """One INFO line: what the last period did, or what the worker is waiting for."""
        self._progress_at = time.monotonic() + PROGRESS_PERIOD_S
        period, self._period = self._period, {"applied": 0, "dead": 0, "batches": 0}
        assigned = self.consumer.assignment()
        if not assigned:
            logger.info("waiting for partitions: no partition of %s assigned to this worker in consumer group %r "
                        "(joining, or the group's other workers hold them all)", ", ".join(sorted(self.sources)),
                        self.config.group)
            return
        lag = sum(int(self.metrics.lag.labels(tp.topic, str(tp.partition))._value.get()) for tp in assigned)
        logger.info("progress over %.0f s: %d events applied, %d dead letters, %d batches; lag %d records on %d "
                    "partitions; %d records committed since start", PROGRESS_PERIOD_S, period["applied"],
                    period["dead"], period["batches"], lag, len(assigned), self.records_done)

    def _report_spread(self, source_name: str, keys: set[str]) -> None:
        self.metrics.spread.labels(source_name).inc(len(keys))
        logger.error("%d entities of source %s had events on a Kafka partition other than their earlier events "
                     "(e.g. %s): the topic's events must be keyed by the entity key, or several workers hold the "
                     "same entity and overwrite each other's states (expected once per entity after the topic's "
                     "partitions were increased)", len(keys), source_name, ", ".join(sorted(keys)[:5]))

    def _run(self, coro):
        """Run a coroutine in the I/O loop and wait for it."""
        return self._submit(coro).result()

    def _submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _source(self, name: str) -> EventSource:
        return next(s for s in self.sources.values() if s.name == name)

    def _commit_kafka(self, advance: dict[str, int]) -> None:
        offsets = {}
        for name, off in advance.items():
            topic, part = name.rsplit(":", 1)
            offsets[TopicPartition(topic, int(part))] = OffsetAndMetadata(off + 1, "", -1)
        try:  # asynchronous: the Redis offsets are authoritative, this one is informational
            self.consumer.commit_async(offsets)
        except KafkaError as exc:
            logger.warning("kafka offset commit failed (%s); redis offsets stay authoritative", exc)

    def _commit_kafka_sync(self) -> None:
        offsets = {}
        for name, off in self.applied.items():
            topic, part = name.rsplit(":", 1)
            offsets[TopicPartition(topic, int(part))] = OffsetAndMetadata(off + 1, "", -1)
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            logger.warning("final kafka offset commit failed: %s", exc)

    def _resync(self) -> None:
        for processor in self.processors.values():
            processor.invalidate()
        stored = self.online.load_offsets(self.config.group)
        for tp in self.consumer.assignment():
            name = _name(tp)
            if name in stored:
                self.applied[name] = stored[name]
                self.consumer.seek(tp, stored[name] + 1)
            else:  # nothing stored (e.g. lost data): expect nothing, or every commit is fenced
                self.applied.pop(name, None)

    def _observe(self, pending, applied_counts, started) -> None:
        now_ms = time.time() * 1000
        for source_name, p in pending.items():  # refused events are counted as dead letters instead
            self.metrics.events.labels(self._source(source_name).topic).inc(applied_counts.get(source_name, 0))
            newest = max((e.ts_ms for e in p.events), default=None)
            if newest is not None:
                for pv in self.processors[source_name].views:
                    self.metrics.freshness.labels(pv.view.name).set(max(0.0, (now_ms - newest) / 1000))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _announce(self) -> None:
        """Tell ``push`` / ``materialize`` which topics a running worker consumes, and the group which views
        it computes (renewed every LAG_PERIOD_S).  A worker that finds a worker of its group computing other
        views, started before it (both passed the start-up check at once), stops with exit code 2."""
        try:
            at = self.online.announce_worker(self.config.group, self.worker_id, sorted(self.sources),
                                             views=self.view_keys, started_ms=self.started_ms)
            if self.started_ms is None:
                self.started_ms = at
            earlier = [w for w in self._conflicting_workers()
                       if (w.get("started_ms") or 0, w["worker"]) < (self.started_ms, self.worker_id)]
        except RETRYABLE as exc:  # the next batch's commit retries against the same outage
            logger.warning("could not renew this worker's announcement in the online store: %s", exc)
            return
        if earlier and not self.stopping:
            logger.error("%s; stopping", self._conflict_message(earlier))
            self.exit_code = 2
            self.request_stop()

    def _conflicting_workers(self) -> list[dict]:
        """Live workers of this group (announced by this release or a later one) computing other views."""
        return [w for w in self.online.live_workers()
                if w["group"] == self.config.group and w["worker"] != self.worker_id
                and w.get("views") is not None and w["views"] != self.view_keys]

    def _conflict_message(self, others: list[dict]) -> str:
        who = "; ".join(f"worker {w['worker']} (pid {w['pid']} on {w['host']}) computes {', '.join(w['views'])}"
                        for w in others)
        return (f"consumer group {self.config.group!r} runs workers computing other feature views: {who}; this worker "
                f"computes {', '.join(self.view_keys)}. The workers of one group share its partitions, so each view "
                f"would miss the events of the partitions the others hold. Give each set of views its own --group, or "
                f"stop the group before starting workers of a new repository version (the announcement of a worker "
                f"killed without stopping expires {LIVE_TTL_MS // 1000} s after its last renewal)")

    def _refuse_conflicting_group(self) -> None:
        try:
            others = self._conflicting_workers()
        except RETRYABLE as exc:  # checked again at every announcement
            logger.warning("could not read the running workers of group %r: %s", self.config.group, exc)
            return
        if others:
            raise GroupConflictError(self._conflict_message(others))

    def _update_lag(self) -> None:
        assigned = list(self.consumer.assignment())
        if not assigned:
            return
        try:
            ends = self.consumer.end_offsets(assigned)
        except KafkaError:
            return
        now = time.monotonic()
        for tp in assigned:
            position = self.applied.get(_name(tp), -1) + 1
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, ends.get(tp, 0) - position))
            # The broker reports fewer records than this group applied: a topic recreated or a broker emptied
            # leaves the consumer waiting past the end in silence.  End offsets can be under-reported, so the
            # record itself is fetched (_verify_assigned), at most once per RESET_CHECK_PERIOD_S per partition.
            if tp in ends and ends[tp] < position and now >= self._reset_checked.get(tp, 0.0) and tp not in self._to_verify:
                self._reset_checked[tp] = now + RESET_CHECK_PERIOD_S
                self.consumer.pause(tp)
                self._to_verify.append(tp)

    # -- recovery when Redis lost its data --------------------------------------------
    def rebuild_from_event_log(self) -> None:
        """Recompute the states of the assigned partitions from the PostgreSQL event log.

        ``rebuild_pending`` stays set until it succeeds: a retried batch rebuilds first
        instead of committing on top of the empty states under the new epoch marker."""
        self.rebuild_pending = True
        self.epoch = self.online.ensure_epoch(uuid.uuid4().hex)
        assigned = list(self.consumer.assignment())
        # the claims went with the data (a restart without persistence): claim what this worker holds
        self.online.claim_partitions(self.config.group, [_name(tp) for tp in assigned], self.token)
        stored = self.online.load_offsets(self.config.group)
        for source_name, processor in self.processors.items():
            processor.invalidate()
            source = self._source(source_name)
            parts = [tp.partition for tp in assigned if tp.topic == source.topic]
            if not parts:
                continue
            events = self._run(self.offline.load_events(source, partitions=[*parts, PUSH_PARTITION]))
            events = self._own_events(source, events, parts)
            if not len(events):
                continue
            records, offsets = self._rebuilt_records(processor, source, events, stored)
            if self.online.commit(records, self.config.group, offsets, self.epoch, token=self.token) != 1:
                raise StoreUnavailableError("could not commit the rebuilt state; retrying")
        self._resync()
        self.rebuild_pending = False

    def _own_events(self, source, events: pd.DataFrame, parts: list[int]) -> pd.DataFrame:
        """``owned_events`` of this worker (``parts`` of the source's topic), asking the event log
        which pushed entities have events from Kafka."""
        pushed = (events["__partition"] == PUSH_PARTITION).to_numpy()
        if not pushed.any():
            return events
        candidates = set(pd.unique(events["key"][pushed])) - set(events["key"][~pushed])
        on_kafka = self._run(self.offline.keys_on_kafka_partitions(source, sorted(candidates)))
        n_partitions = len(self.consumer.partitions_for_topic(source.topic) or ())
        if not n_partitions:  # without it the pushed-only entities would be left out: retry the batch instead
            raise StoreUnavailableError(f"no partition count known for topic {source.topic!r} yet; retrying the rebuild")
        return owned_events(events, parts, n_partitions, on_kafka)

    def _rebuilt_records(self, processor, source, events: pd.DataFrame, stored):
        records, offsets = [], {}
        if len(events):
            last = events[events["__partition"] != PUSH_PARTITION].groupby("__partition", sort=False)["__offset"].max()
            for part, off in last.items():
                name = f"{source.topic}:{int(part)}"
                offsets[name] = (stored.get(name, -1), int(off))
        batches = log_batches(processor.views, events, event_id_column(source))
        for pv in processor.views:
            for key, (past, _) in batches.items():
                state = ViewState(pv.specs, pv.lateness_ms)
                state.apply(past)
                records.append(SourceProcessor.record(pv, key, state))
        return records, offsets

    def _history(self, source_name: str, keys: list[str]) -> dict:
        """``SourceProcessor.history``: the logged events of entities whose state the online store
        does not hold, as far as this worker applied them — every pushed row (partition -1) and the
        rows of its partitions up to the offsets committed (later ones, logged by a batch that never
        committed, are in the batch being applied or in the next ones)."""
        source = self._source(source_name)
        parts = [tp.partition for tp in self.consumer.assignment() if tp.topic == source.topic]
        events = self._run(self.offline.entity_events(source, keys, [*parts, PUSH_PARTITION]))
        if len(events):
            done = events["__partition"].map(lambda p: self.applied.get(f"{source.topic}:{p}", -1))
            events = events[(events["__partition"] == PUSH_PARTITION) | (events["__offset"] <= done)]
        found = log_batches(self.processors[source_name].views, events, event_id_column(source))
        if found:
            self.metrics.from_log.labels(source_name).inc(len(found))
            logger.info("%d entities of %s absent from the online store: their states rebuilt from the event log",
                        len(found), source_name)
        return found
