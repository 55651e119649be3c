"""``get_historical_features``: the entity rows checked, each needed view's events loaded once per
(source, join key) and joined point in time, on-demand views computed, the result assembled."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from ..definitions import FeatureView, OnDemandFeatureView
from ..exceptions import InvalidInputError
from ..repo import Repository
from .labels import EVENT_TIMESTAMP, entity_keys, parse_refs, to_epoch_ms
from .on_demand import on_demand_columns
from .point_in_time import compute_view, fields_needed

if TYPE_CHECKING:
    from ..offline import OfflineStore

__all__ = ["get_historical_features"]


async def get_historical_features(offline: OfflineStore, repo: Repository, registry: Any, entity_df: pd.DataFrame,
                                  refs: Iterable[Any], full_feature_names: bool = False,
                                  timings: dict[str, float] | None = None) -> pd.DataFrame:
    """``entity_df`` (join key column(s) + ``event_timestamp``) with one column per requested
    feature, rows in input order (index kept).  A column is named by the feature, or
    ``view__feature`` when the plain name collides (with another requested feature or an
    input column) or ``full_feature_names``.  ``registry`` (optional) checks that every view
    used is applied with the repository's definition.  ``timings`` (optional dict) receives the
    seconds spent loading events (``load``) and computing (``compute``)."""
    timings = {} if timings is None else timings
    timings.update(load=0.0, compute=0.0)
    if not isinstance(entity_df, pd.DataFrame):
        raise InvalidInputError(f"entity_df must be a pandas DataFrame, got {type(entity_df).__name__}")
    pairs = parse_refs(repo, refs)
    if EVENT_TIMESTAMP not in entity_df.columns:
        raise InvalidInputError(
            f"entity_df lacks the {EVENT_TIMESTAMP!r} column (columns: {', '.join(map(str, entity_df.columns))})"
        )
    needed, odfvs = _needed_features(repo, pairs)
    views = {name: repo.view(name) for name in needed}
    _check_columns(entity_df, views, odfvs)
    if registry is not None:
        for view in views.values():
            await registry.version_of(view.name, view.fingerprint())

    ts = to_epoch_ms(entity_df[EVENT_TIMESTAMP])
    live: dict[str, np.ndarray] = {}  # view -> rows with a live value (compute_view)
    computed = await _view_columns(offline, entity_df, views, needed, ts, live, timings)
    for odfv in odfvs.values():
        computed.update(on_demand_columns(odfv, computed, entity_df, live))
    return _result(entity_df, pairs, computed, full_feature_names)


def _needed_features(repo: Repository, pairs: list[tuple[str, str]]
                     ) -> tuple[dict[str, list[str]], dict[str, OnDemandFeatureView]]:
    """Which view features are needed (view -> features: the requested ones, then the inputs of the
    on-demand views requested) and those on-demand views by name."""
    needed: dict[str, list[str]] = {}
    odfvs: dict[str, OnDemandFeatureView] = {}
    for owner, feature in pairs:
        if owner in repo.odfvs:
            odfv = odfvs.setdefault(owner, repo.odfvs[owner])
            for v, f in odfv.inputs():
                if f not in needed.setdefault(v, []):
                    needed[v].append(f)
        elif feature not in needed.setdefault(owner, []):
            needed[owner].append(feature)
    return needed, odfvs


def _check_columns(entity_df: pd.DataFrame, views: dict[str, FeatureView],
                   odfvs: dict[str, OnDemandFeatureView]) -> None:
    """``InvalidInputError`` when ``entity_df`` lacks a join key of a view or a request column of an
    on-demand view."""
    for view in views.values():
        if view.entity.join_key not in entity_df.columns:
            raise InvalidInputError(
                f"entity_df lacks the join key column {view.entity.join_key!r} of entity {view.entity.name!r} "
                f"(needed by view {view.name!r})"
            )
    for odfv in odfvs.values():
        lacking = [c for c in odfv.request_schema if c not in entity_df.columns]
        if lacking:
            raise InvalidInputError(
                f"entity_df lacks request columns {lacking} of on-demand view {odfv.name!r}"
            )


async def _view_columns(offline: OfflineStore, entity_df: pd.DataFrame, views: dict[str, FeatureView],
                        needed: dict[str, list[str]], ts: np.ndarray, live: dict[str, np.ndarray],
                        timings: dict[str, float]) -> dict[tuple[str, str], pd.Series]:
    """``(view, feature) -> column`` of the ``needed`` view features as of each entity row: one
    ``load_events`` per (source, join key) of the fields all its views read, then ``compute_view``
    per view (``live`` gets each view's rows with a live value, ``timings`` the seconds spent)."""
    clock = time.perf_counter
    max_t = int(ts.max()) if len(ts) else 0
    computed: dict[tuple[str, str], pd.Series] = {}
    loaded: dict[tuple[str, str], tuple[pd.Series, pd.DataFrame]] = {}
    for name, feats in needed.items():
        view = views[name]
        cache_key = (view.source.name, view.entity.join_key)
        if cache_key not in loaded:
            keys = entity_keys(entity_df, view)
            distinct = pd.unique(keys.dropna()) if keys.dtype == object else pd.unique(keys)
            t0 = clock()
            fields = fields_needed([v for v in views.values() if (v.source.name, v.entity.join_key) == cache_key])
            events = await offline.load_events(view.source, keys=list(distinct) if len(ts) else [], end_ms=max_t,
                                               fields=fields)
            timings["load"] += clock() - t0
            loaded[cache_key] = (keys, events)
        keys, events = loaded[cache_key]
        t0 = clock()
        for fname, series in compute_view(view, events, keys.reset_index(drop=True), ts, feats, live).items():
            computed[(name, fname)] = series
        timings["compute"] += clock() - t0
    return computed


def _result(entity_df: pd.DataFrame, pairs: list[tuple[str, str]], computed: dict[tuple[str, str], pd.Series],
            full_feature_names: bool) -> pd.DataFrame:
    """``entity_df`` with one column per requested feature, named by the feature or, when that
    collides or ``full_feature_names``, ``view__feature``."""
    plain_count: dict[str, int] = {}
    for _, f in pairs:
        plain_count[f] = plain_count.get(f, 0) + 1
    result = entity_df.copy()
    inputs = set(map(str, entity_df.columns))
    for owner, f in pairs:
        col = f if not full_feature_names and plain_count[f] == 1 and f not in inputs else f"{owner}__{f}"
        series = computed[(owner, f)]
        result[col] = pd.Series(series.array, index=result.index, dtype=series.dtype)
    return result
