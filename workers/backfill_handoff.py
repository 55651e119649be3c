"""The hand-off of a backfill to the worker (Kafka and event-log sources, ``online``).

The run records the per-partition cut-over (the last offset it covers) and, after the last
chunk of the last shard, writes it into the worker group's Redis offsets hash with the same
compare-and-set Lua commit the worker uses; a worker started afterwards resumes right after it.
Meanwhile each commit of online states is fenced: it fails if a worker of the group committed
offsets since the run began.  Mixed into ``workers.backfill._Backfill``.
"""

from __future__ import annotations

from dataclasses import replace

from .backfill_options import ONLINE_BATCH, BackfillError
from featurestore.processing import encode_applied


class HandOffMixin:
    """Cut-over, fenced online commits and the offsets hand-off of ``_Backfill``."""

    def _check_cut(self, header: dict, cut: dict[int, int]) -> None:
        rep = self.report
        if self.opts.source == "kafka":
            rep.cutover = {f"{self.src.topic}:{p}": off for p, off in sorted(cut.items())}
        elif self.opts.source == "postgres":
            stored = header.get("stored", {})
            merged = {f"{self.src.topic}:{p}": off for p, off in sorted(cut.items())}
            for name, off in stored.items():  # records after the last logged event were dead letters
                merged[name] = max(merged.get(name, -1), int(off))
            rep.cutover = merged
        if self.handoff and self.opts.source == "kafka":
            ahead = {n: v for n, v in header.get("stored", {}).items() if v > rep.cutover.get(n, -1)}
            if ahead:
                raise BackfillError(
                    f"group {self.group!r} already applied offsets {ahead} beyond this backfill's cut-over "
                    f"{rep.cutover}: the worker's online state is newer.  Rebuild from its event log "
                    f"(--source postgres) or run without --online")

    def _fence(self) -> dict:
        """Offsets CAS that keeps them unchanged: fails if a worker of the group committed meanwhile."""
        if not self.handoff:
            return {}
        stored = self._header_stored
        return {name: (stored.get(name, -1), stored.get(name, -1)) for name in self.report.cutover}

    def _commit_states(self, records: list) -> None:
        group = self.group if self.handoff else None
        fence = self._fence()
        applied = self._applied_cutover()
        if applied:  # a worker that starts before the offsets are handed off skips what these states hold
            records = [replace(r, applied=applied) for r in records]
        for lo in range(0, len(records), ONLINE_BATCH):
            result = self.online.commit(records[lo:lo + ONLINE_BATCH], group, fence, self.epoch)
            if result == 0:
                raise BackfillError(f"group {self.group!r} committed offsets during the backfill: "
                                    f"stop its workers while a hand-off backfill runs")
            if result == -1:
                raise BackfillError("the online store lost its data during the backfill (epoch marker changed)")

    def _applied_cutover(self) -> bytes:
        """``OnlineRecord.applied`` of the states of a Kafka or event-log backfill: each holds every
        event of its entity up to the cut-over of each partition (b"" for files: no positions)."""
        prefix = f"{self.src.topic}:"
        cut = {int(name[len(prefix):]): int(off)
               for name, off in self.report.cutover.items() if name.startswith(prefix)}
        return encode_applied(cut)

    def _commit_offsets(self, header: dict) -> None:
        rep = self.report
        stored = {k: int(v) for k, v in header.get("stored", {}).items()}
        offsets = {name: (stored.get(name, -1), int(off)) for name, off in rep.cutover.items()}
        if not offsets:
            return
        result = self.online.commit([], self.group, offsets, self.epoch)
        if result == 1:
            rep.offsets_committed = True
            return
        now = self.online.load_offsets(self.group)
        if all(now.get(n) == new for n, (_, new) in offsets.items()):
            rep.offsets_committed = True  # another shard (or an earlier attempt) wrote them
            return
        raise BackfillError(f"could not hand off to group {self.group!r}: its offsets are {now}, "
                            f"expected {stored} (a worker ran during the backfill?)")

    @property
    def _header_stored(self) -> dict:
        return {k: int(v) for k, v in getattr(self, "_stored", {}).items()}
