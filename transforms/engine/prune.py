"""Dropping rows of the state engine's slots, compiled: what no future window reaches (tiles,
``count_distinct`` values, event ids beyond the lateness horizon), and whole slots.
"""

from __future__ import annotations

from .jit import njit
from .layout import M_FIXED, M_IDS_HEAD, M_IDS_LIVE, M_IDS_MARK, M_IDS_TAIL, M_SEQ, M_USED, M_WM, NO_TIME
from .pool import delete, release


@njit
def window_start_ms(t, w, hop):
    return ((t - w) // hop) * hop


@njit
def prune_state(P, S, free, HV, hstat, g_hop, g_reach, g_width, cd_window, cd_hop, s, lateness):
    """Drop what no future window of slot ``s`` reaches at its watermark: tiles (lists newest first,
    so the tail), ids beyond the lateness horizon, count_distinct values out of their window.  One
    function body: a call between compiled functions costs more than these loops."""
    wm = S[s, M_WM]
    if wm == NO_TIME:
        return
    G = len(g_hop)
    for g in range(G):
        hop = g_hop[g]
        if hop == 0:
            continue
        oldest = (wm - g_reach[g]) // hop
        cur = S[s, M_FIXED + g]
        if cur < 0 or S[s, S.shape[1] - G + g] >= oldest:
            continue  # no tile, or none out of reach
        prev = -1
        while cur >= 0 and P[cur] >= oldest:
            prev = cur
            cur = P[cur + 2]
        if cur >= 0:
            if prev < 0:
                S[s, M_FIXED + g] = -1
            else:
                P[prev + 2] = -1
                S[s, S.shape[1] - G + g] = P[prev]
            while cur >= 0:
                nxt = P[cur + 2]
                release(P, free, g, cur)
                cur = nxt
    prune_ids(P, S, free, HV, hstat, G, s, wm - lateness)
    for d in range(len(cd_window)):
        w = cd_window[d]
        if w == 0:
            continue
        start = window_start_ms(wm, w, cd_hop[d])
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
                delete(HV, hstat, P, P[cur], P[cur + 3], cur)
                release(P, free, G, cur)
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
            delete(HV, hstat, P, P[e], P[e + 3], e)
            S[s, M_IDS_LIVE] -= 1
        if S[s, M_IDS_MARK] == e:
            S[s, M_IDS_MARK] = -1
        release(P, free, G, e)
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
            release(P, free, g, cur)
            cur = nxt
    cur = S[s, M_IDS_HEAD]
    while cur >= 0:
        nxt = P[cur + 2]
        if P[cur + 3] >= 0:
            delete(HV, hstat, P, P[cur], P[cur + 3], cur)
        release(P, free, G, cur)
        cur = nxt
    for d in range(D):
        cur = S[s, M_FIXED + G + d]
        while cur >= 0:
            nxt = P[cur + 2]
            delete(HV, hstat, P, P[cur], P[cur + 3], cur)
            release(P, free, G, cur)
            cur = nxt
    for q in range(L):
        block = S[s, M_FIXED + G + D + q]
        if block >= 0:
            release(P, free, ln_cls0 + q, block)
    reset_slot(S, s)


@njit
def reset_slot(S, s):
    for c in range(S.shape[1]):
        S[s, c] = -1
    S[s, M_WM] = NO_TIME
    S[s, M_SEQ] = 0
    S[s, M_IDS_LIVE] = 0
    S[s, M_USED] = 0


@njit
def note_oldest(P, S, G, s):
    """Record the oldest tile of each of slot ``s``'s ``G`` tile lists (``layout``; pruning reads it), after
    the lists were built whole (a state loaded from its bytes)."""
    for g in range(G):
        cur = S[s, M_FIXED + g]
        while cur >= 0:
            S[s, S.shape[1] - G + g] = P[cur]
            cur = P[cur + 2]
