"""The compiled kernels of the state engine: one generic source for every view.

Size budget: ``apply_batch`` keeps every per-event step in its own body (a little over 60 lines):
a call between compiled functions in the per-event loop slows the whole kernel measurably.

Each kernel takes an arena's arrays (``P`` the word pool and ``Pf`` its float view, ``S`` the
slot metadata, ``free`` / ``top`` the allocator, ``HV`` / ``hstat`` the entry hash table) and
the view's layout tables (``transforms.engine.layout``), so one compile serves every view.
The caller guarantees room: ``StateArena`` grows the pool, the slots and the hash table before
a call, so a kernel never allocates numpy memory and never raises.

Here: applying a micro-batch (refusals, tile updates, distinct values, last values) and pruning;
``transforms.engine.evaluate`` reads the states, ``codec_kernels`` encodes and decodes them,
``pool`` is the allocator and the entry table.  Tiles take Welford updates, as
``transforms.aggregations.merge_moments`` expects (count, mean, M2).
"""

from __future__ import annotations


from .jit import njit
from .pool import alloc, delete, find, insert
from .prune import prune_state, window_start_ms
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
    K_FLOAT,
    K_NULL,
    M_FIXED,
    M_IDS_HEAD,
    M_IDS_LIVE,
    M_IDS_TAIL,
    M_SEQ,
    M_WM,
    NO_TIME,
)

REASON_LATE = 1
REASON_DUPLICATE = 2


# -- applying a batch --------------------------------------------------------------------------

@njit
def less(ka, ba, fa, kb, bb, Pf_b):
    """Value a (kind, bits, float) < stored value b (kind, bits, its float): ints compare exactly."""
    if ka != K_FLOAT and kb != K_FLOAT:
        return ba < bb
    return fa < Pf_b


@njit
def stored_float(P, Pf, at, kind):
    if kind == K_FLOAT:
        return Pf[at]
    return float(P[at])


@njit
def _tile(P, S, free, top, s, g, k, width, G):
    """The row of slot ``s``'s tile ``k`` of group ``g`` (of ``G``), created when missing (lists are newest
    first; a tile created at the end is the list's oldest)."""
    head = M_FIXED + g
    prev = -1
    cur = S[s, head]
    while cur >= 0 and P[cur] > k:
        prev = cur
        cur = P[cur + 2]
    if cur >= 0 and P[cur] == k:
        return cur
    o = alloc(P, free, top, g, width + 3)
    P[o] = k
    P[o + 2] = cur
    if cur < 0:
        S[s, S.shape[1] - G + g] = k
    if prev < 0:
        S[s, head] = o
    else:
        P[prev + 2] = o
    return o


@njit
def _add_to_tile(P, Pf, row, g_off, g, j, ts, seq, kind, bits, fv):
    """One non-null value into a tile's fields of column ``j`` (``g_off[g, j]``: the field offsets,
    read in place: no array view per call)."""
    at_c = row + g_off[g, j, F_C]
    c = P[at_c] + 1
    P[at_c] = c
    o = g_off[g, j, F_S]
    if o >= 0:
        Pf[row + o] += fv
    o = g_off[g, j, F_MU]
    if o >= 0:  # Welford, as merge_moments expects (count, mean, M2)
        mu = Pf[row + o]
        d = fv - mu
        mu += d / c
        Pf[row + o] = mu
        Pf[row + g_off[g, j, F_Q]] += d * (fv - mu)
    o = g_off[g, j, F_LO]
    if o >= 0:  # min keeps the lower value
        at = row + o
        kb = P[at + 1]  # the kind field follows the value field (F_LOK, F_HIK)
        if c == 1 or less(kind, bits, fv, kb, P[at], stored_float(P, Pf, at, kb)):
            P[at] = bits
            P[at + 1] = kind
    o = g_off[g, j, F_HI]
    if o >= 0:  # max keeps the higher value
        at = row + o
        kb = P[at + 1]
        if c == 1 or greater(kind, bits, fv, kb, P[at], stored_float(P, Pf, at, kb)):
            P[at] = bits
            P[at + 1] = kind
    o = g_off[g, j, F_FTS]
    if o >= 0:
        a, q = P[row + o], P[row + g_off[g, j, F_FSQ]]
        if c == 1 or ts < a or (ts == a and seq < q):
            P[row + o] = ts
            P[row + g_off[g, j, F_FSQ]] = seq
            P[row + g_off[g, j, F_FV]] = bits
            P[row + g_off[g, j, F_FK]] = kind
    o = g_off[g, j, F_LTS]
    if o >= 0:
        a, q = P[row + o], P[row + g_off[g, j, F_LSQ]]
        if c == 1 or ts > a or (ts == a and seq > q):
            P[row + o] = ts
            P[row + g_off[g, j, F_LSQ]] = seq
            P[row + g_off[g, j, F_LV]] = bits
            P[row + g_off[g, j, F_LK]] = kind


@njit
def greater(ka, ba, fa, kb, bb, Pf_b):
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
    e = alloc(P, free, top, entry_cls, 4)
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
    insert(HV, hstat, P, h, owner, e)
    S[s, M_IDS_LIVE] += 1


@njit
def _add_to_tiles(P, Pf, S, free, top, g_hop, g_reach, g_width, g_off, s, t, seq, wm, vk, vb, vf, i):
    """Accepted event ``i`` (its columns: row ``i`` of ``vk``, ``vb``, ``vf``) into slot ``s``'s tile of each group."""
    for g in range(len(g_hop)):
        hop = g_hop[g]
        if hop > 0:
            k = t // hop
            if k < (wm - g_reach[g]) // hop:
                continue  # no future window reaches this tile
        else:
            k = 0
        row = _tile(P, S, free, top, s, g, k, g_width[g], len(g_hop))
        P[row + 1] += 1
        for j in range(g_off.shape[1]):
            if g_off[g, j, F_C] >= 0 and vk[i, j] != K_NULL:
                _add_to_tile(P, Pf, row, g_off, g, j, t, seq, vk[i, j], vb[i, j], vf[i, j])


@njit
def _add_distinct(P, S, free, top, HV, hstat, cd_col, cd_window, cd_hop, s, t, wm, vk, vh, i, entry_cls):
    """Accepted event ``i``'s values into slot ``s``'s count_distinct lists (the latest time per value)."""
    G = entry_cls
    owners = 1 + len(cd_col)
    for d in range(len(cd_col)):
        j = cd_col[d]
        if vk[i, j] == K_NULL:
            continue
        w = cd_window[d]
        if w > 0 and t < window_start_ms(wm, w, cd_hop[d]):
            continue  # out of the window already: pruned at the end anyway
        owner = s * owners + 1 + d
        h = vh[i, j]
        e = find(HV, P, h, owner)
        if e >= 0:
            if t > P[e + 1]:
                P[e + 1] = t
        else:
            e = alloc(P, free, top, entry_cls, 4)
            P[e] = h
            P[e + 1] = t
            P[e + 2] = S[s, M_FIXED + G + d]
            P[e + 3] = owner
            S[s, M_FIXED + G + d] = e
            insert(HV, hstat, P, h, owner, e)


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
    ln0 = M_FIXED + G + D
    last = -1 if start == 0 else slots[order[start - 1]]
    for p in range(start, len(order)):
        i = order[p]
        s = slots[i]
        if s != last:
            if last >= 0:
                prune_state(P, S, free, HV, hstat, g_hop, g_reach, g_width, cd_window, cd_hop, last, lateness)
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
            e = find(HV, P, h, owner)
            if e >= 0:
                if P[e + 1] >= wm - lateness:
                    reasons[i] = REASON_DUPLICATE
                    continue
                delete(HV, hstat, P, h, owner, e)  # its event left the horizon: the id moves here
                P[e + 3] = -1
                S[s, M_IDS_LIVE] -= 1
            append_id(P, S, free, top, HV, hstat, entry_cls, s, h, t, owner)
        seq = S[s, M_SEQ] + 1
        S[s, M_SEQ] = seq
        if wm == NO_TIME or t > wm:
            wm = t
            S[s, M_WM] = t
        _add_to_tiles(P, Pf, S, free, top, g_hop, g_reach, g_width, g_off, s, t, seq, wm, vk, vb, vf, i)
        _add_distinct(P, S, free, top, HV, hstat, cd_col, cd_window, cd_hop, s, t, wm, vk, vh, i, entry_cls)
        for q in range(len(ln_col)):  # last_n items (in place: a compiled call per event costs ~10%)
            j = ln_col[q]
            if vk[i, j] == K_NULL:
                continue
            block = S[s, ln0 + q]
            if block < 0:
                block = alloc(P, free, top, G + 1 + q, widths[G + 1 + q])
                S[s, ln0 + q] = block
            _push_last(P, block, ln_n[q], t, seq, vk[i, j], vb[i, j])
    if last >= 0:
        prune_state(P, S, free, HV, hstat, g_hop, g_reach, g_width, cd_window, cd_hop, last, lateness)
    return len(order)
