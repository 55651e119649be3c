"""Arrow layouts of the frames that cross the Spark boundary, and their pandas shapes.

* **events**: the events layout (``featurestore.events_layout``, the local backfill's spill's) plus
  the entity ``__bucket``; ``events_frame`` turns a bucket of them (the pandas frame
  ``applyInPandas`` hands over) into the frame ``compute_batch`` takes, as ``Spill.read`` does;
* **out**: what a bucket gives back: history rows (``__kind`` "h": ``key``, ``ts``, ``seq``, the
  features), refused rows ("r": ``__part``, ``__off``, ``__reason``, ``__detail``, ``__payload``),
  final online states ("s": ``__blob``, a pickled ``OnlineRecord``) and the bucket's event count
  ("n": in ``__off``), one layout for all; ``spark_pandas`` hands it back to Spark unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ..definitions import FeatureView
from ..events_layout import arrow_type, key_type

__all__ = ["history_seq", "out_schema", "spark_pandas", "table_of"]


def out_schema(view: FeatureView) -> pa.Schema:
    """What a bucket gives back: history rows, refused rows and online states (module docstring)."""
    src = view.source
    feats = [(f.name, arrow_type(f.dtype)) for f in view.features]
    return pa.schema([("__kind", pa.string()), ("key", key_type(src)), ("ts", pa.int64()), ("seq", pa.int32())]
                     + feats + [("__part", pa.int32()), ("__off", pa.int64()), ("__reason", pa.string()),
                                ("__detail", pa.string()), ("__payload", pa.binary()), ("__blob", pa.binary())])


def table_of(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` as a table of ``schema``: absent columns null, NaN in float columns kept."""
    n = len(frame)
    arrays = []
    for field in schema:
        if field.name not in frame.columns:
            arrays.append(pa.nulls(n, field.type))
            continue
        col = frame[field.name]
        if pa.types.is_floating(field.type):
            arrays.append(pa.array(col.to_numpy(dtype="float64", na_value=np.nan), type=field.type))
        elif col.dtype == object or pa.types.is_list(field.type):
            arrays.append(pa.array(col.astype(object).where(col.notna(), None).tolist(), type=field.type))
        else:
            arrays.append(pa.array(col, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def spark_pandas(table: pa.Table) -> pd.DataFrame:
    """``table`` as the frame an ``applyInPandas`` function returns, converted back to Arrow by Spark
    without a change: scalar columns Arrow-backed (``pd.ArrowDtype``: Spark takes their Arrow arrays
    as they are — one chunk each — so NaN stays NaN and null stays null), list columns as Python
    lists or None."""
    return pd.DataFrame({name: (pd.Series(col.to_pylist(), dtype=object) if pa.types.is_list(col.type)
                                else pd.Series(pd.arrays.ArrowExtensionArray(col.combine_chunks())))
                         for name, col in zip(table.column_names, table.columns)})


def history_seq(values: pd.DataFrame) -> np.ndarray:
    """The ``seq`` of history rows sorted by key, ts: the position within each (key, ts) run, as the
    offline store numbers them."""
    n = len(values)
    if not n:
        return np.zeros(0, dtype="int32")
    codes = pd.factorize(values["key"])[0]
    ts = values["ts"].to_numpy(dtype="int64")
    idx = np.arange(n)
    change = np.ones(n, dtype=bool)
    change[1:] = (codes[1:] != codes[:-1]) | (ts[1:] != ts[:-1])
    return (idx - np.maximum.accumulate(np.where(change, idx, 0))).astype("int32")
