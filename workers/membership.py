"""Group membership: a worker announces itself in the online store, and a group's workers must
compute the same views.

The announcement (renewed every ``LAG_PERIOD_S``) tells ``push`` / ``materialize`` which topics
a running worker consumes, the group which views it computes, and the web console what it does
(``status``: per view the newest event time applied, the last commit, events applied, lag, cached
states and CPU time; its partitions and their lag; dead letters by reason).  A worker refuses to join a
group whose live workers compute other views (``GroupConflictError``, before taking
partitions); of two that start at once, the later one stops at its next announcement (exit
code 2).  Mixed into ``workers.worker.Worker``.
"""

from __future__ import annotations

import logging
import time

from featurestore.exceptions import GroupConflictError
from featurestore.online.redis import LIVE_TTL_MS

from .errors import RETRYABLE

logger = logging.getLogger("workers.worker")


class MembershipMixin:
    """Announcements and the group check of ``Worker``."""

    def _announce(self) -> None:
        """Tell ``push`` / ``materialize`` which topics a running worker consumes, and the group which views
        it computes (renewed every LAG_PERIOD_S).  A worker that finds a worker of its group computing other
        views, started before it (both passed the start-up check at once), stops with exit code 2."""
        try:
            at = self.online.announce_worker(self.config.group, self.worker_id, sorted(self.sources),
                                             views=self.view_keys, started_ms=self.started_ms,
                                             status=self._safe_status())
            if self.started_ms is None:
                self.started_ms = at
            earlier = [w for w in self._conflicting_workers()
                       if (w.get("started_ms") or 0, w["worker"]) < (self.started_ms, self.worker_id)]
        except RETRYABLE as exc:  # the next batch's commit retries against the same outage
            logger.warning("could not renew this worker's announcement in the online store: %s", exc)
            return
        if earlier and not self.stopping:
            logger.error("%s; stopping", self._conflict_message(earlier))
            self.exit_code = 2
            self.request_stop()

    def _safe_status(self) -> dict | None:
        """``_status()``, or None (an announcement without status) should it fail: what the console shows
        never stops the announcement the group relies on."""
        try:
            return self._status()
        except Exception:  # noqa: BLE001 - logged; the announcement goes out without the status
            logger.exception("could not build this worker's status for its announcement")
            return None

    def _status(self) -> dict:
        """What the console shows of this worker (JSON): see the module docstring."""
        assigned = sorted(self.consumer.assignment() or ()) if self.consumer is not None else []
        lag = {f"{tp.topic}:{tp.partition}": int(self.lag.get(tp, 0)) for tp in assigned}
        book = self.status_book()
        views = {}
        for processor in self.processors.values():
            for pv in processor.views:
                topic = pv.view.source.topic
                doc = book.views[pv.view_key].to_json()
                doc.update(view=pv.view.name, version=pv.version, source=pv.view.source.name, topic=topic,
                           lag=sum(n for name, n in lag.items() if name.rsplit(":", 1)[0] == topic),
                           cached_states=len(processor.arenas[pv.view_key]),
                           dead_letters=dict(getattr(self.dead_letters, "counts", {}).get(topic, {})))
                views[pv.view_key] = doc
        dead: dict[str, int] = {}
        for metric in self.metrics.dead_letters.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    dead[sample.labels["reason"]] = int(sample.value)
        return {"views": views, "partitions": sorted(lag), "lag": lag, "dead_letters": dead,
                "records_done": self.records_done, "cpu_s": round(time.process_time(), 3)}

    def _conflicting_workers(self) -> list[dict]:
        """Live workers of this group (announced by this release or a later one) computing other views."""
        return [w for w in self.online.live_workers()
                if w["group"] == self.config.group and w["worker"] != self.worker_id
                and w.get("views") is not None and w["views"] != self.view_keys]

    def _conflict_message(self, others: list[dict]) -> str:
        who = "; ".join(f"worker {w['worker']} (pid {w['pid']} on {w['host']}) computes {', '.join(w['views'])}"
                        for w in others)
        return (f"consumer group {self.config.group!r} runs workers computing other feature views: {who}; this worker "
                f"computes {', '.join(self.view_keys)}. The workers of one group share its partitions, so each view "
                f"would miss the events of the partitions the others hold. Give each set of views its own --group, or "
                f"stop the group before starting workers of a new repository version (the announcement of a worker "
                f"killed without stopping expires {LIVE_TTL_MS // 1000} s after its last renewal)")

    def _refuse_conflicting_group(self) -> None:
        try:
            others = self._conflicting_workers()
        except RETRYABLE as exc:  # checked again at every announcement
            logger.warning("could not read the running workers of group %r: %s", self.config.group, exc)
            return
        if others:
            raise GroupConflictError(self._conflict_message(others))
