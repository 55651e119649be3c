"""The highest Kafka offset per partition applied to each cached state, in arrays by arena slot.

A state's events come from one partition when the producer keys them by the entity key, as it
should: one (partition, offset) pair per slot.  A state holding events of several partitions (a
producer not keying by the entity, or partitions added to the topic) keeps a dict instead.

``AppliedOffsets.fresh`` picks, for one view, the events of a batch its states have not applied
yet, so that a batch re-run after a commit that wrote only some of its states (a crash between
two chunks) applies each event once to each state.  The offsets are written with each state
(``OnlineRecord.applied``, ``encode``) and read back when a state is loaded (``set``).
"""

from __future__ import annotations

import numpy as np

NONE = -1  #: no event applied from any partition
MANY = -2  #: events of several partitions: the offsets are in ``AppliedOffsets.many``


def encode_applied(applied: dict[int, int] | None) -> bytes:
    """``OnlineRecord.applied`` of a state: its highest applied offset per partition."""
    if not applied:
        return b""
    if len(applied) == 1:  # an entity's events come from one partition (keyed produce)
        for p, o in applied.items():
            return b"%d:%d" % (p, o)
    return ",".join(f"{p}:{o}" for p, o in applied.items()).encode()


def decode_applied(raw: bytes | None) -> dict[int, int]:
    if not raw:
        return {}
    try:
        return {int(p): int(o) for p, o in (item.split(b":") for item in raw.split(b","))}
    except ValueError as exc:
        raise ValueError(f"stored applied offsets {raw[:100]!r} are not 'partition:offset,...'") from exc


class BatchPositions:
    """Where a batch's events came from, arranged once for every view: ``part`` / ``off`` per event,
    ``code`` the index of each event's key, ``first`` / ``last`` each key's first and last event,
    ``several`` whether a key's events come from more than one partition."""

    __slots__ = ("positions", "part", "off", "code", "first", "last", "several")

    def __init__(self, positions: list[tuple[int, int]], code: np.ndarray, keys: int):
        """``code[i]``: the index (``0 .. keys - 1``, each present) of event ``i``'s key."""
        n = len(positions)
        self.positions = positions
        self.part = np.fromiter((p for p, _ in positions), dtype=np.int64, count=n)
        self.off = np.fromiter((o for _, o in positions), dtype=np.int64, count=n)
        self.code = code
        self.first = np.unique(code, return_index=True)[1].astype(np.int64)
        self.last = (n - 1 - np.unique(code[::-1], return_index=True)[1]).astype(np.int64)
        if n:
            width = int(self.part.max()) + 2
            pairs = np.unique(code * width + self.part + 1)
            self.several = np.bincount(pairs // width, minlength=keys) > 1
        else:
            self.several = np.zeros(keys, dtype=bool)


class AppliedOffsets:
    """Per slot of one view's arena: ``part[s]`` the partition its events came from (``NONE``,
    ``MANY``), ``off[s]`` the highest offset applied of it."""

    def __init__(self, slots: int = 16):
        self.part = np.full(max(slots, 16), NONE, dtype=np.int64)
        self.off = np.full(len(self.part), -1, dtype=np.int64)
        self.many: dict[int, dict[int, int]] = {}

    def _room(self, n: int) -> None:
        if n > len(self.part):
            grow = max(n, 2 * len(self.part)) - len(self.part)
            self.part = np.concatenate([self.part, np.full(grow, NONE, dtype=np.int64)])
            self.off = np.concatenate([self.off, np.full(grow, -1, dtype=np.int64)])

    def clear(self) -> None:
        self.part[:] = NONE
        self.off[:] = -1
        self.many.clear()

    def reset(self, s: int) -> None:
        """Slot ``s`` holds no state any more (dropped, or about to be reused)."""
        if s < len(self.part):
            self.part[s] = NONE
            self.off[s] = -1
        self.many.pop(s, None)

    def get(self, s: int) -> dict[int, int]:
        if s >= len(self.part) or self.part[s] == NONE:
            return {}
        if self.part[s] == MANY:
            return dict(self.many[s])
        return {int(self.part[s]): int(self.off[s])}

    def set(self, s: int, done: dict[int, int]) -> None:
        self._room(s + 1)
        self.many.pop(s, None)
        if not done:
            self.part[s], self.off[s] = NONE, -1
        elif len(done) == 1:
            (p, o), = done.items()
            self.part[s], self.off[s] = p, o
        else:
            self.part[s], self.off[s] = MANY, -1
            self.many[s] = dict(done)

    def encode(self, s: int) -> bytes:
        p = self.part[s] if s < len(self.part) else NONE
        if p >= 0:
            return b"%d:%d" % (p, self.off[s])
        return encode_applied(self.many.get(s)) if p == MANY else b""

    def encode_many(self, slots: list[int]) -> list[bytes]:
        """``encode`` of each slot of ``slots``."""
        self._room(max(slots, default=-1) + 1)
        at = np.array(slots, dtype=np.int64)
        parts, offs = self.part[at].tolist(), self.off[at].tolist()
        return [b"%d:%d" % (p, o) if p >= 0 else self.encode(s) for s, p, o in zip(slots, parts, offs)]

    def fresh(self, key_slots: np.ndarray, at: BatchPositions) -> tuple[np.ndarray, set[int]]:
        """(whether each event of the batch is new to its state, the keys whose state gets events of
        another partition than it held: ``SourceProcessor.spread``), and raise each state's offsets
        to its events'.  Events arrive in offset order per partition."""
        self._room(int(key_slots.max(initial=-1)) + 1)
        held_part, held_off = self.part[key_slots], self.off[key_slots]
        code = at.code
        new = (held_part[code] != at.part) | (at.off > held_off[code])
        simple = ~at.several & (held_part != MANY)
        p1 = at.part[at.first]
        moved = simple & (held_part >= 0) & (held_part != p1)  # a second partition
        keep = simple & ~moved
        s_keep = key_slots[keep]
        self.part[s_keep] = p1[keep]
        self.off[s_keep] = np.maximum(np.where(held_part[keep] == p1[keep], held_off[keep], -1), at.off[at.last[keep]])
        spread = set(np.flatnonzero(moved).tolist())
        for k in spread:
            s = int(key_slots[k])
            self.set(s, {int(held_part[k]): int(held_off[k]), int(p1[k]): int(at.off[at.last[k]])})
        for k in np.flatnonzero(~simple).tolist():  # several partitions: offset by offset
            s = int(key_slots[k])
            done = self.get(s)
            held = len(done)
            idxs = np.flatnonzero(code == k)
            for i in idxs.tolist():
                part, off = at.positions[i]
                new[i] = off > done.get(part, -1)
            if new[idxs].any():
                for i in idxs.tolist():
                    part, off = at.positions[i]
                    if off > done.get(part, -1):
                        done[part] = off
                self.set(s, done)
                if len(done) > max(held, 1):
                    spread.add(k)
        return new, spread
