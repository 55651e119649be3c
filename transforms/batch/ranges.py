"""Range reductions over the sorted accepted events: per-column arrays built lazily (``_Column``:
numeric values, prefix sums, nearest non-null rows, moment lifting tables), sparse tables for
min / max, Chan-merged moments of ranges, and distinct counts by a sliding window."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd

from ..aggregations import merge_moments

_T = TypeVar("_T")
_Moments = tuple[np.ndarray, np.ndarray, np.ndarray]  # counts, means, sums of squared deviations


def _valid_mask(values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` that are not null (None, NaN)."""
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind in "iub":
        return np.ones(len(values), dtype=bool)
    return pd.notna(pd.Series(values, dtype=object)).to_numpy() & np.array(
        [not (isinstance(v, float) and v != v) for v in values], dtype=bool)


def _locked(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run ``method`` under the object's lock (lazy caches shared by the slice threads)."""
    @functools.wraps(method)
    def run(self: Any, *args: Any) -> _T:
        with self.lock:
            return method(self, *args)
    return run


class _Column:
    """Per-column arrays over the sorted accepted events, built lazily."""

    def __init__(self, raw: np.ndarray, integer: bool = False):
        self.raw = raw
        #: an int64 column (numpy ints, or Python ints and None): min / max in int64, exact beyond 2^53
        self.integer = integer
        self.valid = _valid_mask(raw)
        self.all_valid = bool(self.valid.all())
        self._cache: dict[Any, Any] = {}
        self.lock = threading.RLock()  # slices evaluated in threads build the lazy arrays once

    @_locked
    def numeric(self) -> np.ndarray:
        """The values as float64, nulls as 0."""
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
        """Prefix sums over the whole history of the non-null count (``what="count"``) or the values."""
        key = "p_" + what
        if key not in self._cache:
            arr = self.valid.astype("int64") if what == "count" else self.numeric()
            out = np.zeros(len(arr) + 1, dtype=arr.dtype)
            np.cumsum(arr, out=out[1:])
            self._cache[key] = out
        return self._cache[key]

    @_locked
    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
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
        """Values with nulls as the identity of ``op`` (+inf for min, -inf for max; the int64 bounds in an
        integer column, whose nulls ``extremum`` tells by the window's count of values)."""
        key = ("floor", op)
        if key not in self._cache:
            if self.integer:
                fill = np.iinfo(np.int64).max if op == "min" else np.iinfo(np.int64).min
                x = self.raw.astype("int64") if self.all_valid else np.where(self.valid, self.raw, fill).astype("int64")
            else:
                x = self.numeric()
                x = x if self.all_valid else np.where(self.valid, x, np.inf if op == "min" else -np.inf)
            self._cache[key] = x
        return self._cache[key]

    @_locked
    def lifting(self, levels: int) -> list[_Moments]:
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
    """The highest power-of-two block level a range of these lengths needs."""
    top = int(length.max()) if len(length) else 0
    return max(top.bit_length() - 1, 0)


def _sparse_table(level0: np.ndarray, op: str, levels: int, buffer: np.ndarray | None = None) -> np.ndarray:
    """Levels 0..levels of a sparse table laid end to end (level j starts at j * len(level0)):
    entry i of level j is the min (max) of level0[i : i + 2^j] (clipped at the end)."""
    n = len(level0)
    size = (levels + 1) * n
    if buffer is not None and len(buffer) >= size and buffer.dtype == level0.dtype:
        flat = buffer[:size]
    else:
        flat = np.empty(size, dtype=level0.dtype)
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


def _range_moments(col: _Column, lo: np.ndarray, hi: np.ndarray) -> _Moments:
    """Moments (count, mean, M2) of the non-null values of rows [lo, hi) per query, by binary lifting."""
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


def _count_distinct(raw: np.ndarray, valid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distinct non-null values in rows [lo, hi) per query, by a sliding window per entity."""
    out = np.zeros(len(lo), dtype="int64")
    order = np.lexsort((lo, hi))  # queries by increasing hi then lo
    # Windows of one entity have non-decreasing lo and hi when sorted by time; process in that order.
    counts: dict[Any, int] = {}
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
