"""One view's feature values as of each entity row ``(key, t)``: one ``compute_batch`` over the
loaded events with the rows as queries, then the few rows whose acceptance of an event differs
from the whole batch's recomputed from the entity's events ``<= t`` (package docstring)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..definitions import FeatureView
from ..offline.postgres import event_id_column
from .columns import feature_column
from transforms import AggSpec, compute_batch
from transforms.batch import _radix_argsort
from featurestore.processing import add_derived, derived_transforms

__all__ = ["compute_view", "fields_needed"]

_LAST_SEEN = "__fs_last_seen"  # hidden spec: seconds since the latest accepted event <= t (for the TTL)
_NONE = np.iinfo("int64").min  # time of the latest accepted event of a query with none


def fields_needed(views: Iterable[FeatureView]) -> list[str]:
    """Source fields the views read (aggregation columns and batch-transform inputs)."""
    out: list[str] = []
    for view in views:
        schema = view.source.schema
        names = [s.column for s in view.agg_specs() if s.column] + [c for bt in view.batch_transforms()
                                                                     for c in bt.inputs]
        out += [c for c in names if c in schema and c not in out]
    return out


def compute_view(view: FeatureView, events: pd.DataFrame, keys: pd.Series, ts: np.ndarray,
                 names: Sequence[str], live_out: dict | None = None) -> dict[str, pd.Series]:
    """Values of features ``names`` of ``view`` for the queries ``(keys[i], ts[i])`` from
    ``events`` (loaded in arrival order); returns name -> Series aligned with the queries,
    typed as described in the package docstring (TTL / missing -> default).  ``live_out``, when
    given, gets ``live_out[view.name]``: the queries whose entity has a live event (not missing,
    not expired), as a boolean array."""
    src = view.source
    id_col = event_id_column(src) if src.event_id_field is not None else None
    frame = _events_for_batch(view, events)
    nq = len(ts)
    has_key = keys.notna().to_numpy() if keys.dtype == object else np.ones(nq, dtype=bool)
    qrows = np.flatnonzero(has_key)
    qkeys = keys.iloc[qrows].reset_index(drop=True)
    qts = np.asarray(ts[qrows], dtype="int64")
    values, last_ts = _values_as_of(view.agg_specs(), frame, qkeys, qts, src.allowed_lateness, id_col)

    live = last_ts != _NONE
    if view.ttl is not None:
        live &= last_ts >= qts - view.ttl
    missing = np.ones(nq, dtype=bool)
    missing[qrows[live]] = False
    if live_out is not None:
        live_out[view.name] = ~missing
    return {name: feature_column(view.feature(name), values[name], qrows, missing) for name in names}


def _events_for_batch(view: FeatureView, events: pd.DataFrame) -> pd.DataFrame:
    """``events`` renumbered from 0, with the view's BatchTransform columns derived."""
    frame = events.reset_index(drop=True)
    add_derived(derived_transforms([view]), frame)
    return frame


def _query_order(qkeys: pd.Series, qts: np.ndarray) -> np.ndarray:
    """The queries sorted by (key, time): the order ``compute_batch``'s sorted factorization gives
    keys, so its binary searches and range gathers are memory-local."""
    if not len(qkeys):
        return np.zeros(0, dtype="int64")
    qk_codes, qk_uniques = pd.factorize(qkeys, sort=True)
    t_lo = int(qts.min())
    t_span = int(qts.max()) - t_lo + 1
    if (len(qk_uniques) + 1) * t_span < 2**62:  # one composite key: a stable radix sort
        composite = qk_codes.astype("int64") * t_span
        composite += qts - t_lo
        return _radix_argsort(composite)
    return np.lexsort((qts, qk_codes))


def _values_as_of(specs: list[AggSpec], frame: pd.DataFrame, qkeys: pd.Series, qts: np.ndarray, lateness: int,
                  id_col: str | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per query, in query order: the value of each spec, and the time of the entity's latest
    accepted event ``<= t`` (``_NONE`` when there is none)."""
    qorder = _query_order(qkeys, qts)
    sts = qts[qorder]
    queries = pd.DataFrame({"key": qkeys.iloc[qorder].reset_index(drop=True), "ts": sts})
    batch_specs = specs + [AggSpec(_LAST_SEEN, "seconds_since_last")]
    res = compute_batch(batch_specs, frame, queries, lateness_ms=lateness, id_column=id_col)
    values: dict[str, np.ndarray] = {}
    for spec in specs:
        col = res.values[spec.name]
        arr = col.to_numpy() if col.dtype != object else col.to_numpy(dtype=object)
        out_arr = np.empty(len(arr), dtype=arr.dtype)
        out_arr[qorder] = arr
        values[spec.name] = out_arr
    since = res.values[_LAST_SEEN].to_numpy(dtype="float64")
    last_sorted = np.where(np.isnan(since), _NONE, sts - np.rint(np.nan_to_num(since) * 1000).astype("int64"))
    last_ts = np.empty(len(qts), dtype="int64")
    last_ts[qorder] = last_sorted

    rejected = np.flatnonzero(~np.asarray(res.accepted, dtype=bool))
    if len(rejected) and len(qts):
        values = _recompute_affected(specs, frame, qkeys, qts, rejected, values, last_ts, lateness, id_col)
    return values, last_ts


def _composite(codes: np.ndarray, ts: np.ndarray, base: int, span: int) -> np.ndarray:
    """One sortable int64 per (entity code, time)."""
    return codes.astype("int64") * span + (ts.astype("int64") - base)


def _recompute_affected(specs: list[AggSpec], frame: pd.DataFrame, qkeys: pd.Series, qts: np.ndarray,
                        rejected: np.ndarray, values: dict[str, np.ndarray], last_ts: np.ndarray, lateness: int,
                        id_col: str | None) -> dict[str, np.ndarray]:
    """``values`` and ``last_ts`` (updated in place) with the queries whose acceptance differs from the
    whole batch's recomputed exactly: a query ``t`` of the entity of a ``rejected`` event ``e`` with
    ``e.ts <= t < P(e)`` (package docstring).  Returns the values (object arrays once recomputed)."""
    n_ev = len(frame)
    ev_ts = frame["ts"].to_numpy(dtype="int64")
    codes_all, _ = pd.factorize(pd.concat([frame["key"], qkeys], ignore_index=True), sort=False)
    ev_codes = codes_all[:n_ev].astype("int64")
    q_codes = codes_all[n_ev:].astype("int64")
    prev_max = (pd.Series(ev_ts).groupby(ev_codes, sort=False).cummax()
                .groupby(ev_codes, sort=False).shift(1).to_numpy(dtype="float64"))
    pm = prev_max[rejected]
    sel = rejected[~np.isnan(pm) & (pm > ev_ts[rejected])]
    if not len(sel):
        return values
    lo_t = int(min(ev_ts.min() if n_ev else 0, qts.min()))
    hi_t = int(max(ev_ts.max() if n_ev else 0, qts.max()))
    base, span = lo_t, hi_t - lo_t + 2
    qkey = _composite(q_codes, qts, base, span)
    order = np.argsort(qkey, kind="stable")
    sorted_q = qkey[order]
    start = np.searchsorted(sorted_q, _composite(ev_codes[sel], ev_ts[sel], base, span), side="left")
    stop = np.searchsorted(sorted_q, _composite(ev_codes[sel], prev_max[sel].astype("int64"), base, span),
                           side="left")
    diff = np.zeros(len(sorted_q) + 1, dtype="int64")
    np.add.at(diff, start, 1)
    np.add.at(diff, stop, -1)
    affected = order[np.cumsum(diff[:-1]) > 0]
    if not len(affected):
        return values
    values = {k: (v.astype(object) if v.dtype.kind in "iub" else v.copy()) for k, v in values.items()}
    events = _EntityEvents(frame, ev_codes, ev_ts)
    cache: dict[tuple[int, int], tuple[dict[str, Any], int]] = {}
    for qi in affected:
        code, t = int(q_codes[qi]), int(qts[qi])
        hit = cache.get((code, t))
        if hit is None:
            hit = cache[(code, t)] = events.as_of(specs, code, qkeys.iat[qi], t, lateness, id_col)
        row, last = hit
        for spec in specs:
            values[spec.name][qi] = row[spec.name]
        last_ts[qi] = last
    return values


class _EntityEvents:
    """The loaded events by entity code, for exact values of single queries."""

    def __init__(self, frame: pd.DataFrame, ev_codes: np.ndarray, ev_ts: np.ndarray) -> None:
        self.frame, self.ev_codes, self.ev_ts = frame, ev_codes, ev_ts
        self.by_code: dict[int, np.ndarray] = {}

    def as_of(self, specs: list[AggSpec], code: int, key: Any, t: int, lateness: int,
              id_col: str | None) -> tuple[dict[str, Any], int]:
        """The values of ``specs`` for entity ``code`` (key ``key``) as of ``t`` from its events
        ``<= t`` only, and the time of its latest accepted one (``_NONE`` when none)."""
        rows = self.by_code.get(code)
        if rows is None:
            rows = self.by_code[code] = np.flatnonzero(self.ev_codes == code)
        frame = self.frame
        sub = frame.iloc[rows[self.ev_ts[rows] <= t]].reset_index(drop=True)
        query = pd.DataFrame({"key": pd.Series([key], dtype=frame["key"].dtype), "ts": [t]})
        one = compute_batch(specs, sub, query, lateness_ms=lateness, id_column=id_col)
        acc_ts = sub["ts"].to_numpy(dtype="int64")[np.asarray(one.accepted, dtype=bool)]
        return ({sp.name: one.values[sp.name].to_numpy(dtype=object)[0] for sp in specs},
                int(acc_ts.max()) if len(acc_ts) else _NONE)
