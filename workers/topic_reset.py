"""Topic resets: the broker no longer holds the records this group applied.

A topic deleted and created again, or a broker restarted without its log, starts its
partitions again at offset 0 while Redis and PostgreSQL keep the offsets, states and
event log of the old records.  Consuming on would skip every new record at or below the
old offsets, silently.  So before a worker consumes a partition it was assigned, it checks
that the broker still holds the last record the stores hold of it:

* ``ours``: the higher of the group's applied offset in Redis and the highest offset of
  the partition in the event log (the one a rebuild after a Redis loss resumes from);
* the record at ``ours`` must exist.  ``end_offsets`` alone is not trusted (a broker can
  under-report it): the record is fetched;
* where the event log recorded the reference time of a record at or below ``ours`` (its
  Kafka timestamp), the broker's record at that offset must carry the same timestamp:
  a topic recreated and refilled past our offset is told apart this way.

A partition that fails the check is a ``TopicReset``: by default (``fail``) the worker logs
it at ERROR, counts it, turns ``/readyz`` not ready and stops with exit code 3; with
``reprocess`` it clears the source (``featurestore.reset``) and reads the topic from its start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaConsumer
from kafka.errors import KafkaError, OffsetOutOfRangeError


logger = logging.getLogger(__name__)

ON_TOPIC_RESET = ("fail", "reprocess")
#: Exit code of a worker stopped by a topic reset.
TOPIC_RESET_EXIT = 3


@dataclass(frozen=True)
class TopicReset:
    """Partition ``topic:partition`` does not hold what the stores hold of it."""

    topic: str
    partition: int
    source: str
    ours: int
    broker_end: int | None
    why: str

    def message(self) -> str:
        end = "unknown" if self.broker_end is None else str(self.broker_end)
        return (f"topic reset: partition {self.topic}:{self.partition} {self.why} "
                f"(our last applied offset {self.ours}, "
                f"the broker's end offset {end}). The topic was deleted and created again, or the broker lost its log, "
                f"while Redis and PostgreSQL kept the offsets, states and event log of its old records; consuming on "
                f"would skip new records. Stop the workers of the group, "
                f"run `featurestore reset --source {self.source}` "
                f"(it lists what it deletes first), then start them again; or start the worker with "
                f"--on-topic-reset reprocess")


class PartitionVerifier:
    """Fetches single records with a consumer of its own (no group), to check assigned partitions."""

    def __init__(self, kafka_options: dict, timeout_s: float = 3.0):
        self.options = kafka_options
        self.timeout_s = timeout_s
        self._consumer: KafkaConsumer | None = None

    def _client(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="none",
                                           max_poll_records=1, fetch_max_wait_ms=100, **self.options)
        return self._consumer

    def record_at(self, tp, offset: int):
        """The first record of ``tp`` at or after ``offset``, or None when the broker holds none there."""
        consumer = self._client()
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                batch = consumer.poll(timeout_ms=200)
            except OffsetOutOfRangeError:
                return None
            for records in batch.values():
                if records:
                    return records[0]
        return None

    def check(self, tp, source: str, ours: int, fingerprint: tuple[int, int] | None,
              end: int | None) -> TopicReset | None:
        """``TopicReset`` when ``tp`` does not hold record ``ours``, or holds another record at the
        ``fingerprint`` offset (``(offset, Kafka timestamp)`` from the event log) than the one logged."""
        if ours < 0:
            return None
        rec = self.record_at(tp, ours)
        if rec is None:
            return TopicReset(tp.topic, tp.partition, source, ours, end, f"holds no record at offset {ours}")
        if fingerprint is not None:
            offset, logged_ts = fingerprint
            at = rec if rec.offset == offset else self.record_at(tp, offset)
            if at is not None and at.offset == offset and at.timestamp != logged_ts:
                return TopicReset(tp.topic, tp.partition, source, ours, end,
                                  f"holds another record at offset {offset} than the one applied (Kafka timestamp "
                                  f"{at.timestamp}, the event log recorded {logged_ts})")
        return None

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaError as exc:  # closing a checker must not hide why the worker stops
                logger.warning("closing the partition checker's consumer: %s", exc)
            self._consumer = None
