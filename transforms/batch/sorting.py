"""Sorting events by (entity, time, arrival) with 16-bit radix passes, and the lifetime range of
each sorted event."""

from __future__ import annotations

import numpy as np


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


def _sort_events(codes: np.ndarray, ts: np.ndarray, base: int,
                 span: int) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
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


def _event_bounds(s_codes: np.ndarray, ekey: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
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
