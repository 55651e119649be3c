"""Vectorized evaluation of many ``ViewState`` s of one spec set at once.

The worker evaluates every entity a micro-batch touched, and the online reader
every entity of a request whose windows moved since its last event; doing it
state by state costs a Python merge per tile.  Here the tiles of all states
are laid out in numpy arrays and each window becomes a masked, grouped
reduction.  The partials and their finalization are those of
``transforms.aggregations``; many tiles combine with the exact form of the
Chan merge (mean of means, then within- plus between-tile squared deviations).
"""

from __future__ import annotations

import math

import numpy as np

from .aggregations import EMPTY_VALUES, finalize
from .state import (
    COUNT, F_SEQ, F_TS, F_VAL, HI, L_SEQ, L_TS, L_VAL, LO, M2, MEAN, N_EVENTS, TOTAL,
    ViewState, _group_key, _layout,
)
from .windows import window_start

_NONE = np.iinfo(np.int64).max
_INT_FUNCTIONS = frozenset({"count", "count_events"})


class _Tiles:
    """The tiles of one (column, hop) group of every state, as flat arrays."""

    def __init__(self, states: list[ViewState], key: tuple):
        rows = [(i, k, tile) for i, st in enumerate(states) for k, tile in st.groups[key].tiles.items()]
        m = len(rows)
        self.tiles = [r[2] for r in rows]
        self.idx = np.fromiter((r[0] for r in rows), np.int64, m)
        self.k = np.fromiter((r[1] for r in rows), np.int64, m)
        self.n_events = np.fromiter((t[N_EVENTS] for t in self.tiles), np.float64, m)
        self.count = np.fromiter((t[COUNT] for t in self.tiles), np.float64, m)
        self._cache: dict = {}

    def field(self, pos: int) -> np.ndarray:
        """A numeric field as float64 (None -> NaN)."""
        if pos not in self._cache:
            self._cache[pos] = np.fromiter((np.nan if t[pos] is None else t[pos] for t in self.tiles),
                                           np.float64, len(self.tiles))
        return self._cache[pos]

    def order_field(self, pos: int) -> np.ndarray:
        if pos not in self._cache:
            self._cache[pos] = np.fromiter((-1 if t[pos] is None else t[pos] for t in self.tiles),
                                           np.int64, len(self.tiles))
        return self._cache[pos]


def snapshot_many(states: list[ViewState], times) -> tuple[list[dict], list[int | None]]:
    """``[state.snapshot(t) for state, t in zip(states, times)]``, vectorized; all states share one spec set."""
    n = len(states)
    if n == 0:
        return [], []
    specs = states[0].specs
    t = np.asarray(times, dtype=np.int64)
    for st, ti in zip(states, times):
        if st.specs is not specs and st.specs != specs:
            raise ValueError("snapshot_many needs states of one spec set")
        if st.watermark is not None and ti < st.watermark:
            raise ValueError(f"streaming state can be evaluated only at or after its watermark {st.watermark}, not at {ti}")
    layout = _layout(specs)
    groups = {key: _Tiles(states, key) for key, _, _ in layout.groups}
    values = [dict() for _ in range(n)]
    horizon = np.full(n, _NONE, dtype=np.int64)
    masks: dict = {}
    for spec in specs:
        fn = spec.function
        if fn in ("seconds_since_last", "count_distinct", "last_n"):
            for i, st in enumerate(states):
                value, change = st._value(spec, int(t[i]), {})
                values[i][spec.name] = value
                if change is not None and change < horizon[i]:
                    horizon[i] = change
            continue
        key = _group_key(spec)
        g = groups[key]
        sel = masks.get((key, spec.window_ms))
        if sel is None:
            if spec.window_ms is None:
                sel = np.arange(len(g.k))
            else:
                k_lo = window_start(t, spec.window_ms, spec.hop_ms) // spec.hop_ms
                k_hi = t // spec.hop_ms
                sel = np.flatnonzero((g.k >= k_lo[g.idx]) & (g.k <= k_hi[g.idx]))
            masks[(key, spec.window_ms)] = sel
        si = g.idx[sel]
        column = _column(fn, spec, g, sel, si, n)
        if spec.window_ms is not None:
            nonempty = g.n_events[sel] > 0
            oldest = np.full(n, _NONE, dtype=np.int64)
            np.minimum.at(oldest, si[nonempty], g.k[sel][nonempty])
            has = oldest != _NONE
            change = np.where(has, (oldest + 1) * spec.hop_ms + spec.window_ms, _NONE)
            np.minimum(horizon, change, out=horizon)
        for i in range(n):
            values[i][spec.name] = column[i]
    return values, [None if h == _NONE else int(h) for h in horizon]


def evaluate_many(states: list[ViewState], times) -> list[dict]:
    """Every feature of each state as of its time (vectorized ``ViewState.evaluate``)."""
    return snapshot_many(states, times)[0]


def _column(fn: str, spec, g: _Tiles, sel: np.ndarray, si: np.ndarray, n: int) -> list:
    n_events = np.bincount(si, weights=g.n_events[sel], minlength=n)
    if fn in ("first", "last"):
        return _positional(fn, g, sel, si, n)
    if fn in ("count_events", "events_per_minute"):
        raw = finalize(fn, n_events=n_events, count=None, total=None, mean=None, m2=None, lo=None, hi=None,
                       window_ms=spec.window_ms)
        return _python(fn, raw, n_events)
    count = np.bincount(si, weights=g.count[sel], minlength=n)
    total = mean = m2 = lo = hi = None
    if fn in ("sum", "mean"):
        total = np.bincount(si, weights=g.field(TOTAL)[sel], minlength=n)
    elif fn in ("var", "stddev"):
        c_i, mean_i, m2_i = g.count[sel], g.field(MEAN)[sel], g.field(M2)[sel]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(si, weights=c_i * mean_i, minlength=n) / np.where(count > 0, count, 1)
        dev = mean_i - mean[si]
        m2 = np.bincount(si, weights=m2_i, minlength=n) + np.bincount(si, weights=c_i * dev * dev, minlength=n)
    elif fn in ("min", "max"):
        pos, ufunc, init = (LO, np.fmin, np.inf) if fn == "min" else (HI, np.fmax, -np.inf)
        acc = np.full(n, init)
        ufunc.at(acc, si, g.field(pos)[sel])
        lo = hi = np.where(np.isinf(acc), np.nan, acc)
    raw = finalize(fn, n_events=n_events, count=count, total=total, mean=mean, m2=m2, lo=lo, hi=hi,
                   window_ms=spec.window_ms)
    return _python(fn, raw, n_events)


def _python(fn: str, raw, n_events) -> list:
    """Array values -> Python values with the scalar path's empty and null conventions."""
    out = []
    empty = EMPTY_VALUES.get(fn)
    as_int = fn in _INT_FUNCTIONS
    for value, events in zip(np.asarray(raw, dtype=np.float64).tolist(), n_events.tolist()):
        if not events and empty is not None:
            out.append(empty)
        elif math.isnan(value):
            out.append(None)
        else:
            out.append(int(value) if as_int else value)
    return out


def _positional(fn: str, g: _Tiles, sel: np.ndarray, si: np.ndarray, n: int) -> list:
    has = g.count[sel] > 0
    rows, owners = sel[has], si[has]
    out: list = [None] * n
    if not len(rows):
        return out
    if fn == "first":
        order = np.lexsort((g.order_field(F_SEQ)[rows], g.order_field(F_TS)[rows], owners))
        pos = F_VAL
    else:
        order = np.lexsort((-g.order_field(L_SEQ)[rows], -g.order_field(L_TS)[rows], owners))
        pos = L_VAL
    owners_sorted = owners[order]
    firsts = np.flatnonzero(np.r_[True, owners_sorted[1:] != owners_sorted[:-1]])
    for at in firsts:
        out[int(owners_sorted[at])] = g.tiles[int(rows[order[at]])][pos]
    return out
