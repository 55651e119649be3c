"""Evaluating the specs for a slice of queries: each query's range ``[lo, hi)`` of sorted accepted
events per window, what the specs of one window share (prefix sums, counts, one min / max table per
column), and one spec's values over those ranges (``_evaluate``)."""

from __future__ import annotations

import threading
from typing import Any, Hashable

import numpy as np
import pandas as pd

from ..aggregations import finalize
from ..specs import AggSpec
from ..windows import window_start
from .ranges import _Column, _count_distinct, _range_moments, _sparse_table

_Window = tuple[int, int] | None  # (window, hop) in ms; None: lifetime


def _window_key(spec: AggSpec) -> _Window:
    """The (window, hop) a spec reads, None for lifetime: specs with the same key share ranges."""
    if spec.window_ms is None:
        return None
    assert spec.hop_ms is not None  # AggSpec sets the default hop of every window
    return (spec.window_ms, spec.hop_ms)


def _column_of(spec: AggSpec) -> str:
    """The input column of a column aggregation (``AggSpec`` requires one)."""
    if spec.column is None:
        raise ValueError(f"aggregation {spec.name!r}: function {spec.function!r} needs an input column")
    return spec.column


class _Shared:
    """What every slice of queries shares: the sorted accepted events and their columns.

    ``chunk_rows`` and ``local_table_factor`` are the settings of ``transforms.batch`` the slices
    were cut with (``CHUNK_ROWS``, ``LOCAL_TABLE_FACTOR``)."""

    def __init__(self, specs: list[AggSpec], events: pd.DataFrame, order: np.ndarray, s_ts: np.ndarray,
                 ekey: np.ndarray, base: int, span: int, chunk_rows: int, local_table_factor: int) -> None:
        self.events, self.order, self.s_ts, self.ekey = events, order, s_ts, ekey
        self.base, self.span = base, span
        self.chunk_rows, self.local_table_factor = chunk_rows, local_table_factor
        self.columns: dict[str, _Column] = {}
        self.buffers: dict[tuple[int, str, str], np.ndarray] = {}  # reusable sparse-table storage per thread
        self.lock = threading.Lock()
        # windows each (column, min/max) reads: one table per slice serves them all
        self.extremum_windows: dict[tuple[str, str], set[_Window]] = {}
        # windows read through prefix sums or min/max tables: a slice's tables cover their ranges
        self.range_windows: set[_Window] = set()
        for spec in specs:
            if spec.function in ("min", "max"):
                self.extremum_windows.setdefault((_column_of(spec), spec.function), set()).add(_window_key(spec))
            if spec.function in ("min", "max", "sum", "count", "mean"):
                self.range_windows.add(_window_key(spec))

    def column(self, name: str) -> _Column:
        """Column ``name`` of the events in sorted order (built once, shared by the threads)."""
        with self.lock:
            if name not in self.columns:
                col = self.events[name]
                self.columns[name] = _Column(_values_of(col)[self.order], integer=col.dtype.kind in "iu")
            return self.columns[name]


def _values_of(col: pd.Series) -> np.ndarray:
    """A column's values: nullable integers with nulls as Python ints and None (pandas gives float64,
    exact only up to 2^53), others as pandas gives them."""
    if col.dtype.kind in "iu" and not isinstance(col.dtype, np.dtype) and col.hasnans:
        return col.to_numpy(dtype=object, na_value=None)
    return col.to_numpy()


class _Slice:
    """Queries [r0, r1): their ranges [lo, hi) per window, and what specs of a window share."""

    def __init__(self, shared: _Shared, q_codes: np.ndarray, q_ts: np.ndarray, hi: np.ndarray,
                 ent_start: np.ndarray) -> None:
        self.shared = shared
        self.q_codes, self.q_ts, self.hi, self.ent_start = q_codes, q_ts, hi, ent_start
        self.s_ts = shared.s_ts
        # every range of this slice lies inside ekey[a:b] (lo >= entity start, lo <= hi)
        self.a = int(ent_start.min()) if len(hi) else 0
        self.b = int(hi.max()) if len(hi) else 0
        self._cache: dict[Hashable, Any] = {}

    def column(self, name: str) -> _Column:
        return self.shared.column(name)

    def lo(self, spec: AggSpec) -> np.ndarray:
        """First sorted row inside the window of each query (the entity's first row for lifetime)."""
        return self.lo_of(_window_key(spec))

    def lo_of(self, wk: _Window) -> np.ndarray:
        """``lo`` of the queries for the window ``wk``."""
        if wk is None:
            return self.ent_start
        key = ("lo", wk)
        if key not in self._cache:
            sh = self.shared
            window_ms, hop_ms = wk
            if hop_ms == 1:
                start = self.q_ts - window_ms
            else:
                start = window_start(self.q_ts, window_ms, hop_ms)
            start -= sh.base
            start += self.q_codes * sh.span
            lo = np.searchsorted(sh.ekey[self.a:self.b], start, side="left")
            lo += self.a
            self._cache[key] = lo
        return self._cache[key]

    def count(self, spec: AggSpec) -> np.ndarray:
        """Events per query window (null values included)."""
        key = ("n", _window_key(spec))
        if key not in self._cache:
            self._cache[key] = self.hi - self.lo(spec)
        return self._cache[key]

    def at(self, name: str, what: str, rows: np.ndarray, tag: Hashable) -> np.ndarray:
        """Prefix sums ("sum" or "count") of column ``name`` at ``rows`` (cached under ``tag``), counted
        from the slice's origin: differences of them are range sums.  Summing from the origin rather
        than from the first event keeps the prefixes, and so their rounding errors, small."""
        key = ("at", name, what, tag)
        if key not in self._cache:
            origin, size = self._origin()
            col = self.column(name)
            if origin == 0 and size == len(col.raw):
                prefix = col.prefix(what)  # whole history, kept for every slice
            else:
                prefix = self._local_prefix(col, name, what, origin, size)
            self._cache[key] = prefix[rows - origin] if origin else prefix[rows]
        return self._cache[key]

    def _local_prefix(self, col: _Column, name: str, what: str, origin: int, size: int) -> np.ndarray:
        """Prefix sums ("sum" or "count") of ``col`` over this slice's rows ``[origin, origin + size)``."""
        pkey = ("prefix", name, what)
        prefix = self._cache.get(pkey)
        if prefix is None:
            part = (col.valid if what == "count" else col.numeric())[origin:origin + size]
            prefix = self._cache[pkey] = np.zeros(size + 1, dtype="int64" if what == "count" else "float64")
            np.cumsum(part, out=prefix[1:])
        return prefix

    def total(self, spec: AggSpec) -> np.ndarray:
        """Sum of the non-null values per query window."""
        return self._window_prefix_diff(spec, "sum", "total")

    def valid_count(self, spec: AggSpec) -> np.ndarray:
        """Non-null values per query window."""
        if self.column(_column_of(spec)).all_valid:
            return self.count(spec)
        return self._window_prefix_diff(spec, "count", "count")

    def _window_prefix_diff(self, spec: AggSpec, what: str, name: str) -> np.ndarray:
        """Per query: the prefix ``what`` (sum or count of the column) at the window's end minus at its start."""
        wk = _window_key(spec)
        column = _column_of(spec)
        key = (name, column, wk)
        if key not in self._cache:
            self._cache[key] = (self.at(column, what, self.hi, "hi")
                                - self.at(column, what, self.lo(spec), wk))
        return self._cache[key]

    def extremum(self, spec: AggSpec) -> np.ndarray:
        """min / max of the non-null values of each query window (NaN when none; for an integer column,
        Python ints and None)."""
        op, name = spec.function, _column_of(spec)
        col = self.column(name)
        m = len(self.hi)
        origin, size = self._origin() if len(col.raw) else (0, 0)
        if size <= 0:  # no event, or every window of this slice is empty
            return np.full(m, None, dtype=object) if col.integer else np.full(m, np.nan)
        windows = self.shared.extremum_windows[(name, op)]
        picks = {wk: self._pick(wk) for wk in windows}
        levels = max(p[0] for p in picks.values())
        key = ("table", name, op)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._extremum_table(col, name, op, levels, origin, size)
        _, first, second, has = picks[_window_key(spec)]
        a, b = cached[first], cached[second]
        out = np.minimum(a, b, out=a) if op == "min" else np.maximum(a, b, out=a)
        bad = (self.valid_count(spec) == 0) if col.integer else np.isinf(out)
        if has is not None:
            bad |= ~has
        if col.integer:
            ints = np.empty(m, dtype=object)
            ints[:] = out.tolist()
            ints[bad] = None
            return ints
        out[bad] = np.nan
        return out

    def _extremum_table(self, col: _Column, name: str, op: str, levels: int, origin: int, size: int) -> np.ndarray:
        """The min (max) sparse table of ``levels`` over the rows ``[origin, origin + size)``: one over
        the whole history, shared by every slice, when the ranges reach across it; else this slice's
        own, in a buffer reused by the thread."""
        if size == len(col.raw):  # ranges reach across the whole history: one table for all slices
            with col.lock:
                built = col._cache.get(("sp", op))  # (levels, table): more levels serve fewer
                if built is None or built[0] < levels:
                    built = col._cache[("sp", op)] = (levels, _sparse_table(col.floor(op), op, levels))
            return built[1]
        slot = (threading.get_ident(), name, op)  # a buffer per thread: slices run concurrently
        buf = self.shared.buffers.get(slot)
        flat = _sparse_table(col.floor(op)[origin:origin + size], op, levels, buf)
        if buf is None or len(buf) < len(flat):
            self.shared.buffers[slot] = flat
        return flat

    def _origin(self) -> tuple[int, int]:
        """(first row, rows) of the events the prefix sums and min/max tables of this slice cover."""
        if "origin" not in self._cache:
            sh = self.shared
            n = len(self.s_ts)
            lows = [self.lo_of(wk) for wk in sh.range_windows]
            low = min((int(lo.min()) for lo in lows if len(lo)), default=self.b)
            size = self.b - low
            if size > sh.local_table_factor * (sh.chunk_rows + len(self.hi)):
                low, size = 0, n  # unsorted queries: ranges anywhere, use a whole-history table
            self._cache["origin"] = (low, size)
        return self._cache["origin"]

    def _pick(self, wk: _Window) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
        """Sparse-table addressing of each query's [lo, hi) (shared by min and max of one window):
        (top level, flat index of the two overlapping 2^j blocks, non-empty mask or None)."""
        key = ("pick", wk)
        if key not in self._cache:
            origin, size = self._origin()
            lo, hi = self.lo_of(wk), self.hi
            length = hi - lo
            j = np.frexp(length)[1].astype("int64")  # floor(log2(length)) + 1 for length > 0
            j -= 1
            np.maximum(j, 0, out=j)
            has = None if len(length) == 0 or length.min() > 0 else length > 0
            base = j * size
            base -= origin
            first = base + lo
            second = base
            second += hi
            second -= np.left_shift(1, j)
            if has is not None:
                first[~has] = 0
                second[~has] = 0
            top = int(j.max()) if len(j) else 0
            self._cache[key] = (top, first, second, has)
        return self._cache[key]


def _evaluate(spec: AggSpec, part: _Slice) -> np.ndarray:
    """The values of ``spec`` for the queries of ``part`` (floats with NaN, or objects with None)."""
    fn = spec.function
    hi = part.hi
    if fn in ("count_events", "events_per_minute"):
        return finalize(fn, n_events=part.count(spec), count=None, total=None, mean=None, m2=None, lo=None, hi=None,
                        window_ms=spec.window_ms)
    if fn == "seconds_since_last":
        s_ts, ent_start, q_ts = part.s_ts, part.ent_start, part.q_ts
        has = hi > ent_start
        last_ts = s_ts[np.where(has, hi - 1, 0)] if len(s_ts) else np.zeros(len(hi), dtype="int64")
        return np.where(has, (q_ts - last_ts) / 1000, np.nan)
    col = part.column(_column_of(spec))
    lo = part.lo(spec)
    if fn in ("first", "last", "last_n"):
        return _positional(fn, spec.n, col, lo, hi)
    if fn == "count_distinct":
        return _count_distinct(col.raw, col.valid, lo, hi)
    if fn in ("min", "max"):
        return part.extremum(spec)
    if fn in ("count", "sum", "mean"):
        total = part.total(spec) if fn != "count" else None
        return finalize(fn, n_events=None, count=part.valid_count(spec), total=total, mean=None, m2=None,
                        lo=None, hi=None, window_ms=spec.window_ms)
    c, mean, m2 = _range_moments(col, lo, hi)
    return finalize(fn, n_events=hi - lo, count=c, total=None, mean=mean, m2=m2, lo=None, hi=None,
                    window_ms=spec.window_ms)


def _positional(fn: str, n: int, col: _Column, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """first / last / last_n of the non-null values of rows [lo, hi) per query (objects, None or [])."""
    next_valid, prev_valid = col.neighbours()
    size = len(col.raw)
    if size == 0:
        empty = np.empty(len(lo), dtype=object)
        empty[:] = [[] for _ in range(len(lo))] if fn == "last_n" else None
        return empty
    raw = col.raw.astype(object) if col.raw.dtype.kind == "f" else col.raw
    if fn == "first":
        idx = next_valid[np.minimum(lo, max(size - 1, 0))] if size else lo
        ok = (lo < hi) & (idx < hi)
        return _take(raw, idx, ok)
    last_idx = prev_valid[np.maximum(hi - 1, 0)] if size else hi - 1
    ok = (hi > lo) & (last_idx >= lo)
    if fn == "last":
        return _take(raw, last_idx, ok)
    picks = []
    idx, live = last_idx.copy(), ok.copy()
    for _ in range(n):
        picks.append((idx.copy(), live.copy()))
        step = np.maximum(idx - 1, 0)
        idx = np.where(live & (idx > 0), prev_valid[step], -1)
        live = live & (idx >= lo)
    result = np.empty(len(lo), dtype=object)
    for q in range(len(lo)):
        result[q] = [raw[i].item() if hasattr(raw[i], "item") else raw[i] for i, alive in
                     ((p[0][q], p[1][q]) for p in reversed(picks)) if alive]
    return result


def _take(raw: np.ndarray, idx: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``raw[idx]`` as Python values where ``ok``, None elsewhere."""
    out = np.empty(len(idx), dtype=object)
    if len(raw):
        vals = raw[np.clip(idx, 0, len(raw) - 1)]
        out[:] = [v.item() if hasattr(v, "item") else v for v in vals]
    out[~ok] = None
    return out
