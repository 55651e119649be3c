"""The compiled kernels of the state engine: one generic source for every view.

Each kernel takes an arena's arrays (``P`` the word pool and ``Pf`` its float view, ``S`` the
slot metadata, ``free`` / ``top`` the allocator, ``HV`` / ``hstat`` the entry hash table) and
the view's layout tables (``transforms.engine.layout``), so one compile serves every view.
The caller guarantees room: ``StateArena`` grows the pool, the slots and the hash table before
a call, so a kernel never allocates numpy memory and never raises.

The algebra is the one of ``transforms.aggregations``: Welford updates per tile, Chan's merge of
(count, mean, M2) across tiles, and the finals of ``SCALAR_FINAL``; ``transforms.engine.algebra``
holds the scalar functions these kernels and the batch path share.
"""

from __future__ import annotations

import math

from .algebra import merge_mean, merge_m2, sample_variance_or_nan
from .jit import njit
from .layout import (
    F_C,
    F_FK,
    F_FSQ,
    F_FTS,
    F_FV,
    F_HI,
    F_LK,
    F_LO,
    F_LSQ,
    F_LTS,
    F_LV,
    F_MU,
    F_Q,
    F_S,
    FN_COUNT,
    FN_DISTINCT,
    FN_EPM,
    FN_EVENTS,
    FN_FIRST,
    FN_LAST,
    FN_LAST_N,
    FN_MAX,
    FN_MEAN,
    FN_MIN,
    FN_SSL,
    FN_STDDEV,
    FN_SUM,
    FN_VAR,
    K_FLOAT,
    K_INT,
    K_LIST,
    K_NULL,
    M_FIXED,
    M_IDS_HEAD,
    M_IDS_LIVE,
    M_IDS_MARK,
    M_IDS_TAIL,
    M_SEQ,
    M_USED,
    M_WM,
    NO_TIME,
)

EMPTY = -1
TOMB = -2
REASON_LATE = 1
REASON_DUPLICATE = 2


# -- allocator and entry table -----------------------------------------------------------------

@njit
def _alloc(P, free, top, cls, width):
    o = free[cls]
    if o >= 0:
        free[cls] = P[o]
    else:
        o = top[0]
        top[0] = o + width
    for x in range(o, o + width):
        P[x] = 0
    return o


@njit
def _release(P, free, cls, o):
    P[o] = free[cls]
    free[cls] = o


@njit
def _home(h, owner, mask):
    """The table slot an entry starts probing from: hashes are xxh3 (already mixed) or small ints;
    shifts and xors only, so that the interpreted kernels never overflow."""
    x = h ^ (h >> 29) ^ (h >> 47) ^ (owner << 7) ^ owner
    return x & mask


@njit
def _find(HV, P, h, owner):
    mask = len(HV) - 1
    i = _home(h, owner, mask)
    while True:
        e = HV[i]
        if e == EMPTY:
            return -1
        if e >= 0 and P[e] == h and P[e + 3] == owner:
            return e
        i = (i + 1) & mask


@njit
def _insert(HV, hstat, P, h, owner, e):
    """Insert entry ``e`` (its key known absent)."""
    mask = len(HV) - 1
    i = _home(h, owner, mask)
    while HV[i] >= 0:
        i = (i + 1) & mask
    if HV[i] == EMPTY:
        hstat[0] += 1  # slots in use, tombstones included
    HV[i] = e
    hstat[1] += 1  # live entries


@njit
def _delete(HV, hstat, P, h, owner, e):
    mask = len(HV) - 1
    i = _home(h, owner, mask)
    while HV[i] != EMPTY:
        if HV[i] == e:
            HV[i] = TOMB
            hstat[1] -= 1
            return
        i = (i + 1) & mask


@njit
def rehash(HV, hstat, P, old):
    """Insert every live entry of the table ``old`` into the empty table ``HV``."""
    hstat[0] = 0
    hstat[1] = 0
    for e in old:
        if e >= 0:
            _insert(HV, hstat, P, P[e], P[e + 3], e)


# -- applying a batch --------------------------------------------------------------------------

@njit
def _less(ka, ba, fa, kb, bb, Pf_b):
    """Value a (kind, bits, float) < stored value b (kind, bits, its float): ints compare exactly."""
    if ka != K_FLOAT and kb != K_FLOAT:
        return ba < bb
    return fa < Pf_b


@njit
def _stored_float(P, Pf, at, kind):
    if kind == K_FLOAT:
        return Pf[at]
    return float(P[at])


@njit
def _tile(P, S, free, top, s, g, k, width):
    """The row of slot ``s``'s tile ``k`` of group ``g``, created when missing (lists are newest first)."""
    head = M_FIXED + g
    prev = -1
    cur = S[s, head]
    while cur >= 0 and P[cur] > k:
        prev = cur
        cur = P[cur + 2]
    if cur >= 0 and P[cur] == k:
        return cur
    o = _alloc(P, free, top, g, width + 3)
    P[o] = k
    P[o + 2] = cur
    if prev < 0:
        S[s, head] = o
    else:
        P[prev + 2] = o
    return o


@njit
def _add_to_tile(P, Pf, row, off, ts, seq, kind, bits, fv):
    """One non-null value into a tile's fields of one column (``off``: the field offsets)."""
    c = P[row + off[F_C]] + 1
    P[row + off[F_C]] = c
    if off[F_S] >= 0:
        Pf[row + off[F_S]] += fv
    if off[F_MU] >= 0:  # Welford, as merge_moments expects (count, mean, M2)
        mu = Pf[row + off[F_MU]]
        d = fv - mu
        mu += d / c
        Pf[row + off[F_MU]] = mu
        Pf[row + off[F_Q]] += d * (fv - mu)
    for field, lower in ((F_LO, True), (F_HI, False)):  # min keeps the lower value, max the higher
        if off[field] >= 0:
            at = row + off[field]
            kb = P[at + 1]  # the kind field follows the value field (F_LOK, F_HIK)
            held = _stored_float(P, Pf, at, kb)
            if c == 1 or (_less(kind, bits, fv, kb, P[at], held) if lower
                          else _greater(kind, bits, fv, kb, P[at], held)):
                P[at] = bits
                P[at + 1] = kind
    if off[F_FTS] >= 0:
        a, q = P[row + off[F_FTS]], P[row + off[F_FSQ]]
        if c == 1 or ts < a or (ts == a and seq < q):
            P[row + off[F_FTS]] = ts
            P[row + off[F_FSQ]] = seq
            P[row + off[F_FV]] = bits
            P[row + off[F_FK]] = kind
    if off[F_LTS] >= 0:
        a, q = P[row + off[F_LTS]], P[row + off[F_LSQ]]
        if c == 1 or ts > a or (ts == a and seq > q):
            P[row + off[F_LTS]] = ts
            P[row + off[F_LSQ]] = seq
            P[row + off[F_LV]] = bits
            P[row + off[F_LK]] = kind


@njit
def _greater(ka, ba, fa, kb, bb, Pf_b):
    if ka != K_FLOAT and kb != K_FLOAT:
        return ba > bb
    return fa > Pf_b


@njit
def _push_last(P, block, n, ts, seq, kind, bits):
    """Insert (ts, seq, kind, bits) into a last_n block in (ts, seq) order, keeping the newest ``n``."""
    count = P[block]
    pos = count
    while pos > 0:
        at = block + 1 + 4 * (pos - 1)
        if P[at] < ts or (P[at] == ts and P[at + 1] < seq):
            break
        pos -= 1
    if count < n:
        for i in range(count, pos, -1):
            for w in range(4):
                P[block + 1 + 4 * i + w] = P[block + 1 + 4 * (i - 1) + w]
        P[block] = count + 1
    elif pos == 0:
        return  # older than the n it keeps
    else:
        pos -= 1
        for i in range(pos):
            for w in range(4):
                P[block + 1 + 4 * i + w] = P[block + 1 + 4 * (i + 1) + w]
    at = block + 1 + 4 * pos
    P[at] = ts
    P[at + 1] = seq
    P[at + 2] = kind
    P[at + 3] = bits


@njit
def append_id(P, S, free, top, HV, hstat, entry_cls, s, h, t, owner):
    """Append event id ``h`` (event time ``t``) to slot ``s``'s ids, in arrival order."""
    e = _alloc(P, free, top, entry_cls, 4)
    P[e] = h
    P[e + 1] = t
    P[e + 2] = -1
    P[e + 3] = owner
    tail = S[s, M_IDS_TAIL]
    if tail >= 0:
        P[tail + 2] = e
    else:
        S[s, M_IDS_HEAD] = e
    S[s, M_IDS_TAIL] = e
    _insert(HV, hstat, P, h, owner, e)
    S[s, M_IDS_LIVE] += 1


@njit
def _window_start(t, w, hop):
    return ((t - w) // hop) * hop


@njit
def apply_batch(P, Pf, S, free, top, HV, hstat,
                g_hop, g_reach, g_width, g_off, cd_col, cd_window, cd_hop, ln_col, ln_n, widths,
                order, slots, ts, ih, hid, vk, vb, vf, vh, lateness, reasons, start, per_event):
    """Apply events ``order[start:]`` (grouped by slot, arrival order within a slot) to their slots'
    states; returns where it stopped: ``len(order)``, or earlier when fewer than ``per_event`` pool
    words or hash-table slots are left for the next event (the caller grows the arena and calls
    again from there: the events before were applied whole).

    ``reasons[i]`` becomes ``REASON_LATE`` / ``REASON_DUPLICATE`` for refused events (0: applied).
    Every touched state is pruned at its watermark after its last event: tiles no future window
    reaches, ids beyond the lateness horizon (from the oldest arrival up to the first within it),
    distinct values out of their window."""
    G = len(g_hop)
    D = len(cd_col)
    owners = 1 + D
    entry_cls = G
    cd0 = M_FIXED + G
    ln0 = cd0 + D
    last = -1 if start == 0 else slots[order[start - 1]]
    for p in range(start, len(order)):
        i = order[p]
        s = slots[i]
        if s != last:
            if last >= 0:
                _prune(P, S, free, HV, hstat, g_hop, g_reach, g_width, cd_window, cd_hop, last, lateness)
            last = s
        if top[0] + per_event > len(P) or 2 * (hstat[0] + owners) > len(HV):
            return p
        t = ts[i]
        wm = S[s, M_WM]
        if wm != NO_TIME and t < wm - lateness:
            reasons[i] = REASON_LATE
            continue
        if hid[i]:
            h = ih[i]
            owner = s * owners
            e = _find(HV, P, h, owner)
            if e >= 0:
                if P[e + 1] >= wm - lateness:
                    reasons[i] = REASON_DUPLICATE
                    continue
                _delete(HV, hstat, P, h, owner, e)  # its event left the horizon: the id moves here
                P[e + 3] = -1
                S[s, M_IDS_LIVE] -= 1
            append_id(P, S, free, top, HV, hstat, entry_cls, s, h, t, owner)
        seq = S[s, M_SEQ] + 1
        S[s, M_SEQ] = seq
        if wm == NO_TIME or t > wm:
            wm = t
            S[s, M_WM] = t
        for g in range(G):
            hop = g_hop[g]
            if hop > 0:
                k = t // hop
                if k < (wm - g_reach[g]) // hop:
                    continue  # no future window reaches this tile
            else:
                k = 0
            row = _tile(P, S, free, top, s, g, k, g_width[g])
            P[row + 1] += 1
            for j in range(g_off.shape[1]):
                off = g_off[g, j]
                if off[F_C] >= 0 and vk[i, j] != K_NULL:
                    _add_to_tile(P, Pf, row, off, t, seq, vk[i, j], vb[i, j], vf[i, j])
        for d in range(D):
            j = cd_col[d]
            if vk[i, j] == K_NULL:
                continue
            w = cd_window[d]
            if w > 0 and t < _window_start(wm, w, cd_hop[d]):
                continue
            owner = s * owners + 1 + d
            h = vh[i, j]
            e = _find(HV, P, h, owner)
            if e >= 0:
                if t > P[e + 1]:
                    P[e + 1] = t
            else:
                e = _alloc(P, free, top, entry_cls, 4)
                P[e] = h
                P[e + 1] = t
                P[e + 2] = S[s, cd0 + d]
                P[e + 3] = owner
                S[s, cd0 + d] = e
                _insert(HV, hstat, P, h, owner, e)
        for q in range(len(ln_col)):
            j = ln_col[q]
            if vk[i, j] == K_NULL:
                continue
            block = S[s, ln0 + q]
            if block < 0:
                block = _alloc(P, free, top, G + 1 + q, widths[G + 1 + q])
                S[s, ln0 + q] = block
            _push_last(P, block, ln_n[q], t, seq, vk[i, j], vb[i, j])
    if last >= 0:
        _prune(P, S, free, HV, hstat, g_hop, g_reach, g_width, cd_window, cd_hop, last, lateness)
    return len(order)


@njit
def _prune(P, S, free, HV, hstat, g_hop, g_reach, g_width, cd_window, cd_hop, s, lateness):
    wm = S[s, M_WM]
    if wm == NO_TIME:
        return
    G = len(g_hop)
    D = len(cd_window)
    for g in range(G):
        hop = g_hop[g]
        if hop == 0:
            continue
        oldest = (wm - g_reach[g]) // hop
        prev = -1
        cur = S[s, M_FIXED + g]
        while cur >= 0 and P[cur] >= oldest:
            prev = cur
            cur = P[cur + 2]
        if cur >= 0:
            if prev < 0:
                S[s, M_FIXED + g] = -1
            else:
                P[prev + 2] = -1
            while cur >= 0:
                nxt = P[cur + 2]
                _release(P, free, g, cur)
                cur = nxt
    prune_ids(P, S, free, HV, hstat, G, s, wm - lateness)
    for d in range(D):
        w = cd_window[d]
        if w == 0:
            continue
        start = _window_start(wm, w, cd_hop[d])
        at = M_FIXED + G + d
        prev = -1
        cur = S[s, at]
        while cur >= 0:
            nxt = P[cur + 2]
            if P[cur + 1] < start:
                if prev < 0:
                    S[s, at] = nxt
                else:
                    P[prev + 2] = nxt
                _delete(HV, hstat, P, P[cur], P[cur + 3], cur)
                _release(P, free, G, cur)
            else:
                prev = cur
            cur = nxt


@njit
def prune_ids(P, S, free, HV, hstat, G, s, horizon):
    """Drop ids from the oldest arrival up to the first at or after ``horizon`` (dead entries,
    ids that moved to a later arrival, go as they reach the front)."""
    e = S[s, M_IDS_HEAD]
    while e >= 0 and (P[e + 3] < 0 or P[e + 1] < horizon):
        nxt = P[e + 2]
        if P[e + 3] >= 0:
            _delete(HV, hstat, P, P[e], P[e + 3], e)
            S[s, M_IDS_LIVE] -= 1
        if S[s, M_IDS_MARK] == e:
            S[s, M_IDS_MARK] = -1
        _release(P, free, G, e)
        e = nxt
    S[s, M_IDS_HEAD] = e
    if e < 0:
        S[s, M_IDS_TAIL] = -1


@njit
def release_slot(P, S, free, HV, hstat, G, D, L, ln_cls0, s):
    """Free every row of slot ``s`` and mark it unused."""
    for g in range(G):
        cur = S[s, M_FIXED + g]
        while cur >= 0:
            nxt = P[cur + 2]
            _release(P, free, g, cur)
            cur = nxt
    cur = S[s, M_IDS_HEAD]
    while cur >= 0:
        nxt = P[cur + 2]
        if P[cur + 3] >= 0:
            _delete(HV, hstat, P, P[cur], P[cur + 3], cur)
        _release(P, free, G, cur)
        cur = nxt
    for d in range(D):
        cur = S[s, M_FIXED + G + d]
        while cur >= 0:
            nxt = P[cur + 2]
            _delete(HV, hstat, P, P[cur], P[cur + 3], cur)
            _release(P, free, G, cur)
            cur = nxt
    for q in range(L):
        block = S[s, M_FIXED + G + D + q]
        if block >= 0:
            _release(P, free, ln_cls0 + q, block)
    reset_slot(S, s)


@njit
def reset_slot(S, s):
    for c in range(S.shape[1]):
        S[s, c] = -1
    S[s, M_WM] = NO_TIME
    S[s, M_SEQ] = 0
    S[s, M_IDS_LIVE] = 0
    S[s, M_USED] = 0


# -- evaluating --------------------------------------------------------------------------------

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
                continue
            if fn == FN_DISTINCT:
                hop = f_hop[f]
                start = _window_start(t, w, hop)
                count = 0
                oldest = NO_TIME
                cur = S[s, M_FIXED + G + f_sub[f]]
                while cur >= 0:
                    at = P[cur + 1]
                    if w == 0 or at >= start:
                        count += 1
                        if oldest == NO_TIME or at < oldest:
                            oldest = at
                    cur = P[cur + 2]
                out_k[m, f] = K_INT
                out_b[m, f] = count
                if w > 0 and count > 0:
                    change = (oldest // hop + 1) * hop + w
                    if horizon == NO_TIME or change < horizon:
                        horizon = change
                continue
            if fn == FN_LAST_N:
                block = S[s, M_FIXED + G + D + f_sub[f]]
                out_k[m, f] = K_LIST
                out_b[m, f] = block
                first = 0
                if block >= 0 and w > 0:
                    hop = f_hop[f]
                    start = _window_start(t, w, hop)
                    count = P[block]
                    while first < count and P[block + 1 + 4 * first] < start:
                        first += 1
                    if first < count:
                        change = (P[block + 1 + 4 * first] // hop + 1) * hop + w
                        if horizon == NO_TIME or change < horizon:
                            horizon = change
                out_x[m, f] = first
                continue
            g = f_group[f]
            hop = g_hop[g]
            a = 0
            b = 0
            if w > 0:
                a = (t - w) // hop
                b = t // hop
            j = f_col[f]
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
            cur = S[s, M_FIXED + g]
            while cur >= 0:
                k = P[cur]
                if w > 0 and k < a:
                    break  # newest first: every later tile is older
                if w > 0 and k > b:
                    cur = P[cur + 2]
                    continue
                n += P[cur + 1]
                old = k
                if j >= 0:
                    off = g_off[g, j]
                    tc = P[cur + off[F_C]]
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
                            lo = F_LO if fn == FN_MIN else F_HI
                            at = cur + off[lo]
                            kk = P[cur + off[lo + 1]]
                            cf = _stored_float(P, Pf, at, kk)
                            if c == 0:
                                better = True
                            elif fn == FN_MIN:
                                better = _less(kk, P[at], cf, vkind, vbits, vfloat)
                            else:
                                better = _greater(kk, P[at], cf, vkind, vbits, vfloat)
                            if better:
                                vkind = kk
                                vbits = P[at]
                                vfloat = cf
                        elif fn == FN_FIRST or fn == FN_LAST:
                            o_ts = F_FTS if fn == FN_FIRST else F_LTS
                            a_ts = P[cur + off[o_ts]]
                            a_sq = P[cur + off[o_ts + 1]]
                            if fn == FN_FIRST:
                                take = c == 0 or a_ts < vts or (a_ts == vts and a_sq < vseq)
                            else:
                                take = c == 0 or a_ts > vts or (a_ts == vts and a_sq > vseq)
                            if take:
                                vts = a_ts
                                vseq = a_sq
                                vbits = P[cur + off[o_ts + 2]]
                                vkind = P[cur + off[o_ts + 3]]
                                vfloat = _stored_float(P, Pf, cur + off[o_ts + 2], vkind)
                        c += tc
                cur = P[cur + 2]
            if w > 0 and old != NO_TIME:
                change = (old + 1) * hop + w
                if horizon == NO_TIME or change < horizon:
                    horizon = change
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

