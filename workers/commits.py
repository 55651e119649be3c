"""What the worker does after its Redis commit: the informational Kafka offset commit, and the
reloads after a commit that wrote nothing (fenced, the store lost its data, or a state changed)."""

from __future__ import annotations

import logging

from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from featurestore.online import CommitResult

from .partitions import partition_name

logger = logging.getLogger("workers.worker")


def _kafka_offsets(applied: dict[str, int]) -> dict:
    """Kafka's committed offsets (the next to read) for ``partition_name -> last applied offset``."""
    offsets = {}
    for name, off in applied.items():
        topic, part = name.rsplit(":", 1)
        offsets[TopicPartition(topic, int(part))] = OffsetAndMetadata(off + 1, "", -1)
    return offsets


class CommitsMixin:
    """``Worker``'s commit follow-ups (it provides ``consumer``, ``applied``, ``metrics``, ``processors``)."""

    def _refused_commit(self, result: CommitResult, batch, advance: dict[str, int]) -> None:
        """The commit wrote nothing: reload what it depends on, so that the batch is applied again."""
        if result == CommitResult.FENCED:
            self.metrics.fenced.inc()
            logger.warning("commit fenced: another worker took or advanced %s; reloading", sorted(advance))
            self._resync()
        elif result == CommitResult.EPOCH_CHANGED:
            logger.error("the online store lost its data (epoch marker changed): rebuilding from the event log")
            self.rebuild_from_event_log()
        else:
            self.metrics.state_conflicts.inc()
            logger.warning("commit refused: another writer changed a state this worker cached (events of one entity "
                           "on partitions of several workers?); reloading and applying the batch again")
            for processor in self.processors.values():
                processor.invalidate()
            for tp, records_of_tp in batch.items():  # read the batch again (its earlier chunks are skipped per state)
                name = partition_name(tp)
                if name in advance:
                    self.consumer.seek(tp, self.applied.get(name, records_of_tp[0].offset - 1) + 1)

    def _commit_kafka(self, advance: dict[str, int]) -> None:
        try:  # asynchronous: the Redis offsets are authoritative, this one is informational
            self.consumer.commit_async(_kafka_offsets(advance))
        except KafkaError as exc:
            logger.warning("kafka offset commit failed (%s); redis offsets stay authoritative", exc)

    def _commit_kafka_sync(self) -> None:
        try:
            self.consumer.commit(_kafka_offsets(self.applied))
        except KafkaError as exc:
            logger.warning("final kafka offset commit failed: %s", exc)
