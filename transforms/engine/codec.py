"""The binary state format (version 3) and the reading of format 2 states.

A state is little-endian int64 words, then an optional JSON trailer:

====================  ===========================================================
word 0                ``b"SFS\\x03"`` and the layout checksum (uint32)
word 1                number of words
words 2, 3            watermark (int64 min: none), arrival sequence
per tile group        count, then ``(k, n_events, fields...)`` per tile, newest first
per count_distinct    count, then ``(value hash, latest time)`` pairs
per last_n            count, then ``(ts, seq, kind, bits)`` items, oldest first
trailer               JSON list of the interned values (strings) that kinds ``K_OBJ`` index
====================  ===========================================================

The event ids are kept apart (``OnlineRecord.ids``): ``b"="`` and ``(hash, ts)`` pairs in
arrival order (16 bytes each), or ``b"&"`` and the pairs to append to what is stored (the
commit script appends them; format 2 writers send ``b"+"`` and JSON pairs, which it joins with a comma).  States
starting with ``{`` are format 2 (JSON, ``transforms.legacy``): they are read, converted, and
written back in format 3 at the next commit (format 1, written by no released version, is refused).
"""

from __future__ import annotations

import numpy as np
import orjson

from . import codec_kernels as ck
from . import layout as lay
from .json_text import pieces, with_trailers
from .values import encode_ids, encode_value, value_hash

MAGIC = b"SFS\x03"
APPEND = b"&"


class StateFormatError(ValueError):
    """A stored state this version cannot read: damaged, of an unknown format, or laid out for
    other features.  Rebuild it from the event log (``featurestore backfill --online``), or run a
    version that wrote it."""


_NO_CODES = np.zeros(0, dtype=np.int64)


def header_word(checksum: int) -> int:
    return int.from_bytes(MAGIC + checksum.to_bytes(4, "little"), "little", signed=True)


def encode(arena, s: int) -> bytes:
    """Slot ``s`` of ``arena`` as format 3 bytes (without its event ids)."""
    return encode_many(arena, np.array([s], dtype=np.int64))[0]


def encode_many(arena, slots: np.ndarray) -> list[bytes]:
    """``encode`` of every slot of ``slots``, in two compiled calls."""
    L = arena.layout
    D, Ln = len(L.cd_col), len(L.ln_col)
    bounds = np.empty(len(slots) + 1, dtype=np.int64)
    ck.words_of(arena.P, arena.S, L.g_width, D, Ln, slots, bounds)
    out = np.empty(int(bounds[-1]), dtype=np.int64)
    objpos = np.empty(int((bounds[1:] - bounds[:-1]).max(initial=0)), dtype=np.int64)
    codes = np.empty(len(out), dtype=np.int64)
    code_bounds = np.empty(len(slots) + 1, dtype=np.int64)
    nobj = ck.encode_states(arena.P, arena.S, L.g_width, L.g_off, D, Ln, slots, header_word(L.checksum), bounds,
                            out, objpos, codes, code_bounds)
    if nobj:  # the trailers: whole words, so that states join aligned
        values = arena.objects.values
        return with_trailers(out, bounds, [values[c] for c in codes[:nobj].tolist()], code_bounds)
    return pieces(out, bounds * 8)


_MARKERS = (b"", APPEND, b"=")


def encode_ids_many(arena, slots: np.ndarray) -> list[bytes]:
    """``encode_ids_part`` of every slot of ``slots``, in one compiled call."""
    out = np.empty(2 * int(ck.live_ids_total(arena.S, slots)), dtype=np.int64)
    bounds = np.empty(len(slots) + 1, dtype=np.int64)
    modes = np.empty(len(slots), dtype=np.int64)
    ck.ids_parts(arena.P, arena.S, slots, bounds, out, modes)
    return [_MARKERS[m] + part if m else b"" for m, part in zip(modes.tolist(), pieces(out, bounds * 8))]


def decode(arena, s: int, blob: bytes) -> None:
    """Fill the empty slot ``s`` from ``blob`` (format 3; see ``load`` for every format)."""
    L = arena.layout
    if len(blob) < 32 or blob[:4] != MAGIC:
        raise StateFormatError(f"stored state is not format 3 (starts {bytes(blob[:8])!r}, {len(blob)} bytes): "
                               "written by another version, or damaged; rebuild it (featurestore backfill --online)")
    checksum = int.from_bytes(blob[4:8], "little")
    if checksum != L.checksum:
        raise StateFormatError(f"stored state is laid out as {checksum}, not as these features are ({L.checksum}): "
                               "it was written for another version of the view; rebuild it "
                               "(featurestore backfill --online)")
    words = np.frombuffer(blob, dtype=np.int64, count=len(blob) // 8)
    count = int.from_bytes(blob[8:16], "little", signed=True)
    remap = _NO_CODES
    if 0 < count <= len(words) and len(blob) > 8 * count:
        try:
            values = orjson.loads(blob[8 * count:])
        except orjson.JSONDecodeError as exc:
            raise StateFormatError(f"stored state's value trailer is not JSON ({exc}): rebuild it") from None
        remap = np.array([arena.objects.code(v) for v in values], dtype=np.int64)
    arena.reserve(3 * len(words) + L.ln_words, len(words))
    got = ck.decode_state(arena.P, arena.S, arena.free, arena.top, arena.HV, arena.hstat, L.g_width, L.widths,
                          L.ln_n, L.owners, s, words, remap)
    if got >= 0:  # every object code checked against the trailer, also when there is none
        got = ck.remap_tiles(arena.P, arena.S, L.g_width, L.g_off, s, remap)
    if got < 0:
        arena.drop(arena.key_of[s])
        raise StateFormatError(f"stored state is damaged (format 3, {len(blob)} bytes, code {got}): rebuild it "
                               "(featurestore backfill --online)")


def decode_many(arena, slots, blobs: list[bytes]) -> None:
    """``decode`` of many format 3 states into empty slots, in one compiled call (a state that is
    not readable raises ``StateFormatError``, its slot and the ones after it left empty)."""
    if not blobs:
        return
    L = arena.layout
    n = len(blobs)
    lens = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    words = lens >> 3
    if (lens & 7).any() or words.min() < 4:
        for s, blob in zip(slots, blobs):
            decode(arena, s, blob)
        return
    buf = np.frombuffer(b"".join(blobs), dtype=np.int64)
    starts = np.empty(n + 1, dtype=np.int64)
    starts[0] = 0
    np.cumsum(words, out=starts[1:])
    heads = buf[starts[:-1]]
    counts = buf[starts[:-1] + 1]
    bad = (heads != header_word(L.checksum)) | (counts > words) | (counts < 4)
    if bad.any():
        m = int(np.flatnonzero(bad)[0])
        decode(arena, slots[m], blobs[m])  # raises the error that names the problem
    remap, remap_bounds = _trailer_codes(arena, blobs, np.flatnonzero(words > counts).tolist(), counts)
    arena.reserve(3 * len(buf) + n * L.ln_words, len(buf))
    status = np.empty(n, dtype=np.int64)
    ck.decode_all(arena.P, arena.S, arena.free, arena.top, arena.HV, arena.hstat, L.g_width, L.g_off, L.widths,
                  L.ln_n, L.owners, np.asarray(slots, dtype=np.int64), buf, starts, remap, remap_bounds, status)
    if status.min() < 0:
        m = int(np.flatnonzero(status < 0)[0])
        raise StateFormatError(f"stored state is damaged (format 3, {len(blobs[m])} bytes, code {int(status[m])}): "
                               "rebuild it (featurestore backfill --online)")


def _trailer_codes(arena, blobs: list[bytes], held: list[int], counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the arena's codes of the values in the trailers of ``blobs[m]`` for ``m`` in ``held``, one
    after the other, and where each state's codes start and end)."""
    bounds = np.zeros(len(blobs) + 1, dtype=np.int64)
    if not held:
        return _NO_CODES, bounds
    codes: list[int] = []
    for m in held:  # states holding strings or other values
        try:
            values = orjson.loads(blobs[m][8 * int(counts[m]):])
        except orjson.JSONDecodeError as exc:
            raise StateFormatError(f"stored state's value trailer is not JSON ({exc}): rebuild it") from None
        bounds[m + 1] = len(values)
        codes += [arena.objects.code(v) for v in values]
    np.cumsum(bounds, out=bounds)
    return np.array(codes, dtype=np.int64), bounds


def decode_ids_many(arena, slots: list[int], parts: list[bytes]) -> None:
    """``decode_ids_part`` of many slots in one compiled call."""
    if not parts:
        return
    for part in parts:
        if part and (part[:1] != b"=" or (len(part) - 1) % 16):
            raise StateFormatError(f"stored event ids are not format 3 (starts {bytes(part[:8])!r}, "
                                   f"{len(part)} bytes): rebuild the state (featurestore backfill --online)")
    lens = np.fromiter((max(len(p) - 1, 0) // 8 for p in parts), dtype=np.int64, count=len(parts))
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lens, out=bounds[1:])
    pairs = np.frombuffer(b"".join(p[1:] for p in parts), dtype=np.int64) if bounds[-1] else np.zeros(0, np.int64)
    L = arena.layout
    arena.reserve(2 * len(pairs) + 8, len(pairs) // 2 + 1)
    ck.decode_ids_all(arena.P, arena.S, arena.free, arena.top, arena.HV, arena.hstat, L.groups, L.owners,
                      np.asarray(slots, dtype=np.int64), pairs, bounds, arena.lateness_ms)


def encode_ids_part(arena, s: int) -> bytes:
    """What to write of slot ``s``'s event ids: ``b"&"`` and the pairs accepted since the last write
    while the stored pairs stay within half the live ones (plus 32), else ``b"="`` and every live
    pair (``b""`` without ids).  This call assumes the part is written (a failed commit drops the
    state: ``SourceProcessor.invalidate``)."""
    S = arena.S
    stored, live = int(S[s, lay.M_IDS_STORED]), int(S[s, lay.M_IDS_LIVE])
    if stored >= 0:
        buf = np.empty(2 * live, dtype=np.int64)
        got = ck.ids_after_mark(arena.P, S, s, buf)
        new = got // 2
        if stored + new <= live + max(live // 2, 32):
            S[s, lay.M_IDS_STORED] = stored + new
            S[s, lay.M_IDS_MARK] = S[s, lay.M_IDS_TAIL]
            return APPEND + buf[:got].tobytes()
    S[s, lay.M_IDS_STORED] = live
    S[s, lay.M_IDS_MARK] = S[s, lay.M_IDS_TAIL]
    return encode_all_ids(arena, s)


def encode_all_ids(arena, s: int) -> bytes:
    """Every live id of slot ``s`` (``b"="`` and pairs), leaving what the writer knows stored as it is."""
    live = int(arena.S[s, lay.M_IDS_LIVE])
    if not live:
        return b""
    buf = np.empty(2 * live, dtype=np.int64)
    got = ck.all_ids(arena.P, arena.S, s, buf)
    return b"=" + buf[:got].tobytes()


WHOLE = b"SFW\x03"


def encode_whole(arena, s: int) -> bytes:
    """The state and its ids in one value: ``b"SFW\x03"``, the state's length (8 bytes), the state, the ids."""
    state = encode(arena, s)
    return WHOLE + len(state).to_bytes(8, "little") + state + encode_all_ids(arena, s)


def split_whole(blob: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(blob[4:12], "little")
    if len(blob) < 12 + n:
        raise StateFormatError(f"stored whole state is truncated ({len(blob)} bytes, state of {n}): rebuild it")
    return blob[12:12 + n], blob[12 + n:]


def append_ids(stored: bytes | None, part: bytes) -> bytes:
    """The stored ids after writing ``part`` over ``stored`` (the commit script does the same)."""
    if part[:1] != APPEND:
        return part
    if not stored:
        return b"=" + part[1:]
    return stored + part[1:]


def decode_ids_part(arena, s: int, ids: bytes) -> None:
    """Load stored ids (``b"="`` and pairs) into slot ``s``, its state already decoded."""
    if not ids:
        arena.S[s, lay.M_IDS_STORED] = 0
        return
    if ids[:1] != b"=" or (len(ids) - 1) % 16:
        raise StateFormatError(f"stored event ids are not format 3 (starts {bytes(ids[:8])!r}, {len(ids)} bytes): "
                               "rebuild the state (featurestore backfill --online)")
    pairs = np.frombuffer(ids, dtype=np.int64, offset=1) if len(ids) > 1 else np.zeros(0, dtype=np.int64)
    _load_pairs(arena, s, np.ascontiguousarray(pairs))


def _load_pairs(arena, s: int, pairs: np.ndarray) -> None:
    L = arena.layout
    arena.reserve(2 * len(pairs) + 8, len(pairs) // 2 + 1)
    ck.decode_ids(arena.P, arena.S, arena.free, arena.top, arena.HV, arena.hstat, L.groups, L.owners, s, pairs,
                  arena.lateness_ms)


# -- format 2 --------------------------------------------------------------------------------

# format 2 field names of the fields format 3 stores as they are, and of the values it stores with a kind
_LEGACY_FIELDS = {lay.FIELD_NAMES.index(name): name for name in ("c", "s", "mu", "q", "fts", "fsq", "lts", "lsq")}
_LEGACY_VALUES = {lay.F_LO: ("lo", lay.F_LOK), lay.F_HI: ("hi", lay.F_HIK), lay.F_FV: ("fv", lay.F_FK),
                  lay.F_LV: ("lv", lay.F_LK)}
_FLOAT_FIELDS = (lay.F_S, lay.F_MU, lay.F_Q)


def decode_legacy(arena, s: int, blob: bytes, ids: bytes) -> None:
    """Fill the empty slot ``s`` from a format 2 state (and its ids as that format stored them)."""
    from ..legacy.state import ViewState as LegacyState

    try:
        old = LegacyState.from_bytes(arena.specs, blob, arena.lateness_ms, ids)
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise StateFormatError(f"stored state (JSON, format 2) cannot be read: {exc}; rebuild it "
                               "(featurestore backfill --online)") from None
    words = legacy_words(arena, old)
    remap = np.arange(len(arena.objects.values), dtype=np.int64)
    arena.reserve(3 * len(words) + int((arena.layout.ln_n * 4 + 1).sum()), len(words))
    L = arena.layout
    got = ck.decode_state(arena.P, arena.S, arena.free, arena.top, arena.HV, arena.hstat, L.g_width, L.widths,
                          L.ln_n, L.owners, s, words, remap)
    if got < 0:
        raise StateFormatError(f"stored state (JSON, format 2) does not fit these features (code {got}): rebuild it")
    if old.ids:
        hashes, _ = encode_ids(list(old.ids))
        pairs = np.empty(2 * len(hashes), dtype=np.int64)
        pairs[0::2] = hashes
        pairs[1::2] = np.fromiter(old.ids.values(), dtype=np.int64, count=len(hashes))
        _load_pairs(arena, s, pairs)
    arena.S[s, lay.M_IDS_STORED] = -1  # stored in the old layout: the next write replaces them whole


def legacy_words(arena, old) -> np.ndarray:
    """Format 3 words of a legacy ``ViewState`` (object values interned in ``arena``)."""
    L = arena.layout
    objects = arena.objects
    words = [0, 0, lay.NO_TIME if old.watermark is None else old.watermark, old.seq]
    legacy_groups = {(g.hop or 0): g for g in old._group_list}
    layout_groups = {(g.hop or 0): g for g in _legacy_layout_groups(old)}
    for g, hop in enumerate(L.g_hop.tolist()):
        tiles = legacy_groups[hop].tiles if hop in legacy_groups else {}
        offsets = layout_groups[hop].offsets if hop in layout_groups else {}
        words.append(len(tiles))
        for k in sorted(tiles, reverse=True):
            row = tiles[k]
            fields = [0] * int(L.g_width[g])
            for j, column in enumerate(L.columns):
                for f in range(len(L.g_off[g, j])):
                    o = int(L.g_off[g, j, f])
                    if o < 0:
                        continue
                    if f in _LEGACY_FIELDS:
                        v = row[offsets[(column, _LEGACY_FIELDS[f])]]
                        fields[o - 3] = int(np.float64(v).view(np.int64)) if f in _FLOAT_FIELDS else int(v or 0)
                    elif f in _LEGACY_VALUES:
                        name, kind_field = _LEGACY_VALUES[f]
                        v = row[offsets[(column, name)]]
                        kind, bits = (lay.K_NULL, 0) if v is None else encode_value(v, lay.NEED_BITS, objects)[:2]
                        fields[o - 3] = bits
                        fields[int(L.g_off[g, j, kind_field]) - 3] = kind
            words += [k, row[1], *fields]
    for spec in L.specs:
        if spec.function == "count_distinct":
            seen = old.distinct[spec.name]
            words.append(len(seen))
            for value, ts in seen.items():
                words += [value_hash(value), ts]
    for spec in L.specs:
        if spec.function == "last_n":
            items = old.last_n[spec.name][-spec.n:]
            words.append(len(items))
            for ts, seq, value in items:
                kind, bits, _ = encode_value(value, lay.NEED_BITS, objects)
                words += [ts, seq, kind, bits]
    words[0] = header_word(L.checksum)
    words[1] = len(words)
    return np.array(words, dtype=np.int64)


def _legacy_layout_groups(old):
    from ..legacy.state import _layout

    return _layout(old.specs).groups
