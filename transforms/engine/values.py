"""Python values in and out of the engine: typed words per event column, and back.

Each input column of a batch becomes arrays of one row per event: its kind (``K_*``), its
64 bits (a float's bits, an int, a bool, the code of an interned Python object), its float
value where a function sums or compares it, and its identity hash where ``count_distinct``
counts it.  Equal values hash equal as they do in a Python dict (``1 == 1.0 == True``), and
strings by xxh3-64 of their UTF-8, so stored states mean the same in every process.  Event ids
hash the same way.  Everything that can refuse a value (``float()``, ``hash()``) runs here,
before a kernel touches a state, so a batch that raises leaves every state as it was.
"""

from __future__ import annotations

import numpy as np
import xxhash

from .layout import K_BOOL, K_FLOAT, K_INT, K_NULL, K_OBJ, NEED_BITS, NEED_HASH, NEED_NUMBER

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_NONE = type(None)


def string_hash(text: str) -> int:
    return _signed(xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass")))


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def value_hash(value) -> int:
    """The identity of a non-null value: equal values (as a dict sees them) hash equal."""
    t = type(value)
    if t is str:
        return string_hash(value)
    if t is int or t is bool:
        return int(value) if _INT64_MIN <= value <= _INT64_MAX else string_hash(repr(value))
    if t is float:
        if value.is_integer() and -9.2e18 < value < 9.2e18:
            return int(value)
        return int(np.float64(value + 0.0).view(np.int64))
    hash(value)  # raises TypeError for what a dict cannot hold
    if isinstance(value, float):
        return value_hash(float(value))
    if isinstance(value, int):
        return value_hash(int(value))
    return string_hash(f"{t.__qualname__}:{value!r}")


class Objects:
    """Python values (strings, lists and other non-numbers) that tiles and last_n items hold by code.

    Hashable values are interned (one code per value; strings in a table of their own, looked up
    without building a key); others get a code each.  ``StateArena`` compacts the table when it
    outgrows the codes its states still hold (``compact``)."""

    __slots__ = ("values", "codes", "texts", "limit")

    def __init__(self) -> None:
        self.values: list = []
        self.codes: dict = {}
        self.texts: dict[str, int] = {}
        self.limit = 4096  # compact past this many values

    def code(self, value) -> int:
        t = type(value)
        if t is str:
            code = self.texts.get(value)
            if code is None:
                code = self.texts[value] = len(self.values)
                self.values.append(value)
            return code
        if t is list or t is dict:  # unhashable: not interned
            self.values.append(value)
            return len(self.values) - 1
        key = (t, value)
        try:
            code = self.codes.get(key)
        except TypeError:  # another unhashable value (a tuple holding a list)
            self.values.append(value)
            return len(self.values) - 1
        if code is None:
            code = self.codes[key] = len(self.values)
            self.values.append(value)
        return code

    def text_codes(self, column: list) -> list[int]:
        """The codes of a column of strings and None (None: 0)."""
        get = self.texts.get
        out: list = [get(v) for v in column]
        if None in out:  # new strings, or nulls
            code = self.code
            for i, (v, c) in enumerate(zip(column, out)):
                if c is None:
                    out[i] = 0 if v is None else code(v)
        return out

    def append_all(self, column: list) -> range:
        """Codes for each value of a column of unhashable values (none interned)."""
        start = len(self.values)
        self.values.extend(column)
        return range(start, len(self.values))

    def keep(self, live: np.ndarray) -> np.ndarray:
        """Keep only the codes ``live`` marks; returns the new code of each old one (-1: dropped)."""
        remap = np.full(len(self.values), -1, dtype=np.int64)
        kept = np.flatnonzero(live[:len(self.values)])
        remap[kept] = np.arange(len(kept))
        values = self.values
        self.values = [values[c] for c in kept.tolist()]
        new = remap.tolist()
        self.codes = {key: new[c] for key, c in self.codes.items() if new[c] >= 0}
        self.texts = {text: new[c] for text, c in self.texts.items() if new[c] >= 0}
        self.limit = max(4096, len(self.values) + len(self.values) // 2)
        return remap


def _is_null(v) -> bool:
    return v is None or (type(v) is float and v != v)


class BatchColumns:
    """A batch's event values as columns, each extracted from the event dicts once and shared by
    the views of one source (``StateArena.apply`` takes it in place of the dicts)."""

    __slots__ = ("values", "ids", "_columns", "_ids")

    def __init__(self, values: list[dict], ids: list, columns: dict[str, list] | None = None):
        self.values = values
        self.ids = ids
        self._columns: dict[str, tuple[list, set]] = {}
        self._ids: tuple | None = None
        self.add(columns or {})

    def add(self, columns: dict[str, list]) -> None:
        """Columns given whole (BatchTransforms' outputs): name -> one value per event."""
        for name, col in columns.items():
            self._columns[name] = (col, set(map(type, col)))

    def take(self, order: list[int]) -> BatchColumns:
        """The events ``order`` (positions in this batch), with the columns already extracted."""
        out = BatchColumns([self.values[i] for i in order], [self.ids[i] for i in order])
        for name, (col, _) in self._columns.items():
            picked = [col[i] for i in order]
            out._columns[name] = (picked, set(map(type, picked)))
        return out

    def __len__(self) -> int:
        return len(self.values)

    def column(self, name: str) -> tuple[list, set]:
        """(the values of column ``name``, their types)."""
        got = self._columns.get(name)
        if got is None:
            col = [v.get(name) for v in self.values]
            got = self._columns[name] = (col, set(map(type, col)))
        return got

    def encoded_ids(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ids is None:
            self._ids = encode_ids(self.ids)
        return self._ids


def encode_columns(columns: tuple[str, ...], needs: np.ndarray, batch: BatchColumns, objects: Objects):
    """(kind int8[N, J], bits int64[N, J], float64[N, J], hash int64[N, J]) of each event's value of
    each column (a missing column is null)."""
    n, J = len(batch), len(columns)
    vk = np.zeros((n, J), dtype=np.int8)
    vb = np.zeros((n, J), dtype=np.int64)
    vf = np.zeros((n, J), dtype=np.float64)
    vh = np.zeros((n, J), dtype=np.int64)
    for j, column in enumerate(columns):
        col, types = batch.column(column)
        need = int(needs[j])
        if types <= {float, _NONE}:
            arr = np.array(col, dtype=np.float64)  # None -> NaN
            present = ~np.isnan(arr)
            vk[:, j] = np.where(present, K_FLOAT, K_NULL)
            vb[:, j] = arr.view(np.int64)
            vf[:, j] = arr
            if need & NEED_HASH:
                whole = present & (arr == np.floor(arr)) & (np.abs(arr) < 9.2e18)
                vh[:, j] = np.where(whole, np.where(whole, arr, 0).astype(np.int64), (arr + 0.0).view(np.int64))
            continue
        if types <= {int, _NONE}:
            try:
                arr = np.array([0 if v is None else v for v in col], dtype=np.int64)
            except OverflowError:
                pass
            else:
                present = np.array([v is not None for v in col]) if _NONE in types else np.ones(n, dtype=bool)
                vk[:, j] = np.where(present, K_INT, K_NULL)
                vb[:, j] = arr
                vf[:, j] = arr.astype(np.float64)
                vh[:, j] = arr
                continue
        if types <= {bool, _NONE}:
            present = np.array([v is not None for v in col]) if _NONE in types else np.ones(n, dtype=bool)
            arr = np.array([v is True for v in col], dtype=np.int64)
            vk[:, j] = np.where(present, K_BOOL, K_NULL)
            vb[:, j] = arr
            vf[:, j] = arr
            vh[:, j] = arr
            continue
        if _held_objects(col, types, need, objects, vk[:, j], vb[:, j], vh[:, j]):
            continue
        for i, v in enumerate(col):
            if _is_null(v):
                continue
            vk[i, j], vb[i, j], vf[i, j] = encode_value(v, need, objects)
            if need & NEED_HASH:
                vh[i, j] = value_hash(v)
    return vk, vb, vf, vh


def _held_objects(col: list, types: set, need: int, objects: Objects, vk, vb, vh) -> bool:
    """Encode a column of strings (and None), or of lists or dicts, into ``vk``, ``vb``, ``vh`` (its
    rows of the kind, bits and hash arrays) where no function takes them for numbers; False for any
    other column, untouched."""
    if types <= {str, _NONE} and not need & NEED_NUMBER:
        if need & NEED_BITS:
            vb[:] = objects.text_codes(col)
        if need & NEED_HASH:
            digest = xxhash.xxh3_64_intdigest
            vh[:] = np.array([0 if v is None else digest(v.encode("utf-8", "surrogatepass")) for v in col],
                             dtype=np.uint64).view(np.int64)
        vk[:] = K_OBJ if _NONE not in types else np.where(np.array([v is None for v in col]), K_NULL, K_OBJ)
        return True
    if types <= {list, dict} and not need & (NEED_NUMBER | NEED_HASH):  # embeddings, lists: held as they are
        vk[:] = K_OBJ
        if need & NEED_BITS:
            vb[:] = objects.append_all(col)
        return True
    return False


def encode_value(v, need: int, objects: Objects) -> tuple[int, int, float]:
    """(kind, bits, float) of one non-null value; ``float()`` is asked only where a function needs a number."""
    t = type(v)
    if t is float:
        return K_FLOAT, int(np.float64(v).view(np.int64)), v
    if t is bool:
        return K_BOOL, int(v), float(v)
    if t is int and _INT64_MIN <= v <= _INT64_MAX:
        return K_INT, v, float(v)
    if need & NEED_NUMBER:
        number = float(v)  # raises for what cannot be summed or compared
        if isinstance(v, float):
            return K_FLOAT, int(np.float64(number).view(np.int64)), number
        if isinstance(v, int) and not isinstance(v, bool) and _INT64_MIN <= v <= _INT64_MAX:
            return K_INT, int(v), number
        return K_FLOAT, int(np.float64(number).view(np.int64)), number
    if need & NEED_BITS:
        return K_OBJ, objects.code(v), 0.0
    return K_OBJ, 0, 0.0


def encode_ids(ids: list) -> tuple[np.ndarray, np.ndarray]:
    """(hash int64[N], has-id uint8[N]) of event ids (None: no id)."""
    n = len(ids)
    has = np.fromiter((e is not None for e in ids), dtype=np.uint8, count=n)
    if not has.any():
        return np.zeros(n, dtype=np.int64), has
    if all(type(e) is str for e in ids):
        digests = [xxhash.xxh3_64_intdigest(e.encode("utf-8", "surrogatepass")) for e in ids]
        return np.array(digests, dtype=np.uint64).view(np.int64), has
    return np.array([0 if e is None else value_hash(e) for e in ids], dtype=np.int64), has


def id_hash(event_id) -> int:
    """The hash an event id is held by (``ViewState.ids``' keys)."""
    return int(encode_ids([event_id])[0][0])


def decode_value(kind: int, bits: int, number: float, objects: Objects):
    if kind == K_FLOAT:
        return number
    if kind == K_INT:
        return bits
    if kind == K_BOOL:
        return bool(bits)
    if kind == K_OBJ:
        return objects.values[bits]
    return None


def bits_to_float(bits: int) -> float:
    return float(np.int64(bits).view(np.float64))
