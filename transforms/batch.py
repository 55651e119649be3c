"""Vectorized batch path: the same aggregations over whole event histories.

Given many entities' events (in arrival order) and query points (entity,
time), ``compute_batch`` returns every feature as of each query, with the
same acceptance rules (lateness, duplicate ids), window formula and partial
algebra (``transforms.aggregations``) as the streaming ``ViewState``.

How a window becomes a range: accepted events are sorted by (entity, time,
arrival); the events of entity e inside ``[start, t]`` are the contiguous
rows ``[lo, hi)`` found by binary search on a composite (entity, time) key.
Ranges are then reduced without touching each event:

* count, sum, count_events: prefix sums;
* min, max: a sparse table (idempotent merge, two overlapping blocks);
* var, stddev: binary lifting over power-of-two blocks with the Chan merge;
* first, last, last_n: the next/previous non-null row;
* count_distinct: a sliding window over each entity's sorted events.
"""

from __future__ import annotations

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
    """Arrival-order acceptance per entity: returns (accepted mask, reasons array or None)."""
    n = len(ts)
    frame = pd.DataFrame({"c": codes, "ts": ts})
    prev_max = frame.groupby("c", sort=False)["ts"].cummax().groupby(frame["c"], sort=False).shift(1)
    late = (ts < (prev_max.to_numpy(dtype="float64") - lateness_ms))  # NaN compares False
    reasons = np.full(n, None, dtype=object)
    reasons[late] = REJECT_LATE
    if ids is not None:
        id_series = pd.Series(ids, dtype=object)
        has_id = id_series.notna().to_numpy()
        candidates = ~late & has_id
        dup = np.zeros(n, dtype=bool)
        sub = pd.DataFrame({"c": codes[candidates], "id": id_series[candidates].to_numpy()})
        dup[np.flatnonzero(candidates)[sub.duplicated(keep="first").to_numpy()]] = True
        reasons[dup] = REJECT_DUPLICATE
    return reasons == None, reasons  # noqa: E711 (elementwise)


def _valid_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind in "iub":
        return np.ones(len(values), dtype=bool)
    return pd.notna(pd.Series(values, dtype=object)).to_numpy() & np.array(
        [not (isinstance(v, float) and v != v) for v in values], dtype=bool)


class _Column:
    """Per-column arrays over the sorted accepted events, built lazily."""

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        self.valid = _valid_mask(raw)
        self._cache: dict = {}

    def numeric(self) -> np.ndarray:
        if "x" not in self._cache:
            x = np.zeros(len(self.raw), dtype="float64")
            x[self.valid] = self.raw[self.valid].astype("float64")
            self._cache["x"] = x
        return self._cache["x"]

    def prefix(self, what: str) -> np.ndarray:
        key = "p_" + what
        if key not in self._cache:
            arr = self.valid.astype("int64") if what == "count" else self.numeric()
            out = np.zeros(len(arr) + 1, dtype=arr.dtype)
            np.cumsum(arr, out=out[1:])
            self._cache[key] = out
        return self._cache[key]

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

    def sparse(self, op: str, levels: int) -> list[np.ndarray]:
        key = ("sp", op)
        fill = np.inf if op == "min" else -np.inf
        reduce = np.minimum if op == "min" else np.maximum
        table = self._cache.get(key)
        if table is None:
            table = self._cache[key] = [np.where(self.valid, self.numeric(), fill)]
        while len(table) <= levels:
            prev, step = table[-1], 1 << (len(table) - 1)
            nxt = prev.copy()
            nxt[:-step] = reduce(prev[:-step], prev[step:]) if step < len(prev) else prev[:-step]
            table.append(nxt)
        return table

    def flat_sparse(self, op: str, levels: int) -> np.ndarray:
        """Levels 0..levels of the sparse table laid end to end (level j starts at j * n)."""
        key = ("flat", op)
        cached = self._cache.get(key)
        if cached is None or cached[0] < levels:
            cached = self._cache[key] = (levels, np.concatenate(self.sparse(op, levels)[: levels + 1]))
        return cached[1]

    def lifting(self, levels: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Moments of blocks [i, i + 2^j) for j <= levels (blocks clipped at the end)."""
        table = self._cache.get("lift")
        if table is None:
            table = self._cache["lift"] = [(self.valid.astype("float64"), self.numeric(), np.zeros(len(self.raw)))]
        while len(table) <= levels:
            (c, m, q), step = table[-1], 1 << (len(table) - 1)
            c2, m2_, q2 = c.copy(), m.copy(), q.copy()
            if step < len(c):
                c2[:-step], m2_[:-step], q2[:-step] = merge_moments(c[:-step], m[:-step], q[:-step], c[step:], m[step:], q[step:])
            table.append((c2, m2_, q2))
        return table


def _levels_for(length: np.ndarray) -> int:
    top = int(length.max()) if len(length) else 0
    return max(top.bit_length() - 1, 0)


def _range_min_max(col: _Column, op: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    length = hi - lo
    size = len(col.raw)
    if size == 0:
        return np.full(len(lo), np.nan)
    flat = col.flat_sparse(op, _levels_for(length))
    has = length > 0
    j = np.zeros(len(lo), dtype="int64")
    j[has] = np.log2(length[has]).astype("int64")
    base = j * size
    a = flat[np.where(has, base + lo, 0)]
    b = flat[np.where(has, base + hi - (1 << j), 0)]
    out = np.minimum(a, b) if op == "min" else np.maximum(a, b)
    out[~has | np.isinf(out)] = np.nan
    return out


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


def compute_batch(specs, events: pd.DataFrame, queries: pd.DataFrame | None = None,
                  lateness_ms: int = 0, id_column: str | None = None) -> BatchResult:
    """Feature values as of each query (or each accepted event); see the module docstring."""
    specs = list(specs)
    n = len(events)
    ev_ts = events["ts"].to_numpy(dtype="int64")
    all_keys = events["key"] if queries is None else pd.concat([events["key"], queries["key"]], ignore_index=True)
    codes_all, uniques = pd.factorize(all_keys, sort=True)  # rows come out sorted by key
    ev_codes = codes_all[:n].astype("int64")
    ids = events[id_column].to_numpy(dtype=object) if id_column else None
    accepted, reasons = accept_events(ev_codes, ev_ts, ids, lateness_ms)
    rejected_rows = np.flatnonzero(~accepted)
    rejects = pd.DataFrame({
        "row": rejected_rows,
        "reason": reasons[rejected_rows],
        "detail": [f"{reasons[r]}: event time {ev_ts[r]} of entity {events['key'].iat[r]!r}" for r in rejected_rows],
    })

    rows = np.flatnonzero(accepted)
    order = rows[np.lexsort((rows, ev_ts[rows], ev_codes[rows]))]
    s_codes, s_ts = ev_codes[order], ev_ts[order]

    if queries is None:
        q_codes, q_ts = s_codes, s_ts
        q_keys = events["key"].to_numpy(dtype=object)[order]
    else:
        q_codes = codes_all[n:].astype("int64")
        q_ts = queries["ts"].to_numpy(dtype="int64")
        q_keys = queries["key"].to_numpy(dtype=object)

    max_reach = max([s.window_ms + s.hop_ms for s in specs if s.window_ms is not None], default=0)
    candidates = [ev_ts.min() if n else 0, q_ts.min() - max_reach if len(q_ts) else 0]
    base = int(min(candidates))
    top = int(max(ev_ts.max() if n else 0, q_ts.max() if len(q_ts) else 0))
    span = top - base + 2
    if (len(uniques) + 1) * span >= 2**62:
        raise ValueError("time span x entities too large for one batch: split the batch by entity")
    ekey = s_codes * span + (s_ts - base)
    qbase = q_codes * span
    hi = np.searchsorted(ekey, qbase + (q_ts - base), side="right")
    ent_start = np.searchsorted(ekey, qbase, side="left")

    columns: dict[str, _Column] = {}
    out = {"key": q_keys, "ts": q_ts}
    for spec in specs:
        if spec.window_ms is None:
            lo = ent_start
        else:
            start = window_start(q_ts, spec.window_ms, spec.hop_ms)
            lo = np.searchsorted(ekey, qbase + (start - base), side="left")
        out[spec.name] = _evaluate(spec, columns, events, order, s_ts, lo, hi, ent_start, q_ts)
    values = pd.DataFrame(out, copy=False)
    return BatchResult(values=values, rejects=rejects, accepted=accepted)


def _column(columns: dict, events: pd.DataFrame, order: np.ndarray, name: str) -> _Column:
    if name not in columns:
        raw = events[name].to_numpy()
        columns[name] = _Column(raw[order])
    return columns[name]


def _evaluate(spec: AggSpec, columns, events, order, s_ts, lo, hi, ent_start, q_ts):
    fn = spec.function
    n_events = hi - lo
    if fn in ("count_events", "events_per_minute"):
        return finalize(fn, n_events=n_events, count=None, total=None, mean=None, m2=None, lo=None, hi=None,
                        window_ms=spec.window_ms)
    if fn == "seconds_since_last":
        has = hi > ent_start
        last_ts = s_ts[np.where(has, hi - 1, 0)] if len(s_ts) else np.zeros(len(hi), dtype="int64")
        return np.where(has, (q_ts - last_ts) / 1000, np.nan)
    col = _column(columns, events, order, spec.column)
    if fn in ("first", "last", "last_n"):
        return _positional(fn, spec.n, col, lo, hi)
    if fn == "count_distinct":
        return _count_distinct(col.raw, col.valid, ent_start, lo, hi)
    count = col.prefix("count")[hi] - col.prefix("count")[lo]
    if fn in ("count", "sum", "mean"):
        total = col.prefix("sum")[hi] - col.prefix("sum")[lo] if fn != "count" else None
        return finalize(fn, n_events=n_events, count=count, total=total, mean=None, m2=None, lo=None, hi=None,
                        window_ms=spec.window_ms)
    if fn in ("min", "max"):
        return _range_min_max(col, fn, lo, hi)
    c, mean, m2 = _range_moments(col, lo, hi)
    return finalize(fn, n_events=n_events, count=c, total=None, mean=mean, m2=m2, lo=None, hi=None,
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
