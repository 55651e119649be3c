"""The worker's Kafka consumer, over kafka-python or confluent-kafka (librdkafka): ``open_consumer``.

Both give the worker one interface (``Consumer``): the part of kafka-python's ``KafkaConsumer`` it
uses.  ``poll`` returns ``{TopicPartition: [record, ...]}`` (kafka-python's ``TopicPartition``;
records with ``topic``, ``partition``, ``offset``, ``timestamp``, ``key``, ``value``, ``headers``,
in offset order per partition); ``seek``, ``seek_to_beginning``, ``pause``, ``resume``,
``assignment``, ``committed``, ``end_offsets``, ``partitions_for_topic``, ``commit``,
``commit_async`` and ``close`` take and return what kafka-python's do, and errors are
kafka-python's ``KafkaError`` (``ConfluentKafkaError`` for librdkafka's), so the worker's error
classes (``workers.errors``) hold for both.

``kafka-python`` (the default) is kafka-python's own ``KafkaConsumer``.  ``confluent`` is
``ConfluentConsumer``: librdkafka parses record batches in C, in threads of its own, so the worker's
thread spends its time on the batch instead (``bench/bench_kafka.py`` measures both).  Its
configuration matches the worker's kafka-python one: the same group settings and eager ``range``
/ ``roundrobin`` assignment (workers of both clients can share a group), no auto-commit, reads
from the earliest offset when the group has none, ``read_uncommitted``, CRCs checked.

Rebalances behave as with kafka-python: ``on_revoked`` and ``on_assigned`` are called from inside
``poll`` with sets of ``TopicPartition``, ``assignment()`` is the new assignment inside
``on_assigned``, and ``seek`` / ``pause`` called there apply before any record of the new
assignment is fetched (librdkafka takes them as the starting offsets of its ``assign``).  An
error raised by a callback is logged and raised from ``poll`` once the assignment is complete.
Records of a partition that is paused or no longer assigned once a rebalance completed inside a
``poll`` are not returned: they were fetched before it, and the assignment set every partition's
position anew.

On the embedded Tansu broker, librdkafka 2.16 crashes the process (SIGSEGV in its metadata update)
when a topic is deleted under a running consumer (the broker names no topic in its fetch error); a
worker restarted on a topic created again finds the topic reset before it consumes
(``tests/workers/test_topic_reset.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TIMESTAMP_NOT_AVAILABLE, KafkaException
from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import TopicPartition as RdKafkaPartition
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from featurestore.exceptions import ConfigurationError, FeatureStoreError

from .config import WorkerConfig

__all__ = ["KAFKA_CLIENTS", "ConfluentConsumer", "ConfluentKafkaError", "Consumer", "Record", "check_client",
           "librdkafka_options", "open_consumer"]

logger = logging.getLogger(__name__)

#: ``WorkerConfig.kafka_client`` values (``FEATURESTORE_KAFKA_CLIENT``, ``worker --kafka-client``)
KAFKA_CLIENTS = ("kafka-python", "confluent")
#: most bytes one fetch returns per partition (both clients)
MAX_PARTITION_FETCH_BYTES = 4 * 1024 * 1024
#: seconds a metadata, offset or commit request may take (kafka-python's ``request_timeout_ms``)
REQUEST_TIMEOUT_S = 30.0
#: seconds ``seek`` retries a partition whose fetch librdkafka has not started yet (just assigned)
SEEK_RETRY_S = 2.0
#: librdkafka's wait before it fetches again for a partition whose prefetched records filled its queue
#: (``fetch.queue.backoff.ms``, default 1,000): with the default, a worker that drains the queue faster waited
#: up to a second for the next records (measured: one run in eight of ``bench_kafka`` stalled so)
FETCH_QUEUE_BACKOFF_MS = 50

#: kafka-python client keyword (``Settings.kafka_client_options``) -> librdkafka property
_LIBRDKAFKA_OPTIONS = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}


class Consumer(Protocol):
    """What the worker calls on its consumer (kafka-python's ``KafkaConsumer`` signatures)."""

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def committed(self, partition: TopicPartition) -> int | None: ...
    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    def commit(self, offsets: dict) -> None: ...
    def commit_async(self, offsets: dict) -> None: ...
    def close(self, autocommit: bool = True) -> None: ...


class Record:
    """One record of ``ConfluentConsumer.poll``: the fields of kafka-python's ``ConsumerRecord`` the worker reads,
    read from librdkafka's message when asked (``timestamp`` is -1 when the record has none)."""

    __slots__ = ("_message", "partition", "offset")

    def __init__(self, message, partition: int, offset: int):
        self._message, self.partition, self.offset = message, partition, offset

    topic = property(lambda self: self._message.topic())
    key = property(lambda self: self._message.key())
    value = property(lambda self: self._message.value())
    headers = property(lambda self: self._message.headers() or [])

    @property
    def timestamp(self) -> int:
        kind, ts = self._message.timestamp()
        return ts if kind != TIMESTAMP_NOT_AVAILABLE else -1

    def __repr__(self) -> str:
        return f"Record({self.topic}:{self.partition}@{self.offset})"


class ConfluentKafkaError(KafkaError, FeatureStoreError):
    """A librdkafka error as a kafka-python ``KafkaError``, retried alike (``error``: confluent-kafka's)."""

    def __init__(self, error: Any, doing: str):
        super().__init__(f"{doing}: {error.str() if hasattr(error, 'str') else error}")
        self.error = error
        self.retriable = bool(getattr(error, "retriable", lambda: False)())


def check_client(config: WorkerConfig) -> None:
    """Refuse a ``kafka_client`` the worker does not know, and ``kafka_options`` it cannot give that client."""
    if config.kafka_client not in KAFKA_CLIENTS:
        raise ConfigurationError(f"kafka_client must be one of {', '.join(KAFKA_CLIENTS)}, "
                                 f"not {config.kafka_client!r}")
    if config.kafka_client == "confluent":
        librdkafka_options(config.kafka_options)


def librdkafka_options(kafka_options: dict) -> dict[str, Any]:
    """``kafka_options`` (kafka-python keywords, as ``Settings.kafka_client_options`` gives them) as librdkafka
    properties."""
    unknown = sorted(set(kafka_options) - set(_LIBRDKAFKA_OPTIONS))
    if unknown:
        raise ConfigurationError(f"kafka options {', '.join(unknown)} have no librdkafka equivalent in the confluent "
                                 f"Kafka client (it takes {', '.join(_LIBRDKAFKA_OPTIONS)}); use the kafka-python "
                                 f"client for them")
    options = {_LIBRDKAFKA_OPTIONS[k]: v for k, v in kafka_options.items() if v is not None}
    servers = options.get("bootstrap.servers")
    if isinstance(servers, (list, tuple)):
        options["bootstrap.servers"] = ",".join(servers)
    return options


def open_consumer(config: WorkerConfig, topics: Iterable[str], on_revoked: Callable[[set], None],
                  on_assigned: Callable[[set], None]) -> Consumer:
    """A consumer of ``config.kafka_client`` in group ``config.group``, subscribed to ``topics``; the rebalance
    callbacks get sets of ``TopicPartition``."""
    check_client(config)
    if config.kafka_client == "confluent":
        return ConfluentConsumer(config, topics, on_revoked, on_assigned)
    consumer = KafkaConsumer(
        group_id=config.group, enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=config.session_timeout_ms, heartbeat_interval_ms=config.heartbeat_interval_ms,
        max_poll_records=config.batch_size, max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        fetch_max_wait_ms=config.fetch_max_wait_ms, reconnect_backoff_max_ms=2000, **config.kafka_options)
    consumer.subscribe(sorted(topics), listener=_Listener(on_revoked, on_assigned))
    return consumer


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_revoked, on_assigned):
        self.revoked, self.assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked):
        self.revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.assigned(assigned)


class ConfluentConsumer:
    """``Consumer`` over confluent-kafka's ``Consumer`` (see the module docstring)."""

    def __init__(self, config: WorkerConfig, topics: Iterable[str], on_revoked: Callable[[set], None],
                 on_assigned: Callable[[set], None]):
        self._on_revoked, self._on_assigned = on_revoked, on_assigned
        self._max = max(1, config.batch_size)
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._paused: set[TopicPartition] = set()
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._rebalances = 0
        self._in_assign: dict | None = None  # inside on_assigned: {"seek": {tp: offset}, "pause": set}
        self._callback_error: BaseException | None = None
        self._consumer = RdKafkaConsumer({
            **librdkafka_options(config.kafka_options),
            "group.id": config.group, "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": config.session_timeout_ms,
            "heartbeat.interval.ms": config.heartbeat_interval_ms, "partition.assignment.strategy": "range,roundrobin",
            "fetch.wait.max.ms": config.fetch_max_wait_ms, "max.partition.fetch.bytes": MAX_PARTITION_FETCH_BYTES,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "reconnect.backoff.max.ms": 2000, "isolation.level": "read_uncommitted", "check.crcs": True,
            "on_commit": self._on_commit, "error_cb": self._on_client_error,
            # under "kafka", as kafka-python's: the client loggers log warnings only, unless at DEBUG
            "logger": logging.getLogger("kafka.librdkafka")})
        self._consumer.subscribe(sorted(topics), on_assign=self._assign, on_revoke=self._revoke,
                                 on_lost=self._revoke)

    # -- records ----------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list]:
        """What librdkafka holds, up to ``batch_size`` records; when it holds none, waits up to ``timeout_ms``
        for the first (as kafka-python's ``poll``)."""
        before = self._rebalances
        consumer = self._consumer
        try:
            messages = consumer.consume(self._max, 0)
            if not messages:
                first = consumer.poll(timeout_ms / 1000)
                if first is not None:
                    messages = [first]
                    if self._max > 1:
                        messages += consumer.consume(self._max - 1, 0)
        except KafkaException as exc:
            raise ConfluentKafkaError(exc.args[0], "consuming") from exc
        failed, self._callback_error = self._callback_error, None
        if failed is not None:
            raise KafkaError("User rebalance callback throws an error") from failed
        batch = self._records(messages)
        if self._rebalances != before:
            for tp in [tp for tp in batch if tp not in self._assigned or tp in self._paused]:
                logger.debug("dropped %d records of %s fetched before the rebalance", len(batch.pop(tp)), tp)
        return batch

    def _records(self, messages: list) -> dict[TopicPartition, list]:
        batch: dict[TopicPartition, list] = {}
        tps = self._tps
        topic = part = records = None
        for m in messages:
            err = m.error()
            if err is not None:
                self._message_error(err)
                continue
            if m.partition() != part or m.topic() != topic:
                topic, part = m.topic(), m.partition()
                tp = tps.get((topic, part))
                if tp is None:
                    tp = tps[(topic, part)] = TopicPartition(topic, part)
                records = batch.get(tp)
                if records is None:
                    records = batch[tp] = []
            records.append(Record(m, part, m.offset()))
        return batch

    def _message_error(self, err) -> None:
        code = err.code()
        if code == RdKafkaError._PARTITION_EOF:
            return
        if err.fatal() or code in (RdKafkaError.TOPIC_AUTHORIZATION_FAILED, RdKafkaError.GROUP_AUTHORIZATION_FAILED):
            raise ConfluentKafkaError(err, "consuming")
        logger.warning("kafka consumer: %s", err.str())

    # -- rebalance callbacks (called by librdkafka inside poll) -------------------------------
    def _assign(self, consumer, partitions) -> None:
        self._rebalances += 1
        assigned = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._assigned, self._paused = frozenset(assigned), set()
        self._in_assign = pending = {"seek": {}, "pause": set()}
        try:
            self._on_assigned(assigned)
        except Exception as exc:  # noqa: BLE001 - raised from poll once the assignment is complete
            logger.exception("rebalance callback on_assigned failed for %s", sorted(assigned))
            self._callback_error = exc
        finally:
            self._in_assign = None
            consumer.assign([RdKafkaPartition(tp.topic, tp.partition, pending["seek"].get(tp, OFFSET_INVALID))
                             for tp in sorted(assigned)])
            if pending["pause"]:
                consumer.pause([RdKafkaPartition(tp.topic, tp.partition) for tp in sorted(pending["pause"])])
                self._paused |= pending["pause"]

    def _revoke(self, consumer, partitions) -> None:
        self._rebalances += 1
        revoked = {TopicPartition(p.topic, p.partition) for p in partitions}
        try:
            self._on_revoked(revoked)
        except Exception as exc:  # noqa: BLE001 - as in _assign
            logger.exception("rebalance callback on_revoked failed for %s", sorted(revoked))
            self._callback_error = exc
        finally:  # confluent-kafka unassigns them once this returns
            self._assigned, self._paused = frozenset(), set()

    # -- positions ----------------------------------------------------------------------------
    def seek(self, partition: TopicPartition, offset: int) -> None:
        if self._in_assign is not None:
            self._in_assign["seek"][partition] = offset
            return
        deadline = time.monotonic() + SEEK_RETRY_S
        while True:
            try:
                self._consumer.seek(RdKafkaPartition(partition.topic, partition.partition, offset))
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() != RdKafkaError._STATE or time.monotonic() > deadline:
                    raise ConfluentKafkaError(err, f"seeking {partition.topic}:{partition.partition} to {offset}")
            time.sleep(0.01)  # assigned a moment ago: its fetch starts once its committed offset is known

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.seek(tp, OFFSET_BEGINNING)

    def pause(self, *partitions: TopicPartition) -> None:
        if self._in_assign is not None:
            self._in_assign["pause"].update(partitions)
            return
        self._call("pausing", self._consumer.pause, self._rd(partitions))
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        if self._in_assign is not None:
            self._in_assign["pause"].difference_update(partitions)
            return
        self._call("resuming", self._consumer.resume, self._rd(partitions))
        self._paused.difference_update(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    # -- offsets and metadata -------------------------------------------------------------------
    def committed(self, partition: TopicPartition) -> int | None:
        [tp] = self._call("reading the committed offset", self._consumer.committed, self._rd([partition]),
                          timeout=REQUEST_TIMEOUT_S)
        if tp.error is not None:
            raise ConfluentKafkaError(tp.error, f"reading the committed offset of {partition}")
        return tp.offset if tp.offset >= 0 else None

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends = {}
        for tp in partitions:
            marks = self._call("reading end offsets", self._consumer.get_watermark_offsets,
                               RdKafkaPartition(tp.topic, tp.partition), timeout=REQUEST_TIMEOUT_S, cached=False)
            if marks is None:
                raise ConfluentKafkaError(f"no answer within {REQUEST_TIMEOUT_S:.0f} s",
                                          f"reading the end offset of {tp.topic}:{tp.partition}")
            ends[tp] = marks[1]
        return ends

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        metadata = self._call("reading topic metadata", self._consumer.list_topics, topic, timeout=REQUEST_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return None
        return set(found.partitions)

    def commit_async(self, offsets: dict) -> None:
        """Commit ``{TopicPartition: OffsetAndMetadata}``; a failure is logged at DEBUG (the worker's offsets
        in the online store are authoritative)."""
        self._call("committing offsets", self._consumer.commit, offsets=self._offsets(offsets), asynchronous=True)

    def commit(self, offsets: dict) -> None:
        done = self._call("committing offsets", self._consumer.commit, offsets=self._offsets(offsets),
                          asynchronous=False)
        failed = [tp for tp in done or () if tp.error is not None]
        if failed:
            tp = failed[0]
            raise ConfluentKafkaError(tp.error, f"committing the offset of {tp.topic}:{tp.partition}")

    def close(self, autocommit: bool = True) -> None:
        """Leave the group (``on_revoked`` is called); offsets are committed only by ``commit``."""
        self._call("closing the consumer", self._consumer.close)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _rd(partitions: Iterable[TopicPartition]) -> list:
        return [RdKafkaPartition(tp.topic, tp.partition) for tp in partitions]

    @staticmethod
    def _offsets(offsets: dict) -> list:
        return [RdKafkaPartition(tp.topic, tp.partition, getattr(om, "offset", om)) for tp, om in offsets.items()]

    @staticmethod
    def _call(doing: str, method: Callable, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except KafkaException as exc:
            raise ConfluentKafkaError(exc.args[0], doing) from exc

    @staticmethod
    def _on_commit(err, partitions) -> None:
        failed = [f"{tp.topic}:{tp.partition} ({tp.error.str()})" for tp in partitions or () if tp.error is not None]
        if err is not None or failed:
            logger.debug("kafka offset commit failed (%s); redis offsets stay authoritative",
                         err.str() if err is not None else ", ".join(failed))

    @staticmethod
    def _on_client_error(err) -> None:
        """librdkafka's client-wide errors (brokers down, authentication): it retries by itself."""
        logger.warning("kafka client: %s", err.str())
