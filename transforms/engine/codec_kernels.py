"""Compiled encoding of one state to the binary format and back (see ``transforms.engine.codec``)."""

from __future__ import annotations

import numpy as np

from .jit import njit
from .kernels import append_id
from .prune import note_oldest, prune_ids
from .pool import alloc, delete, find, insert
from .layout import (
    F_FK,
    F_FV,
    F_HI,
    F_HIK,
    F_LK,
    F_LO,
    F_LOK,
    F_LV,
    K_OBJ,
    M_FIXED,
    M_IDS_HEAD,
    M_IDS_LIVE,
    M_IDS_MARK,
    M_IDS_STORED,
    M_IDS_TAIL,
    M_SEQ,
    M_USED,
    M_WM,
    NO_TIME,
)

ERR_TRUNCATED = -1
ERR_COUNT = -2
ERR_OBJECT = -3  # a value's kind unknown, or its interned-object code beyond the state's value trailer


@njit
def state_words(P, S, g_width, D, L, s):
    """Words ``encode_state`` writes for slot ``s``."""
    G = len(g_width)
    n = 4 + G + D + L
    for g in range(G):
        cur = S[s, M_FIXED + g]
        while cur >= 0:
            n += 2 + g_width[g]
            cur = P[cur + 2]
    for d in range(D):
        cur = S[s, M_FIXED + G + d]
        while cur >= 0:
            n += 2
            cur = P[cur + 2]
    for q in range(L):
        block = S[s, M_FIXED + G + D + q]
        if block >= 0:
            n += 4 * P[block]
    return n


@njit
def encode_state(P, S, g_width, g_off, D, L, s, header, out, objpos):
    """Write slot ``s`` into ``out`` (``state_words`` long); ``objpos`` receives the word positions
    holding interned-object codes.  Returns how many positions it wrote."""
    G = len(g_width)
    out[0] = header
    out[1] = len(out)
    out[2] = S[s, M_WM]
    out[3] = S[s, M_SEQ]
    p = 4
    nobj = 0
    for g in range(G):
        at_count = p
        p += 1
        count = 0
        cur = S[s, M_FIXED + g]
        while cur >= 0:
            out[p] = P[cur]
            out[p + 1] = P[cur + 1]
            for x in range(g_width[g]):
                out[p + 2 + x] = P[cur + 3 + x]
            for j in range(g_off.shape[1]):
                for fv, fk in ((F_LO, F_LOK), (F_HI, F_HIK), (F_FV, F_FK), (F_LV, F_LK)):
                    o = g_off[g, j, fv]
                    if o >= 0 and P[cur + g_off[g, j, fk]] == K_OBJ:
                        objpos[nobj] = p + o - 1
                        nobj += 1
            p += 2 + g_width[g]
            count += 1
            cur = P[cur + 2]
        out[at_count] = count
    for d in range(D):
        at_count = p
        p += 1
        count = 0
        cur = S[s, M_FIXED + G + d]
        while cur >= 0:
            out[p] = P[cur]
            out[p + 1] = P[cur + 1]
            p += 2
            count += 1
            cur = P[cur + 2]
        out[at_count] = count
    for q in range(L):
        block = S[s, M_FIXED + G + D + q]
        count = 0 if block < 0 else P[block]
        out[p] = count
        p += 1
        for i in range(count):
            for w in range(4):
                out[p + w] = P[block + 1 + 4 * i + w]
            if out[p + 2] == K_OBJ:
                objpos[nobj] = p + 3
                nobj += 1
            p += 4
    return nobj


@njit
def _decode_rows(P, S, free, top, HV, hstat, words, p, n, count, width, cls, head, entry_owner):
    """Rows ``words[p:]`` of ``count`` items of ``width`` words into a new list at ``S[s, head]``
    (tiles: ``entry_owner`` < 0, ``[k, n, fields]`` stored; entries: ``[hash, ts]`` stored, with
    ``entry_owner`` their owner, each inserted in the entry table).  Returns the next position."""
    s = head[0]
    column = head[1]
    prev = -1
    for _ in range(count):  # in the stored order
        if entry_owner < 0:
            o = alloc(P, free, top, cls, width + 1)
            P[o] = words[p]
            P[o + 1] = words[p + 1]
            P[o + 2] = -1
            for x in range(width - 2):
                P[o + 3 + x] = words[p + 2 + x]
        else:
            o = alloc(P, free, top, cls, 4)
            P[o] = words[p]
            P[o + 1] = words[p + 1]
            P[o + 2] = -1
            P[o + 3] = entry_owner
            insert(HV, hstat, P, words[p], entry_owner, o)
        if prev < 0:
            S[s, column] = o
        else:
            P[prev + 2] = o
        prev = o
        p += width
    return p


@njit
def decode_state(P, S, free, top, HV, hstat, g_width, widths, ln_n, owners, s, words, remap):
    """Rebuild slot ``s`` (empty) from ``words`` (``encode_state``'s, header checked by the caller);
    object codes go through ``remap``.  Returns the words read, or ``ERR_*``."""
    G = len(g_width)
    D = owners - 1
    if len(words) < 4 or words[1] < 4 or words[1] > len(words):
        return ERR_TRUNCATED
    n = words[1]
    S[s, M_WM] = words[2]
    S[s, M_SEQ] = words[3]
    p = 4
    head = np.zeros(2, dtype=np.int64)
    head[0] = s
    for part in range(G + D):  # tile groups, then count_distinct lists
        if p >= n:
            return ERR_TRUNCATED
        count = words[p]
        p += 1
        width = 2 + g_width[part] if part < G else 2
        if count < 0 or count > (n - p) // width:  # not count * width: a damaged count may overflow
            return ERR_COUNT
        head[1] = M_FIXED + part
        owner = -1 if part < G else s * owners + 1 + (part - G)
        p = _decode_rows(P, S, free, top, HV, hstat, words, p, n, count, width, min(part, G), head, owner)
    note_oldest(P, S, G, s)
    for q in range(len(ln_n)):
        if p >= n:
            return ERR_TRUNCATED
        count = words[p]
        p += 1
        if count < 0 or count > ln_n[q] or p + 4 * count > n:
            return ERR_COUNT
        if count > 0:
            block = alloc(P, free, top, G + 1 + q, widths[G + 1 + q])
            S[s, M_FIXED + G + D + q] = block
            P[block] = count
            for i in range(4 * count):
                P[block + 1 + i] = words[p + i]
            for i in range(count):
                kind = words[p + 4 * i + 2]
                if kind < 0 or kind > K_OBJ:
                    return ERR_OBJECT
                if kind == K_OBJ:
                    code = words[p + 4 * i + 3]
                    if code < 0 or code >= len(remap):
                        return ERR_OBJECT
                    P[block + 1 + 4 * i + 3] = remap[code]
            p += 4 * count
    if p != n:
        return ERR_COUNT
    return p


@njit
def remap_tiles(P, S, g_width, g_off, s, remap):
    """Object codes of slot ``s``'s tiles (as stored) to the arena's codes; ``ERR_OBJECT`` when one is
    not a position of ``remap`` (a damaged state: nothing is read out of bounds), else 0."""
    return _tile_objects(P, S, g_width, g_off, s, remap[:0] == 0, remap, True)


@njit
def _tile_objects(P, S, g_width, g_off, s, live, remap, rewrite):
    """Mark in ``live`` the object codes slot ``s``'s tiles hold, or (``rewrite``) map them through
    ``remap``.  Returns ``ERR_OBJECT`` at a code outside ``remap`` (``live`` when not rewriting), else 0."""
    bound = len(remap) if rewrite else len(live)
    for g in range(len(g_width)):
        cur = S[s, M_FIXED + g]
        while cur >= 0:
            for j in range(g_off.shape[1]):
                for fv, fk in ((F_LO, F_LOK), (F_HI, F_HIK), (F_FV, F_FK), (F_LV, F_LK)):
                    o = g_off[g, j, fv]
                    if o < 0:
                        continue
                    kind = P[cur + g_off[g, j, fk]]
                    if kind < 0 or kind > K_OBJ:  # a stored value is null, a number, a bool or an object
                        return ERR_OBJECT
                    if kind == K_OBJ:
                        code = P[cur + o]
                        if code < 0 or code >= bound:
                            return ERR_OBJECT
                        if rewrite:
                            P[cur + o] = remap[code]
                        else:
                            live[code] = True
            cur = P[cur + 2]
    return 0


@njit
def decode_ids(P, S, free, top, HV, hstat, G, owners, s, pairs, lateness):
    """Load stored ``(hash, ts)`` pairs (arrival order; a repeated id counts at its last place) into
    slot ``s``, then drop the stale front as ``prune_state`` does."""
    owner = s * owners
    for i in range(0, len(pairs) - 1, 2):
        h = pairs[i]
        e = find(HV, P, h, owner)
        if e >= 0:
            delete(HV, hstat, P, h, owner, e)
            P[e + 3] = -1
            S[s, M_IDS_LIVE] -= 1
        append_id(P, S, free, top, HV, hstat, G, s, h, pairs[i + 1], owner)
    wm = S[s, M_WM]
    if wm != NO_TIME:
        prune_ids(P, S, free, HV, hstat, G, s, wm - lateness)
    S[s, M_IDS_STORED] = len(pairs) // 2
    S[s, M_IDS_MARK] = S[s, M_IDS_TAIL]


@njit
def _pairs_from(P, e, out):
    """The live ``(hash, ts)`` pairs of the id list from entry ``e`` on into ``out``; returns the words written."""
    p = 0
    while e >= 0:
        if P[e + 3] >= 0:
            out[p] = P[e]
            out[p + 1] = P[e + 1]
            p += 2
        e = P[e + 2]
    return p


@njit
def ids_after_mark(P, S, s, out):
    """Live ``(hash, ts)`` pairs after the last stored entry (all of them when none is stored)."""
    mark = S[s, M_IDS_MARK]
    return _pairs_from(P, S[s, M_IDS_HEAD] if mark < 0 else P[mark + 2], out)


@njit
def all_ids(P, S, s, out):
    """Every live ``(hash, ts)`` pair of slot ``s``, in arrival order."""
    return _pairs_from(P, S[s, M_IDS_HEAD], out)


@njit
def object_codes(P, S, g_width, g_off, ln_n, D, live, remap, rewrite):
    """Mark in ``live`` the object codes every used slot holds (tiles and last_n items); with
    ``rewrite``, replace each by ``remap[code]`` instead."""
    G = len(g_width)
    for s in range(S.shape[0]):
        if S[s, M_USED] == 0:
            continue
        _tile_objects(P, S, g_width, g_off, s, live, remap, rewrite)
        for q in range(len(ln_n)):
            block = S[s, M_FIXED + G + D + q]
            if block < 0:
                continue
            for i in range(P[block]):
                at = block + 1 + 4 * i
                if P[at + 2] == K_OBJ:
                    if rewrite:
                        P[at + 3] = remap[P[at + 3]]
                    else:
                        live[P[at + 3]] = True


@njit
def encode_states(P, S, g_width, g_off, D, L, slots, header, bounds, out, objpos, codes, code_bounds):
    """``encode_state`` of every slot of ``slots`` into one buffer: state ``m`` is
    ``out[bounds[m]:bounds[m + 1]]`` (``bounds`` from ``words_of``).  Object codes are written as
    indices into the state's own list of them, ``codes[code_bounds[m]:code_bounds[m + 1]]`` (the
    arena's codes, in order of first use), which the caller writes as the state's trailer."""
    c = 0
    for m in range(len(slots)):
        a = bounds[m]
        got = encode_state(P, S, g_width, g_off, D, L, slots[m], header, out[a:bounds[m + 1]], objpos)
        code_bounds[m] = c
        for x in range(got):
            pos = a + objpos[x]
            code = out[pos]
            local = -1
            for y in range(code_bounds[m], c):
                if codes[y] == code:
                    local = y - code_bounds[m]
                    break
            if local < 0:
                codes[c] = code
                local = c - code_bounds[m]
                c += 1
            out[pos] = local
    code_bounds[len(slots)] = c
    return c


@njit
def words_of(P, S, g_width, D, L, slots, bounds):
    """``bounds[m + 1] - bounds[m]``: the words of state ``slots[m]``."""
    bounds[0] = 0
    for m in range(len(slots)):
        bounds[m + 1] = bounds[m] + state_words(P, S, g_width, D, L, slots[m])


@njit
def ids_parts(P, S, slots, bounds, out, modes):
    """What to write of each slot's event ids (``codec.encode_ids_part``'s rule): ``modes[m]`` 0 for
    nothing stored (no live id), 1 for pairs to append, 2 for every live pair; the pairs are
    ``out[bounds[m]:bounds[m + 1]]``.  Marks the written pairs as stored."""
    p = 0
    for m in range(len(slots)):
        s = slots[m]
        bounds[m] = p
        stored = S[s, M_IDS_STORED]
        live = S[s, M_IDS_LIVE]
        mode = 2
        if stored >= 0:
            got = ids_after_mark(P, S, s, out[p:])
            if stored + got // 2 <= live + max(live // 2, 32):
                mode = 1
                S[s, M_IDS_STORED] = stored + got // 2
                p += got
        if mode == 2:
            S[s, M_IDS_STORED] = live
            if live == 0:
                mode = 0
            else:
                p += all_ids(P, S, s, out[p:])
        S[s, M_IDS_MARK] = S[s, M_IDS_TAIL]
        modes[m] = mode
    bounds[len(slots)] = p


@njit
def live_ids_total(S, slots):
    n = 0
    for s in slots:
        n += S[s, M_IDS_LIVE]
    return n


@njit
def decode_all(P, S, free, top, HV, hstat, g_width, g_off, widths, ln_n, owners, slots, buf, starts, remap,
               remap_bounds, status):
    """``decode_state`` of each state ``buf[starts[m]:starts[m + 1]]`` into the empty slot ``slots[m]``,
    object codes through ``remap[remap_bounds[m]:remap_bounds[m + 1]]``; ``status[m]``: its result."""
    for m in range(len(slots)):
        words = buf[starts[m]:starts[m + 1]]
        codes = remap[remap_bounds[m]:remap_bounds[m + 1]]
        status[m] = decode_state(P, S, free, top, HV, hstat, g_width, widths, ln_n, owners, slots[m], words, codes)
        if status[m] >= 0:
            err = remap_tiles(P, S, g_width, g_off, slots[m], codes)
            if err < 0:
                status[m] = err


@njit
def decode_ids_all(P, S, free, top, HV, hstat, G, owners, slots, pairs, bounds, lateness):
    """``decode_ids`` of the pairs ``pairs[bounds[m]:bounds[m + 1]]`` into slot ``slots[m]``."""
    for m in range(len(slots)):
        decode_ids(P, S, free, top, HV, hstat, G, owners, slots[m], pairs[bounds[m]:bounds[m + 1]], lateness)
