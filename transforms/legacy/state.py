"""Formats 1 and 2 (frozen, see ``transforms.legacy``).

Streaming state of one entity for one feature view.

``ViewState`` applies micro-batches of events in arrival order and evaluates
every feature as of any time at or after its watermark.  Windowed partials
live in tiles ``[k*h, (k+1)*h)`` per hop (one row per tile for every column); tiles that no future
window can reach are dropped, so the state stays bounded by the window length
over the hop, whatever the event rate (``count_distinct`` is bounded by the
distinct values, ``last_n`` by n, event ids by the lateness horizon).

The loops over tiles are generated once per spec set (``transforms.kernels``).  The state
serializes to a small JSON document carrying ``FORMAT_VERSION``.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import orjson

from ..aggregations import is_null
from .kernels import ACTIVITY, Kernels, TileGroup, fields_for
from .kernels import build as build_kernels
from ..specs import AggSpec
from ..windows import window_start

FORMAT_VERSION = 2  # one tile row per hop holding every column's fields

REJECT_LATE = "late"
REJECT_DUPLICATE = "duplicate_event_id"

MOMENT_FUNCTIONS = frozenset({"sum", "mean", "var", "stddev"})  # count needs only COUNT
EXTREME_FUNCTIONS = frozenset({"min", "max"})
POSITIONAL_FUNCTIONS = frozenset({"first", "last"})
SIMPLE_FUNCTIONS = (MOMENT_FUNCTIONS | EXTREME_FUNCTIONS | POSITIONAL_FUNCTIONS
                    | {"count", "count_events", "events_per_minute"})


@dataclass(frozen=True)
class Rejection:
    """An event the state refused: ``index`` in the applied batch, a reason code and a sentence."""

    index: int
    reason: str
    detail: str


class _Tiles:
    """Tiles of one hop (``hop=None``: the single lifetime tile), rows laid out as ``transforms.kernels``
    describes; the loops over them are generated per spec set."""

    __slots__ = ("hop", "tiles", "floor")

    def __init__(self, hop: int | None):
        self.hop = hop
        self.tiles: dict[int, list] = {}  # k -> [k, n_events, fields of each column...]
        self.floor: int | None = None  # a lower bound of the tile indices present (prune is skipped above it)


def _set_valued(spec: AggSpec, t: int, items):
    """count_distinct (``items``: the latest time of each value) or last_n (``items``: ``[ts, seq, value]``
    in (ts, seq) order, oldest first) as of ``t``, and the time it may next change without a new event."""
    w = spec.window_ms
    if spec.function == "count_distinct":
        if w is None:
            return len(items), None
        if not items:
            return 0, None
        start = window_start(t, w, spec.hop_ms)
        oldest = min(items)
        if oldest >= start:  # every value in the window (always so at the watermark, after _prune)
            value = len(items)
        else:
            times = [ts for ts in items if ts >= start]
            if not times:
                return 0, None
            value, oldest = len(times), min(times)
    elif w is None:
        return [v for _, _, v in items], None
    else:  # items in (ts, seq) order: the ones in the window are a suffix
        start = window_start(t, w, spec.hop_ms)
        first = 0
        while first < len(items) and items[first][0] < start:
            first += 1
        if first == len(items):
            return [], None
        value = [v for _, _, v in (items[first:] if first else items)]
        oldest = items[first][0]
    return value, (oldest // spec.hop_ms + 1) * spec.hop_ms + w


@dataclass(frozen=True)
class _Layout:
    """What a spec set needs, computed once per spec set (not per entity)."""

    groups: tuple  # kernels.TileGroup per hop
    distinct: tuple
    last_n: tuple
    kernels: Kernels  # add / prune / evaluate written out for this spec set
    group_index: dict  # spec name -> index of its group (simple functions)
    special: frozenset  # names of the set-valued features (count_distinct, last_n)
    names: tuple  # feature names in spec order

    @functools.cached_property
    def layout_id(self) -> int:
        """Names the tile layout in serialized states (a checksum of every group's hop and fields)."""
        return zlib.crc32("|".join(f"{g.hop}:{g.signature}" for g in self.groups).encode())


_LAYOUTS: dict[tuple, _Layout] = {}


def _layout(specs: tuple) -> _Layout:
    layout = _LAYOUTS.get(specs)
    if layout is not None:
        return layout
    columns: dict[int | None, dict[str, set[str]]] = {}  # hop -> column -> functions
    reach: dict[int | None, int] = {}
    for spec in specs:
        if spec.function in SIMPLE_FUNCTIONS:
            by_column = columns.setdefault(spec.hop_ms, {})
            if spec.function not in ACTIVITY:
                by_column.setdefault(spec.column, set()).add(spec.function)
            if spec.window_ms is not None:
                reach[spec.hop_ms] = max(reach.get(spec.hop_ms, 0), spec.window_ms)
    groups = tuple(TileGroup(hop, tuple((c, fields_for(f)) for c, f in by_column.items()), reach.get(hop))
                   for hop, by_column in columns.items())
    index = {g.hop: i for i, g in enumerate(groups)}
    special = frozenset(s.name for s in specs if s.function in ("count_distinct", "last_n"))
    group_index = {s.name: index[s.hop_ms] for s in specs if s.function in SIMPLE_FUNCTIONS}
    layout = _Layout(groups,
                     tuple(s for s in specs if s.function == "count_distinct"),
                     tuple(s for s in specs if s.function == "last_n"),
                     build_kernels(groups, specs, group_index, special), group_index, special,
                     tuple(s.name for s in specs))
    if len(_LAYOUTS) < 1024:
        _LAYOUTS[specs] = layout
    return layout


class ViewState:
    """Per-entity state of a set of ``AggSpec`` s sharing one event source."""

    def __init__(self, specs: list[AggSpec] | tuple[AggSpec, ...], lateness_ms: int = 0):
        self.specs = specs if isinstance(specs, tuple) else tuple(specs)
        self.lateness_ms = int(lateness_ms)
        self.watermark: int | None = None
        self.seq = 0
        self.ids: dict[str, int] = {}
        self._ids_floor: int | None = None  # when the oldest id (front) may be stale: pruning is skipped above it
        # The ids as stored (``to_parts``): ``_ids_stored`` (id, ts) pairs written, in arrival order, the
        # pruned ones included; None when unknown (a new state, or one loaded from an older format):
        # the next ``to_parts`` rewrites them whole.  ``_ids_new``: accepted since then.
        self._ids_stored: int | None = None
        self._ids_new: list[tuple[str, int]] = []
        layout = _layout(self.specs)
        self.groups: dict[int | None, _Tiles] = {g.hop: _Tiles(g.hop) for g in layout.groups}
        self.distinct: dict[str, dict] = {s.name: {} for s in layout.distinct}  # value -> latest ts
        self.last_n: dict[str, list] = {s.name: [] for s in layout.last_n}  # [[ts, seq, value], ...] oldest first
        self._group_list = list(self.groups.values())
        self._distinct_specs = layout.distinct
        self._last_n_specs = layout.last_n
        self._kernels = layout.kernels
        self._names = layout.names
        self._layout_id = layout.layout_id

    # -- applying events -------------------------------------------------
    def apply(self, events) -> list[Rejection]:
        """Apply ``(ts_ms, values, event_id)`` tuples in arrival order.

        Returns the events refused: late (older than the watermark minus the
        lateness), or repeating the id of an event accepted within the lateness
        horizon (an id whose event is older than the horizon may be used again);
        every other event is counted exactly once.  A batch is applied whole or
        not at all: when an event raises (a value an aggregation cannot take, an
        id that cannot be hashed), the exception propagates and the state is
        exactly as it was before the call.
        """
        rejections: list[Rejection] = []
        accepted: list[tuple] = []  # (ts, seq, values): lateness and ids decided in arrival order first
        wm, lateness, ids, seq, ids_floor = self.watermark, self.lateness_ms, self.ids, self.seq, self._ids_floor
        new_ids = self._ids_new
        held = len(new_ids)  # the ids this batch accepts are added to ``ids`` and to ``new_ids[held:]``
        before = None  # ``ids`` before this call, kept once an id is accepted again (moved, not added)
        try:
            for index, (ts, values, event_id) in enumerate(events):
                if wm is not None and ts < wm - lateness:
                    rejections.append(Rejection(index, REJECT_LATE, f"event time {ts} is more than {lateness} ms "
                                                                    f"before the entity's watermark {wm}"))
                    continue
                if event_id is not None:
                    known = ids.get(event_id)  # the time of the accepted event with this id
                    if known is not None:
                        if known >= wm - lateness:
                            rejections.append(Rejection(index, REJECT_DUPLICATE,
                                                        f"event id {event_id!r} was already counted"))
                            continue
                        if before is None:
                            before = _ids_before(ids, new_ids[held:])
                        del ids[event_id]  # its event left the horizon: the id moves to this event's place
                    ids[event_id] = ts
                    new_ids.append((event_id, ts))
                    if ids_floor is None or ts < ids_floor:
                        ids_floor = ts
                seq += 1
                accepted.append((ts, seq, values))
                if wm is None or ts > wm:
                    wm = ts
            if not accepted:
                return rejections
            # What reads the events' values may raise: the distinct and last values are computed
            # first, then the tiles are updated (``add`` puts them back if it raises).
            distinct = []
            for spec in self._distinct_specs:
                latest, column = {}, spec.column  # value -> its latest time in this batch
                for ts, _, values in accepted:
                    value = values.get(column)
                    if not is_null(value) and latest.get(value, ts) <= ts:
                        latest[value] = ts
                distinct.append((self.distinct[spec.name], latest))
            last = []
            for spec in self._last_n_specs:
                pushed, column = [], spec.column
                for ts, at, values in accepted:
                    value = values.get(column)
                    if not is_null(value):
                        pushed.append([ts, at, value])
                last.append((self.last_n[spec.name], spec.n, pushed))
            self._kernels.add(self._group_list, accepted)
        except BaseException:
            if before is not None:
                ids.clear()
                ids.update(before)
            else:
                for event_id, _ in new_ids[held:]:
                    del ids[event_id]
            del new_ids[held:]
            raise
        self.seq, self.watermark, self._ids_floor = seq, wm, ids_floor
        for seen, latest in distinct:
            for value, ts in latest.items():
                if seen.get(value, ts) <= ts:
                    seen[value] = ts
        for items, n, pushed in last:
            for item in pushed:
                self._push_last(items, n, item)
        self._prune(wm)
        return rejections

    @staticmethod
    def _push_last(items: list, n: int, item: list) -> None:
        pos = len(items)
        while pos and (items[pos - 1][0], items[pos - 1][1]) > (item[0], item[1]):
            pos -= 1
        items.insert(pos, item)
        if len(items) > n:
            del items[0]

    def _prune(self, wm: int) -> None:
        self._kernels.prune(self._group_list, wm)
        horizon = wm - self.lateness_ms
        ids = self.ids
        if ids and (self._ids_floor is None or self._ids_floor < horizon):
            # Ids are kept in arrival order, nearly time order: drop them from the oldest up to the first
            # still inside the horizon (a real-time entity holds rate x lateness ids: rebuilding the dict
            # each batch cost more than the rest of the update).  An older one arrived later stays until
            # it reaches the front; it changes no decision: ``apply`` counts an id as seen only while its
            # time is within the horizon.
            _drop_stale_front(ids, horizon)
            self._ids_floor = next(iter(ids.values()), None)
        for spec in self._distinct_specs:
            if spec.window_ms is not None:
                seen = self.distinct[spec.name]
                start = window_start(wm, spec.window_ms, spec.hop_ms)
                if seen and min(seen.values()) < start:
                    for value in [v for v, ts in seen.items() if ts < start]:
                        del seen[value]

    # -- reading -----------------------------------------------------------
    def evaluate(self, t: int) -> dict:
        """Every feature as of ``t`` (epoch ms); ``t`` must be at or after the watermark."""
        return self.snapshot(t)[0]

    def valid_until(self) -> int | None:
        """Earliest time after the watermark at which some windowed value may change
        without a new event (a non-empty tile leaves its window); None if never."""
        if self.watermark is None:
            return None
        return self.snapshot(self.watermark)[1]

    def snapshot(self, t: int) -> tuple[dict, int | None]:
        """(every feature as of ``t``, the earliest later time at which a value may change
        without a new event — when the oldest non-empty tile of some window leaves it)."""
        values, until = self.snapshot_values(t)
        return dict(zip(self._names, values)), until

    def snapshot_values(self, t: int) -> tuple[list, int | None]:
        """``snapshot`` with the values as a list in spec order."""
        if self.watermark is not None and t < self.watermark:
            raise ValueError(f"streaming state can be evaluated only at or after its watermark {self.watermark}, "
                             f"not at {t}")
        return self._kernels.evaluate([g.tiles.values() for g in self._group_list], self.watermark, t, self._special)

    def _special(self, i: int, t: int):
        spec = self.specs[i]
        if spec.function == "count_distinct":
            return _set_valued(spec, t, self.distinct[spec.name].values())
        return _set_valued(spec, t, self.last_n[spec.name])

    # -- persistence ---------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole state, event ids included (``to_parts`` keeps them apart)."""
        return self._doc_bytes(self.ids)

    def to_parts(self) -> tuple[bytes, bytes]:
        """(the state without its event ids, what to write of the ids) — ``from_bytes(specs, state,
        lateness, ids)`` joins a state and its stored ids.

        The ids of a busy entity (rate x lateness of them: 300 at 1 event/s and 5 min) are most of its
        bytes, and only the writer needs them: an online read fetches and parses the state alone
        (measured on the example view with 300 ids: 10,353 -> 564 bytes, 26 -> 8 us to evaluate).

        The ids are stored as comma-separated ``[id, ts]`` pairs in arrival order, and written
        incrementally: when this state knows what is stored (it wrote or loaded it), the second part
        is ``b"+"`` and the pairs accepted since, to append (``append_ids``); otherwise it is every
        live pair, to replace the stored ones.  Pruned pairs stay stored until the stored pairs
        exceed the live ones by half (and by 32), then the ids are rewritten whole: each pair is
        serialized about once instead of at every write (measured with ~200 ids per state: 44-50 us
        per state and view to serialize them whole).  This call assumes the part is written: a
        writer whose write fails must drop the state and load it again (``SourceProcessor.invalidate``).
        """
        stored, new, live = self._ids_stored, self._ids_new, len(self.ids)
        if stored is not None and stored + len(new) <= live + max(live // 2, 32):
            if not new:
                return self._doc_bytes({}), b"+"
            self._ids_stored = stored + len(new)
            part = b"+" + orjson.dumps(new)[1:-1]
        else:
            self._ids_stored = live
            part = orjson.dumps(list(self.ids.items()))[1:-1] if live else b""
        new.clear()
        return self._doc_bytes({}), part

    def _doc_bytes(self, ids: dict) -> bytes:
        doc = {
            "v": FORMAT_VERSION,
            "wm": self.watermark,
            "seq": self.seq,
            "ids": ids,
            "l": self._layout_id,
            "g": [list(g.tiles.values()) for g in self._group_list],
            "cd": {name: [[v, ts] for v, ts in seen.items()] for name, seen in self.distinct.items()},
            "ln": self.last_n,
        }
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, specs, blob: bytes, lateness_ms: int = 0, ids: bytes = b"") -> "ViewState":
        """Rebuild a state written by ``to_bytes`` (or by ``to_parts``: ``ids`` its second part) for
        the same specs."""
        doc = orjson.loads(blob)
        state = cls(specs, lateness_ms)
        rows = _tile_rows(doc, _layout(state.specs))
        state.watermark = doc["wm"]
        state.seq = doc["seq"]
        if ids[:1] == b"{":  # ids stored as one JSON object (before they were written incrementally)
            state.ids = orjson.loads(ids)
        elif ids:
            state.ids, state._ids_stored = _stored_ids(ids, state.watermark, state.lateness_ms)
        else:
            state.ids = doc["ids"]
            state._ids_stored = None if state.ids else 0
        state._ids_floor = min(state.ids.values(), default=None)  # else the next apply sets it and pruning stalls
        for group, tiles in zip(state._group_list, rows):
            group.tiles = {row[0]: row for row in tiles}
            group.floor = min(group.tiles, default=None)
        for name, pairs in doc["cd"].items():
            state.distinct[name] = {v: ts for v, ts in pairs}
        for name, items in doc["ln"].items():
            state.last_n[name] = items
        return state


def _ids_before(ids: dict, added: list) -> dict:
    """``ids`` as they were before ``added`` (pairs of ids new to it, appended in this order)."""
    before = dict(ids)
    for event_id, _ in added:
        del before[event_id]
    return before


def append_ids(stored: bytes | None, part: bytes) -> bytes:
    """The stored ids after writing ``part`` (``ViewState.to_parts``' second part) over ``stored``
    (the online store's commit script does the same)."""
    if part[:1] != b"+":
        return part
    if not stored:
        return part[1:]
    return stored + b"," + part[1:] if len(part) > 1 else stored


def _stored_ids(stored: bytes, watermark: int | None, lateness_ms: int) -> tuple[dict, int]:
    """(the live ids, how many pairs are stored) from stored ``[id, ts]`` pairs: a pair repeated
    (an id pruned, then accepted again; or a write replayed) counts at its last place, and the
    pruned prefix is dropped as ``ViewState._prune`` dropped it: every pair before the first one
    within the lateness of ``watermark`` (the ones in memory all were, or came after it)."""
    pairs = orjson.loads(b"[" + stored + b"]")
    ids = dict(pairs)
    if len(ids) != len(pairs):
        ids = {}
        for event_id, ts in pairs:
            ids.pop(event_id, None)
            ids[event_id] = ts
    if watermark is not None:
        _drop_stale_front(ids, watermark - lateness_ms)
    return ids, len(pairs)


def _drop_stale_front(ids: dict, horizon: int) -> None:
    """Drop the ids (in arrival order) before the first one at or after ``horizon``."""
    stale = []
    for event_id, ts in ids.items():
        if ts >= horizon:
            break
        stale.append(event_id)
    for event_id in stale:
        del ids[event_id]


def _tile_rows(doc: dict, layout: _Layout) -> list:
    """The tile rows of each group of ``layout`` from a serialized state."""
    version = doc.get("v")
    if version == 1:
        raise ValueError("state format 1 (written before 0.1.0, by no released version) is not read: rebuild the "
                         "state (featurestore backfill --online)")
    if version != FORMAT_VERSION:
        raise ValueError(f"state format version {version!r} is not {FORMAT_VERSION}: rebuild the state (backfill)")
    if doc.get("l") != layout.layout_id or len(doc["g"]) != len(layout.groups):
        raise ValueError(f"state holds tiles laid out as {doc.get('l')!r}, not as these specs do ({layout.layout_id}): "
                         "it was written for other specs")
    return doc["g"]


def compile_reader(specs, features: list[str]):
    """``(blob, t) -> [value of each of features]``: what ``ViewState.from_bytes(specs, blob).evaluate(t)``
    gives for ``features``, straight from the serialized document — the same generated kernel,
    built for those features only (only their windows are merged), without building a ViewState.
    Raises ``ValueError`` as ``from_bytes`` / ``evaluate`` do."""
    return _compile_reader(specs if isinstance(specs, tuple) else tuple(specs), tuple(features))


@functools.lru_cache(maxsize=256)
def _compile_reader(specs: tuple, features: tuple):
    layout = _layout(specs)
    names = [s.name for s in specs]
    unknown = [f for f in features if f not in names]
    if unknown:
        raise ValueError(f"unknown features {unknown} (features: {', '.join(names)})")
    kernel = build_kernels(layout.groups, specs, layout.group_index, layout.special, frozenset(features)).evaluate
    chosen = [name for name in layout.names if name in features]  # the kernel's output order
    positions = [chosen.index(f) for f in features]
    in_order = positions == list(range(len(chosen)))

    def read(blob: bytes, t: int) -> list:
        doc = orjson.loads(blob)
        tiles = _tile_rows(doc, layout)
        wm = doc["wm"]
        if wm is not None and t < wm:
            raise ValueError(f"streaming state can be evaluated only at or after its watermark {wm}, not at {t}")

        def special(i: int, at: int):
            spec = specs[i]
            if spec.function == "count_distinct":
                return _set_valued(spec, at, [ts for _, ts in doc["cd"].get(spec.name, ())])
            return _set_valued(spec, at, doc["ln"].get(spec.name, ()))

        values, _ = kernel(tiles, wm, t, special)
        return values if in_order else [values[i] for i in positions]

    return read
