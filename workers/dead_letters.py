"""Dead letters: the records a worker refuses, sent to the dead-letter topic with their reason.

A dead letter carries the original record's value and key, and the headers ``reason``,
``detail``, ``source_topic``, ``partition``, ``offset`` and ``dead_letter_id``
(``topic/partition/offset``: stable, the same for every send of one record).

Each batch's dead letters are first recorded in the offline store's rejects table
(idempotent by source, partition and offset), then sent, then marked sent there, all
before the batch commits.  A batch run again after a crash sends only the dead letters
not yet marked sent, so a duplicate needs a crash between a send and its mark; a
consumer that must see each record once drops repeated ``dead_letter_id`` values.

Sending never stalls a partition:

* the producer's request limit is ``dead_letter_value_limit`` (the sources' largest
  ``max_message_bytes``, at least ``DEFAULT_VALUE_LIMIT``, 1,000,000 bytes: what a
  topic with Kafka's default ``max.message.bytes`` takes) plus room for the headers;
  a record larger than the value limit is sent with its value cut to it and the
  headers ``truncated=true`` and ``original_size`` (the whole record stays in the
  rejects table);
* a dead letter the topic refuses (too large for the broker, topic not authorized,
  ...) is logged at ERROR, counted, and kept in the rejects table with the error;
  only an unreachable broker (a retriable error) makes the batch retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from kafka import errors as kerrors
from kafka.errors import KafkaError

if TYPE_CHECKING:
    from featurestore.offline import OfflineStore

logger = logging.getLogger(__name__)

#: Room for the headers and the record framing on top of the largest value sent.
HEADER_ROOM = 32 * 1024
#: Largest dead-letter value sent whole when every source's ``max_message_bytes`` is smaller.
DEFAULT_VALUE_LIMIT = 1_000_000


def dead_letter_value_limit(sources) -> int:
    """Largest value a dead letter carries whole: what the consumer accepts from any of ``sources``."""
    return max(DEFAULT_VALUE_LIMIT, *(s.max_message_bytes for s in sources))
#: Longest ``detail`` header, in bytes.
MAX_DETAIL_BYTES = 1000


@dataclass(frozen=True)
class DeadLetter:
    """A refused Kafka record (``rec``: topic, partition, offset, key, value), its reason and a sentence."""

    rec: Any
    reason: str
    detail: str

    @property
    def dead_letter_id(self) -> str:
        return f"{self.rec.topic}/{self.rec.partition}/{self.rec.offset}"


def clean_text(text: str, limit: int) -> str:
    """``text`` as PostgreSQL text and a header can hold it: NUL escaped, at most ``limit`` UTF-8 bytes."""
    text = text.replace("\x00", "\\u0000")
    data = text.encode("utf-8", "backslashreplace")
    return data[:limit].decode("utf-8", "ignore") if len(data) > limit else data.decode()


#: Errors about the message or the topic, not the broker's availability: sending again cannot help.
REFUSALS = tuple(getattr(kerrors, name) for name in (
    "MessageSizeTooLargeError", "RecordListTooLargeError", "RecordBatchTooLargeError", "InvalidRecordError",
    "CorruptRecordError", "InvalidTopicError", "TopicAuthorizationFailedError", "PolicyViolationError",
    "InvalidRequiredAcksError", "UnsupportedForMessageFormatError") if hasattr(kerrors, name))


def _refusal(exc: BaseException) -> bool:
    """True for an error about the message itself (the broker is fine): retrying cannot help."""
    return isinstance(exc, REFUSALS)


class DeadLetterSender:
    """Records, sends and marks one batch's dead letters (see the module docstring).

    ``producer``: a kafka-python ``KafkaProducer`` whose ``max_request_size`` is at least
    ``value_limit + HEADER_ROOM``; ``run(coro)`` runs a coroutine of the offline store and
    returns its result; ``source_of(topic)`` names the source of a topic."""

    def __init__(self, producer, topic: str, value_limit: int, offline: OfflineStore, run: Callable,
                 source_of: Callable, metrics) -> None:
        self.producer = producer
        self.topic = topic
        self.value_limit = value_limit
        self.offline = offline
        self.run = run
        self.source_of = source_of
        self.metrics = metrics
        #: source topic -> reason -> dead letters sent (or kept when refused) since the worker started
        self.counts: dict[str, dict[str, int]] = {}

    def send(self, dead: list[DeadLetter]) -> None:
        """Send ``dead`` (raises a retriable ``KafkaError`` when the broker cannot be reached)."""
        if not dead:
            return
        rows = [(self.source_of(d.rec.topic), d.rec.partition, d.rec.offset, d.reason,
                 clean_text(d.detail, 10_000), d.rec.value or b"", d.rec.key, self.topic) for d in dead]
        already = self.run(self.offline.record_dead_letters(rows))
        todo = [(d, row[0]) for d, row in zip(dead, rows) if (row[0], row[1], row[2]) not in already]
        futures = []
        for d, source in todo:
            try:
                futures.append((d, source, self.producer.send(self.topic, value=self._value(d), key=d.rec.key,
                                                              headers=self._headers(d))))
            except KafkaError as exc:
                if not _refusal(exc):
                    raise
                futures.append((d, source, exc))
        self.producer.flush(30)
        sent: dict[str, list] = {}
        refused: dict[tuple[str, str], list] = {}
        for d, source, future in futures:
            by_reason = self.counts.setdefault(d.rec.topic, {})
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
            error = future if isinstance(future, BaseException) else None
            if error is None:
                try:
                    future.get(timeout=30)
                except KafkaError as exc:
                    if not _refusal(exc):
                        raise  # the broker is unreachable: retry the batch (recorded, not yet marked sent)
                    error = exc
            if error is None:
                sent.setdefault(source, []).append((d.rec.partition, d.rec.offset))
                self.metrics.dead_letters.labels(d.reason).inc()
            else:
                text = clean_text(f"{type(error).__name__}: {error}", 2000)
                logger.error("dead-letter topic %s refused the dead letter of %s:%s@%s (reason %s): %s; it is kept "
                             "in the offline store's rejects table", self.topic, d.rec.topic, d.rec.partition,
                             d.rec.offset, d.reason, text)
                self.metrics.dead_letters_refused.labels(d.reason).inc()
                refused.setdefault((source, text), []).append((d.rec.partition, d.rec.offset))
        for source, positions in sent.items():
            self.run(self.offline.mark_dead_letters(source, positions))
        for (source, text), positions in refused.items():
            self.run(self.offline.mark_dead_letters(source, positions, error=text))

    def _value(self, d: DeadLetter) -> bytes:
        value = d.rec.value or b""
        if len(value) > self.value_limit:
            self.metrics.dead_letters_truncated.inc()
            return value[:self.value_limit]
        return value

    def _headers(self, d: DeadLetter) -> list[tuple[str, bytes]]:
        rec = d.rec
        headers = [("reason", d.reason.encode()), ("detail", clean_text(d.detail, MAX_DETAIL_BYTES).encode()),
                   ("source_topic", rec.topic.encode()), ("partition", str(rec.partition).encode()),
                   ("offset", str(rec.offset).encode()), ("dead_letter_id", d.dead_letter_id.encode())]
        size = len(rec.value or b"")
        if size > self.value_limit:
            headers += [("truncated", b"true"), ("original_size", str(size).encode())]
        return headers
