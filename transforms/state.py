"""Streaming state of one entity for one feature view.

``ViewState`` applies micro-batches of events in arrival order and evaluates
every feature as of any time at or after its watermark.  Windowed partials
live in tiles ``[k*h, (k+1)*h)`` per (column, hop); tiles that no future
window can reach are dropped, so the state stays bounded by the window length
over the hop, whatever the event rate (``count_distinct`` is bounded by the
distinct values, ``last_n`` by n, event ids by the lateness horizon).

The state serializes to a small JSON document carrying ``FORMAT_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from .aggregations import EMPTY_VALUES, finalize, is_null, merge_moments
from .specs import AggSpec
from .windows import window_start

FORMAT_VERSION = 1

REJECT_LATE = "late"
REJECT_DUPLICATE = "duplicate_event_id"

MOMENT_FUNCTIONS = frozenset({"sum", "mean", "var", "stddev"})  # count needs only COUNT
EXTREME_FUNCTIONS = frozenset({"min", "max"})
POSITIONAL_FUNCTIONS = frozenset({"first", "last"})
SIMPLE_FUNCTIONS = MOMENT_FUNCTIONS | EXTREME_FUNCTIONS | POSITIONAL_FUNCTIONS | {"count", "count_events", "events_per_minute"}

# Tile layout: one flat list per tile (cheap to update, compact in JSON).
N_EVENTS, COUNT, TOTAL, MEAN, M2, LO, HI, F_TS, F_SEQ, F_VAL, L_TS, L_SEQ, L_VAL = range(13)


def _new_tile() -> list:
    return [0, 0, 0.0, 0.0, 0.0, None, None, None, None, None, None, None, None]


@dataclass(frozen=True)
class Rejection:
    """An event the state refused: ``index`` in the applied batch, a reason code and a sentence."""

    index: int
    reason: str
    detail: str


class _TileGroup:
    """Tiles of one (column, hop); ``hop=None`` is the single lifetime tile."""

    __slots__ = ("column", "hop", "totals", "welford", "extremes", "positional", "tiles", "reach", "floor")

    def __init__(self, column: str | None, hop: int | None, functions: set[str], reach: int | None):
        self.column = column
        self.hop = hop
        self.extremes = bool(functions & EXTREME_FUNCTIONS)
        self.positional = bool(functions & POSITIONAL_FUNCTIONS)
        self.totals = bool(functions & {"sum", "mean"})
        self.welford = bool(functions & {"var", "stddev"})  # mean/M2 are kept only when a variance needs them
        self.tiles: dict[int, list] = {}
        self.reach = reach  # longest window served by this group (ms)
        self.floor: int | None = None  # a lower bound of the tile indices present (prune is skipped above it)

    def add(self, ts: int, seq: int, value) -> None:
        k = ts // self.hop if self.hop else 0
        tile = self.tiles.get(k)
        if tile is None:
            tile = self.tiles[k] = _new_tile()
            if self.floor is None or k < self.floor:
                self.floor = k
        tile[N_EVENTS] += 1
        if self.column is None or is_null(value):
            return
        tile[COUNT] += 1
        if self.totals:
            tile[TOTAL] += float(value)
        if self.welford:
            x = float(value)
            delta = x - tile[MEAN]
            tile[MEAN] += delta / tile[COUNT]
            tile[M2] += delta * (x - tile[MEAN])
        if self.extremes:
            if tile[LO] is None or value < tile[LO]:
                tile[LO] = value
            if tile[HI] is None or value > tile[HI]:
                tile[HI] = value
        if self.positional:
            if tile[F_TS] is None or (ts, seq) < (tile[F_TS], tile[F_SEQ]):
                tile[F_TS], tile[F_SEQ], tile[F_VAL] = ts, seq, value
            if tile[L_TS] is None or (ts, seq) > (tile[L_TS], tile[L_SEQ]):
                tile[L_TS], tile[L_SEQ], tile[L_VAL] = ts, seq, value

    def merged(self, k_lo: int | None, k_hi: int | None) -> tuple[list, int | None]:
        """One partial for the tiles with ``k_lo <= k <= k_hi`` (all when None),
        and the index of the oldest non-empty tile among them."""
        out = _new_tile()
        oldest = None
        welford, extremes, positional = self.welford, self.extremes, self.positional
        for k, tile in self.tiles.items():
            if k_lo is not None and not (k_lo <= k <= k_hi):
                continue
            if tile[N_EVENTS] and (oldest is None or k < oldest):
                oldest = k
            out[N_EVENTS] += tile[N_EVENTS]
            if not tile[COUNT]:
                continue
            if welford:
                out[COUNT], out[MEAN], out[M2] = merge_moments(out[COUNT], out[MEAN], out[M2],
                                                               tile[COUNT], tile[MEAN], tile[M2])
            else:
                out[COUNT] += tile[COUNT]
            out[TOTAL] += tile[TOTAL]
            if extremes:
                if out[LO] is None or tile[LO] < out[LO]:
                    out[LO] = tile[LO]
                if out[HI] is None or tile[HI] > out[HI]:
                    out[HI] = tile[HI]
            if positional:
                _merge_positions(out, tile)
        return out, oldest

    def prune(self, watermark: int) -> None:
        if not self.hop or not self.tiles:
            return
        oldest = window_start(watermark, self.reach, self.hop) // self.hop
        if self.floor is not None and self.floor >= oldest:
            return  # nothing below the oldest reachable tile
        for k in [k for k in self.tiles if k < oldest]:
            del self.tiles[k]
        self.floor = oldest


def _merge_positions(out: list, tile: list) -> None:
    if tile[F_TS] is not None and (out[F_TS] is None or (tile[F_TS], tile[F_SEQ]) < (out[F_TS], out[F_SEQ])):
        out[F_TS], out[F_SEQ], out[F_VAL] = tile[F_TS], tile[F_SEQ], tile[F_VAL]
    if tile[L_TS] is not None and (out[L_TS] is None or (tile[L_TS], tile[L_SEQ]) > (out[L_TS], out[L_SEQ])):
        out[L_TS], out[L_SEQ], out[L_VAL] = tile[L_TS], tile[L_SEQ], tile[L_VAL]


def _group_key(spec: AggSpec) -> tuple[str | None, int | None]:
    column = None if spec.function in ("count_events", "events_per_minute", "seconds_since_last") else spec.column
    return column, spec.hop_ms


@dataclass(frozen=True)
class _Layout:
    """What a spec set needs, computed once per spec set (not per entity)."""

    groups: tuple  # ((column, hop), functions, reach)
    distinct: tuple
    last_n: tuple


_LAYOUTS: dict[tuple, _Layout] = {}


def _layout(specs: tuple) -> _Layout:
    layout = _LAYOUTS.get(specs)
    if layout is not None:
        return layout
    functions: dict[tuple, set[str]] = {}
    reach: dict[tuple, int] = {}
    for spec in specs:
        if spec.function in SIMPLE_FUNCTIONS:
            key = _group_key(spec)
            functions.setdefault(key, set()).add(spec.function)
            if spec.window_ms is not None:
                reach[key] = max(reach.get(key, 0), spec.window_ms)
    layout = _Layout(tuple((k, frozenset(f), reach.get(k)) for k, f in functions.items()),
                     tuple(s for s in specs if s.function == "count_distinct"),
                     tuple(s for s in specs if s.function == "last_n"))
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
        self._ids_floor: int | None = None  # a lower bound of the event times in ids
        layout = _layout(self.specs)
        self.groups: dict[tuple, _TileGroup] = {
            key: _TileGroup(key[0], key[1], funcs, reach) for key, funcs, reach in layout.groups}
        self.distinct: dict[str, dict] = {s.name: {} for s in layout.distinct}  # value -> latest ts
        self.last_n: dict[str, list] = {s.name: [] for s in layout.last_n}  # [[ts, seq, value], ...] oldest first
        self._group_list = list(self.groups.values())
        self._distinct_specs = layout.distinct
        self._last_n_specs = layout.last_n

    # -- applying events -------------------------------------------------
    def apply(self, events) -> list[Rejection]:
        """Apply ``(ts_ms, values, event_id)`` tuples in arrival order.

        Returns the events refused (late beyond the lateness, or a repeated
        event id); every other event is counted exactly once.
        """
        rejections: list[Rejection] = []
        groups = self._group_list
        for index, (ts, values, event_id) in enumerate(events):
            wm = self.watermark
            if wm is not None and ts < wm - self.lateness_ms:
                rejections.append(Rejection(index, REJECT_LATE, f"event time {ts} is more than {self.lateness_ms} ms before the entity's watermark {wm}"))
                continue
            if event_id is not None:
                if event_id in self.ids:
                    rejections.append(Rejection(index, REJECT_DUPLICATE, f"event id {event_id!r} was already counted"))
                    continue
                self.ids[event_id] = ts
                if self._ids_floor is None or ts < self._ids_floor:
                    self._ids_floor = ts
            self.seq += 1
            seq = self.seq
            for group in groups:
                group.add(ts, seq, values.get(group.column) if group.column else None)
            for spec in self._distinct_specs:
                value = values.get(spec.column)
                if not is_null(value):
                    seen = self.distinct[spec.name]
                    if seen.get(value, ts) <= ts:
                        seen[value] = ts
            for spec in self._last_n_specs:
                value = values.get(spec.column)
                if not is_null(value):
                    self._push_last(self.last_n[spec.name], spec.n, [ts, seq, value])
            if wm is None or ts > wm:
                self.watermark = ts
        if self.watermark is not None:
            self._prune(self.watermark)
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
        for group in self._group_list:
            group.prune(wm)
        horizon = wm - self.lateness_ms
        if self.ids and (self._ids_floor is None or self._ids_floor < horizon):
            self.ids = {i: ts for i, ts in self.ids.items() if ts >= horizon}
            self._ids_floor = min(self.ids.values(), default=None)
        for spec in self._distinct_specs:
            if spec.window_ms is not None:
                start = window_start(wm, spec.window_ms, spec.hop_ms)
                seen = self.distinct[spec.name]
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
        if self.watermark is not None and t < self.watermark:
            raise ValueError(f"streaming state can be evaluated only at or after its watermark {self.watermark}, not at {t}")
        out = {}
        cache: dict[tuple, tuple] = {}
        horizon = None
        for spec in self.specs:
            value, change = self._value(spec, t, cache)
            out[spec.name] = value
            if change is not None and (horizon is None or change < horizon):
                horizon = change
        return out, horizon

    def _value(self, spec: AggSpec, t: int, cache: dict):
        fn = spec.function
        w = spec.window_ms
        start = None if w is None else window_start(t, w, spec.hop_ms)
        if fn == "seconds_since_last":
            return (None if self.watermark is None else (t - self.watermark) / 1000), None
        if fn == "count_distinct" or fn == "last_n":
            if fn == "count_distinct":
                times = [ts for ts in self.distinct[spec.name].values() if start is None or ts >= start]
                value = len(times)
            else:
                items = [(ts, v) for ts, _, v in self.last_n[spec.name] if start is None or ts >= start]
                value, times = [v for _, v in items], [ts for ts, _ in items]
            change = None
            if w is not None and times:
                change = (min(times) // spec.hop_ms + 1) * spec.hop_ms + w
            return value, change
        key = _group_key(spec)
        bounds = (None, None) if start is None else (start // spec.hop_ms, t // spec.hop_ms)
        hit = cache.get((key, bounds))
        if hit is None:
            hit = cache[(key, bounds)] = self.groups[key].merged(*bounds)
        tile, oldest = hit
        change = None if (w is None or oldest is None) else (oldest + 1) * spec.hop_ms + w
        if fn == "first":
            return tile[F_VAL], change
        if fn == "last":
            return tile[L_VAL], change
        if not tile[N_EVENTS] and fn in EMPTY_VALUES:
            return EMPTY_VALUES[fn], change
        return finalize(fn, n_events=tile[N_EVENTS], count=tile[COUNT], total=tile[TOTAL], mean=tile[MEAN],
                        m2=tile[M2], lo=tile[LO], hi=tile[HI], window_ms=w), change

    # -- persistence ---------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "v": FORMAT_VERSION,
            "wm": self.watermark,
            "seq": self.seq,
            "ids": self.ids,
            "g": [[g.column, g.hop, [[k, *tile] for k, tile in g.tiles.items()]] for g in self._group_list],
            "cd": {name: [[v, ts] for v, ts in seen.items()] for name, seen in self.distinct.items()},
            "ln": self.last_n,
        }
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, specs, blob: bytes, lateness_ms: int = 0) -> "ViewState":
        """Rebuild a state written by ``to_bytes`` for the same specs."""
        doc = orjson.loads(blob)
        if doc.get("v") != FORMAT_VERSION:
            raise ValueError(f"state format version {doc.get('v')!r} is not {FORMAT_VERSION}: rebuild the state (backfill)")
        state = cls(specs, lateness_ms)
        state.watermark = doc["wm"]
        state.seq = doc["seq"]
        state.ids = doc["ids"]
        for column, hop, tiles in doc["g"]:
            group = state.groups.get((column, hop))
            if group is None:
                raise ValueError(f"state holds tiles for ({column!r}, {hop!r}) that these specs do not use")
            group.tiles = {row[0]: row[1:] for row in tiles}
            group.floor = min(group.tiles, default=None)
        for name, pairs in doc["cd"].items():
            state.distinct[name] = {v: ts for v, ts in pairs}
        for name, items in doc["ln"].items():
            state.last_n[name] = items
        return state
