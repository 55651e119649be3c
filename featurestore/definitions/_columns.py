"""Check and convert whole columns produced by user functions to a value type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, Embedding, ValueType


def _is_null(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and v != v


def _elementwise(values: pd.Series, vtype: ValueType, allow_nan_float: bool) -> list[Any]:
    out: list[Any] = []
    for pos, v in enumerate(values.tolist()):
        if _is_null(v) and not (allow_nan_float and isinstance(v, float)):
            out.append(None)
            continue
        try:
            out.append(vtype.coerce(v))
        except ValueError as exc:
            raise ValueError(f"row {pos}: {exc}") from None
    return out


def coerce_column(values: Any, vtype: ValueType, index: pd.Index) -> pd.Series:
    """Convert ``values`` (Series, 1-D/2-D array or list, one per row of ``index``)
    to a Series of ``vtype``; nulls are allowed.  Raise ``ValueError`` naming the
    first bad row.  int64 gives ``int64`` (``Int64`` with nulls), float64
    ``float64``, bool ``bool`` (``boolean`` with nulls), string and list types
    ``object``, timestamp ``Int64`` epoch ms."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        if not vtype.is_list:
            raise ValueError(f"got a 2-D array of shape {values.shape}, expected one {vtype.name} per row")
        if isinstance(vtype, Embedding) and values.dtype.kind in "fiu" and len(values) == len(index):
            if values.shape[1] != vtype.dim:  # what the row-by-row check says, for every row at once
                raise ValueError(f"row 0: expected {vtype.name}, got {values.shape[1]} values")
            return pd.Series(values.astype(float).tolist(), index=index, dtype=object)  # one C call, not one per row
        values = list(values)
    elif isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"got an array of shape {values.shape}, expected one value per row")
    if len(values) != len(index):
        raise ValueError(f"got {len(values)} values for {len(index)} rows")
    s = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object if vtype.is_list else None)
    s = s.set_axis(index)
    kind = s.dtype.kind if isinstance(s.dtype, np.dtype) else None

    if vtype == FLOAT64:
        if kind is not None and kind in "fiu":
            return s.astype("float64")
        if kind == "b" or str(s.dtype) == "boolean":
            raise ValueError("expected float64, got a bool column")
        if pd.api.types.is_numeric_dtype(s.dtype):  # nullable Int64 / Float64
            return s.astype("Float64").astype("float64")
        return pd.Series(_elementwise(s, vtype, True), index=index, dtype="float64")
    if vtype == INT64:
        if kind in ("i", "u"):
            return s.astype("int64")
        if kind == "f":
            finite = s.dropna()
            if not (finite == np.floor(finite)).all():
                bad = finite[finite != np.floor(finite)]
                raise ValueError(f"expected int64, got non-integral float {bad.iloc[0]!r}")
            return s.astype("Int64") if s.isna().any() else s.astype("int64")
        if str(s.dtype) == "Int64":
            return s
        out = _elementwise(s, vtype, False)
        return pd.Series(out, index=index, dtype="Int64" if None in out else "int64")
    if vtype == BOOL:
        if kind == "b" or str(s.dtype) == "boolean":
            return s
        out = _elementwise(s, vtype, False)
        return pd.Series(out, index=index, dtype="boolean" if None in out else "bool")
    if vtype == TIMESTAMP:
        if kind == "M" or isinstance(s.dtype, pd.DatetimeTZDtype):
            dt = pd.to_datetime(s, utc=True)
            return dt.dt.as_unit("ms").astype("int64").astype("Int64").mask(dt.isna())
        out = _elementwise(s, vtype, False)
        return pd.Series(out, index=index, dtype="Int64")
    if vtype == STRING:
        items = s.tolist()
        if all(type(v) is str for v in items):  # the common case, checked in one pass
            return pd.Series(items, index=index, dtype=object)
        return pd.Series(_elementwise(s, vtype, False), index=index, dtype=object)
    return pd.Series(_elementwise(s, vtype, False), index=index, dtype=object)


__all__ = ["coerce_column"]
