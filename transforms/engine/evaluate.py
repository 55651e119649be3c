"""The compiled evaluation of states: every feature of many slots, each at its own time.

``evaluate`` walks a slot's lists once per feature: a tile feature merges the tiles of its window
(``merge_tiles``: counts and sums add, (count, mean, M2) merge by Chan's formula, min/max and
first/last compare), a ``count_distinct`` counts its values in the window, a ``last_n`` finds its
first item in the window.  Each also gives the time its value next changes without a new event
(when its oldest counted tile, value or item leaves the window), and the state's ``until`` is the
earliest of them.
"""

from __future__ import annotations

import math

import numpy as np

from .algebra import merge_m2, merge_mean, sample_variance_or_nan
from .jit import njit
from .kernels import greater, less, stored_float, window_start_ms
from .layout import (FN_COUNT, FN_DISTINCT, FN_EPM, FN_EVENTS, FN_FIRST, FN_LAST_N, FN_MAX, FN_MEAN, FN_MIN,
                     FN_SSL, FN_STDDEV, FN_SUM, FN_VAR, F_C, F_FTS, F_HI, F_LO, F_LTS, F_MU, F_Q, F_S, K_FLOAT,
                     K_INT, K_LIST, K_NULL, M_FIXED, M_WM, NO_TIME)


@njit
def _sooner(horizon, change):
    """The earlier of two change times, where ``NO_TIME`` is "no change ahead" (never)."""
    if change == NO_TIME:
        return horizon
    return change if horizon == NO_TIME or change < horizon else horizon


@njit
def _distinct(P, head, t, w, hop):
    """(values of a count_distinct list in the window as of ``t``, the time the count next drops)."""
    start = window_start_ms(t, w, hop)
    count = 0
    oldest = NO_TIME
    cur = head
    while cur >= 0:
        at = P[cur + 1]
        if w == 0 or at >= start:
            count += 1
            if oldest == NO_TIME or at < oldest:
                oldest = at
        cur = P[cur + 2]
    if w > 0 and count > 0:
        return count, (oldest // hop + 1) * hop + w
    return count, NO_TIME


@njit
def _first_in_window(P, block, t, w, hop):
    """(index of a last_n block's first item in the window as of ``t``, when it leaves the window)."""
    if block < 0 or w == 0:
        return 0, NO_TIME
    start = window_start_ms(t, w, hop)
    count = P[block]
    first = 0
    while first < count and P[block + 1 + 4 * first] < start:
        first += 1
    if first < count:
        return first, (P[block + 1 + 4 * first] // hop + 1) * hop + w
    return first, NO_TIME


@njit
def _extreme(P, Pf, at, lower, first, vkind, vbits, vfloat):
    """The lower (``lower``) or higher of the value held so far and the tile's value at ``at``."""
    kk = P[at + 1]  # the kind follows the value
    cf = stored_float(P, Pf, at, kk)
    if first or (less(kk, P[at], cf, vkind, vbits, vfloat) if lower else greater(kk, P[at], cf, vkind, vbits, vfloat)):
        return kk, P[at], cf
    return vkind, vbits, vfloat


@njit
def _by_time(P, Pf, at, earliest, first, vts, vseq, vkind, vbits, vfloat):
    """The earliest (``earliest``) or latest by (event time, arrival) of the value held so far and the
    tile's value at ``at`` (``[ts, seq, bits, kind]``)."""
    a_ts = P[at]
    a_sq = P[at + 1]
    if earliest:
        take = first or a_ts < vts or (a_ts == vts and a_sq < vseq)
    else:
        take = first or a_ts > vts or (a_ts == vts and a_sq > vseq)
    if take:
        return a_ts, a_sq, P[at + 3], P[at + 2], stored_float(P, Pf, at + 2, P[at + 3])
    return vts, vseq, vkind, vbits, vfloat


@njit
def merge_tiles(P, Pf, head, off, fn, a, b, windowed):
    """Merge the tiles ``a <= k <= b`` (all with ``windowed`` False) of one list for feature function
    ``fn`` over the column fields ``off`` (None: no column, ``off[F_C] < 0``).  Returns (n_events,
    count, total, mean, m2, kind, bits, float of the chosen value, oldest tile, or ``NO_TIME``)."""
    n = 0
    old = NO_TIME
    c = 0
    total = 0.0
    mean = 0.0
    m2 = 0.0
    vkind = K_NULL
    vbits = 0
    vfloat = 0.0
    vts = 0
    vseq = 0
    cur = head
    while cur >= 0:
        k = P[cur]
        if windowed and k < a:
            break  # newest first: every later tile is older
        if windowed and k > b:
            cur = P[cur + 2]
            continue
        n += P[cur + 1]
        old = k
        tc = P[cur + off[F_C]] if off[F_C] >= 0 else 0
        if tc > 0:
            if fn == FN_SUM or fn == FN_MEAN:
                total += Pf[cur + off[F_S]]
            elif fn == FN_VAR or fn == FN_STDDEV:
                tmu = Pf[cur + off[F_MU]]
                tq = Pf[cur + off[F_Q]]
                if c == 0:
                    mean = tmu
                    m2 = tq
                else:
                    m2 = merge_m2(c, mean, m2, tc, tmu, tq)
                    mean = merge_mean(c, mean, tc, tmu)
            elif fn == FN_MIN or fn == FN_MAX:
                vkind, vbits, vfloat = _extreme(P, Pf, cur + off[F_LO if fn == FN_MIN else F_HI], fn == FN_MIN,
                                                c == 0, vkind, vbits, vfloat)
            else:  # first, last: by (event time, arrival)
                vts, vseq, vkind, vbits, vfloat = _by_time(P, Pf, cur + off[F_FTS if fn == FN_FIRST else F_LTS],
                                                           fn == FN_FIRST, c == 0, vts, vseq, vkind, vbits, vfloat)
            c += tc
        cur = P[cur + 2]
    return n, c, total, mean, m2, vkind, vbits, vfloat, old


@njit
def evaluate(P, Pf, S, g_hop, g_off, cd_window, cd_hop, ln_n,
             f_fn, f_group, f_col, f_window, f_hop, f_sub, slots, times, out_b, out_f, out_k, out_x, until):
    """Every feature of each slot ``slots[m]`` as of ``times[m]`` (at or after its watermark).

    ``out_k[m, f]`` is the value's kind; ``out_b`` its bits (ints, bools, object codes) or
    ``out_f`` its float; a last_n value is ``K_LIST`` with ``out_b`` its block and ``out_x`` the
    first item in the window.  ``until[m]``: the earliest later time a value may change without a
    new event (``NO_TIME``: never)."""
    G = len(g_hop)
    D = len(cd_window)
    no_column = np.full(g_off.shape[2], -1, dtype=np.int64)  # the fields of features that read no column
    for m in range(len(slots)):
        s = slots[m]
        t = times[m]
        wm = S[s, M_WM]
        horizon = NO_TIME
        for f in range(len(f_fn)):
            fn = f_fn[f]
            w = f_window[f]
            out_k[m, f] = K_NULL
            out_b[m, f] = 0
            if fn == FN_SSL:
                if wm != NO_TIME:
                    out_k[m, f] = K_FLOAT
                    out_f[m, f] = (t - wm) / 1000
            elif fn == FN_DISTINCT:
                count, change = _distinct(P, S[s, M_FIXED + G + f_sub[f]], t, w, f_hop[f])
                out_k[m, f] = K_INT
                out_b[m, f] = count
                horizon = _sooner(horizon, change)
            elif fn == FN_LAST_N:
                block = S[s, M_FIXED + G + D + f_sub[f]]
                first, change = _first_in_window(P, block, t, w, f_hop[f])
                out_k[m, f] = K_LIST
                out_b[m, f] = block
                out_x[m, f] = first
                horizon = _sooner(horizon, change)
            else:
                g = f_group[f]
                hop = g_hop[g]
                j = f_col[f]
                off = g_off[g, j] if j >= 0 else no_column
                a = (t - w) // hop if w > 0 else 0
                b = t // hop if w > 0 else 0
                n, c, total, mean, m2, vkind, vbits, vfloat, old = merge_tiles(
                    P, Pf, S[s, M_FIXED + g], off, fn, a, b, w > 0)
                if w > 0 and old != NO_TIME:
                    horizon = _sooner(horizon, (old + 1) * hop + w)
                _final(fn, n, c, total, mean, m2, vkind, vbits, vfloat, w, out_b, out_f, out_k, m, f)
        until[m] = horizon


@njit
def _final(fn, n, c, total, mean, m2, vkind, vbits, vfloat, w, out_b, out_f, out_k, m, f):
    if fn == FN_EVENTS:
        out_k[m, f] = K_INT
        out_b[m, f] = n
    elif fn == FN_EPM:
        out_k[m, f] = K_FLOAT
        out_f[m, f] = 0.0 if n == 0 else n / (w / 60000)
    elif fn == FN_COUNT:
        out_k[m, f] = K_INT
        out_b[m, f] = c
    elif fn == FN_SUM:
        out_k[m, f] = K_FLOAT
        out_f[m, f] = total
    elif fn == FN_MEAN:
        if c > 0:
            out_k[m, f] = K_FLOAT
            out_f[m, f] = total / c
    elif fn == FN_VAR or fn == FN_STDDEV:
        var = sample_variance_or_nan(c, m2)
        if not math.isnan(var):
            out_k[m, f] = K_FLOAT
            out_f[m, f] = var if fn == FN_VAR else math.sqrt(var)
    elif c > 0:  # min, max, first, last
        out_k[m, f] = vkind
        if vkind == K_FLOAT:
            out_f[m, f] = vfloat
        else:
            out_b[m, f] = vbits
