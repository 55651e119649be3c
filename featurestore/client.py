"""``FeatureStore``: the client ML code uses to read features online and build training sets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pandas as pd

from .definitions import FeatureService, FeatureView
from .exceptions import InvalidInputError, UnknownNameError
from .online.reader import PRESENT, ViewRead, read_views
from .repo import Repository


@dataclass
class OnlineResponse:
    """Feature vectors for the requested entity rows, in request order."""

    columns: dict[str, list]
    statuses: dict[str, list[str]]
    event_times: dict[str, list[int | None]]

    def to_dict(self) -> dict[str, list]:
        """Feast-like: {column: [value per entity row]} (join keys included)."""
        return dict(self.columns)

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


@dataclass(frozen=True)
class FeatureRef:
    """One requested feature: ``view`` (a feature view or on-demand view) and ``feature``."""

    view: str
    feature: str

    @classmethod
    def parse(cls, text: str) -> "FeatureRef":
        view, sep, feature = text.partition(":")
        if not sep or not view or not feature:
            raise InvalidInputError(f"feature reference {text!r} must look like 'view:feature'")
        return cls(view, feature)


class FeatureStore:
    """Reads features of one repository from the online (Redis) and offline (PostgreSQL) stores.

    ``versions`` maps each view name to the registered version to read
    (``featurestore apply`` assigns them; ``FeatureStore.connect`` looks them up).
    """

    def __init__(self, repo: Repository, online, versions: dict[str, int], project: str = "default", offline=None,
                 registry=None):
        self.repo = repo
        self.online = online
        self.offline = offline
        self.registry = registry
        self.versions = versions
        self.project = project
        self._plans: dict = {}

    # -- resolving what was asked ------------------------------------------------------
    def resolve(self, features=None, feature_service: str | FeatureService | None = None) -> list[FeatureRef]:
        if (features is None) == (feature_service is None):
            raise InvalidInputError("pass exactly one of features=[...] or feature_service=...")
        if feature_service is not None:
            service = feature_service if isinstance(feature_service, FeatureService) else self.repo.service(feature_service)
            return [FeatureRef(v, f) for v, f in service.resolve()]
        refs = [FeatureRef.parse(f) if isinstance(f, str) else f for f in features]
        for ref in refs:
            if ref.view in self.repo.views:
                if ref.feature not in self.repo.views[ref.view].feature_names:
                    raise UnknownNameError(f"feature view {ref.view!r} has no feature {ref.feature!r} "
                                           f"(it has: {', '.join(self.repo.views[ref.view].feature_names)})")
            elif ref.view in self.repo.odfvs:
                if ref.feature not in self.repo.odfvs[ref.view].feature_names:
                    raise UnknownNameError(f"on-demand view {ref.view!r} has no output {ref.feature!r}")
            else:
                known = ", ".join(sorted([*self.repo.views, *self.repo.odfvs]))
                raise UnknownNameError(f"unknown feature view {ref.view!r} (known: {known})")
        return refs

    def _view_key(self, view: FeatureView) -> str:
        try:
            version = self.versions[view.name]
        except KeyError:
            raise UnknownNameError(f"feature view {view.name!r} is not applied: run `featurestore apply`") from None
        return f"{self.project}:{view.name}:v{version}"

    # -- online ---------------------------------------------------------------------------
    def get_online_features(self, entity_rows, features=None, feature_service=None, request_data=None,
                            at_ms: int | None = None, full_names: bool = False) -> OnlineResponse:
        """Feature values for each entity row, evaluated at ``at_ms`` (default: now).

        ``entity_rows``: list of dicts or a DataFrame holding each view's join key.
        ``request_data``: per-row values for on-demand features (dict of lists or DataFrame).
        Output columns are feature names (``view__feature`` with ``full_names`` or on collision).
        """
        rows = entity_rows.to_dict("records") if isinstance(entity_rows, pd.DataFrame) else list(entity_rows)
        plan_key = (tuple(features) if features is not None else None, feature_service if isinstance(feature_service, (str, type(None))) else id(feature_service))
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plans[plan_key] = self._plan(features, feature_service)
        refs, needed, reads, views = plan
        keys = [[self._entity_key(view, row, i) for i, row in enumerate(rows)] for view in views]
        results = read_views(self.online, reads, keys, at_ms)
        return self._assemble(rows, refs, needed, results, request_data, full_names)

    def _plan(self, features, feature_service):
        """What one request shape reads (cached per shape: resolution is not on the hot path)."""
        refs = self.resolve(features, feature_service)
        needed: dict[str, list[str]] = {}
        for ref in refs:
            if ref.view in self.repo.views:
                needed.setdefault(ref.view, []).append(ref.feature)
            else:
                for view, feature in self.repo.odfvs[ref.view].inputs():
                    needed.setdefault(view, [])
                    if feature not in needed[view]:
                        needed[view].append(feature)
        reads, views = [], []
        for view_name, feats in needed.items():
            view = self.repo.views[view_name]
            views.append(view)
            reads.append(ViewRead(self._view_key(view), tuple(view.agg_specs()), view.source.allowed_lateness,
                                  view.ttl, list(dict.fromkeys(feats)), {f: view.feature(f).default for f in feats}))
        return refs, needed, reads, views

    def _entity_key(self, view: FeatureView, row: dict, index: int) -> str:
        join_key = view.entity.join_key
        value = row.get(join_key)
        if value is None:
            raise InvalidInputError(f"entity row {index} lacks the join key {join_key!r} of feature view {view.name!r}")
        if type(value) is str and view.entity.key_type == "string":
            return value
        try:
            return str(view.entity.value_type.coerce(row[join_key]))
        except ValueError as exc:
            raise InvalidInputError(f"entity row {index}: join key {join_key!r}: {exc}") from None

    def _assemble(self, rows, refs, needed, results, request_data, full_names) -> OnlineResponse:
        view_index = {name: i for i, name in enumerate(needed)}
        names = [r.feature for r in refs]
        clash = {n for n in names if names.count(n) > 1}
        columns: dict[str, list] = {}
        statuses: dict[str, list] = {}
        times: dict[str, list] = {}
        for key in dict.fromkeys(self.repo.views[v].entity.join_key for v in needed):
            columns[key] = [row.get(key) for row in rows]
        odfv_frames: dict[str, pd.DataFrame] = {}
        for ref in refs:
            label = f"{ref.view}__{ref.feature}" if full_names or ref.feature in clash else ref.feature
            if ref.view in self.repo.views:
                vals = results[view_index[ref.view]]
                columns[label] = [v.values.get(ref.feature) for v in vals]
                statuses[label] = [v.status for v in vals]
                times[label] = [v.event_time for v in vals]
                continue
            odfv = self.repo.odfvs[ref.view]
            if ref.view not in odfv_frames:
                frame = pd.DataFrame({f: [v.values.get(f) for v in results[view_index[view]]] for view, f in odfv.inputs()})
                for field_name in odfv.request_schema:
                    frame[field_name] = _request_column(request_data, field_name, len(rows), odfv.name)
                odfv_frames[ref.view] = odfv.compute(frame)
            columns[label] = odfv_frames[ref.view][ref.feature].tolist()
            statuses[label] = [PRESENT] * len(rows)
            times[label] = [None] * len(rows)
        return OnlineResponse(columns, statuses, times)

    # -- offline --------------------------------------------------------------------------
    def get_historical_features(self, entity_df: pd.DataFrame, features=None, feature_service=None) -> pd.DataFrame:
        """Point-in-time correct values for each (entity, event_timestamp) row: exactly what the
        online store serves at that time had every event up to it arrived."""
        from .historical import get_historical_features

        refs = self.resolve(features, feature_service)
        return asyncio.run(get_historical_features(self.offline, self.repo, self.registry, entity_df,
                                                   [(r.view, r.feature) for r in refs]))


def _request_column(request_data, name: str, n: int, odfv: str) -> list:
    if request_data is None or name not in request_data:
        raise InvalidInputError(f"on-demand view {odfv!r} needs request data {name!r}")
    values = list(request_data[name])
    if len(values) != n:
        raise InvalidInputError(f"request data {name!r} has {len(values)} values for {n} entity rows")
    return values
