"""Applies validated events of one source to the per-entity states of its views.

This is where events meet the transforms: no Kafka here, and the online store
is only used to load states that are not cached yet.  The worker (Kafka), the
backfill's ``--online`` hand-off and the client's ``push`` and ``materialize`` all
go through ``SourceProcessor``; the client imports nothing of ``workers``.
"""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np

import pandas as pd

from featurestore.online import OnlineRecord
from featurestore.schema import ValidEvent
from transforms import Rejection
from transforms.engine import StateArena
from transforms.engine.codec import StateFormatError as EngineStateFormatError
from transforms.engine.kernels import REASON_LATE
from transforms.engine.layout import M_WM, NO_TIME
from transforms.engine.values import BatchColumns
from transforms.state import REJECT_DUPLICATE, REJECT_LATE, load_state, load_states

from .prepared import PreparedView, add_derived, add_derived_columns, derived_columns, derived_transforms, prepare_view
from .applied import AppliedOffsets, BatchPositions, decode_applied, encode_applied
from .records import ArenaStates, arena_records, rebuild_records

__all__ = ["HISTORY_CHUNK", "ArenaStates", "PreparedView", "SourceProcessor", "add_derived", "add_derived_columns",
           "arena_records", "derived_columns", "decode_applied", "derived_transforms", "encode_applied", "log_batches",
           "prepare_view", "rebuild_records"]

logger = logging.getLogger(__name__)


#: Entities per ``SourceProcessor.history`` call: bounds what one call holds (every logged event of each).
HISTORY_CHUNK = 1000


def log_batches(views: list[PreparedView], events: pd.DataFrame, id_column: str
                ) -> dict[str, tuple[list[tuple], dict[int, int]]]:
    """Per entity of ``events`` (an event-log frame of ``load_events`` with ``__partition`` and
    ``__offset``, in the order to apply): its events as ``ViewState.apply`` takes them, with the
    views' derived columns, and the highest offset per Kafka partition among them."""
    if not len(events):
        return {}
    events = events.copy()
    add_derived(derived_transforms(views), events)
    out = {}
    for key, group in events.groupby("key", sort=False):
        rows = group.to_dict("records")
        # offsets rise per partition
        applied = {int(r["__partition"]): int(r["__offset"]) for r in rows if r["__partition"] >= 0}
        out[str(key)] = ([(r["ts"], r, r.get(id_column)) for r in rows], applied)
    return out


def _refusal(code: int, event: ValidEvent, met: int | None, lateness: int) -> Rejection:
    if code == REASON_LATE:
        return Rejection(0, REJECT_LATE, f"event time {event.ts_ms} is more than {lateness} ms before the "
                                         f"entity's watermark {met}")
    return Rejection(0, REJECT_DUPLICATE, f"event id {event.event_id!r} was already counted")


class SourceProcessor:
    """States of the views of one source, cached between batches: one ``StateArena`` per view.

    The cache is only valid while the owner keeps committing successfully:
    call ``invalidate()`` after any failed commit, on a rebalance, and before
    re-running a batch.  It holds at most ``max_states`` states per view after
    ``evict()`` (least recently used first out; call it only after a successful
    commit, when the online store holds every cached state): an evicted entity
    is loaded from the online store again when it next has an event.

    With the events' ``(partition, offset)`` given, each state remembers the highest offset per
    partition applied to it (written with it as ``OnlineRecord.applied``), and a state skips the
    events at or below it: a batch re-run after a commit that wrote only some of its states (a
    crash between chunks) applies each event once to each state.

    ``history(keys)``, when given, is asked for the entities whose state the online store does not
    hold (a new entity, or one whose hash expired or was deleted while its events stay in the event
    log): ``log_batches`` of the events already applied to them, which their new states apply
    first.  Without it such an entity starts afresh.
    """

    def __init__(self, views: list[PreparedView], online, max_states: int | None = None, history=None,
                 check_stored: bool = False):
        self.views = views
        self.online = online
        self.max_states = max_states
        self.history = history
        self.arenas: dict[str, StateArena] = {pv.view_key: StateArena(pv.specs, pv.lateness_ms) for pv in views}
        #: view_key -> the highest applied offset per partition of each cached state, by arena slot
        self.applied: dict[str, AppliedOffsets] = {pv.view_key: AppliedOffsets() for pv in views}
        #: with ``check_stored``, view_key -> entity -> the applied offsets stored in the online store as this
        #: processor last saw them (loaded or committed): each record carries them as ``expected``, so the
        #: commit writes nothing over a state another writer changed since (``committed`` after a commit)
        self.check_stored = check_stored
        self.stored: dict[str, dict[str, bytes]] = {pv.view_key: {} for pv in views}
        self.evicted = 0
        #: view_key -> CPU seconds (this thread's) the engine spent on the view: applying and evaluating its
        #: states and building their records; what the batch costs before (decoding, BatchTransforms) is shared
        self.engine_cpu_s: dict[str, float] = {pv.view_key: 0.0 for pv in views}
        #: stored states that could not be read (``_load_one_by_one``): rebuilt from the event log
        self.unreadable = 0
        #: entities of the last ``update`` whose events came from a Kafka partition other than the ones their
        #: state already held events of: the producer does not key the events by the entity key (or the
        #: topic's partitions were increased, which moves keys once).  Several workers would then hold the
        #: same entity's state and overwrite each other's commits.
        self.spread: set[str] = set()

    @property
    def cache(self) -> dict[str, ArenaStates]:
        return {vk: ArenaStates(arena) for vk, arena in self.arenas.items()}

    def applied_offsets(self, view_key: str, key: str) -> dict[int, int]:
        """The highest applied offset per partition of ``key``'s cached state in view ``view_key``."""
        return self.applied[view_key].get(self.arenas[view_key].slot_of[key])

    def invalidate(self) -> None:
        for pv in self.views:
            self.arenas[pv.view_key] = StateArena(pv.specs, pv.lateness_ms)
        for applied in self.applied.values():
            applied.clear()
        for table in self.stored.values():
            table.clear()

    def committed(self, records: list[OnlineRecord]) -> None:
        """The online store now holds ``records`` (those of this processor's views among them)."""
        if self.check_stored:
            stored = self.stored
            for r in records:
                seen = stored.get(r.view_key)
                if seen is not None:
                    seen[r.key] = r.applied

    def evict(self) -> int:
        """Drop the least recently used states beyond ``max_states`` per view; returns how many."""
        if self.max_states is None:
            return 0
        dropped = 0
        for view_key, arena in self.arenas.items():
            over = len(arena) - self.max_states
            if over > 0:
                applied, stored = self.applied[view_key], self.stored[view_key]
                for key in list(itertools.islice(arena.slot_of, over)):  # dict order: least recently used first
                    applied.reset(arena.slot_of[key])
                    arena.drop(key)
                    stored.pop(key, None)
                dropped += over
        self.evicted += dropped
        return dropped

    def apply(self, events: list[ValidEvent], positions: list[tuple[int, int]] | None = None
              ) -> tuple[list[OnlineRecord], dict[int, Rejection]]:
        """Apply events (arrival order); returns the records to commit and the refused events by index."""
        touched, refused = self.update(events, positions)
        return self.records(touched), refused

    def update(self, events: list[ValidEvent], positions: list[tuple[int, int]] | None = None
               ) -> tuple[list[tuple[PreparedView, list[str]]], dict[int, Rejection]]:
        """Phase 1: apply events to the states; returns the touched keys per view and the refused events.

        ``positions[i]``: (partition, offset) of ``events[i]`` in the source topic; events at or
        below a state's applied offset of their partition are skipped for that state (already in it)."""
        shared = BatchColumns([e.values for e in events], [e.event_id for e in events])
        shared.add(derived_columns(self.views, events, lambda name: shared.column(name)[0]))
        codes, uniques = pd.factorize(np.array([str(e.key) for e in events], dtype=object))  # first seen, first
        key_code = codes.astype(np.int64, copy=False)
        keys: list[str] = uniques.tolist()
        at = BatchPositions(positions, key_code, len(keys)) if positions is not None else None
        touched = []
        refused: dict[int, Rejection] = {}
        self.spread = set()
        absent: dict[str, list[str]] = {}
        for pv in self.views:
            self._states(pv, keys, absent.setdefault(pv.view_key, []))
        if self.history is not None and any(absent.values()):
            self._seed(absent)
        ts = np.fromiter((e.ts_ms for e in events), dtype=np.int64, count=len(events))
        for pv in self.views:
            started = time.thread_time()
            arena = self.arenas[pv.view_key]
            slot_of = arena.slot_of
            key_slots = np.fromiter((slot_of[k] for k in keys), dtype=np.int64, count=len(keys))
            slots = key_slots[key_code]
            keys_touched, batch, when, order = keys, shared, ts, None
            if at is not None:
                new, spread = self.applied[pv.view_key].fresh(key_slots, at)
                self.spread.update(keys[k] for k in spread)
                if not new.all():  # some of these events are in their states already (a re-run batch)
                    order = np.flatnonzero(new)
                    if not len(order):
                        continue
                    hit = np.bincount(key_code[order], minlength=len(keys)) > 0
                    keys_touched = [k for k, h in zip(keys, hit.tolist()) if h]
                    slots, when = slots[order], ts[order]
                    batch = shared.take(order.tolist())
            before = arena.S[slots, M_WM]
            reasons = arena.apply(slots, when, None, batch)
            if reasons.any():
                index = np.arange(len(events)) if order is None else order
                self._refused(pv, events, index.tolist(), slots.tolist(), before, reasons, refused)
            touched.append((pv, keys_touched))
            self.engine_cpu_s[pv.view_key] += time.thread_time() - started
        return touched, refused

    @staticmethod
    def _refused(pv, events, chosen, slots, before, reasons, refused) -> None:
        """Rejections of the refused events, each with the watermark it met."""
        met: dict[int, int | None] = {}
        for p, i in enumerate(chosen):
            s = slots[p]
            if s not in met:
                wm = int(before[p])
                met[s] = None if wm == NO_TIME else wm
            code = int(reasons[p])
            if code:
                refused.setdefault(i, _refusal(code, events[i], met[s], pv.lateness_ms))
            elif met[s] is None or events[i].ts_ms > met[s]:
                met[s] = events[i].ts_ms

    def records(self, touched) -> list[OnlineRecord]:
        """Phase 2: the online records of the touched states, one compiled evaluation per view."""
        out: list[OnlineRecord] = []
        for pv, keys in touched:
            vk = pv.view_key
            started = time.thread_time()
            out += arena_records(pv, self.arenas[vk], keys, self.applied[vk],
                                 self.stored[vk] if self.check_stored else None)
            self.engine_cpu_s[vk] += time.thread_time() - started
        return out

    def _seed(self, absent: dict[str, list[str]]) -> None:
        """Apply ``history`` to the new states of the entities the online store does not hold, asked
        for ``HISTORY_CHUNK`` entities at a time (each one's whole logged history is held meanwhile)."""
        keys = sorted(set().union(*absent.values()))
        wanted = {pv.view_key: set(absent[pv.view_key]) for pv in self.views}
        for lo in range(0, len(keys), HISTORY_CHUNK):
            found = self.history(keys[lo:lo + HISTORY_CHUNK])
            for pv in self.views:
                arena, applied, mine = self.arenas[pv.view_key], self.applied[pv.view_key], wanted[pv.view_key]
                slots, ts, ids, values = [], [], [], []
                for key, (past, offsets) in found.items():
                    if key in mine:
                        s = arena.slot_of[key]
                        for t, v, e in past:
                            slots.append(s)
                            ts.append(t)
                            values.append(v)
                            ids.append(e)
                        applied.set(s, dict(offsets))
                if slots:
                    arena.apply(np.array(slots, dtype=np.int64), np.array(ts, dtype=np.int64), ids, values)

    def _load_one_by_one(self, pv: PreparedView, arena: StateArena, slots, blobs, ids, absent) -> None:
        """Load states one at a time after a batch load failed: an unreadable one (damaged, or of a
        format this version does not know) is logged and treated as absent, so that it is rebuilt
        from the event log (``history``) rather than stopping the partition."""
        for s in slots:  # the failed call may have filled some of them
            key = arena.key_of[s]
            arena.drop(key)
            arena.slot(key)
        for s, blob, part in zip(slots, blobs, ids):
            key = arena.key_of[s]
            try:
                load_state(arena, s, blob, part)
            except EngineStateFormatError as exc:
                arena.drop(key)
                arena.slot(key)
                self.unreadable += 1
                logger.error("%s: stored state of entity %r cannot be read (%s); it is rebuilt from the event "
                             "log", pv.view_key, key, exc)
                if absent is not None:
                    absent.append(key)

    def _states(self, pv: PreparedView, keys: list[str], absent: list[str] | None = None) -> ArenaStates:
        """Make ``keys``' states cached (else loaded, else new); ``absent`` collects the keys of the
        states the online store did not hold."""
        arena = self.arenas[pv.view_key]
        slot_of = arena.slot_of
        missing = [k for k in keys if k not in slot_of]
        if self.max_states is not None and len(missing) < len(keys):  # keep the dict in least-recently-used order
            for key in keys:
                s = slot_of.pop(key, None)
                if s is not None:
                    slot_of[key] = s
        if missing:
            applied, stored = self.applied[pv.view_key], self.stored[pv.view_key]
            slots, blobs, ids = [], [], []
            for key, (blob, done, part) in self.online.load_states_applied(pv.view_key, missing).items():
                s = arena.slot(key)
                if blob is None:
                    if absent is not None:
                        absent.append(key)
                else:
                    slots.append(s)
                    blobs.append(blob)
                    ids.append(part)
                applied.set(s, decode_applied(done))
                stored[key] = done
            try:
                load_states(arena, slots, blobs, ids)
            except EngineStateFormatError:
                self._load_one_by_one(pv, arena, slots, blobs, ids, absent)
        return ArenaStates(arena)
