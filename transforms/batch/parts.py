"""One part of ``compute_batch``'s entities (all of them, or a range of entity codes run on its own
thread): its events sorted and accepted, its queries' ranges found, and its queries evaluated in
slices of ``chunk_rows`` rows, on threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ..specs import AggSpec
from .acceptance import accept_events
from .slices import _evaluate, _Shared, _Slice
from .sorting import _event_bounds, _sort_events

_Rows = np.ndarray | slice  # input rows: an index array, or ``slice(None)`` for every row (views, no copy)


def _entity_parts(ev_codes: np.ndarray, q_codes: np.ndarray, n_codes: int, threads: int,
                  parallel_rows: int) -> list[int]:
    """Code boundaries ``[b0, b1, ...]`` of up to ``threads`` parts ``[b_i, b_i+1)`` holding about as
    many rows (events and queries) each, one part when there are fewer than ``parallel_rows`` rows;
    the first part starts at -1 (null keys)."""
    parts = min(threads, n_codes)
    if parts < 2 or len(ev_codes) + len(q_codes) < parallel_rows:
        return [-1, n_codes]
    weight = np.bincount(ev_codes[ev_codes >= 0], minlength=n_codes)
    weight += np.bincount(q_codes[q_codes >= 0], minlength=n_codes)
    cum = np.cumsum(weight)
    cuts = np.searchsorted(cum, [cum[-1] * i // parts for i in range(1, parts)], side="right")
    return [-1] + sorted({int(c) for c in cuts if 0 < c < n_codes}) + [n_codes]


def _rows_in(codes: np.ndarray, lo_code: int, hi_code: int, everything: bool) -> _Rows:
    """Rows whose entity code is in ``[lo_code, hi_code)``; ``slice(None)`` (views, no copy) for every row."""
    return slice(None) if everything else np.flatnonzero((codes >= lo_code) & (codes < hi_code))


def _key_column(keys: pd.Series, uniques: np.ndarray | pd.Index, row_codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The "key" output column (object array): ``keys`` at ``rows``, whose codes are ``row_codes``."""
    plain = (isinstance(keys.dtype, np.dtype) and keys.dtype.kind in "iu") or isinstance(keys.dtype, pd.StringDtype)
    if len(row_codes) and row_codes.min() >= 0 and plain:
        # box each distinct key once, then gather the boxes (same values as keys.to_numpy(dtype=object))
        return np.asarray(uniques, dtype=object)[row_codes]
    return keys.to_numpy(dtype=object)[rows]


@dataclass
class _Part:
    """What one part of entities gives: rows are global (input rows of events / queries)."""

    ev_rows: _Rows  # the part's event rows
    accepted: np.ndarray | None  # over ev_rows, None when every event is accepted
    reasons: np.ndarray | None
    q_rows: _Rows  # the part's query rows (queries given)
    q_keys: np.ndarray | None  # key and time of each output row (no queries)
    q_ts: np.ndarray | None
    columns: dict[str, np.ndarray]


@dataclass
class _Job:
    """``compute_batch``'s inputs, shared by its parts, and the settings it runs with."""

    specs: list[AggSpec]
    events: pd.DataFrame
    keys: pd.Series
    uniques: np.ndarray | pd.Index
    ev_codes: np.ndarray
    ev_ts: np.ndarray
    ids: np.ndarray | None
    lateness_ms: int
    base: int
    span: int
    q_codes: np.ndarray | None  # None: the queries are the accepted events
    q_ts: np.ndarray | None
    chunk_rows: int
    local_table_factor: int

    def run(self, lo_code: int, hi_code: int, threads: int) -> _Part:
        """The entities with codes in ``[lo_code, hi_code)``: sorted, accepted, evaluated (slices on ``threads``)."""
        everything = lo_code <= -1 and hi_code >= len(self.uniques)
        ev_rows = _rows_in(self.ev_codes, lo_code, hi_code, everything)
        local, s_codes, s_ts, accepted, reasons = self._sorted_accepted(ev_rows)
        order = local if isinstance(ev_rows, slice) else ev_rows[local]  # rows of the events frame
        del local
        ekey = s_codes * self.span
        ekey += s_ts
        ekey -= self.base
        shared = _Shared(self.specs, self.events, order, s_ts, ekey, self.base, self.span, self.chunk_rows,
                         self.local_table_factor)
        if self.q_codes is None or self.q_ts is None:  # values as of each accepted event
            columns = self._evaluate(shared, s_codes, s_ts, None, threads)
            return _Part(ev_rows, accepted, reasons, slice(0, 0), _key_column(self.keys, self.uniques, s_codes, order),
                         s_ts, columns)
        q_rows = _rows_in(self.q_codes, lo_code, hi_code, everything)
        q_codes, q_ts = self.q_codes[q_rows], self.q_ts[q_rows]
        qbase = q_codes * self.span
        hi = np.searchsorted(ekey, qbase + (q_ts - self.base), side="right")
        ent_start = np.searchsorted(ekey, qbase, side="left")
        columns = self._evaluate(shared, q_codes, q_ts, (ent_start, hi), threads)
        return _Part(ev_rows, accepted, reasons, q_rows, None, None, columns)

    def _sorted_accepted(self, ev_rows: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None,
                                                        np.ndarray | None]:
        """The part's events sorted by (entity, time, arrival) without the refused ones: (order among
        the part's events, sorted codes, sorted times), and over the part's events the accepted mask
        and the reasons (both None when nothing can be refused)."""
        codes, ts = self.ev_codes[ev_rows], self.ev_ts[ev_rows]
        n = len(codes)
        local, in_order, s_codes, s_ts = _sort_events(codes, ts, self.base, self.span)
        ids = None if self.ids is None else self.ids[ev_rows]
        accepted = reasons = None
        # No ids, and times never go back per entity (or never by more than the lateness): nothing to reject.
        if not (ids is None and (in_order or self.lateness_ms >= (int(ts.max()) - int(ts.min()) if n else 0))):
            accepted, reasons = accept_events(codes, ts, ids, self.lateness_ms)
            if not accepted.all():
                keep = accepted[local]
                local, s_codes, s_ts = local[keep], s_codes[keep], s_ts[keep]
        return local, s_codes, s_ts, accepted, reasons

    def _evaluate(self, shared: _Shared, q_codes: np.ndarray, q_ts: np.ndarray,
                  ranges: tuple[np.ndarray, np.ndarray] | None, threads: int) -> dict[str, np.ndarray]:
        """Every spec's values for the queries ``(q_codes, q_ts)``, whose ranges are ``ranges`` (entity
        start, hi) or, None, those of the sorted accepted events themselves (``_event_bounds``)."""
        m = len(q_ts)

        def evaluate_slice(r0: int) -> dict[str, np.ndarray]:
            r1 = min(m, r0 + self.chunk_rows)
            if ranges is None:
                part_start, part_hi = _event_bounds(q_codes, shared.ekey, r0, r1)
            else:
                part_start, part_hi = ranges[0][r0:r1], ranges[1][r0:r1]
            part = _Slice(shared, q_codes[r0:r1], q_ts[r0:r1], part_hi, part_start)
            return {spec.name: _evaluate(spec, part) for spec in self.specs}

        return _gather_slices(evaluate_slice, m, self.chunk_rows, threads)


def _gather_slices(evaluate_slice: Callable[[int], dict[str, np.ndarray]], m: int, chunk_rows: int,
                   threads: int) -> dict[str, np.ndarray]:
    """The columns of ``m`` queries evaluated in slices of ``chunk_rows`` (``evaluate_slice(r0)``) on up
    to ``threads`` threads, put end to end."""
    starts = range(0, max(m, 1), chunk_rows)
    columns: dict[str, np.ndarray] = {}
    if len(starts) == 1:  # one slice: keep the arrays (distinct objects per column)
        for name, value in evaluate_slice(0).items():
            columns[name] = value.copy() if any(value is v for v in columns.values()) else value
        return columns
    threads = min(threads, len(starts))
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        results: Iterator[dict[str, np.ndarray]] = (pool.map(evaluate_slice, starts) if pool is not None
                                                    else map(evaluate_slice, starts))
        for r0, values in zip(starts, results):
            for name, value in values.items():
                if name not in columns:
                    columns[name] = np.empty(m, dtype=value.dtype)
                columns[name][r0:r0 + len(value)] = value
    finally:
        if pool is not None:
            pool.shutdown()
    return columns
