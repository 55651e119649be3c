"""Vectorized batch path: the same aggregations over whole event histories.

Given many entities' events (in arrival order) and query points (entity,
time), ``compute_batch`` returns every feature as of each query, with the
same acceptance rules (lateness, duplicate ids), window formula and partial
algebra (``transforms.aggregations``) as the streaming ``ViewState``.

How a window becomes a range: accepted events are sorted by (entity, time,
arrival); the events of entity e inside ``[start, t]`` are the contiguous
rows ``[lo, hi)`` found by binary search on a composite (entity, time) key.
Ranges are then reduced without touching each event:

* count, sum, count_events: prefix sums (per slice of queries, counted from the
  first event its windows reach, so rounding stays relative to the windows);
* min, max: a sparse table (idempotent merge, two overlapping blocks), built
  per slice of queries over just the events that slice's windows reach;
* var, stddev: binary lifting over power-of-two blocks with the Chan merge;
* first, last, last_n: the next/previous non-null row;
* count_distinct: a sliding window over each entity's sorted events.

Performance notes.  Queries are evaluated in slices of ``CHUNK_ROWS`` rows, so
temporaries stay small and are recycled by the allocator instead of being
page-faulted in afresh (with transparent huge pages, faulting in gigabytes of
fresh temporaries cost more system time than the arithmetic itself).  What
several specs need is computed once per slice: ``lo`` per (window, hop), the
prefix sums gathered at ``hi`` per column, counts and totals per window, and
one min (max) table per column serving all its windows.  Sorting uses 16-bit
radix passes; when every entity's events arrive in time order (and there is
no id column) acceptance is decided without grouping: nothing can be late.
Inputs with queries of ``PARALLEL_ROWS`` rows or more are cut into
``COMPUTE_THREADS`` parts of consecutive entities, each sorted, accepted and
evaluated on its own thread (numpy releases the GIL in the sorts, gathers and
binary searches).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .aggregations import finalize, merge_moments
from .specs import AggSpec
from .state import REJECT_DUPLICATE, REJECT_LATE
from .windows import window_start


@dataclass
class BatchResult:
    """``values``: one row per query; ``rejects``: refused input rows; ``accepted``: mask over input rows."""

    values: pd.DataFrame
    rejects: pd.DataFrame
    accepted: np.ndarray


def accept_events(codes: np.ndarray, ts: np.ndarray, ids, lateness_ms: int):
    """Arrival-order acceptance per entity: returns (accepted mask, reasons array or None).

    An event is late when older than the entity's watermark (the latest accepted time) minus the
    lateness, and a duplicate when its id is that of an accepted event still within the lateness
    horizon.  Where every event carrying a given (entity, id) has the same time (redeliveries), the
    first one not late is accepted and the others are duplicates: decided by hashing.  The entities
    where an id comes back with another time are decided event by event (``_accept_in_order``)."""
    n = len(ts)
    frame = pd.DataFrame({"c": codes, "ts": ts})
    prev_max = frame.groupby("c", sort=False)["ts"].cummax().groupby(frame["c"], sort=False).shift(1)
    late = (ts < (prev_max.to_numpy(dtype="float64") - lateness_ms))  # NaN compares False
    reasons = np.full(n, None, dtype=object)
    reasons[late] = REJECT_LATE
    if ids is None:
        return reasons == None, reasons  # noqa: E711 (elementwise)
    id_codes, id_uniques = pd.factorize(pd.Series(ids, dtype=object))  # -1: no id
    rows = np.flatnonzero(id_codes >= 0)
    if len(rows) < 2:
        return reasons == None, reasons  # noqa: E711
    pair = (codes[rows].astype(np.int64) + 1) * len(id_uniques) + id_codes[rows]  # (entity, id), codes >= -1
    repeated = pd.Series(pair).duplicated(keep=False).to_numpy()
    if not repeated.any():
        return reasons == None, reasons  # noqa: E711
    rows, pair = rows[repeated], pair[repeated]  # arrival order
    fresh = ~late[rows]
    reasons[rows[fresh][pd.Series(pair[fresh]).duplicated().to_numpy()]] = REJECT_DUPLICATE  # all but the first
    times = pd.DataFrame({"pair": pair, "ts": ts[rows]}).drop_duplicates()["pair"]
    moved = times[times.duplicated()].to_numpy()
    if len(moved):
        entities = np.unique(moved // len(id_uniques)) - 1
        again = np.flatnonzero(np.isin(codes, entities))
        reasons[again] = _accept_in_order(codes[again].tolist(), ts[again].tolist(), id_codes[again].tolist(),
                                          lateness_ms)
    return reasons == None, reasons  # noqa: E711 (elementwise)


def _accept_in_order(codes: list, ts: list, ids: list, lateness_ms: int) -> list:
    """The reason (None: accepted) of each event, decided one at a time in arrival order (``ids``:
    codes of the event ids, -1 for none)."""
    watermark: dict = {}
    seen: dict = {}  # (entity, id) -> time of the latest accepted event with that id
    out = []
    for c, t, event_id in zip(codes, ts, ids):
        wm = watermark.get(c)
        if wm is not None and t < wm - lateness_ms:
            out.append(REJECT_LATE)
            continue
        if event_id >= 0:
            last = seen.get((c, event_id))
            if last is not None and last >= wm - lateness_ms:
                out.append(REJECT_DUPLICATE)
                continue
            seen[(c, event_id)] = t
        out.append(None)
        if wm is None or t > wm:
            watermark[c] = t
    return out


def _valid_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind in "iub":
        return np.ones(len(values), dtype=bool)
    return pd.notna(pd.Series(values, dtype=object)).to_numpy() & np.array(
        [not (isinstance(v, float) and v != v) for v in values], dtype=bool)


def _locked(method):
    """Run ``method`` under the object's lock (lazy caches shared by the slice threads)."""
    @functools.wraps(method)
    def run(self, *args):
        with self.lock:
            return method(self, *args)
    return run


class _Column:
    """Per-column arrays over the sorted accepted events, built lazily."""

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        self.valid = _valid_mask(raw)
        self.all_valid = bool(self.valid.all())
        self._cache: dict = {}
        self.lock = threading.RLock()  # slices evaluated in threads build the lazy arrays once

    @_locked
    def numeric(self) -> np.ndarray:
        if "x" not in self._cache:
            if self.all_valid:
                x = self.raw.astype("float64", copy=False)
            else:
                x = np.zeros(len(self.raw), dtype="float64")
                x[self.valid] = self.raw[self.valid].astype("float64")
            self._cache["x"] = x
        return self._cache["x"]

    @_locked
    def prefix(self, what: str) -> np.ndarray:
        key = "p_" + what
        if key not in self._cache:
            arr = self.valid.astype("int64") if what == "count" else self.numeric()
            out = np.zeros(len(arr) + 1, dtype=arr.dtype)
            np.cumsum(arr, out=out[1:])
            self._cache[key] = out
        return self._cache[key]

    @_locked
    def neighbours(self):
        """(next_valid, prev_valid): nearest non-null row at or after / at or before each row (n = none / -1)."""
        if "nb" not in self._cache:
            n = len(self.raw)
            idx = np.arange(n)
            prev_valid = np.maximum.accumulate(np.where(self.valid, idx, -1)) if n else idx
            nxt = np.where(self.valid, idx, n)
            next_valid = np.minimum.accumulate(nxt[::-1])[::-1] if n else idx
            self._cache["nb"] = (next_valid, prev_valid)
        return self._cache["nb"]

    @_locked
    def floor(self, op: str) -> np.ndarray:
        """Values with nulls as the identity of ``op`` (+inf for min, -inf for max)."""
        key = ("floor", op)
        if key not in self._cache:
            x = self.numeric()
            self._cache[key] = x if self.all_valid else np.where(self.valid, x, np.inf if op == "min" else -np.inf)
        return self._cache[key]

    @_locked
    def lifting(self, levels: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Moments of blocks [i, i + 2^j) for j <= levels (blocks clipped at the end)."""
        table = self._cache.get("lift")
        if table is None:
            table = self._cache["lift"] = [(self.valid.astype("float64"), self.numeric(), np.zeros(len(self.raw)))]
        while len(table) <= levels:
            (c, m, q), step = table[-1], 1 << (len(table) - 1)
            c2, m2_, q2 = c.copy(), m.copy(), q.copy()
            if step < len(c):
                c2[:-step], m2_[:-step], q2[:-step] = merge_moments(c[:-step], m[:-step], q[:-step],
                                                                    c[step:], m[step:], q[step:])
            table.append((c2, m2_, q2))
        return table


def _levels_for(length: np.ndarray) -> int:
    top = int(length.max()) if len(length) else 0
    return max(top.bit_length() - 1, 0)


def _sparse_table(level0: np.ndarray, op: str, levels: int, buffer: np.ndarray | None = None) -> np.ndarray:
    """Levels 0..levels of a sparse table laid end to end (level j starts at j * len(level0)):
    entry i of level j is the min (max) of level0[i : i + 2^j] (clipped at the end)."""
    n = len(level0)
    size = (levels + 1) * n
    flat = np.empty(size, dtype="float64") if buffer is None or len(buffer) < size else buffer[:size]
    table = flat.reshape(levels + 1, n)
    table[0] = level0
    reduce = np.minimum if op == "min" else np.maximum
    for j in range(1, levels + 1):
        prev, cur, step = table[j - 1], table[j], 1 << (j - 1)
        if step < n:
            reduce(prev[:-step], prev[step:], out=cur[:-step])
            cur[-step:] = prev[-step:]
        else:
            cur[:] = prev
    return flat


def _range_moments(col: _Column, lo: np.ndarray, hi: np.ndarray):
    length = hi - lo
    levels = _levels_for(length)
    table = col.lifting(levels)
    q = len(lo)
    c, mean, m2 = np.zeros(q), np.zeros(q), np.zeros(q)
    pos = lo.copy()
    for level in range(levels, -1, -1):
        take = (length >> level) & 1 == 1
        if not take.any():
            continue
        tc, tm, tq = table[level]
        p = pos[take]
        c[take], mean[take], m2[take] = merge_moments(c[take], mean[take], m2[take], tc[p], tm[p], tq[p])
        pos[take] += 1 << level
    return c, mean, m2


def _count_distinct(raw, valid, ent_start, lo, hi) -> np.ndarray:
    """Distinct non-null values in rows [lo, hi) per query, by a sliding window per entity."""
    out = np.zeros(len(lo), dtype="int64")
    order = np.lexsort((lo, hi))  # queries by increasing hi then lo
    # Windows of one entity have non-decreasing lo and hi when sorted by time; process in that order.
    counts: dict = {}
    cur_lo = cur_hi = 0
    for qi in order:
        a, b = int(lo[qi]), int(hi[qi])
        if a < cur_lo or b < cur_hi or a > cur_hi:  # jumped (new entity or non-monotone): reset
            counts, cur_lo, cur_hi = {}, a, a
        while cur_hi < b:
            if valid[cur_hi]:
                v = raw[cur_hi]
                counts[v] = counts.get(v, 0) + 1
            cur_hi += 1
        while cur_lo < a:
            if valid[cur_lo]:
                v = raw[cur_lo]
                left = counts[v] - 1
                if left:
                    counts[v] = left
                else:
                    del counts[v]
            cur_lo += 1
        out[qi] = len(counts)
    return out


def _radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative int64 keys: LSD radix passes over 16-bit digits.

    numpy sorts 16-bit integers stably with a radix sort, several times faster
    than its stable (merge) sort of int64; equal keys keep their input order.
    """
    top = int(keys.max()) if len(keys) else 0
    order = np.argsort(keys.astype(np.uint16), kind="stable")  # the cast keeps the low 16 bits
    shift = 16
    while top >> shift:
        digit = (keys >> shift).astype(np.uint16)[order]
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


def _sort_events(codes: np.ndarray, ts: np.ndarray, base: int, span: int):
    """(order, in_order, sorted codes, sorted ts): all rows by (entity, time, arrival), and whether
    every entity's events arrive in non-decreasing time (then nothing can be late)."""
    if len(codes) == 0:
        return np.zeros(0, dtype="int64"), True, codes, ts
    if codes.min() >= 0:
        order = _radix_argsort(codes)  # entities, each in arrival order
        s_codes, s_ts = codes[order], ts[order]
        if not np.any((s_ts[1:] < s_ts[:-1]) & (s_codes[1:] == s_codes[:-1])):
            return order, True, s_codes, s_ts
        del s_codes, s_ts
    ekey = codes * span
    ekey += ts
    ekey -= base
    # null keys (code -1) make negative keys: numpy's stable sort then
    order = _radix_argsort(ekey) if codes.min() >= 0 else np.argsort(ekey, kind="stable")
    return order, False, codes[order], ts[order]


def _event_bounds(s_codes: np.ndarray, ekey: np.ndarray, r0: int, r1: int):
    """For sorted events r0..r1-1 as queries: (first row of the entity, end of the run of rows
    with the same (entity, time)), i.e. the lifetime range as of each event, ties included."""
    if r1 <= r0:
        return np.zeros(0, dtype="int64"), np.zeros(0, dtype="int64")
    rows = np.arange(r0, r1, dtype="int64")
    first = np.empty(r1 - r0, dtype=bool)
    first[1:] = s_codes[r0 + 1:r1] != s_codes[r0:r1 - 1]
    first[0] = True
    start = np.where(first, rows, 0)
    start[0] = np.searchsorted(s_codes, s_codes[r0], side="left")
    np.maximum.accumulate(start, out=start)
    last = np.empty(r1 - r0, dtype=bool)
    last[:-1] = ekey[r0 + 1:r1] != ekey[r0:r1 - 1]
    last[-1] = True
    end = np.where(last, rows + 1, len(ekey))
    end[-1] = np.searchsorted(ekey, ekey[r1 - 1], side="right")
    backwards = end[::-1]
    np.minimum.accumulate(backwards, out=backwards)
    return start, end


def _key_column(keys: pd.Series, uniques, row_codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The "key" output column (object array): ``keys`` at ``rows``, whose codes are ``row_codes``."""
    plain = (isinstance(keys.dtype, np.dtype) and keys.dtype.kind in "iu") or isinstance(keys.dtype, pd.StringDtype)
    if len(row_codes) and row_codes.min() >= 0 and plain:
        # box each distinct key once, then gather the boxes (same values as keys.to_numpy(dtype=object))
        return np.asarray(uniques, dtype=object)[row_codes]
    return keys.to_numpy(dtype=object)[rows]


def _rejects_frame(rows: np.ndarray, reasons: np.ndarray, ev_ts: np.ndarray, keys: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({
        "row": rows,
        "reason": reasons,
        "detail": [f"{reason}: event time {ev_ts[r]} of entity {keys.iat[r]!r}" for r, reason in zip(rows, reasons)],
    })


#: Queries are evaluated in slices of this many rows: every temporary stays small (and is reused
#: by the allocator instead of being faulted in afresh), and min/max tables cover only the events
#: the slice's windows reach.
CHUNK_ROWS = 1 << 16
#: Threads evaluating slices (or parts of entities) at once: numpy releases the GIL in the gathers,
#: binary searches and prefix sums that make up a slice's work, so a second core nearly halves it.
COMPUTE_THREADS = min(2, os.cpu_count() or 1)
#: A slice builds its own min/max table over the events its windows reach when those are at most
#: this many times CHUNK_ROWS (sorted queries); otherwise (unsorted queries, windows holding huge
#: numbers of events) it uses one table over the whole history, built once.
LOCAL_TABLE_FACTOR = 8


class _Shared:
    """What every slice of queries shares: the sorted accepted events and their columns."""

    def __init__(self, specs, events, order, s_ts, ekey, base, span):
        self.events, self.order, self.s_ts, self.ekey = events, order, s_ts, ekey
        self.base, self.span = base, span
        self.columns: dict[str, _Column] = {}
        self.buffers: dict = {}  # reusable sparse-table storage per (thread, column, op)
        self.lock = threading.Lock()
        # windows each (column, min/max) reads: one table per slice serves them all
        self.extremum_windows: dict = {}
        # windows read through prefix sums or min/max tables: a slice's tables cover their ranges
        self.range_windows: set = set()
        for spec in specs:
            if spec.function in ("min", "max"):
                self.extremum_windows.setdefault((spec.column, spec.function), set()).add(_window_key(spec))
            if spec.function in ("min", "max", "sum", "count", "mean"):
                self.range_windows.add(_window_key(spec))

    def column(self, name: str) -> _Column:
        with self.lock:
            if name not in self.columns:
                raw = self.events[name].to_numpy()
                self.columns[name] = _Column(raw[self.order])
            return self.columns[name]


def _window_key(spec: AggSpec):
    return None if spec.window_ms is None else (spec.window_ms, spec.hop_ms)


class _Slice:
    """Queries [r0, r1): their ranges [lo, hi) per window, and what specs of a window share."""

    def __init__(self, shared: _Shared, q_codes, q_ts, hi, ent_start):
        self.shared = shared
        self.q_codes, self.q_ts, self.hi, self.ent_start = q_codes, q_ts, hi, ent_start
        self.s_ts = shared.s_ts
        # every range of this slice lies inside ekey[a:b] (lo >= entity start, lo <= hi)
        self.a = int(ent_start.min()) if len(hi) else 0
        self.b = int(hi.max()) if len(hi) else 0
        self._cache: dict = {}

    def column(self, name: str) -> _Column:
        return self.shared.column(name)

    def lo(self, spec: AggSpec) -> np.ndarray:
        """First sorted row inside the window of each query (the entity's first row for lifetime)."""
        return self.lo_of(_window_key(spec))

    def lo_of(self, wk) -> np.ndarray:
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

    def at(self, name: str, what: str, rows: np.ndarray, tag) -> np.ndarray:
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
                pkey = ("prefix", name, what)
                prefix = self._cache.get(pkey)
                if prefix is None:
                    part = (col.valid if what == "count" else col.numeric())[origin:origin + size]
                    prefix = self._cache[pkey] = np.zeros(size + 1, dtype="int64" if what == "count" else "float64")
                    np.cumsum(part, out=prefix[1:])
            self._cache[key] = prefix[rows - origin] if origin else prefix[rows]
        return self._cache[key]

    def total(self, spec: AggSpec) -> np.ndarray:
        return self._window_prefix_diff(spec, "sum", "total")

    def valid_count(self, spec: AggSpec) -> np.ndarray:
        if self.column(spec.column).all_valid:
            return self.count(spec)
        return self._window_prefix_diff(spec, "count", "count")

    def _window_prefix_diff(self, spec: AggSpec, what: str, name: str) -> np.ndarray:
        """Per query: the prefix ``what`` (sum or count of the column) at the window's end minus at its start."""
        wk = _window_key(spec)
        key = (name, spec.column, wk)
        if key not in self._cache:
            self._cache[key] = (self.at(spec.column, what, self.hi, "hi")
                                - self.at(spec.column, what, self.lo(spec), wk))
        return self._cache[key]

    def extremum(self, spec: AggSpec) -> np.ndarray:
        """min / max of the non-null values of each query window (NaN when none)."""
        op, name = spec.function, spec.column
        col = self.column(name)
        m = len(self.hi)
        if len(col.raw) == 0:
            return np.full(m, np.nan)
        windows = self.shared.extremum_windows[(name, op)]
        picks = {wk: self._pick(wk) for wk in windows}
        origin, size = self._origin()
        if size <= 0:  # every window of this slice is empty
            return np.full(m, np.nan)
        levels = max(p[0] for p in picks.values())
        key = ("table", name, op)
        cached = self._cache.get(key)
        if cached is None:
            if size == len(col.raw):  # ranges reach across the whole history: one table for all slices
                with col.lock:
                    built = col._cache.get(("sp", op))  # (levels, table): more levels serve fewer
                    if built is None or built[0] < levels:
                        built = col._cache[("sp", op)] = (levels, _sparse_table(col.floor(op), op, levels))
                flat = built[1]
            else:
                slot = (threading.get_ident(), name, op)  # a buffer per thread: slices run concurrently
                buf = self.shared.buffers.get(slot)
                flat = _sparse_table(col.floor(op)[origin:origin + size], op, levels, buf)
                if buf is None or len(buf) < len(flat):
                    self.shared.buffers[slot] = flat
            cached = self._cache[key] = flat
        _, first, second, has = picks[_window_key(spec)]
        a, b = cached[first], cached[second]
        out = np.minimum(a, b, out=a) if op == "min" else np.maximum(a, b, out=a)
        bad = np.isinf(out)
        if has is not None:
            bad |= ~has
        out[bad] = np.nan
        return out

    def _origin(self):
        """(first row, rows) of the events the prefix sums and min/max tables of this slice cover."""
        if "origin" not in self._cache:
            n = len(self.s_ts)
            lows = [self.lo_of(wk) for wk in self.shared.range_windows]
            low = min((int(lo.min()) for lo in lows if len(lo)), default=self.b)
            size = self.b - low
            if size > LOCAL_TABLE_FACTOR * (CHUNK_ROWS + len(self.hi)):
                low, size = 0, n  # unsorted queries: ranges anywhere, use a whole-history table
            self._cache["origin"] = (low, size)
        return self._cache["origin"]

    def _pick(self, wk):
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


def compute_batch(specs, events: pd.DataFrame, queries: pd.DataFrame | None = None,
                  lateness_ms: int = 0, id_column: str | None = None) -> BatchResult:
    """Feature values as of each query (or each accepted event); see the module docstring.

    Entities are independent, so large inputs with queries are cut into ``COMPUTE_THREADS`` parts
    of consecutive entities (``_entity_parts``), each sorted, accepted and evaluated on its own
    thread, and the parts' rows put back in query order.  (Without queries, parts would each
    allocate their outputs and then be concatenated: measured 1.9-3.4 s instead of 0.9-1.1 s for
    5M events, so values as of every event use one part and slices on the threads.)"""
    specs = list(specs)
    n = len(events)
    ev_ts = events["ts"].to_numpy(dtype="int64")
    keys = events["key"]
    all_keys = keys if queries is None else pd.concat([keys, queries["key"]], ignore_index=True)
    codes_all, uniques = pd.factorize(all_keys, sort=True)  # rows come out sorted by key
    codes_all = codes_all.astype("int64", copy=False)
    ev_codes = codes_all[:n]
    q_ts_in = ev_ts if queries is None else queries["ts"].to_numpy(dtype="int64")

    max_reach = max([s.window_ms + s.hop_ms for s in specs if s.window_ms is not None], default=0)
    candidates = [ev_ts.min() if n else 0, q_ts_in.min() - max_reach if len(q_ts_in) else 0]
    base = int(min(candidates))
    top = int(max(ev_ts.max() if n else 0, q_ts_in.max() if len(q_ts_in) else 0))
    span = top - base + 2
    if (len(uniques) + 1) * span >= 2**62:
        raise ValueError("time span x entities too large for one batch: split the batch by entity")
    ids = events[id_column].to_numpy(dtype=object) if id_column else None
    q_codes_all = None if queries is None else codes_all[n:]
    bounds = [-1, len(uniques)] if q_codes_all is None else _entity_parts(ev_codes, q_codes_all, len(uniques))
    job = _Job(specs, events, keys, uniques, ev_codes, ev_ts, ids, lateness_ms, base, span,
               q_codes_all, q_ts_in if queries is not None else None)
    if len(bounds) == 2:  # one part: every row, slices on the threads
        parts = [job.run(bounds[0], bounds[1], COMPUTE_THREADS)]
    else:
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            parts = list(pool.map(lambda i: job.run(bounds[i], bounds[i + 1], 1), range(len(bounds) - 1)))

    accepted = np.ones(n, dtype=bool)
    reasons = None
    for part in parts:
        if part.reasons is not None:
            if reasons is None:
                reasons = np.full(n, None, dtype=object)
            accepted[part.ev_rows] = part.accepted
            reasons[part.ev_rows] = part.reasons
    if reasons is None:
        rejects = _rejects_frame(np.zeros(0, dtype="int64"), np.empty(0, dtype=object), ev_ts, keys)
    else:
        rejected_rows = np.flatnonzero(~accepted)
        rejects = _rejects_frame(rejected_rows, reasons[rejected_rows], ev_ts, keys)

    if queries is None:  # one part: its rows in (entity, time, arrival) order
        out = {"key": parts[0].q_keys, "ts": parts[0].q_ts, **parts[0].columns}
    else:
        out = {"key": queries["key"].to_numpy(dtype=object), "ts": q_ts_in}
        m = len(q_ts_in)
        for spec in specs:
            if len(parts) == 1:
                out[spec.name] = parts[0].columns[spec.name]
                continue
            filled = [p for p in parts if len(p.q_rows)]
            column = np.empty(m, dtype=np.result_type(*[p.columns[spec.name] for p in filled]) if filled else "float64")
            for p in filled:
                column[p.q_rows] = p.columns[spec.name]
            out[spec.name] = column
    values = pd.DataFrame(out, copy=False)
    return BatchResult(values=values, rejects=rejects, accepted=accepted)


#: Inputs with queries (events + queries) of at least this many rows are cut into ``COMPUTE_THREADS``
#: parts of consecutive entities evaluated in parallel: the sort, acceptance and binary searches run
#: on every core, not only the slices' evaluation.
PARALLEL_ROWS = 1 << 20


def _entity_parts(ev_codes: np.ndarray, q_codes: np.ndarray, n_codes: int) -> list[int]:
    """Code boundaries ``[b0, b1, ...]`` of parts ``[b_i, b_i+1)`` holding about as many rows (events
    and queries) each; the first part starts at -1 (null keys)."""
    parts = min(COMPUTE_THREADS, n_codes)
    if parts < 2 or len(ev_codes) + len(q_codes) < PARALLEL_ROWS:
        return [-1, n_codes]
    weight = np.bincount(ev_codes[ev_codes >= 0], minlength=n_codes)
    weight += np.bincount(q_codes[q_codes >= 0], minlength=n_codes)
    cum = np.cumsum(weight)
    cuts = np.searchsorted(cum, [cum[-1] * i // parts for i in range(1, parts)], side="right")
    bounds = [-1] + sorted({int(c) for c in cuts if 0 < c < n_codes}) + [n_codes]
    return bounds


def _rows_in(codes: np.ndarray, lo_code: int, hi_code: int, everything: bool) -> np.ndarray | slice:
    """Rows whose entity code is in ``[lo_code, hi_code)``; ``slice(None)`` (views, no copy) for every row."""
    return slice(None) if everything else np.flatnonzero((codes >= lo_code) & (codes < hi_code))


@dataclass
class _Part:
    """What one part of entities gives: rows are global (input rows of events / queries)."""

    ev_rows: np.ndarray | slice  # the part's event rows
    accepted: np.ndarray | None  # over ev_rows, None when every event is accepted
    reasons: np.ndarray | None
    q_rows: np.ndarray | slice  # the part's query rows (queries given)
    q_keys: np.ndarray | None  # key and time of each output row (no queries)
    q_ts: np.ndarray | None
    columns: dict


@dataclass
class _Job:
    """``compute_batch``'s inputs, shared by its parts."""

    specs: list
    events: pd.DataFrame
    keys: pd.Series
    uniques: object
    ev_codes: np.ndarray
    ev_ts: np.ndarray
    ids: np.ndarray | None
    lateness_ms: int
    base: int
    span: int
    q_codes: np.ndarray | None  # None: the queries are the accepted events
    q_ts: np.ndarray | None

    def run(self, lo_code: int, hi_code: int, threads: int) -> _Part:
        """The entities with codes in ``[lo_code, hi_code)``: sorted, accepted, evaluated (slices on ``threads``)."""
        everything = lo_code <= -1 and hi_code >= len(self.uniques)
        ev_rows = _rows_in(self.ev_codes, lo_code, hi_code, everything)
        codes, ts = self.ev_codes[ev_rows], self.ev_ts[ev_rows]
        base, span = self.base, self.span
        n = len(codes)
        local, in_order, s_codes, s_ts = _sort_events(codes, ts, base, span)
        ids = None if self.ids is None else self.ids[ev_rows]
        accepted = reasons = None
        # No ids, and times never go back per entity (or never by more than the lateness): nothing to reject.
        if not (ids is None and (in_order or self.lateness_ms >= (int(ts.max()) - int(ts.min()) if n else 0))):
            accepted, reasons = accept_events(codes, ts, ids, self.lateness_ms)
            if not accepted.all():
                keep = accepted[local]
                local, s_codes, s_ts = local[keep], s_codes[keep], s_ts[keep]
        order = local if everything else ev_rows[local]  # rows of the events frame
        del local
        ekey = s_codes * span
        ekey += s_ts
        ekey -= base

        q_rows: np.ndarray | slice = slice(0, 0)
        q_keys = q_ts_out = None
        if self.q_codes is None:
            q_codes, q_ts = s_codes, s_ts
            q_keys, q_ts_out = _key_column(self.keys, self.uniques, s_codes, order), s_ts
            hi = ent_start = None  # per slice (_event_bounds)
        else:
            q_rows = _rows_in(self.q_codes, lo_code, hi_code, everything)
            q_codes, q_ts = self.q_codes[q_rows], self.q_ts[q_rows]
            qbase = q_codes * span
            hi = np.searchsorted(ekey, qbase + (q_ts - base), side="right")
            ent_start = np.searchsorted(ekey, qbase, side="left")

        shared = _Shared(self.specs, self.events, order, s_ts, ekey, base, span)
        m = len(q_ts)

        def evaluate_slice(r0: int) -> dict:
            r1 = min(m, r0 + CHUNK_ROWS)
            if self.q_codes is None:
                part_start, part_hi = _event_bounds(s_codes, ekey, r0, r1)
            else:
                part_start, part_hi = ent_start[r0:r1], hi[r0:r1]
            part = _Slice(shared, q_codes[r0:r1], q_ts[r0:r1], part_hi, part_start)
            return {spec.name: _evaluate(spec, part) for spec in self.specs}

        starts = range(0, max(m, 1), CHUNK_ROWS)
        columns: dict = {}
        if len(starts) == 1:  # one slice: keep the arrays (distinct objects per column)
            for name, value in evaluate_slice(0).items():
                columns[name] = value.copy() if any(value is v for v in columns.values()) else value
        else:
            threads = min(threads, len(starts))
            pool = ThreadPoolExecutor(threads) if threads > 1 else None
            try:
                results = pool.map(evaluate_slice, starts) if pool is not None else map(evaluate_slice, starts)
                for r0, values in zip(starts, results):
                    for name, value in values.items():
                        if name not in columns:
                            columns[name] = np.empty(m, dtype=value.dtype)
                        columns[name][r0:r0 + len(value)] = value
            finally:
                if pool is not None:
                    pool.shutdown()
        return _Part(ev_rows, accepted, reasons, q_rows, q_keys, q_ts_out, columns)


def _evaluate(spec: AggSpec, part: _Slice):
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
    col = part.column(spec.column)
    lo = part.lo(spec)
    if fn in ("first", "last", "last_n"):
        return _positional(fn, spec.n, col, lo, hi)
    if fn == "count_distinct":
        return _count_distinct(col.raw, col.valid, part.ent_start, lo, hi)
    if fn in ("min", "max"):
        return part.extremum(spec)
    if fn in ("count", "sum", "mean"):
        total = part.total(spec) if fn != "count" else None
        return finalize(fn, n_events=None, count=part.valid_count(spec), total=total, mean=None, m2=None,
                        lo=None, hi=None, window_ms=spec.window_ms)
    c, mean, m2 = _range_moments(col, lo, hi)
    return finalize(fn, n_events=hi - lo, count=c, total=None, mean=mean, m2=m2, lo=None, hi=None,
                    window_ms=spec.window_ms)


def _positional(fn: str, n: int, col: _Column, lo: np.ndarray, hi: np.ndarray):
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


def _take(raw, idx, ok) -> np.ndarray:
    out = np.empty(len(idx), dtype=object)
    if len(raw):
        vals = raw[np.clip(idx, 0, len(raw) - 1)]
        out[:] = [v.item() if hasattr(v, "item") else v for v in vals]
    out[~ok] = None
    return out
