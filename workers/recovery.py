"""Recovery of a worker whose online store lost its states: rebuilt from the PostgreSQL event log.

The worker rebuilds when the store's epoch marker changed (Redis restarted empty), when Kafka
says the group consumed a partition the store has no offset for, and per entity when a state
is absent from Redis while its events stay in the event log (``_history``).  Mixed into
``workers.worker.Worker``: the methods use its consumer, stores, processors and offsets.
"""

from __future__ import annotations

import logging
import uuid

import pandas as pd
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from featurestore.applied import encode_applied
from featurestore.exceptions import StoreUnavailableError
from featurestore.offline.postgres import PUSH_PARTITION, event_id_column
from featurestore.processing import log_batches, rebuild_records


from .partitions import partition_name

logger = logging.getLogger("workers.worker")



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
        if (key not in mine and key not in on_kafka
                and (murmur2(str(key).encode()) & 0x7FFFFFFF) % n_partitions in wanted):
            mine.add(key)
    return events[~pushed | keys.isin(mine).to_numpy()].reset_index(drop=True)


class RecoveryMixin:
    """The rebuild steps of ``Worker`` (see the module docstring)."""

    def _kafka_committed(self, tp) -> bool:
        try:
            committed = self.consumer.committed(tp)
        except KafkaError as exc:
            logger.warning("could not read the committed offset of %s: %s", tp, exc)
            return False
        return committed is not None and committed > 0

    def _recover(self) -> None:
        """Before a batch: rebuild the states from the event log when the online store lost them."""
        while self._unverified:
            tp = self._unverified.pop()
            if self._kafka_committed(tp):
                # Kafka says this group consumed the partition but the online store has no offset for it: the
                # store lost its data since (another worker may already have re-created the epoch marker, so
                # the marker alone does not tell). Rebuild from the event log, never apply on top of lost state.
                logger.error("%s:%s committed in Kafka but unknown to the online store: rebuilding",
                             tp.topic, tp.partition)
                self.rebuild_pending = True
        if self.rebuild_pending:  # a rebuild failed half way (or never ran): finish it first
            self.rebuild_from_event_log()

    def rebuild_from_event_log(self) -> None:
        """Recompute the states of the assigned partitions from the PostgreSQL event log.

        ``rebuild_pending`` stays set until it succeeds: a retried batch rebuilds first
        instead of committing on top of the empty states under the new epoch marker."""
        self.rebuild_pending = True
        self.epoch = self.online.ensure_epoch(uuid.uuid4().hex)
        assigned = list(self.consumer.assignment())
        # the claims went with the data (a restart without persistence): claim what this worker holds
        self.online.claim_partitions(self.config.group, [partition_name(tp) for tp in assigned], self.token)
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
            raise StoreUnavailableError(f"no partition count known for topic {source.topic!r} yet; "
                                        "retrying the rebuild")
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
            rebuilt = rebuild_records(pv, {key: past for key, (past, _) in batches.items()})
            for rec in rebuilt:  # the offsets each state holds: a later replay skips them, as after any commit
                rec.applied = encode_applied(batches[rec.key][1])
            records += rebuilt
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

    def _resync(self) -> None:
        for processor in self.processors.values():
            processor.invalidate()
        stored = self.online.load_offsets(self.config.group)
        for tp in self.consumer.assignment():
            name = partition_name(tp)
            if name in stored:
                self.applied[name] = stored[name]
                self.consumer.seek(tp, stored[name] + 1)
            else:  # nothing stored (e.g. lost data): expect nothing, or every commit is fenced
                self.applied.pop(name, None)
