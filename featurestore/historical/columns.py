"""A view's feature values per entity row as typed result columns: the feature's default where the
view's values are missing, and the dtypes the package docstring states (float64 with NaN, int64 or
``Int64``, object with None)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..definitions.views import AnyFeature
from ..types import FLOAT64, INT64, ValueType

__all__ = ["feature_column"]


def feature_column(feat: AnyFeature, vals: np.ndarray, qrows: np.ndarray, missing: np.ndarray) -> pd.Series:
    """The result column of ``feat``: ``vals`` are its values for the entity rows ``qrows`` (the rows
    with a key), ``missing`` marks the rows (of all ``len(missing)``) that take the default."""
    numeric = ((feat.dtype == FLOAT64 and vals.dtype.kind in "fiu")
               or (feat.dtype == INT64 and vals.dtype.kind in "iu"))
    if numeric:
        return _finish_numeric(vals, qrows, missing, feat.dtype, feat.default)
    col = np.full(len(missing), None, dtype=object)
    col[qrows] = vals
    return _finish(col, missing, feat.dtype, feat.default)


def _finish_numeric(vals: np.ndarray, qrows: np.ndarray, missing: np.ndarray, dtype: ValueType,
                    default: Any) -> pd.Series:
    """``_finish`` for numeric arrays (same result), without going through Python objects."""
    nq = len(missing)
    every = len(qrows) == nq  # every query has a key: ``vals`` (a fresh array) is the column already
    if dtype == FLOAT64:
        if every and vals.dtype == np.float64:
            col = vals
        else:
            col = np.full(nq, np.nan, dtype="float64")
            col[qrows] = vals
        col[missing] = np.nan if default is None else float(default)
        return pd.Series(col, copy=False)
    if every and vals.dtype == np.int64:
        col = vals
    else:
        col = np.zeros(nq, dtype="int64")
        col[qrows] = vals
    if default is not None:
        col[missing] = int(default)
        return pd.Series(col, copy=False)
    if not missing.any():
        return pd.Series(col, copy=False)
    return pd.Series(pd.arrays.IntegerArray(col, missing.copy()))


def _finish(col: np.ndarray, missing: np.ndarray, dtype: ValueType, default: Any) -> pd.Series:
    """Apply the default where missing and give the column its dtype (package docstring)."""
    if missing.any():
        col = col.copy()
        idx = np.flatnonzero(missing)
        if default is not None and dtype.is_list:
            for i in idx:
                col[i] = list(default)
        else:
            col[idx] = default
    if dtype == FLOAT64:
        return pd.Series(np.array([np.nan if v is None else v for v in col.tolist()], dtype="float64"))
    if dtype == INT64:
        s = pd.Series(col, dtype=object)
        null = s.isna().to_numpy()
        if null.any():
            return s.astype("Int64")
        return s.astype("int64")
    s = pd.Series(col, dtype=object)
    nan = np.array([isinstance(v, float) and v != v for v in col], dtype=bool) if len(col) else np.zeros(0, bool)
    if nan.any():
        s[nan] = None
    return s
