"""JSON written by compiled code: values rows from ``StateArena.evaluate``'s arrays, and the
trailers of encoded states (``codec.encode_many``).

``json_rows`` gives, per evaluated state, the bytes ``orjson.dumps(row, option=OPT_SERIALIZE_NUMPY)``
gives for the Python row ``StateArena.rows`` would build (``tests/transforms/test_json_rows.py``
holds them equal), without building that row: ints, bools and nulls are written here, floats come
from one ``orjson`` call over all of them (the same shortest round-trip text, and ``null`` for NaN
and infinities), interned values from one ``orjson`` call over the ones the rows hold, and a kernel
joins the pieces in row order.  A state's trailer, the JSON list of the interned values it holds, is
joined the same way from one ``orjson`` call over every state's values (``with_trailers``).
"""

from __future__ import annotations

import numpy as np
import orjson

from .jit import njit, njit_inline
from .layout import K_BOOL, K_FLOAT, K_INT, K_LIST, K_OBJ

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_INT64_MIN_TEXT = np.frombuffer(b"-9223372036854775808", dtype=np.uint8)
_NULL, _TRUE, _FALSE = (np.frombuffer(w, dtype=np.uint8) for w in (b"null", b"true", b"false"))


@njit
def _collect(P, Pf, out_k, out_b, out_f, out_x, floats, codes):
    """The floats and interned codes the rows hold into ``floats`` / ``codes`` (room for every value and
    list item), in the order ``_write`` meets them: row by row, feature by feature, a last_n list's
    items oldest first; returns how many of each."""
    nf = 0
    nc = 0
    m, F = out_k.shape
    for r in range(m):
        for f in range(F):
            kind = out_k[r, f]
            if kind == K_FLOAT:
                floats[nf] = out_f[r, f]
                nf += 1
            elif kind == K_OBJ:
                codes[nc] = out_b[r, f]
                nc += 1
            elif kind == K_LIST:
                block = out_b[r, f]
                if block < 0:
                    continue
                for i in range(out_x[r, f], P[block]):
                    at = block + 1 + 4 * i
                    item = P[at + 2]
                    if item == K_FLOAT:
                        floats[nf] = Pf[at + 3]
                        nf += 1
                    elif item == K_OBJ:
                        codes[nc] = P[at + 3]
                        nc += 1
    return nf, nc


@njit
def _items(buf, starts, ends):
    """The spans of the top-level items of the JSON list ``buf`` (strings, lists and objects within
    skipped whole); returns how many."""
    n = 0
    depth = 0
    in_str = False
    escaped = False
    start = 1
    for i in range(1, len(buf) - 1):
        c = buf[i]
        if in_str:
            if escaped:
                escaped = False
            elif c == 92:  # backslash
                escaped = True
            elif c == 34:
                in_str = False
        elif c == 34:  # a quote
            in_str = True
        elif c == 91 or c == 123:  # [ {
            depth += 1
        elif c == 93 or c == 125:
            depth -= 1
        elif c == 44 and depth == 0:  # a comma between items
            starts[n] = start
            ends[n] = i
            n += 1
            start = i + 1
    if len(buf) > 2:
        starts[n] = start
        ends[n] = len(buf) - 1
        n += 1
    return n


@njit_inline
def _put(out, pos, src, a, b):
    for i in range(a, b):
        out[pos] = src[i]
        pos += 1
    return pos


@njit_inline
def _put_int(out, pos, v, int64_min):
    if v == 0:
        out[pos] = 48
        return pos + 1
    if v < 0:
        if v == -9223372036854775807 - 1:
            return _put(out, pos, int64_min, 0, len(int64_min))
        out[pos] = 45  # minus
        pos += 1
        v = -v
    digits = 0
    t = v
    while t > 0:
        digits += 1
        t //= 10
    end = pos + digits
    while v > 0:
        end -= 1
        out[end] = 48 + v % 10
        v //= 10
    return pos + digits


@njit
def _write(P, out_k, out_b, out_x, ftxt, fs, fe, otxt, os_, oe, out, bounds, int64_min):
    """Each row's JSON list into ``out`` (``bounds[r]`` to ``bounds[r + 1]``).  One body: a compiled
    call per value costs several times the value's own writing."""
    m, F = out_k.shape
    pos = 0
    fi = 0
    oi = 0
    for r in range(m):
        bounds[r] = pos
        out[pos] = 91  # [
        pos += 1
        for f in range(F):
            if f:
                out[pos] = 44  # ,
                pos += 1
            kind = out_k[r, f]
            listed = kind == K_LIST
            block = out_b[r, f]
            lo, hi = 0, 1
            if listed:
                out[pos] = 91
                pos += 1
                lo = out_x[r, f]
                hi = P[block] if block >= 0 else lo
            for i in range(lo, hi):
                k, bits = kind, block
                if listed:
                    if i > lo:
                        out[pos] = 44
                        pos += 1
                    at = block + 1 + 4 * i
                    k, bits = P[at + 2], P[at + 3]
                if k == K_FLOAT:
                    pos = _put(out, pos, ftxt, fs[fi], fe[fi])
                    fi += 1
                elif k == K_INT:
                    pos = _put_int(out, pos, bits, int64_min)
                elif k == K_OBJ:
                    pos = _put(out, pos, otxt, os_[oi], oe[oi])
                    oi += 1
                elif k == K_BOOL and bits != 0:
                    out[pos:pos + 4] = _TRUE
                    pos += 4
                elif k == K_BOOL:
                    out[pos:pos + 5] = _FALSE
                    pos += 5
                else:
                    out[pos:pos + 4] = _NULL
                    pos += 4
            if listed:
                out[pos] = 93  # ]
                pos += 1
        out[pos] = 93
        pos += 1
    bounds[m] = pos
    return pos


@njit
def _join_trailers(words, bounds, text, starts, ends, code_bounds, out, out64, out_bounds):
    """Each state's words (``words[bounds[m]:bounds[m + 1]]``) into ``out`` (``out64`` its int64 view),
    followed by the JSON list of its items ``starts[c]:ends[c]`` of ``text`` (``c`` from ``code_bounds[m]``
    to ``code_bounds[m + 1]``) padded with spaces to whole words, where it has any."""
    pos = 0
    for m in range(len(bounds) - 1):
        out_bounds[m] = pos
        w = pos // 8
        for i in range(bounds[m], bounds[m + 1]):
            out64[w] = words[i]
            w += 1
        pos = 8 * w
        lo, hi = code_bounds[m], code_bounds[m + 1]
        if hi > lo:
            out[pos] = 91
            pos += 1
            for c in range(lo, hi):
                if c > lo:
                    out[pos] = 44
                    pos += 1
                pos = _put(out, pos, text, starts[c], ends[c])
            out[pos] = 93
            pos += 1
            while pos % 8:
                out[pos] = 32
                pos += 1
    out_bounds[len(bounds) - 1] = pos
    return pos


def with_trailers(words: np.ndarray, bounds: np.ndarray, held: list, code_bounds: np.ndarray) -> list[bytes]:
    """The bytes of each encoded state (``words[bounds[m]:bounds[m + 1]]``, int64) with the trailer of
    its interned values ``held[code_bounds[m]:code_bounds[m + 1]]``: what ``orjson.dumps`` of that list
    writes, in one ``orjson`` call for every state."""
    text, starts, ends = _spans(orjson.dumps(held), len(held))
    out64 = np.empty(len(words) + (len(text) + 16 * len(bounds)) // 8, dtype=np.int64)
    out = out64.view(np.uint8)
    out_bounds = np.empty(len(bounds), dtype=np.int64)
    _join_trailers(words, bounds, text, starts, ends, code_bounds, out, out64, out_bounds)
    return pieces(out, out_bounds)


def _spans(text: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.frombuffer(text, dtype=np.uint8)
    starts, ends = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    found = _items(buf, starts, ends)
    if found != n:  # orjson writes no space, so this cannot happen short of a bug: never write a wrong row
        raise AssertionError(f"split {found} JSON items where {n} were written")
    return buf, starts, ends


def json_rows(arena, out_b: np.ndarray, out_f: np.ndarray, out_k: np.ndarray, out_x: np.ndarray) -> list[bytes]:
    """The JSON values row of each state ``arena.evaluate`` gave (``out_*``; every feature, spec order)."""
    m, F = out_k.shape
    if m == 0:
        return []
    P, Pf = arena.P, arena.Pf
    blocks = out_b[out_k == K_LIST]
    items = int(np.where(blocks >= 0, P[np.maximum(blocks, 0)], 0).sum()) if len(blocks) else 0
    floats, codes = np.empty(m * F + items, dtype=np.float64), np.empty(m * F + items, dtype=np.int64)
    nf, nc = _collect(P, Pf, out_k, out_b, out_f, out_x, floats, codes)
    ftxt, fs, fe = _spans(orjson.dumps(floats[:nf], option=_NUMPY), nf)
    held = arena.objects.values
    otxt, os_, oe = _spans(orjson.dumps([held[c] for c in codes[:nc].tolist()], option=_NUMPY), nc)
    out = np.empty(len(ftxt) + len(otxt) + m * (2 + 22 * F) + 22 * items, dtype=np.uint8)
    bounds = np.empty(m + 1, dtype=np.int64)
    _write(P, out_k, out_b, out_x, ftxt, fs, fe, otxt, os_, oe, out, bounds, _INT64_MIN_TEXT)
    return pieces(out, bounds)


def pieces(data: np.ndarray, edges: np.ndarray) -> list[bytes]:
    """The bytes of ``data`` (any dtype, read as bytes) from ``edges[i]`` to ``edges[i + 1]``, for each ``i``."""
    cut = edges.tolist()
    raw = data.view(np.uint8)[:cut[-1]].tobytes()
    return [raw[a:b] for a, b in zip(cut[:-1], cut[1:])]


__all__ = ["json_rows", "pieces", "with_trailers"]
