"""The storage layout of one spec set, as small integer tables the generic kernels read.

Every state of a view lives in its arena (``transforms.engine.arena``): one int64 word pool
(floats are stored by their bits) and one row of slot metadata per cached entity.  The pool
holds rows of a few fixed sizes, each size with its free list (a *class*):

* a **tile** of group ``g`` (one group per hop; hop 0 is the single lifetime tile):
  ``[k, n_events, next, fields...]`` where each input column of the group keeps only the
  fields its functions need (``FIELD_NAMES``), so a tile row is ``3 + width[g]`` words.
  A slot's tiles of one group are a list linked by ``next``, newest tile (largest ``k``) first;
* an **entry** (4 words ``[hash, ts, next, owner]``): an event id (in arrival order, for the
  duplicate-id horizon) or a ``count_distinct`` value with its latest time; ``owner`` is
  ``slot * owners + sub`` (sub 0: ids, 1 + i: distinct spec i), -1 once the entry is dead;
* a **last_n block** of spec ``i``: ``[count, (ts, seq, kind, bits) x n]``, oldest first.

Values are typed words: ``kind`` (``K_*``) and 64 bits (a float's bits, an int, a bool, or
the code of an interned Python object).  The checksum names the storage layout in serialized
states; the feature names and windows that read it are not part of it.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np

from ..specs import AggSpec

# value kinds
K_NULL, K_FLOAT, K_INT, K_BOOL, K_OBJ, K_LIST = 0, 1, 2, 3, 4, 5

# tile fields of one column, in layout order (offsets are per group and column)
FIELD_NAMES = ("c", "s", "mu", "q", "lo", "lok", "hi", "hik", "fts", "fsq", "fv", "fk", "lts", "lsq", "lv", "lk")
F_C, F_S, F_MU, F_Q, F_LO, F_LOK, F_HI, F_HIK, F_FTS, F_FSQ, F_FV, F_FK, F_LTS, F_LSQ, F_LV, F_LK = range(16)
NF = len(FIELD_NAMES)

# function codes
FUNCTION_CODES = {"sum": 0, "count": 1, "mean": 2, "min": 3, "max": 4, "first": 5, "last": 6, "last_n": 7,
                  "count_distinct": 8, "var": 9, "stddev": 10, "count_events": 11, "events_per_minute": 12,
                  "seconds_since_last": 13}
FN_SUM, FN_COUNT, FN_MEAN, FN_MIN, FN_MAX, FN_FIRST, FN_LAST, FN_LAST_N, FN_DISTINCT, FN_VAR, FN_STDDEV, \
    FN_EVENTS, FN_EPM, FN_SSL = range(14)
TILE_FUNCTIONS = frozenset({"sum", "count", "mean", "min", "max", "first", "last", "var", "stddev",
                            "count_events", "events_per_minute"})

# slot metadata columns (then one tile-list head per group, one entry-list head per distinct spec,
# one block per last_n spec, and last, per group, the index ``k`` of its list's oldest tile: set
# while the list's head is, so that pruning skips a list with nothing out of reach without a walk)
M_WM, M_SEQ, M_IDS_HEAD, M_IDS_TAIL, M_IDS_LIVE, M_IDS_STORED, M_IDS_MARK, M_USED = range(8)
M_FIXED = 8
NO_TIME = np.iinfo(np.int64).min  # the watermark of a state without events

# what each input column must be encoded as
NEED_NUMBER, NEED_HASH, NEED_BITS = 1, 2, 4

FORMAT_VERSION = 3


def _fields(functions: set[str]) -> tuple[int, ...]:
    need = {F_C}
    if functions & {"sum", "mean"}:
        need.add(F_S)
    if functions & {"var", "stddev"}:
        need |= {F_MU, F_Q}
    if "min" in functions:
        need |= {F_LO, F_LOK}
    if "max" in functions:
        need |= {F_HI, F_HIK}
    if "first" in functions:
        need |= {F_FTS, F_FSQ, F_FV, F_FK}
    if "last" in functions:
        need |= {F_LTS, F_LSQ, F_LV, F_LK}
    return tuple(sorted(need))


@dataclass(frozen=True, eq=False)
class Layout:
    """The tables of one spec set (``layout_for`` caches one per spec set)."""

    specs: tuple[AggSpec, ...]
    columns: tuple[str, ...]        # input columns, each encoded once per event
    column_needs: np.ndarray        # int64[J]: NEED_* bits
    g_hop: np.ndarray               # int64[G]: hop (0: lifetime)
    g_reach: np.ndarray             # int64[G]: longest window of the group (0: lifetime)
    g_width: np.ndarray             # int64[G]: field words of a tile row
    g_off: np.ndarray               # int64[G, J, NF]: offset of each field in a tile row, -1 if absent
    cd_col: np.ndarray              # int64[D]: input column of each count_distinct spec
    cd_window: np.ndarray           # int64[D] (0: lifetime)
    cd_hop: np.ndarray              # int64[D]
    ln_col: np.ndarray              # int64[L]
    ln_n: np.ndarray                # int64[L]
    f_fn: np.ndarray                # int64[F]: function code of each feature, spec order
    f_group: np.ndarray             # int64[F]: its tile group (-1: none)
    f_col: np.ndarray               # int64[F]: its input column (-1: none)
    f_window: np.ndarray            # int64[F] (0: lifetime)
    f_hop: np.ndarray               # int64[F]
    f_sub: np.ndarray               # int64[F]: index of its distinct or last_n spec (-1: none)
    widths: np.ndarray              # int64[classes]: row words per pool class
    meta_width: int                 # slot metadata columns
    checksum: int                   # names the storage layout in serialized states

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def groups(self) -> int:
        return len(self.g_hop)

    @property
    def owners(self) -> int:
        """Entry owners per slot: the ids, then each distinct spec."""
        return 1 + len(self.cd_col)

    def tables(self) -> tuple:
        """The arrays the kernels take, in their argument order."""
        return (self.g_hop, self.g_reach, self.g_width, self.g_off, self.cd_col, self.cd_window, self.cd_hop,
                self.ln_col, self.ln_n, self.widths)

    def reader_tables(self) -> tuple:
        return (self.f_fn, self.f_group, self.f_col, self.f_window, self.f_hop, self.f_sub)

    @functools.cached_property
    def ln_words(self) -> int:
        """Pool words of one state's last_n blocks."""
        return int((self.ln_n * 4 + 1).sum())

    def worst_case_words(self, events: int) -> int:
        """Pool words a batch of ``events`` can allocate (one tile per group, one id entry and one
        distinct entry per spec, one last_n block per spec, per event)."""
        return events * int(self.g_width.sum() + 3 * len(self.g_width) + 4 * self.owners
                            + (self.ln_n * 4 + 1).sum())


def _i64(values) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64)


def build_layout(specs: tuple[AggSpec, ...]) -> Layout:
    columns: dict[str, int] = {}
    for s in specs:
        if s.column is not None and s.function != "seconds_since_last":
            columns.setdefault(s.column, len(columns))
    needs = [0] * len(columns)
    by_hop: dict[int, dict[int, set[str]]] = {}   # hop -> column -> functions
    reach: dict[int, int] = {}
    for s in specs:
        j = columns.get(s.column, -1) if s.column is not None else -1
        if s.function in TILE_FUNCTIONS:
            hop = s.hop_ms or 0
            cols = by_hop.setdefault(hop, {})
            if s.function not in ("count_events", "events_per_minute"):
                cols.setdefault(j, set()).add(s.function)
            reach[hop] = max(reach.get(hop, 0), s.window_ms or 0)
        if s.function in ("sum", "mean", "var", "stddev", "min", "max"):
            needs[j] |= NEED_NUMBER
        if s.function in ("min", "max", "first", "last", "last_n"):
            needs[j] |= NEED_BITS
        if s.function == "count_distinct":
            needs[j] |= NEED_HASH
    hops = list(by_hop)
    g_off = np.full((len(hops), len(columns), NF), -1, dtype=np.int64)
    widths_g, signature = [], []
    for g, hop in enumerate(hops):
        pos = 3
        for j, functions in by_hop[hop].items():
            fields = _fields(functions)
            for f in fields:
                g_off[g, j, f] = pos
                pos += 1
            signature.append(f"{hop}/{list(columns)[j]}:{','.join(FIELD_NAMES[f] for f in fields)}")
        widths_g.append(pos - 3)
        signature.append(f"{hop};")
    cd = [s for s in specs if s.function == "count_distinct"]
    ln = [s for s in specs if s.function == "last_n"]
    signature += [f"cd:{s.column}:{s.window_ms}:{s.hop_ms}" for s in cd] + [f"ln:{s.column}:{s.n}" for s in ln]
    group_of = {hop: g for g, hop in enumerate(hops)}
    f_group, f_sub = [], []
    for s in specs:
        f_group.append(group_of[s.hop_ms or 0] if s.function in TILE_FUNCTIONS else -1)
        f_sub.append(cd.index(s) if s in cd else ln.index(s) if s in ln else -1)
    widths = [w + 3 for w in widths_g] + [4] + [1 + 4 * s.n for s in ln]
    return Layout(
        specs=specs, columns=tuple(columns), column_needs=_i64(needs),
        g_hop=_i64(hops), g_reach=_i64(reach[h] for h in hops), g_width=_i64(widths_g), g_off=g_off,
        cd_col=_i64(columns[str(s.column)] for s in cd), cd_window=_i64(s.window_ms or 0 for s in cd),
        cd_hop=_i64(s.hop_ms or 1 for s in cd), ln_col=_i64(columns[str(s.column)] for s in ln),
        ln_n=_i64(s.n for s in ln),
        f_fn=_i64(FUNCTION_CODES[s.function] for s in specs),
        f_group=_i64(f_group),
        f_col=_i64(columns.get(s.column, -1) if s.column and s.function != "seconds_since_last" else -1
                   for s in specs),
        f_window=_i64(s.window_ms or 0 for s in specs), f_hop=_i64(s.hop_ms or 1 for s in specs),
        f_sub=_i64(f_sub), widths=_i64(widths), meta_width=M_FIXED + 2 * len(hops) + len(cd) + len(ln),
        checksum=zlib.crc32(f"v{FORMAT_VERSION}|{'|'.join(signature)}".encode()),
    )


@functools.lru_cache(maxsize=1024)
def layout_for(specs: tuple[AggSpec, ...]) -> Layout:
    return build_layout(specs)
