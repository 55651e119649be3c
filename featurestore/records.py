"""From states in an arena to online records, and the one rebuild of states from logged events.

A record is what the online store keeps per (view version, entity): the state (format 3), its
values row as of the watermark, the time the values next change, the applied offsets and the
event ids to write.  ``arena_records`` builds many in a few compiled calls.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from featurestore.online import OnlineRecord
from transforms import ViewState
from transforms.engine import StateArena, codec
from transforms.engine.json_text import json_rows
from transforms.engine.layout import M_WM, NO_TIME

from .applied import AppliedOffsets
from .prepared import PreparedView


class ArenaStates(Mapping):
    """The cached states of one view as a mapping ``key -> ViewState`` (least recently used first)."""

    def __init__(self, arena: StateArena):
        self.arena = arena

    def __getitem__(self, key):
        return ViewState(self.arena.specs, arena=self.arena, slot=self.arena.slot_of[key])

    def __iter__(self):
        return iter(self.arena.slot_of)

    def __len__(self) -> int:
        return len(self.arena.slot_of)


def arena_records(pv: PreparedView, arena: StateArena, keys: list[str], applied: AppliedOffsets | None = None,
                  expected: dict | None = None) -> list[OnlineRecord]:
    """The online records (state, values as of the watermark, valid-until) of ``keys``' states in
    ``arena``, all evaluated in one compiled call; states without an accepted event are not written."""
    slots = [arena.slot_of[k] for k in keys]
    wms = arena.S[slots, M_WM] if slots else np.zeros(0, dtype=np.int64)
    live = wms != NO_TIME
    if not live.all():
        keys = [k for k, ok in zip(keys, live.tolist()) if ok]
        slots = [s for s, ok in zip(slots, live.tolist()) if ok]
        wms = wms[live]
    if not slots:
        return []
    at = np.array(slots, dtype=np.int64)
    out_b, out_f, out_k, out_x, changes = arena.evaluate(at, wms)
    rows = json_rows(arena, out_b, out_f, out_k, out_x)
    until = [None if u == NO_TIME else u for u in changes.tolist()]
    blobs, ids = codec.encode_many(arena, at), codec.encode_ids_many(arena, at)
    ttl, vk = pv.ttl_ms, pv.view_key
    done = applied.encode_many(slots) if applied is not None else [b""] * len(slots)
    exp = [expected.get(key, b"") for key in keys] if expected is not None else [None] * len(keys)
    return [OnlineRecord(vk, key, blob, row, wm, u, ttl, d, part, e)
            for key, wm, row, u, blob, d, part, e in zip(keys, wms.tolist(), rows, until, blobs, done, ids, exp)]


def rebuild_records(pv: PreparedView, batches: dict[str, list[tuple]]) -> list[OnlineRecord]:
    """Records of states rebuilt from scratch: ``batches[key]`` the entity's events in arrival order
    (``(ts, values, event_id)``, derived columns included), applied to new states in one call.  The
    one rebuild that the worker's recovery, the backfill's final states and ``materialize`` share."""
    if not batches:
        return []
    arena = StateArena(pv.specs, pv.lateness_ms, slots=len(batches), words=64 * len(batches))
    keys, slots, ts, ids, values = [], [], [], [], []
    for key, events in batches.items():
        s = arena.slot(key)
        keys.append(key)
        for t, v, e in events:
            slots.append(s)
            ts.append(t)
            values.append(v)
            ids.append(e)
    arena.apply(np.array(slots, dtype=np.int64), np.array(ts, dtype=np.int64), ids, values)
    return arena_records(pv, arena, keys)
