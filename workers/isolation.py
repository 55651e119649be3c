"""Poison isolation: a batch whose processing raises an unexpected error is split in halves, each
processed and committed on its own, down to the single records that raise; each of those is
dead-lettered as ``processing_error``.  Only errors of the stores' availability (``RETRYABLE``)
retry a batch as a whole, and errors of the environment (``FATAL``) stop the worker.  Mixed into
``workers.worker.Worker``.
"""

from __future__ import annotations

import logging

from .dead_letters import clean_text
from .errors import FATAL, RETRYABLE
from .partitions import partition_name

logger = logging.getLogger("workers.worker")



class IsolationMixin:
    """``process_guarded`` and ``_isolate`` of ``Worker``."""

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
        done = self.applied.get(partition_name(tp), -1)
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
