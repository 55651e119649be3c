"""What a worker reports besides its metrics' counters: a progress line every ``PROGRESS_PERIOD_S``
(or what it waits for), entities whose events reach a new partition, and the per-batch metrics.
Mixed into ``workers.worker.Worker``.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("workers.worker")

#: one INFO line of progress (or of what the worker waits for) this often
PROGRESS_PERIOD_S = 30.0


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

    def _observe(self, pending, applied_counts, started) -> None:
        now_ms = time.time() * 1000
        for source_name, p in pending.items():  # refused events are counted as dead letters instead
            self.metrics.events.labels(self._source(source_name).topic).inc(applied_counts.get(source_name, 0))
            newest = max((e.ts_ms for e in p.events), default=None)
            if newest is not None:
                for pv in self.processors[source_name].views:
                    self.metrics.freshness.labels(pv.view.name).set(max(0.0, (now_ms - newest) / 1000))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
