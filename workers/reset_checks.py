"""The worker's side of topic-reset detection (``workers.topic_reset``): which partitions are
checked and when, and what a reset does to the worker.  Mixed into ``workers.worker.Worker``.
"""

from __future__ import annotations

import logging
import time

from kafka.errors import KafkaError

from featurestore.reset import areset_source

from .partitions import partition_name
from .topic_reset import TOPIC_RESET_EXIT, TopicReset

logger = logging.getLogger("workers.worker")

#: a partition whose broker reports fewer records than applied is checked at most this often
RESET_CHECK_PERIOD_S = 30.0



class ResetChecksMixin:
    """Partition checks of ``Worker`` (see ``workers.topic_reset``)."""

    def _verify_assigned(self) -> None:
        """Resume the assigned partitions whose last applied record the broker still holds; a
        partition that lost it is a topic reset (``workers.topic_reset``)."""
        tps = list(self._to_verify)  # kept until checked: an outage here leaves them to the retry
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
            logged = self._run(self.offline.last_logged_offset(source, tp.partition))
            ours = max(stored.get(partition_name(tp), -1), logged)
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
                self._to_verify = []
                return
            else:
                started_over.add(tp.topic)
                good.append(tp)
        self._to_verify = [tp for tp in self._to_verify if tp not in tps]
        for tp in good:  # from the next record to apply (also after a suspected rewind)
            if partition_name(tp) in self.applied:
                self.consumer.seek(tp, self.applied[partition_name(tp)] + 1)
        if good:
            self.consumer.resume(*good)

    def _suspect_rewind(self, tp, offset: int, done: int) -> None:
        """The consumer returned a record at or below the last applied offset, though the worker never
        seeks there: the client reset its position (offset out of range, e.g. a recreated topic).
        Consume nothing more of ``tp`` until the broker is seen to hold our last applied record."""
        logger.warning("partition %s returned offset %d at or below the last applied offset %d: checking that the "
                       "broker still holds that record before consuming on", partition_name(tp), offset, done)
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
        source = self.sources[reset.topic]
        logger.error("topic reset: partition %s:%d holds no longer what this group applied (%s); --on-topic-reset "
                     "reprocess: clearing source %s's offsets, states and event log and reading topic %s from its "
                     "start", reset.topic, reset.partition, reset.why, source.name, reset.topic)
        view_keys = [pv.view_key for pv in self.processors[source.name].views]
        self._run(areset_source(self.online, self.offline, source, view_keys))
        assigned = [partition_name(tp) for tp in self.consumer.assignment()]
        self.online.claim_partitions(self.config.group, assigned, self.token)
        for processor in self.processors.values():
            processor.invalidate()
        for tp in self.consumer.assignment():
            if tp.topic == reset.topic:
                self.applied.pop(partition_name(tp), None)
                self.consumer.seek_to_beginning(tp)
        return True

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
            position = self.applied.get(partition_name(tp), -1) + 1
            self.lag[tp] = max(0, ends.get(tp, 0) - position)
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(self.lag[tp])
            # The broker reports fewer records than this group applied: a topic recreated or a broker emptied
            # leaves the consumer waiting past the end in silence.  End offsets can be under-reported, so the
            # record itself is fetched (_verify_assigned), at most once per RESET_CHECK_PERIOD_S per partition.
            if (tp in ends and ends[tp] < position and now >= self._reset_checked.get(tp, 0.0)
                    and tp not in self._to_verify):
                self._reset_checked[tp] = now + RESET_CHECK_PERIOD_S
                self.consumer.pause(tp)
                self._to_verify.append(tp)
