"""PostgreSQL's binary COPY format, encoded with numpy (the backfill's history writes): rows grouped
by shape into structured arrays, or scattered byte-wise when the shapes are many."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


async def _chunks_of(payload: bytes, size: int = 1 << 20):
    """``payload`` as an async iterable of 1 MiB slices (what ``copy_to_table`` streams)."""
    view = memoryview(payload)
    for lo in range(0, len(view), size):
        yield view[lo:lo + size]


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_FIXED = {"int8": (8, ">i8"), "int4": (4, ">i4"), "float8": (8, ">f8"), "bool": (1, "u1")}


def _scatter(buf: np.ndarray, pos: np.ndarray, data: np.ndarray) -> None:
    """``buf[pos[i] : pos[i] + w] = data[i]`` for every row i of the (n, w) uint8 ``data``."""
    if len(pos):
        buf[pos[:, None] + np.arange(data.shape[1])] = data


def _fixed_column(kind: str, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values as a numpy array of the kind's dtype, null mask)."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    dtype = s.dtype
    if kind == "float8":
        if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
            x = s.to_numpy(dtype="float64")
        else:
            x = pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce").to_numpy(dtype="float64")
        null = np.isnan(x)
        return x, null
    if kind in ("int8", "int4"):
        if isinstance(dtype, np.dtype) and dtype.kind in "iub":
            return s.to_numpy(dtype="int64"), np.zeros(len(s), dtype=bool)
        if isinstance(dtype, np.dtype) and dtype.kind == "f":
            x = s.to_numpy(dtype="float64")
            null = np.isnan(x)
            return np.where(null, 0, x).astype("int64"), null
        t = s.astype(object).where(s.notna(), None).astype("Int64")
        null = t.isna().to_numpy()
        return t.fillna(0).to_numpy(dtype="int64"), null
    t = s.astype(object).where(s.notna(), None).astype("boolean")  # bool
    null = t.isna().to_numpy()
    return t.fillna(False).to_numpy(dtype=bool), null


def encode_copy_binary(columns: list[tuple[str, Any]], n: int) -> bytes:
    """Rows of ``columns`` ((kind, values) with kind int8, int4, float8, bool or text; None/NaN
    = NULL) in PostgreSQL's binary COPY format, vectorized with numpy.

    Rows are grouped by their shape (text lengths, null pattern): within a group every row
    has the same layout, so the group is one numpy structured array written with
    ``tobytes()``.  Row order is not kept (COPY does not need it).  With many shapes the
    rows are scattered byte-wise instead (slower, same bytes per row)."""
    cols, shape_cols = _encoded_columns(columns)
    inverse, n_groups = _row_shapes(shape_cols, n)
    if n_groups > max(64, n // 50):
        return _encode_copy_scatter(cols, n)
    parts = [_COPY_HEADER]
    small = inverse.astype(np.int16) if n_groups < 32_000 else inverse  # radix sort
    order = np.argsort(small, kind="stable") if n_groups > 1 else np.arange(n)
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1 if n_groups > 1 else np.array([], dtype=np.int64)
    for rows in np.split(order, bounds) if n else []:
        parts.append(_encode_group(cols, rows, n_groups == 1))
    parts.append(b"\xff\xff")
    return b"".join(parts)


def _encoded_columns(columns: list[tuple[str, Any]]) -> tuple[list, list[np.ndarray]]:
    """Each column as ``(kind, data, lengths)`` (text: codes, encoded distinct values and those as a
    fixed-width bytes array; fixed-width: big-endian values; lengths -1 for NULL), and the lengths
    of the columns whose rows differ in shape."""
    cols = []
    shape_cols = []
    for kind, values in columns:
        if kind == "text":
            s = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
            codes, uniques = pd.factorize(s)
            enc = [str(u).encode() for u in uniques]
            ulen = np.array([len(e) for e in enc], dtype=np.int64)
            lens = np.where(codes >= 0, ulen[np.maximum(codes, 0)] if len(enc) else 0, -1)
            cols.append(("text", (codes, enc, np.array(enc, dtype=f"S{max(1, int(ulen.max(initial=1)))}")), lens))
            if len(ulen) and (ulen.min() != ulen.max() or (codes < 0).any()):
                shape_cols.append(lens)
        else:
            width, be = _FIXED[kind]
            x, null = _fixed_column(kind, values)
            cols.append((kind, x.astype(be), np.where(null, -1, width)))
            if null.any():
                shape_cols.append(np.where(null, -1, width))
    return cols, shape_cols


def _row_shapes(shape_cols: list[np.ndarray], n: int) -> tuple[np.ndarray, int]:
    """The shape group of each of the ``n`` rows (by their lengths in ``shape_cols``) and the number of groups."""
    if not shape_cols:
        return np.zeros(n, dtype=np.int64), 1
    combined = np.zeros(n, dtype=np.int64)
    for lens in shape_cols:
        codes, uniq = pd.factorize(lens)
        combined = combined * len(uniq) + codes
        if len(uniq) and combined.max() > 2**40:  # keep the mixed radix small
            combined = pd.factorize(combined)[0].astype(np.int64)
    inverse, uniq = pd.factorize(combined)
    return inverse, len(uniq)


def _encode_group(cols: list, rows: np.ndarray, every_row: bool) -> bytes:
    """The COPY rows ``rows``, all of one shape (``every_row``: they are all the rows, in order), as
    one structured array: the constant fields (field count, lengths) set at once, the values by column."""
    first = rows[0]
    fields = [("n", ">i2")]
    fill = []
    for i, (kind, data, lens) in enumerate(cols):
        ln = int(lens[first])
        fields.append((f"l{i}", ">i4"))
        fill.append((f"l{i}", ln))
        if ln < 0:
            continue
        if kind == "text":
            codes = data[0]
            fields.append((f"d{i}", f"S{ln}" if ln else "V0"))
            if ln:
                fill.append((f"d{i}", data[2][codes if every_row else codes[rows]].astype(f"S{ln}")))
        else:
            fields.append((f"d{i}", data.dtype))
            fill.append((f"d{i}", data if every_row else data[rows]))
    dtype = np.dtype(fields)
    template = np.zeros(1, dtype=dtype)
    template["n"] = len(cols)
    out = np.empty(len(rows), dtype=dtype)
    for name, value in fill:
        if not isinstance(value, np.ndarray):
            template[name] = value
    out[...] = template[0]  # the constant fields (count, lengths) of every row at once
    for name, value in fill:
        if isinstance(value, np.ndarray):
            out[name] = value
    return out.tobytes()


def _encode_copy_scatter(cols: list, n: int) -> bytes:
    """``encode_copy_binary`` for rows of many shapes: each row's bytes scattered into one buffer."""
    sizes = np.full(n, 2, dtype=np.int64)
    for _, _, lens in cols:
        sizes += 4 + np.maximum(lens, 0)
    starts = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(sizes[:-1], out=starts[1:])
    starts += len(_COPY_HEADER)
    total = len(_COPY_HEADER) + int(sizes.sum()) + 2
    buf = np.empty(total, dtype=np.uint8)
    buf[: len(_COPY_HEADER)] = np.frombuffer(_COPY_HEADER, dtype=np.uint8)
    buf[-2:] = 0xFF
    _scatter(buf, starts, np.full(n, len(cols), dtype=">i2").view(np.uint8).reshape(n, 2))
    cursor = starts + 2
    for kind, data, lens in cols:
        _scatter(buf, cursor, lens.astype(">i4").view(np.uint8).reshape(n, 4))
        ok = lens > 0
        if kind == "text":
            codes, enc, _ = data
            ulen = np.array([len(e) for e in enc], dtype=np.int64)
            ustart = np.zeros(len(enc), dtype=np.int64)
            if len(enc) > 1:
                np.cumsum(ulen[:-1], out=ustart[1:])
            blob = np.frombuffer(b"".join(enc), dtype=np.uint8)
            ln = lens[ok]
            total_bytes = int(ln.sum())
            if total_bytes:
                within = np.arange(total_bytes) - np.repeat(np.cumsum(ln) - ln, ln)
                buf[np.repeat(cursor[ok] + 4, ln) + within] = blob[np.repeat(ustart[codes[ok]], ln) + within]
        else:
            width = _FIXED[kind][0]
            _scatter(buf, (cursor + 4)[ok], np.ascontiguousarray(data[ok]).view(np.uint8).reshape(-1, width))
        cursor = cursor + 4 + np.maximum(lens, 0)
    return buf.tobytes()
