"""On-demand views in a training set: the view's function over the joined feature columns and the
request columns of the entity rows, missing (as online) where an input view has no live value."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..definitions import OnDemandFeatureView

__all__ = ["on_demand_columns"]


def on_demand_columns(odfv: OnDemandFeatureView, computed: dict[tuple[str, str], pd.Series],
                      entity_df: pd.DataFrame, live: dict[str, np.ndarray]) -> dict[tuple[str, str], pd.Series]:
    """``(odfv name, output) -> column`` of ``odfv`` over the ``computed`` ``(view, feature)`` columns and
    ``entity_df``'s request columns; ``live`` marks per view the rows with a live value.  Unless the view
    computes on missing inputs, an output is missing on the rows where an input view is not live."""
    frame = pd.DataFrame({f: computed[(v, f)] for v, f in odfv.inputs()})
    for c in odfv.request_schema:
        frame[c] = entity_df[c].reset_index(drop=True)
    out = odfv.compute(frame)
    rows = np.ones(len(frame), dtype=bool)
    if not odfv.compute_on_missing:
        for v in {v for v, _ in odfv.inputs()}:
            rows &= live[v]
    return {(odfv.name, c): _blank(out[c].reset_index(drop=True), rows) for c in odfv.schema}


def _blank(series: pd.Series, keep: np.ndarray) -> pd.Series:
    """``series`` with the rows not in ``keep`` missing (NaN for floats, <NA> in a nullable dtype)."""
    if keep.all():
        return series
    kind = series.dtype.kind if isinstance(series.dtype, np.dtype) else None
    if kind == "f":
        return series.where(keep, np.nan)
    if kind in ("i", "u"):
        return series.astype("Int64").where(keep, pd.NA)
    if kind == "b":
        return series.astype("boolean").where(keep, pd.NA)
    return series.astype(object).where(keep, None)
