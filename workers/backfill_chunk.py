"""Phase 2 of a backfill: the computation of one chunk (one entity bucket), without I/O.

``compute_batch`` gives the values as of each accepted event (the batch path of the
transforms); with ``online`` each entity's final state becomes an online record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from featurestore.definitions import FeatureView
from featurestore.offline.postgres import event_id_column
from transforms import compute_batch

from featurestore.processing import PreparedView, add_derived, derived_transforms, rebuild_records

__all__ = ["add_batch_transforms", "compute_history", "final_states"]


def add_batch_transforms(view: FeatureView, events: pd.DataFrame) -> pd.DataFrame:
    """``events`` with the view's BatchTransform columns (``featurestore.processing.add_derived``)."""
    add_derived(derived_transforms([view]), events)
    return events


def compute_history(view: FeatureView, events: pd.DataFrame, start_ms: int | None = None):
    """Values as of each accepted event (rows with ts >= start_ms), the refused rows and the accepted mask."""
    id_col = event_id_column(view.source)
    result = compute_batch(view.agg_specs(), events, None, view.source.allowed_lateness,
                           id_column=(id_col if view.source.event_id_field is not None and id_col in events.columns
                                      else None))
    values = result.values
    if start_ms is not None:
        values = values[values["ts"] >= start_ms].reset_index(drop=True)
    return values, result.rejects, result.accepted


def final_states(pv: PreparedView, events: pd.DataFrame) -> list:
    """Each entity's state after all its accepted events (arrival order), as online records."""
    if not len(events):
        return []
    id_col = event_id_column(pv.view.source)
    cols = [c for c in events.columns if c not in ("key", "ts", id_col, "__part", "__off")]
    codes, uniques = pd.factorize(events["key"])
    order = np.argsort(codes, kind="stable")
    rows = events[cols].iloc[order].to_dict("records")
    ts = events["ts"].to_numpy()[order].tolist()
    ids = events[id_col].iloc[order].tolist() if id_col in events.columns else [None] * len(events)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes[order])) + 1, [len(order)]]).tolist()
    batches = {str(uniques[codes[order[lo]]]): list(zip(ts[lo:hi], rows[lo:hi], ids[lo:hi]))
               for lo, hi in zip(bounds[:-1], bounds[1:])}
    return rebuild_records(pv, batches)


@dataclass
class _Chunk:
    bucket: int
    events: int
    history: tuple | None  # (columns, payload) of the binary COPY, or None
    values: pd.DataFrame | None  # when no fast encoding exists
    rejects: list
    log_frame: pd.DataFrame | None
    records: list
    compute_s: float
    encode_s: float
    rows: int = 0
