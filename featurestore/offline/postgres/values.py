"""Column values between pandas and asyncpg: frames' columns as plain Python values for COPY,
and database values back to the dtypes ``validate_frame`` gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ...types import BOOL, FLOAT64, INT64, TIMESTAMP, ValueType


def _to_py(s: pd.Series, vt: ValueType | None = None) -> list[Any]:
    """A column as a list of Python values with ``None`` for nulls (NaN kept in float columns)."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return s.tolist()
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        if vt is not None and vt in (INT64, TIMESTAMP):
            return [None if v != v else int(v) for v in s.tolist()]
        return s.tolist()
    if pd.api.types.is_extension_array_dtype(dtype):
        return s.astype(object).where(s.notna(), None).tolist()
    out = s.tolist()
    is_list = vt is not None and vt.is_list
    for i, v in enumerate(out):
        if v is None:
            continue
        if v is pd.NA or v is pd.NaT:
            out[i] = None
        elif isinstance(v, float) and v != v and vt != FLOAT64:
            out[i] = None
        elif is_list and isinstance(v, np.ndarray):
            out[i] = v.tolist()
        elif isinstance(v, np.generic):
            out[i] = v.item()
    return out


def _tidy(s: pd.Series, vt: ValueType) -> pd.Series:
    """The dtype ``validate_frame`` gives a field (so batch transforms see the same frame)."""
    if vt in (INT64, TIMESTAMP):
        return s.astype("Int64") if s.isna().any() else s.astype("int64")
    if vt == FLOAT64:
        return s.astype("float64")
    if vt == BOOL:
        return s.astype("boolean") if s.isna().any() else s.astype("bool")
    return s.astype(object)
