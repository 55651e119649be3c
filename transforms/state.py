"""One entity's streaming state for one feature view, on the compiled engine.

``ViewState`` is one slot of a ``StateArena`` of its own: the API of a single state, for the
tests, the backfill's final states and the tools.  The worker holds many states per view in
one arena (``featurestore.processing``) and applies whole micro-batches to it in one call.

Applying events in arrival order: an event older than the entity's watermark minus the
lateness is refused (``late``), and so is one repeating the id of an event accepted within the
lateness horizon (``duplicate_event_id``); every other event is counted exactly once.  The
state answers every feature as of any time at or after its watermark.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from .engine import codec
from .engine.arena import REJECT_DUPLICATE, REJECT_LATE, ScratchArena, StateArena
from .engine.codec import StateFormatError, append_ids
from .engine.kernels import REASON_LATE
from .engine.layout import FORMAT_VERSION, M_WM, NO_TIME, layout_for
from .engine.values import id_hash

__all__ = ["FORMAT_VERSION", "REJECT_DUPLICATE", "REJECT_LATE", "Rejection", "StateFormatError", "ViewState",
           "append_ids", "compile_reader", "id_hash", "load_state", "load_states"]


@dataclass(frozen=True)
class Rejection:
    """An event the state refused: ``index`` in the applied batch, a reason code and a sentence."""

    index: int
    reason: str
    detail: str


def rejections(reasons: np.ndarray, ts: list, ids: list, watermarks: list, lateness: int) -> list[Rejection]:
    """``Rejection`` s of the refused events (``reasons`` of ``StateArena.apply``); ``watermarks[i]``:
    the watermark the event met (for the sentence)."""
    out = []
    for i in np.flatnonzero(reasons).tolist():
        if reasons[i] == REASON_LATE:
            out.append(Rejection(i, REJECT_LATE, f"event time {ts[i]} is more than {lateness} ms before the "
                                                 f"entity's watermark {watermarks[i]}"))
        else:
            out.append(Rejection(i, REJECT_DUPLICATE, f"event id {ids[i]!r} was already counted"))
    return out


class ViewState:
    """Per-entity state of a set of ``AggSpec`` s sharing one event source."""

    __slots__ = ("arena", "slot")

    def __init__(self, specs, lateness_ms: int = 0, *, arena: StateArena | None = None, slot: int | None = None):
        self.arena = arena if arena is not None else StateArena(specs, lateness_ms, slots=1, words=256)
        self.slot = self.arena.slot(id(self)) if slot is None else slot

    @property
    def specs(self):
        return self.arena.specs

    @property
    def lateness_ms(self) -> int:
        return self.arena.lateness_ms

    @property
    def watermark(self) -> int | None:
        return self.arena.watermark(self.slot)

    @property
    def seq(self) -> int:
        return self.arena.seq(self.slot)

    @property
    def live_ids(self) -> int:
        """Event ids held for the duplicate-id horizon."""
        return self.arena.live_ids(self.slot)

    @property
    def ids(self) -> dict[int, int]:
        """The event ids held, ``{id_hash(id): event time}`` in arrival order."""
        pairs = codec.encode_all_ids(self.arena, self.slot)[1:]
        words = np.frombuffer(pairs, dtype=np.int64).tolist() if pairs else []
        return dict(zip(words[0::2], words[1::2]))

    def apply(self, events) -> list[Rejection]:
        """Apply ``(ts_ms, values, event_id)`` tuples in arrival order; returns the events refused.

        A batch is applied whole or not at all: when an input raises (a value ``float()`` or
        ``hash()`` refuses), the exception propagates and the state is exactly as it was."""
        events = list(events)
        if not events:
            return []
        ts = [e[0] for e in events]
        ids = [e[2] for e in events]
        wm_before = self.watermark
        reasons = self.arena.apply(np.full(len(events), self.slot, dtype=np.int64), np.array(ts, dtype=np.int64),
                                   ids, [e[1] for e in events])
        if not reasons.any():
            return []
        marks, wm = [], wm_before
        for i, t in enumerate(ts):  # the watermark each event met, for the sentences
            marks.append(wm)
            if not reasons[i] and (wm is None or t > wm):
                wm = t
        return rejections(reasons, ts, ids, marks, self.lateness_ms)

    def evaluate(self, t: int) -> dict:
        """Every feature as of ``t`` (epoch ms); ``t`` must be at or after the watermark."""
        return self.snapshot(t)[0]

    def valid_until(self) -> int | None:
        """Earliest time after the watermark at which some windowed value may change without a
        new event (a non-empty tile leaves its window); None if never."""
        wm = self.watermark
        return None if wm is None else self.snapshot(wm)[1]

    def snapshot(self, t: int) -> tuple[dict, int | None]:
        values, until = self.snapshot_values(t)
        return dict(zip(self.arena.layout.names, values)), until

    def snapshot_values(self, t: int) -> tuple[list, int | None]:
        """(every feature as of ``t`` in spec order, the earliest later time a value may change)."""
        wm = self.watermark
        if wm is not None and t < wm:
            raise ValueError(f"streaming state can be evaluated only at or after its watermark {wm}, not at {t}")
        rows, until = self.arena.values(np.array([self.slot]), np.array([t]))
        return rows[0], until[0]

    # -- persistence ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole state, event ids included (``to_parts`` keeps them apart)."""
        return codec.encode_whole(self.arena, self.slot)

    def to_parts(self) -> tuple[bytes, bytes]:
        """(the state, what to write of its event ids: ``codec.encode_ids_part``)."""
        return codec.encode(self.arena, self.slot), codec.encode_ids_part(self.arena, self.slot)

    @classmethod
    def from_bytes(cls, specs, blob: bytes, lateness_ms: int = 0, ids: bytes = b"") -> "ViewState":
        """A state from what ``to_parts`` wrote (or a format 2 state and its ids)."""
        state = cls(specs, lateness_ms)
        load_state(state.arena, state.slot, blob, ids)
        return state


def load_state(arena: StateArena, slot: int, blob: bytes, ids: bytes | None = b"") -> None:
    """Fill the empty ``slot`` from a stored state of any readable format, and its ids."""
    blob = bytes(blob)
    if blob[:4] == codec.WHOLE:
        blob, whole_ids = codec.split_whole(blob)
        ids = ids or whole_ids
    if blob[:1] == b"{":
        codec.decode_legacy(arena, slot, blob, ids or b"")
        return
    codec.decode(arena, slot, blob)
    codec.decode_ids_part(arena, slot, bytes(ids or b""))


def load_states(arena: StateArena, slots: list[int], blobs: list[bytes], ids: list[bytes] | None = None) -> None:
    """``load_state`` of many states into empty slots: format 3 states (and their ids) in one compiled
    call each, older formats one by one."""
    blobs = [bytes(b) for b in blobs]
    ids = [bytes(i or b"") for i in ids] if ids is not None else None
    old = [m for m, b in enumerate(blobs) if b[:4] != codec.MAGIC]
    if old:
        for m in old:
            load_state(arena, slots[m], blobs[m], ids[m] if ids is not None else None)
        keep = sorted(set(range(len(blobs))) - set(old))
        slots, blobs = [slots[m] for m in keep], [blobs[m] for m in keep]
        ids = [ids[m] for m in keep] if ids is not None else None
    codec.decode_many(arena, slots, blobs)
    codec.decode_ids_many(arena, slots, ids if ids is not None else [b""] * len(slots))


def compile_reader(specs, features: list[str]):
    """``(blob, t) -> [value of each of features]``: what ``ViewState.from_bytes(specs, blob).evaluate(t)``
    gives for ``features``; ``read_many`` of the returned reader evaluates many states in one call."""
    return _compile_reader(specs if isinstance(specs, tuple) else tuple(specs), tuple(features))


class StateReader:
    """Evaluates stored states (without their ids) for some features, many per compiled call.

    Each thread keeps a scratch arena per reader, reused from request to request (``ScratchArena.hold``)
    while it stays small; features that compute the same thing (same function, column, window and hop;
    a last_n feature only with itself, so that two last_n features answer lists of their own; a feature
    requested twice answers one list twice) are evaluated once."""

    def __init__(self, specs: tuple, features: tuple):
        names = [s.name for s in specs]
        unknown = [f for f in features if f not in names]
        if unknown:
            raise ValueError(f"unknown features {unknown} (features: {', '.join(names)})")
        self.specs = specs
        self.positions = [names.index(f) for f in features]
        tables = layout_for(specs).reader_tables()
        computations = [tuple(int(t[p]) for t in tables) + ((p if specs[p].function == "last_n" else -1),)
                        for p in self.positions]
        distinct = list(dict.fromkeys(computations))
        evaluated = [self.positions[computations.index(c)] for c in distinct]
        #: the reader tables of the features evaluated, and each requested feature's column among them
        self.tables = tuple(np.ascontiguousarray(t[evaluated]) for t in tables)
        self.order = None if distinct == computations else [distinct.index(c) for c in computations]
        self._scratch = threading.local()  # a scratch arena per thread

    def __call__(self, blob: bytes, t: int) -> list:
        return self.read_many([blob], [t])[0]

    def _arena(self, n: int) -> ScratchArena:
        """This thread's scratch arena holding ``n`` empty states: the one kept while it stays small
        (``_KEEP_SLOTS`` states, ``_KEEP_WORDS`` pool words, ``_KEEP_ENTRIES`` entry-table slots, whose
        reset clears them all, 1,024 interned values), else a new one."""
        arena = getattr(self._scratch, "arena", None)
        if n > _KEEP_SLOTS:
            arena = ScratchArena(self.specs, slots=n, words=64 * n)
        elif (arena is None or len(arena.P) > _KEEP_WORDS or len(arena.HV) > _KEEP_ENTRIES
              or len(arena.objects.values) > 1024):
            arena = self._scratch.arena = ScratchArena(self.specs, slots=8, words=4096)
        arena.hold(n)
        return arena

    def read_many(self, blobs: list[bytes], times: list[int]) -> list[list]:
        """Values of ``features`` of each state ``blobs[m]`` as of ``times[m]``, all evaluated in one
        compiled call."""
        n = len(blobs)
        if not n:
            return []
        arena = self._arena(n)
        slots = np.arange(n, dtype=np.int64)
        if any(b[:4] != codec.MAGIC for b in blobs):  # older formats (or not states: the error says so)
            for m, blob in enumerate(blobs):
                load_state(arena, m, blob, None)
        elif n <= 5:  # below the fixed cost of decode_many's array work
            for m, blob in enumerate(blobs):
                codec.decode(arena, m, blob)
        else:
            codec.decode_many(arena, slots, blobs)
        for m, wm in enumerate(arena.S[:n, M_WM].tolist()):
            if wm != NO_TIME and times[m] < wm:
                raise ValueError(f"streaming state can be evaluated only at or after its watermark {wm}, "
                                 f"not at {times[m]}")
        out_b, out_f, out_k, out_x, _ = arena.evaluate(slots, np.array(times, dtype=np.int64), self.tables)
        return arena.rows(out_b, out_f, out_k, out_x, self.order)


_KEEP_SLOTS = 256
_KEEP_WORDS = 1 << 16
_KEEP_ENTRIES = 4096


@functools.lru_cache(maxsize=256)
def _compile_reader(specs: tuple, features: tuple) -> StateReader:
    return StateReader(specs, features)
