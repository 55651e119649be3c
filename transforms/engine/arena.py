"""``StateArena``: the states of one view's cached entities, in a few numpy arrays.

A slot per entity (``slot_of``), its tiles, event ids, distinct values and last values as
rows of one word pool (``transforms.engine.layout``).  ``apply`` takes a whole micro-batch
and applies it in one compiled call: lateness and duplicate-id refusals, tile updates and
pruning; ``evaluate`` gives every feature of many states at once.  The arena grows its arrays
before a call so that a kernel never runs out of room.
"""

from __future__ import annotations

import numpy as np

from ..specs import AggSpec
from . import codec_kernels, kernels, pool, prune
from .evaluate import evaluate as evaluate_states
from .layout import (K_BOOL, K_FLOAT, K_INT, K_LIST, K_OBJ, M_IDS_LIVE, M_SEQ, M_USED, M_WM, NO_TIME, Layout,
                     layout_for)
from .values import BatchColumns, Objects, decode_value, encode_columns

REJECT_LATE = "late"
REJECT_DUPLICATE = "duplicate_event_id"


def _empty_slots(n: int, width: int) -> np.ndarray:
    """Slot metadata of ``n`` unused slots (what ``prune.reset_slot`` leaves)."""
    S = np.full((n, width), -1, dtype=np.int64)
    S[:, M_WM] = NO_TIME
    S[:, [M_SEQ, M_IDS_LIVE, M_USED]] = 0
    return S


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


class StateArena:
    """Per-entity states of a set of ``AggSpec`` s sharing one event source."""

    def __init__(self, specs, lateness_ms: int = 0, slots: int = 16, words: int = 1024):
        self.specs: tuple[AggSpec, ...] = specs if isinstance(specs, tuple) else tuple(specs)
        self.layout: Layout = layout_for(self.specs)
        self.lateness_ms = int(lateness_ms)
        L = self.layout
        self.P = np.zeros(max(words, 64), dtype=np.int64)
        self.Pf = self.P.view(np.float64)
        self.S = _empty_slots(max(slots, 1), L.meta_width)
        self.free = np.full(len(L.widths), -1, dtype=np.int64)
        self.top = np.zeros(1, dtype=np.int64)
        self.HV = np.full(256, pool.EMPTY, dtype=np.int64)
        self.hstat = np.zeros(2, dtype=np.int64)
        self.objects = Objects()
        self.slot_of: dict = {}
        self.key_of: list = [None] * len(self.S)
        self._free_slots: list[int] = list(range(len(self.S) - 1, -1, -1))

    # -- slots ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.slot_of)

    def slot(self, key) -> int:
        """The slot of ``key``, a new empty state when it has none."""
        s = self.slot_of.get(key)
        if s is None:
            if not self._free_slots:
                self._grow_slots(len(self.S) * 2)
            s = self._free_slots.pop()
            self.S[s, M_USED] = 1
            self.slot_of[key] = s
            self.key_of[s] = key
        return s

    def drop(self, key) -> None:
        """Forget ``key``'s state and reuse its slot."""
        s = self.slot_of.pop(key, None)
        if s is None:
            return
        L = self.layout
        prune.release_slot(self.P, self.S, self.free, self.HV, self.hstat, L.groups, len(L.cd_col),
                             len(L.ln_col), L.groups + 1, s)
        self.key_of[s] = None
        self._free_slots.append(s)

    def clear(self) -> None:
        for key in list(self.slot_of):
            self.drop(key)

    def reset(self) -> None:
        """Forget every state at once (the arrays stay allocated; interned values are kept)."""
        used = len(self.key_of) - len(self._free_slots)
        if used == len(self.slot_of) and used <= 64:
            self.S[:len(self.key_of)] = _empty_slots(len(self.key_of), self.S.shape[1])
        else:
            self.S[:] = _empty_slots(len(self.S), self.S.shape[1])
        self.top[0] = 0
        self.free[:] = -1
        if self.hstat[0]:
            self.HV[:] = pool.EMPTY
        self.hstat[:] = 0
        self.slot_of.clear()
        self.key_of = [None] * len(self.S)
        self._free_slots = list(range(len(self.S) - 1, -1, -1))

    def _grow_slots(self, n: int) -> None:
        old = len(self.S)
        S = _empty_slots(n, self.S.shape[1])
        S[:old] = self.S
        self.S = S
        self.key_of.extend([None] * (n - old))
        self._free_slots.extend(range(n - 1, old - 1, -1))

    def reserve(self, words: int, entries: int) -> None:
        """Room for ``words`` more pool words and ``entries`` more hash-table entries."""
        need = int(self.top[0]) + words
        if need > len(self.P):  # half as much again: at most a third of the pool spare
            P = np.zeros(max(need, len(self.P) + len(self.P) // 2), dtype=np.int64)
            P[:len(self.P)] = self.P
            self.P, self.Pf = P, P.view(np.float64)
        if (int(self.hstat[0]) + entries) * 2 > len(self.HV):
            old = self.HV
            self.HV = np.full(_pow2(max((int(self.hstat[1]) + entries) * 3, 256)), pool.EMPTY, dtype=np.int64)
            pool.rehash(self.HV, self.hstat, self.P, old)

    # -- applying ------------------------------------------------------------------------------
    def apply(self, slots: np.ndarray, ts: np.ndarray, ids: list | None, values: list[dict] | BatchColumns
              ) -> np.ndarray:
        """Apply events (in arrival order) to the states of ``slots``; returns the reason code of
        each event (0 applied, ``kernels.REASON_LATE``, ``kernels.REASON_DUPLICATE``).  ``values``:
        the events' value dicts (with ``ids`` their event ids), or their ``BatchColumns``.

        Every input is encoded before any state changes: a value that ``float()`` or ``hash()``
        refuses raises and leaves every state as it was."""
        n = len(ts)
        reasons = np.zeros(n, dtype=np.int8)
        if n == 0:
            return reasons
        L = self.layout
        batch = values if isinstance(values, BatchColumns) else BatchColumns(values, ids or [None] * n)
        vk, vb, vf, vh = encode_columns(L.columns, L.column_needs, batch, self.objects)
        if len(self.objects.values) > self.objects.limit:
            self._compact_objects(vk, vb)
        ih, hid = batch.encoded_ids()
        order = np.argsort(slots, kind="stable")
        per_event = L.worst_case_words(1)
        done = 0
        while done < n:
            done = kernels.apply_batch(self.P, self.Pf, self.S, self.free, self.top, self.HV, self.hstat,
                                       *L.tables(), order, slots, ts, ih, hid, vk, vb, vf, vh, self.lateness_ms,
                                       reasons, done, per_event)
            if done < n:  # room for a quarter of what is left: the pool or the entry table, whichever ran out
                left = n - done
                short = int(self.top[0]) + per_event > len(self.P)
                self.reserve(per_event * max(left // 4, 1) if short else 0, max(left // 4, 1) * L.owners)
        return reasons

    def _compact_objects(self, vk: np.ndarray, vb: np.ndarray) -> None:
        """Drop interned values no state (nor the batch being applied: ``vk`` / ``vb``) holds."""
        L = self.layout
        live = np.zeros(len(self.objects.values), dtype=np.bool_)
        dummy = np.zeros(0, dtype=np.int64)
        codec_kernels.object_codes(self.P, self.S, L.g_width, L.g_off, L.ln_n, len(L.cd_col), live, dummy, False)
        held = vk == K_OBJ
        live[vb[held]] = True
        remap = self.objects.keep(live)
        codec_kernels.object_codes(self.P, self.S, L.g_width, L.g_off, L.ln_n, len(L.cd_col), live, remap, True)
        vb[held] = remap[vb[held]]

    # -- reading -------------------------------------------------------------------------------
    def watermark(self, s: int) -> int | None:
        wm = int(self.S[s, M_WM])
        return None if wm == NO_TIME else wm

    def seq(self, s: int) -> int:
        return int(self.S[s, M_SEQ])

    def live_ids(self, s: int) -> int:
        return int(self.S[s, M_IDS_LIVE])

    def evaluate(self, slots: np.ndarray, times: np.ndarray, tables: tuple | None = None):
        """(bits, floats, kinds, extra, until) of every feature of ``slots[m]`` as of ``times[m]``;
        with ``tables`` (``Layout.reader_tables`` of some features), of those features only."""
        L = self.layout
        tables = L.reader_tables() if tables is None else tables
        out_b, out_f, out_k, out_x, until = self._outputs(len(slots), len(tables[0]))
        evaluate_states(self.P, self.Pf, self.S, L.g_hop, L.g_off, L.cd_window, L.cd_hop, L.ln_n,
                         *tables, np.asarray(slots, dtype=np.int64), np.asarray(times, dtype=np.int64),
                         out_b, out_f, out_k, out_x, until)
        return out_b, out_f, out_k, out_x, until

    def _outputs(self, m: int, F: int) -> tuple:
        return (np.zeros((m, F), dtype=np.int64), np.zeros((m, F), dtype=np.float64), np.zeros((m, F), dtype=np.int8),
                np.zeros((m, F), dtype=np.int64), np.zeros(m, dtype=np.int64))

    def values(self, slots, times) -> tuple[list[list], list[int | None]]:
        """Every feature (Python values, spec order) of ``slots[m]`` as of ``times[m]``, and the
        earliest later time each state's values may change without a new event."""
        out_b, out_f, out_k, out_x, until = self.evaluate(slots, times)
        rows = self.rows(out_b, out_f, out_k, out_x)
        return rows, [None if u == NO_TIME else int(u) for u in until.tolist()]

    def rows(self, out_b, out_f, out_k, out_x, order: list[int] | None = None) -> list[list]:
        """Python rows from ``evaluate``'s arrays (with ``order``, its columns ``order[0]``, ``order[1]``,
        ...), converted a kind at a time (value by value for a few rows, where numpy's per-call cost
        would dominate)."""
        m, F = out_k.shape
        if m <= 4:
            rows = [self._row(k, b, f, x) for k, b, f, x in
                    zip(out_k.tolist(), out_b.tolist(), out_f.tolist(), out_x.tolist())]
            return rows if order is None else [[row[i] for i in order] for row in rows]
        obj = np.empty((m, F), dtype=object)  # None: K_NULL
        floats = out_k == K_FLOAT
        obj[floats] = out_f[floats]
        ints = out_k == K_INT
        obj[ints] = out_b[ints]
        rare = out_k > K_INT
        if rare.any():
            self._rare_values(obj, out_b, out_k, out_x, np.flatnonzero(rare.any(axis=0)).tolist())
        return (obj if order is None else obj[:, order]).tolist()

    def _rare_values(self, obj: np.ndarray, out_b, out_k, out_x, columns: list[int]) -> None:
        """``obj``'s bools, interned values and last_n lists, in ``columns``."""
        for f in columns:
            kinds = out_k[:, f]
            lists = np.flatnonzero(kinds == K_LIST)
            if len(lists):
                self._last_n_column(obj, f, lists, out_b[lists, f], out_x[lists, f])
            held = np.flatnonzero(kinds == K_OBJ)
            if len(held):
                values = self.objects.values
                for r, code in zip(held.tolist(), out_b[held, f].tolist()):
                    obj[r, f] = values[code]
            for r in np.flatnonzero(kinds == K_BOOL).tolist():
                obj[r, f] = bool(out_b[r, f])

    def _last_n_column(self, obj: np.ndarray, f: int, rows: np.ndarray, blocks: np.ndarray, firsts: np.ndarray):
        """``obj[rows, f]``: the last_n lists of ``blocks`` from ``firsts`` on, gathered at once."""
        P = self.P
        counts = np.where(blocks >= 0, P[np.maximum(blocks, 0)], 0) - firsts
        counts = np.maximum(counts, 0)
        ends = np.cumsum(counts)
        starts = ends - counts
        at = np.repeat(blocks + 1 + 4 * firsts, counts) + 4 * (np.arange(int(ends[-1])) - np.repeat(starts, counts))
        if (P[at + 2] == K_FLOAT).all():
            flat = self.Pf[at + 3].tolist()
            for r, a, b in zip(rows.tolist(), starts.tolist(), ends.tolist()):
                obj[r, f] = flat[a:b]
        else:
            for r, block, first in zip(rows.tolist(), blocks.tolist(), firsts.tolist()):
                obj[r, f] = self._last_n(block, first)

    def _row(self, kinds: list, bits: list, floats: list, extra: list) -> list:
        row = []
        for kind, b, x, first in zip(kinds, bits, floats, extra):
            if kind == K_FLOAT:
                row.append(x)
            elif kind == K_INT:
                row.append(b)
            elif kind == K_LIST:
                row.append(self._last_n(b, first))
            else:
                row.append(decode_value(kind, b, x, self.objects))
        return row

    def _last_n(self, block: int, first: int) -> list:
        """The items of a last_n block from ``first`` on, oldest first."""
        if block < 0:
            return []
        P = self.P
        end = block + 1 + 4 * int(P[block])
        kinds = P[block + 3 + 4 * first:end:4]
        if (kinds == K_FLOAT).all():
            return self.Pf[block + 4 + 4 * first:end:4].tolist()
        bits = P[block + 4 + 4 * first:end:4].tolist()
        floats = self.Pf[block + 4 + 4 * first:end:4].tolist()
        return [decode_value(k, b, x, self.objects) for k, b, x in zip(kinds.tolist(), bits, floats)]


class ScratchArena(StateArena):
    """An arena for evaluating stored states: ``hold(n)`` forgets the states it holds and gives slots
    ``0 .. n-1`` to ``n`` new empty ones, touching only the slots used since the last ``hold``.  It keeps
    no keys (``slot`` is not for it); interned values are kept across holds.  ``evaluate`` fills the
    arrays of its last call again when their shape fits: what it returns holds until the next call."""

    def __init__(self, specs, slots: int = 8, words: int = 1024):
        super().__init__(specs, 0, slots=slots, words=words)
        self._empty = self.S[0].copy()
        self._held = 0
        self._out: tuple = ()

    def _outputs(self, m: int, F: int) -> tuple:
        # every call sets each kind, bits and until; floats and extra are read only where a kind says so
        if not self._out or self._out[0].shape != (m, F):
            self._out = super()._outputs(m, F)
        return self._out

    def slot(self, key) -> int:
        raise TypeError("a ScratchArena holds slots 0 .. n-1 of its last hold(n), without keys")

    def hold(self, n: int) -> None:
        if n > len(self.S):
            self._grow_slots(_pow2(n))
        self.S[:max(self._held, n)] = self._empty
        self.S[:n, M_USED] = 1
        self._held = n
        self.top[0] = 0
        self.free.fill(-1)
        if self.hstat[0]:
            self.HV.fill(pool.EMPTY)
        self.hstat.fill(0)
