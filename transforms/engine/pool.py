"""The arena's allocator and its entry hash table, compiled.

The word pool ``P`` holds rows of a few sizes (``transforms.engine.layout``); each size has a free
list whose links are the rows' first word, and new rows come from ``top``.  The entry table ``HV``
is open addressing with linear probing over pool offsets (-1 empty, -2 a tombstone): an entry is
found by its hash and owner, which the row holds (``[hash, ts, next, owner]``); ``hstat`` counts
the table slots in use (tombstones included) and the live entries.
"""

from __future__ import annotations

from .jit import njit

EMPTY = -1
TOMB = -2


@njit
def alloc(P, free, top, cls, width):
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
def release(P, free, cls, o):
    P[o] = free[cls]
    free[cls] = o


@njit
def home(h, owner, mask):
    """The table slot an entry starts probing from: hashes are xxh3 (already mixed) or small ints;
    shifts and xors only, so that the interpreted kernels never overflow."""
    x = h ^ (h >> 29) ^ (h >> 47) ^ (owner << 7) ^ owner
    return x & mask


@njit
def find(HV, P, h, owner):
    mask = len(HV) - 1
    i = home(h, owner, mask)
    while True:
        e = HV[i]
        if e == EMPTY:
            return -1
        if e >= 0 and P[e] == h and P[e + 3] == owner:
            return e
        i = (i + 1) & mask


@njit
def insert(HV, hstat, P, h, owner, e):
    """Insert entry ``e`` (its key known absent)."""
    mask = len(HV) - 1
    i = home(h, owner, mask)
    while HV[i] >= 0:
        i = (i + 1) & mask
    if HV[i] == EMPTY:
        hstat[0] += 1  # slots in use, tombstones included
    HV[i] = e
    hstat[1] += 1  # live entries


@njit
def delete(HV, hstat, P, h, owner, e):
    mask = len(HV) - 1
    i = home(h, owner, mask)
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
            insert(HV, hstat, P, P[e], P[e + 3], e)
