"""The streaming worker: Kafka -> validate -> transforms -> PostgreSQL + Redis, exactly-once effects.

Per micro-batch, in this order:

1. decode (orjson) and validate each record (``workers.batches``); bad ones become dead letters;
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
from typing import Awaitable, Callable

from kafka import KafkaProducer

from featurestore.definitions import EventSource
from featurestore.definitions.sources import TOPIC_RE
from featurestore.exceptions import ConfigurationError, RecoveryError
from featurestore.offline import OfflineStore
from featurestore.online import CommitResult, RedisOnlineStore
from featurestore.placement import topic_partition_counts
from featurestore.processing import PreparedView, SourceProcessor

from . import reporting
from .batches import decode_batch
from .commits import CommitsMixin
from .config import WorkerConfig
from .dead_letters import HEADER_ROOM, DeadLetter, DeadLetterSender, dead_letter_value_limit
from .errors import FATAL, RETRYABLE
from .isolation import IsolationMixin
from .kafka_client import Consumer, check_client, open_consumer
from .membership import MembershipMixin
from .metrics import ProbeServer, WorkerMetrics
from .partitions import partition_name
from .recovery import RecoveryMixin, owned_events
from .reporting import ReportingMixin
from .reset_checks import ResetChecksMixin
from .retry import Retry
from .topic_reset import ON_TOPIC_RESET, PartitionVerifier, TopicReset
from transforms.engine.jit import CACHE_DIR, COMPILED
from transforms.engine.warmup import warm_up

__all__ = ["FATAL", "RETRYABLE", "SHUTDOWN_GRACE_S", "Worker", "WorkerConfig", "owned_events"]

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 30
LAG_PERIOD_S = 5.0
_record_key = operator.attrgetter("key")


def _check_config(config: WorkerConfig) -> None:
    """Refuse a configuration the worker cannot run with, naming the option to change."""
    if not TOPIC_RE.match(config.dead_letter_topic) or config.dead_letter_topic in (".", ".."):
        raise ConfigurationError(f"dead-letter topic {config.dead_letter_topic!r} is not a valid Kafka topic name "
                                 f"(1-249 of A-Z, a-z, 0-9, '.', '_', '-'); pass another --dead-letter-topic")
    if config.on_topic_reset not in ON_TOPIC_RESET:
        raise ConfigurationError(f"on_topic_reset must be one of {', '.join(ON_TOPIC_RESET)}, "
                                 f"not {config.on_topic_reset!r}")
    check_client(config)
    if config.commit_chunk is not None and config.commit_chunk < 1:
        raise ValueError(f"commit_chunk must be at least 1 state per script (None: the whole batch in one), "
                         f"not {config.commit_chunk}")


def _sources_of(views: list[PreparedView]) -> tuple[dict[str, EventSource], dict[str, list[PreparedView]]]:
    """(topic -> source, source name -> its views) of ``views``; two sources on one topic are refused."""
    sources: dict[str, EventSource] = {}
    by_source: dict[str, list[PreparedView]] = defaultdict(list)
    for pv in views:
        other = sources.setdefault(pv.view.source.topic, pv.view.source)
        if other.name != pv.view.source.name:
            raise ConfigurationError(f"views of sources {other.name!r} and {pv.view.source.name!r} both read topic "
                                     f"{pv.view.source.topic!r}: a worker reads each topic as one source")
        by_source[pv.view.source.name].append(pv)
    return sources, by_source


class Worker(IsolationMixin, RecoveryMixin, MembershipMixin, ResetChecksMixin, ReportingMixin, CommitsMixin):
    """One worker process; several with the same ``group`` share the partitions.  Its parts: the poll
    loop and the batch path here; decoding a polled batch (``workers.batches``), poison isolation
    (``workers.isolation``), recovery from the event log
    (``workers.recovery``), group membership (``workers.membership``), topic-reset checks
    (``workers.reset_checks``) and what it reports (``workers.reporting``)."""

    def __init__(self, views: list[PreparedView], online: RedisOnlineStore,
                 offline_factory: Callable[[], Awaitable[OfflineStore]], config: WorkerConfig):
        """``offline_factory``: a coroutine function returning the offline store; it is
        created inside this worker's own event loop (asyncpg pools are bound to one)."""
        _check_config(config)
        self.views = views
        self.online = online
        self.config = config
        self.metrics = WorkerMetrics()
        self.sources, by_source = _sources_of(views)
        self.processors = {name: SourceProcessor(pvs, online, config.max_cached_states,
                                                 history=functools.partial(self._history, name), check_stored=True)
                           for name, pvs in by_source.items()}
        self.applied: dict[str, int] = {}
        self._unverified: list = []  # assigned partitions with no offset in the online store
        self._to_verify: list = []  # assigned partitions, paused until the broker is seen to hold our offsets
        self.verifier = PartitionVerifier(config.kafka_options)
        self.topic_reset: TopicReset | None = None
        self.lag: dict = {}  # partition -> records behind, as of the last lag update (_update_lag)
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
        self.offline: OfflineStore = self._run(offline_factory())
        if online.places_by_partition:  # Redis Cluster: entities are placed by their topic's partition count
            counts = topic_partition_counts(config.kafka_options, sorted(self.sources))
            online.use_partitions({pv.view_key: counts[pv.view.source.topic] for pv in views})
        candidate = uuid.uuid4().hex
        self.epoch = online.ensure_epoch(candidate)
        # The marker was missing: a new store, or one that lost its data while no worker ran
        # (Kafka may still hold committed offsets): rebuild from the event log before the first batch.
        self.rebuild_pending = online.created_epoch(self.epoch, candidate)
        self.retry = Retry(RETRYABLE, should_stop=self._past_deadline)
        self.consumer: Consumer | None = None
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
        seconds = warm_up()  # before joining: no batch waits for the kernels to compile
        logger.info("state engine ready in %.2f s (%s; kernel cache %s)", seconds,
                    "compiled kernels" if COMPILED else "pure Python: numba is not installed", CACHE_DIR)
        opts = self.config.kafka_options
        self.consumer = open_consumer(self.config, sorted(self.sources), self.on_revoked, self.on_assigned)
        logger.info("worker %s started: consumer group %r, topics %s, views %s, Kafka client %s; joining the group",
                    self.worker_id, self.config.group, ", ".join(sorted(self.sources)), ", ".join(self.view_keys),
                    self.config.kafka_client)
        self._progress_at = time.monotonic() + reporting.PROGRESS_PERIOD_S
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
            self.probes = ProbeServer(self.metrics, host=self.config.metrics_host,
                                      port=self.config.metrics_port).start()

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
                if self._to_verify:  # a store outage meanwhile is retried as a batch's is
                    self.retry.call(self._verify_assigned, on_error=self._after_failure)
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
            self.applied.pop(partition_name(tp), None)

    def on_assigned(self, assigned) -> None:
        for processor in self.processors.values():
            processor.invalidate()
        # Claim the partitions: a worker that lost them (and still runs a batch) cannot commit another chunk.
        self.assignments += 1
        self.online.claim_partitions(self.config.group, [partition_name(tp) for tp in assigned], self.token)
        stored = self.online.load_offsets(self.config.group)
        for tp in assigned:
            name = partition_name(tp)
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
        logger.info("assigned %s", sorted(partition_name(tp) for tp in assigned))

    def _after_failure(self, exc: BaseException) -> None:
        self.metrics.retries.labels(type(exc).__name__).inc()
        for processor in self.processors.values():
            processor.invalidate()

    # -- one micro-batch ------------------------------------------------------------
    def process(self, batch) -> None:
        try:
            self._recover()
        except (*RETRYABLE, *FATAL):
            raise
        except Exception as exc:
            raise RecoveryError(f"rebuilding this worker's states from the event log failed: {type(exc).__name__}: "
                                f"{exc}") from exc
        self._process_records(batch)

    def _process_records(self, batch) -> None:
        started = time.perf_counter()
        decoded = decode_batch(batch, self.sources, self.applied, self._poison, self._suspect_rewind,
                               int(time.time() * 1000))
        pending, dead, advance, n_new = decoded.pending, decoded.dead, decoded.advance, decoded.n_new
        poison = self._poison
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
            forget: dict[str, list] = defaultdict(list)
            for d in dead:
                if d.reason == "processing_error":
                    forget[d.rec.topic].append((d.rec.partition, d.rec.offset))
            for topic, positions in forget.items():
                self._run(self.offline.forget_events(self.sources[topic], positions))
        self.dead_letters.send(dead)
        offsets = {name: (self.applied.get(name, -1), off) for name, off in advance.items()}
        result = self.online.commit(records, self.config.group, offsets, self.epoch, chunk=self.config.commit_chunk,
                                    token=self.token)
        if result != CommitResult.COMMITTED:
            self._refused_commit(result, batch, advance)
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

    def _run(self, coro):
        """Run a coroutine in the I/O loop and wait for it."""
        return self._submit(coro).result()

    def _submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _source(self, name: str) -> EventSource:
        return next(s for s in self.sources.values() if s.name == name)
