"""Starting a source over: clear what the stores derived from its topic's records.

Used when the broker no longer holds the records the stores were computed from (a topic
deleted and created again, a broker restarted without its log): the applied offsets would
make a worker skip the new records, and the states and the event log describe records
that are gone.  ``featurestore reset --source NAME`` and ``worker --on-topic-reset
reprocess`` call ``areset_source``; ``aplan_reset`` says first what it deletes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .definitions import EventSource

if TYPE_CHECKING:
    from .offline import OfflineStore

__all__ = ["ResetPlan", "aplan_reset", "areset_source"]


@dataclass
class ResetPlan:
    """What ``areset_source`` deletes for one source."""

    source: str
    topic: str
    #: consumer group -> {``topic:partition``: last applied offset}
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    #: view key (``project:view:vN``) -> stored entity states
    states: dict[str, int] = field(default_factory=dict)
    event_log_rows: int = 0
    segment_rows: int = 0
    rejects: int = 0
    #: the event log and rejects are kept (``--online-only``): workers rebuild the states from the log
    online_only: bool = False

    def lines(self) -> list[str]:
        out = [f"source {self.source!r} (topic {self.topic!r}):"]
        for group, offsets in sorted(self.offsets.items()):
            shown = ", ".join(f"{name}@{off}" for name, off in sorted(offsets.items()))
            out.append(f"  applied offsets of consumer group {group!r}: {shown}")
        if not self.offsets:
            out.append("  applied offsets: none stored")
        for view_key, n in sorted(self.states.items()):
            out.append(f"  {n} online states of view {view_key}")
        if self.online_only:
            out.append(f"  the recorded partition counts of these views (Redis Cluster); the event log "
                       f"({self.event_log_rows} rows, {self.segment_rows} in segments) is kept, and the source's "
                       "workers rebuild every state from it when they start")
        else:
            out.append(f"  {self.event_log_rows} event-log rows, {self.segment_rows} event-log segment rows, "
                       f"{self.rejects} rejects (dead letters kept in PostgreSQL)")
        return out


async def aplan_reset(online, offline: OfflineStore, source: EventSource, view_keys: list[str],
                      online_only: bool = False) -> ResetPlan:
    """What ``areset_source`` deletes: the source's applied offsets in every consumer group, the
    online states of ``view_keys`` (every registered version of the source's views), its event
    log and its rejects (``online_only``: not these two)."""
    plan = ResetPlan(source.name, source.topic, offsets=online.topic_offsets(source.topic),
                     states={vk: online.count_view(vk) for vk in view_keys}, online_only=online_only)
    counts = await offline.source_footprint(source)
    plan.event_log_rows, plan.segment_rows, plan.rejects = (counts["event_log_rows"], counts["segment_rows"],
                                                             counts["rejects"])
    return plan


async def areset_source(online, offline: OfflineStore, source: EventSource, view_keys: list[str],
                        online_only: bool = False) -> None:
    """Delete what ``aplan_reset`` lists.  The offsets go first: a worker that commits meanwhile is
    fenced (its offsets compare-and-set fails) and reloads."""
    online.forget_topic(source.topic)
    for view_key in view_keys:
        online.delete_view(view_key)
        if online_only:  # the workers record them anew (a topic reset keeps them: running workers hold them)
            online.forget_partitions(view_key)
    if not online_only:
        await offline.reset_source(source)
