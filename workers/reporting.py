"""What a worker reports besides its metrics' counters: a progress line every ``PROGRESS_PERIOD_S``
(or what it waits for), entities whose events reach a new partition, the per-batch metrics, and the
per-view status published with its announcement (``ViewStatus``, read by the web console).
Mixed into ``workers.worker.Worker``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("workers.worker")

#: one INFO line of progress (or of what the worker waits for) this often
PROGRESS_PERIOD_S = 30.0


@dataclass
class ViewStatus:
    """What one worker did for one view since it started: the newest event time applied (ms), when it
    last committed (ms, this host's clock), the events applied, and the worker CPU seconds of the view: the
    engine's own time on it (``SourceProcessor.engine_cpu_s``) plus its share of each batch's shared work
    (decoding, validation, BatchTransforms, the stores' writes), split over the views by events times features."""

    last_event_ms: int | None = None
    last_commit_ms: int | None = None
    applied: int = 0
    cpu_s: float = 0.0
    features: int = 1
    #: (monotonic seconds, events applied) at the last ``to_json``: the events/s of the period since
    mark: tuple[float, int] = field(default_factory=lambda: (time.monotonic(), 0))

    def to_json(self) -> dict:
        """The status as JSON, with the events applied per second since the last call."""
        now = time.monotonic()
        then, applied = self.mark
        self.mark = (now, self.applied)
        rate = (self.applied - applied) / (now - then) if now > then else 0.0
        return {"last_event_ms": self.last_event_ms, "last_commit_ms": self.last_commit_ms, "applied": self.applied,
                "events_per_s": round(rate, 1), "cpu_s": round(self.cpu_s, 3)}


@dataclass
class StatusBook:
    """The ``ViewStatus`` of each view key of one worker, and the process CPU time at the last batch."""

    views: dict[str, ViewStatus] = field(default_factory=dict)
    cpu_at: float = field(default_factory=time.process_time)

    def record(self, batch: dict[str, tuple[int, int | None]], now_ms: int,
               engine_s: dict[str, float] | None = None) -> None:
        """One committed batch: view key -> (events applied, newest event time in ms or None);
        ``engine_s``: view key -> the engine's CPU seconds on the view in this batch."""
        engine_s = engine_s or {}
        cpu_now = time.process_time()
        spent, self.cpu_at = max(0.0, cpu_now - self.cpu_at), cpu_now
        spent = max(0.0, spent - sum(engine_s.values()))  # what is left is shared by the batch's views
        for vk, seconds in engine_s.items():
            if vk in self.views:
                self.views[vk].cpu_s += seconds
        weights = {vk: n * self.views[vk].features for vk, (n, _) in batch.items() if vk in self.views}
        total = sum(weights.values())
        for vk, (n, newest) in batch.items():
            st = self.views.get(vk)
            if st is None:
                continue
            st.applied += n
            st.last_commit_ms = now_ms
            if newest is not None and (st.last_event_ms is None or newest > st.last_event_ms):
                st.last_event_ms = newest
            st.cpu_s += spent * (weights[vk] / total if total else 1 / len(batch))


class ReportingMixin:
    """Progress and per-batch observations of ``Worker``."""

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
        lag = sum(self.lag.get(tp, 0) for tp in assigned)
        logger.info("progress over %.0f s: %d events applied, %d dead letters, %d batches; lag %d records on %d "
                    "partitions; %d records committed since start", PROGRESS_PERIOD_S, period["applied"],
                    period["dead"], period["batches"], lag, len(assigned), self.records_done)

    def _report_spread(self, source_name: str, keys: set[str]) -> None:
        self.metrics.spread.labels(source_name).inc(len(keys))
        logger.error("%d entities of source %s had events on a Kafka partition other than their earlier events "
                     "(e.g. %s): the topic's events must be keyed by the entity key, or several workers hold the "
                     "same entity and overwrite each other's states (expected once per entity after the topic's "
                     "partitions were increased)", len(keys), source_name, ", ".join(sorted(keys)[:5]))

    def status_book(self) -> StatusBook:
        """This worker's ``StatusBook`` (made at first use, with one ``ViewStatus`` per view it computes)."""
        book = self.__dict__.get("_status_book")
        if book is None:
            book = self.__dict__["_status_book"] = StatusBook()
            for processor in self.processors.values():
                for pv in processor.views:
                    book.views[pv.view_key] = ViewStatus(features=max(1, len(pv.specs)))
        return book

    def _observe(self, pending, applied_counts, started) -> None:
        now_ms = time.time() * 1000
        batch: dict[str, tuple[int, int | None]] = {}
        for source_name, p in pending.items():  # refused events are counted as dead letters instead
            applied = applied_counts.get(source_name, 0)
            self.metrics.events.labels(self._source(source_name).topic).inc(applied)
            newest = max((e.ts_ms for e in p.events), default=None)
            for pv in self.processors[source_name].views:
                batch[pv.view_key] = (applied, newest)
                if newest is not None:
                    self.metrics.freshness.labels(pv.view.name).set(max(0.0, (now_ms - newest) / 1000))
        engine_s: dict[str, float] = {}
        seen = self.__dict__.setdefault("_engine_seen", {})
        for processor in self.processors.values():  # the engine's CPU time per view since the last batch
            for vk, total in processor.engine_cpu_s.items():
                engine_s[vk] = total - seen.get(vk, 0.0)
                seen[vk] = total
        self.status_book().record(batch, int(now_ms), engine_s)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
