"""``FeatureStore``: the client ML code uses to read features online, build training sets,
push events computed elsewhere and materialize the offline store into the online one.

Two ways to get one:

* ``FeatureStore.connect(repo_path=None, settings=None)`` (alias ``from_repo``): resolves the
  servers from ``FEATURESTORE_*`` settings (``featurestore.runtime.open_runtime``, which starts
  the embedded stack when none is configured), loads the repository, looks up each view's
  registered version, and opens PostgreSQL pools itself (one per event loop: a private loop for
  the synchronous methods, the caller's loop for the ``a*`` coroutines);
* ``FeatureStore(repo, online, versions, project, offline=..., registry=...)`` with stores the
  caller built (``offline`` is then used on the loop its pool was created on).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .definitions import EventSource, FeatureService, FeatureView
from .exceptions import ConfigurationError, InvalidInputError, RegistryError, StoreUnavailableError, UnknownNameError
from .offline.postgres import PUSH_PARTITION
from .online.reader import EXPIRED, MISSING, PRESENT, ViewRead, aread_rows, picker, read_rows
from .repo import Repository

logger = logging.getLogger(__name__)

PUSH_TARGETS = ("online", "offline", "online_and_offline")


@dataclass
class OnlineResponse:
    """Feature vectors for the requested entity rows, in request order."""

    columns: dict[str, list]
    statuses: dict[str, list[str]]
    event_times: dict[str, list[int | None]]

    def to_dict(self) -> dict[str, list]:
        """Feast-like: {column: [value per entity row]} (join keys included)."""
        return dict(self.columns)

    def to_df(self, statuses: bool = False, event_times: bool = False) -> pd.DataFrame:
        """One row per entity row; with ``statuses`` a ``<feature>__status`` column (present /
        missing / expired) and with ``event_times`` a ``<feature>__event_time`` column (epoch ms
        of the view's latest event, None for on-demand features and missing values) follow
        each feature column."""
        if not statuses and not event_times:
            return pd.DataFrame(self.columns)
        out: dict[str, list] = {}
        for name, values in self.columns.items():
            out[name] = values
            if name in self.statuses:
                if statuses:
                    out[f"{name}__status"] = self.statuses[name]
                if event_times:
                    out[f"{name}__event_time"] = pd.array(self.event_times[name], dtype="Int64")
        return pd.DataFrame(out)


@dataclass
class PushResult:
    """What ``push`` wrote: ``rows`` valid rows given; ``online_records`` (view, entity) states
    committed; ``offline_rows`` rows appended to the event log; ``refused``: rows the views'
    states refused (``row`` index label, ``reason`` late / duplicate_event_id, ``detail``), as
    the worker would dead-letter them; ``skipped_existing``: rows not appended to the event log
    because an event with the same (entity key, event id) is already there."""

    rows: int
    online_records: int = 0
    offline_rows: int = 0
    refused: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"row": [], "reason": [], "detail": []}))
    skipped_existing: int = 0


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


def _odfv_statuses(input_statuses: list[list[str]], n: int, compute_on_missing: bool) -> list[str]:
    """Per row, the status of an on-demand view's outputs: ``missing`` when an input view is missing,
    else ``expired`` when one expired, else ``present`` (always ``present`` with ``compute_on_missing``)."""
    if compute_on_missing or not input_statuses:
        return [PRESENT] * n
    out = []
    for row in zip(*input_statuses):
        out.append(MISSING if MISSING in row else EXPIRED if EXPIRED in row else PRESENT)
    return out


class _OnlinePlan:
    """One online request shape, compiled once: the views to read, how entity keys are built and
    which response column comes from where (labels per ``full_names``)."""

    def __init__(self, repo: Repository, refs: list[FeatureRef], needed: dict[str, list[str]],
                 reads: list[ViewRead], views: list[FeatureView]):
        self.refs, self.needed, self.reads, self.views = refs, needed, reads, views
        self.repo = repo
        entity_index: dict[tuple, int] = {}
        self.entities: list[tuple[str, bool, FeatureView]] = []  # (join key, string keys, first view) per entity
        self.view_entity: list[int] = []
        for view in views:
            ident = (view.entity.join_key, view.entity.key_type)
            if ident not in entity_index:
                entity_index[ident] = len(self.entities)
                self.entities.append((view.entity.join_key, view.entity.key_type == "string", view))
            self.view_entity.append(entity_index[ident])
        self.join_keys = list(dict.fromkeys(view.entity.join_key for view in views))
        view_index = {name: i for i, name in enumerate(needed)}
        first_column = [sum(len(r.features) for r in reads[:i]) for i in range(len(reads))]
        #: (view, feature) -> (view index, index of its column among all views' columns)
        self.position = {(name, f): (view_index[name], first_column[view_index[name]] + j)
                         for name in needed for j, f in enumerate(reads[view_index[name]].features)}
        self.odfv_inputs = {ref.view: [(f, self.position[(view, f)][1]) for view, f in repo.odfvs[ref.view].inputs()]
                            for ref in refs if ref.view not in repo.views}
        #: on-demand view -> indexes of its input views (their statuses decide whether it is computed)
        self.odfv_views = {ref.view: sorted({self.position[(view, f)][0] for view, f in repo.odfvs[ref.view].inputs()})
                           for ref in refs if ref.view not in repo.views}
        names = [r.feature for r in refs]
        self.clash = {n for n in set(names) if names.count(n) > 1}
        self._outputs: dict[bool, tuple] = {}

    def outputs(self, full_names: bool) -> tuple:
        """(labels, columns, steps, views) in request order.  Without on-demand features,
        ``columns`` picks each label's column from the list of all views' columns, ``views`` its
        view's item from a list with one item per view, and ``steps`` is None; else ``steps`` holds
        (view index, column, None, feature) per feature-view label and (None, None, on-demand
        view, feature) per on-demand label (``columns`` and ``views`` None)."""
        hit = self._outputs.get(full_names)
        if hit is None:
            labels, steps = [], []
            for ref in self.refs:
                labels.append(f"{ref.view}__{ref.feature}" if full_names or ref.feature in self.clash else ref.feature)
                if ref.view in self.repo.views:
                    steps.append((*self.position[(ref.view, ref.feature)], None, ref.feature))
                else:
                    steps.append((None, None, self.repo.odfvs[ref.view], ref.feature))
            if any(odfv is not None for _, _, odfv, _ in steps):
                hit = (labels, None, steps, None)
            else:
                hit = (labels, picker([c for _, c, _, _ in steps]), None, picker([v for v, _, _, _ in steps]))
            self._outputs[bool(full_names)] = hit
        return hit


class FeatureStore:
    """Reads features of one repository from the online (Redis) and offline (PostgreSQL) stores.

    ``versions`` maps each view name to the registered version to read
    (``featurestore apply`` assigns them; ``FeatureStore.connect`` looks them up).
    """

    def __init__(self, repo: Repository, online, versions: dict[str, int], project: str = "default", offline=None,
                 registry=None, *, postgres_dsn: str | None = None, pg_schema: str = "public"):
        self.repo = repo
        self.online = online
        self.offline = offline
        self.registry = registry
        self.versions = versions
        self.project = project
        self._plans: dict = {}
        self._dsn = postgres_dsn
        self._pg_schema = pg_schema
        self._loop: asyncio.AbstractEventLoop | None = None  # private loop of the synchronous methods
        self._lock = threading.Lock()
        self._pools: dict[Any, tuple[Any, Any]] = {}  # event loop -> (offline store, registry) opened here
        #: Seconds spent per step by the last ``get_historical_features`` (load, compute, ...).
        self.last_timings: dict[str, float] = {}

    # -- connecting ---------------------------------------------------------------------
    @classmethod
    def connect(cls, repo_path=None, settings=None, *, repo: Repository | None = None,
                embedded: bool = False) -> "FeatureStore":
        """A store wired to the servers of ``settings`` (default: ``FEATURESTORE_*`` variables)
        for the repository at ``repo_path`` (default: the bundled example) or ``repo``.  Where a
        server is not configured, the embedded stack of local servers is started (or reused),
        with a WARNING saying so unless ``embedded=True`` asks for it.  Each view reads the
        registered version whose definition matches the repository; a view not applied raises on use."""
        from .runtime import PG_SCHEMA, open_runtime
        from .settings import Settings

        rt = open_runtime(settings if settings is not None else Settings(), repo_path,
                          say=(lambda line: logger.info("%s", line)) if embedded else None)
        if repo is not None:
            rt.repo = repo
        store = cls(rt.repo, rt.online(), {}, rt.project, postgres_dsn=rt.postgres_dsn, pg_schema=PG_SCHEMA)
        store.versions = store._run(store.aresolve_versions())
        return store

    from_repo = connect

    async def aresolve_versions(self) -> dict[str, int]:
        """Registered version of each view whose definition matches the repository (views not
        applied, or changed since ``apply``, are left out)."""
        _, registry = await self._stores()
        versions = {}
        for name, view in self.repo.views.items():
            try:
                versions[name] = await registry.version_of(name, view.fingerprint())
            except RegistryError:
                continue
        return versions

    async def _stores(self) -> tuple[Any, Any]:
        """(offline store, registry) usable on the running event loop."""
        if self._dsn is None:
            if self.offline is None:
                raise ConfigurationError("this FeatureStore has no offline store: use FeatureStore.connect(...) "
                                         "or pass offline=PostgresOfflineStore")
            return self.offline, self.registry  # registry None: views are not checked against it
        loop = asyncio.get_running_loop()
        hit = self._pools.get(loop)
        if hit is None:
            from .offline.postgres import PostgresOfflineStore
            from .registry import Registry

            offline = await PostgresOfflineStore.create(self._dsn, self.project, self._pg_schema)
            for source in self.repo.sources.values():
                offline.register_source(source)
            hit = self._pools[loop] = (offline, Registry.for_store(offline))
        return hit

    def _run(self, coro):
        """Run a coroutine for a synchronous method: on the loop of a caller-given pool, else on
        the private loop (from a worker thread when called inside a running loop, e.g. Jupyter)."""
        pool_loop = getattr(getattr(self.offline, "pool", None), "_loop", None) if self._dsn is None else None
        with self._lock:
            if pool_loop is not None and not pool_loop.is_closed():
                loop = pool_loop
            else:
                if self._loop is None or self._loop.is_closed():
                    self._loop = asyncio.new_event_loop()
                loop = self._loop
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return loop.run_until_complete(coro)
            if loop is pool_loop and loop.is_running():
                coro.close()
                raise InvalidInputError("called from inside the event loop of the offline store: "
                                        "await the a* coroutine instead (e.g. aget_historical_features)")
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(loop.run_until_complete, coro).result()

    def close(self) -> None:
        """Close the pools this store opened (not those passed in) and its private loop."""
        with self._lock:
            if self._loop is not None and not self._loop.is_closed():
                own = self._pools.pop(self._loop, None)
                if own is not None:
                    self._loop.run_until_complete(own[0].close())
                self._loop.close()
            self._loop = None

    async def aclose(self) -> None:
        """Close the pool this store opened on the running loop, and the online store's asyncio client there."""
        own = self._pools.pop(asyncio.get_running_loop(), None)
        if own is not None:
            await own[0].close()
        if hasattr(self.online, "aclose"):
            await self.online.aclose()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        plan, rows, keys = self._online_request(entity_rows, features, feature_service)
        results = read_rows(self.online, plan.reads, keys, at_ms)
        return self._assemble(plan, rows, results, request_data, full_names)

    async def aget_online_features(self, entity_rows, features=None, feature_service=None, request_data=None,
                                   at_ms: int | None = None, full_names: bool = False) -> OnlineResponse:
        """``get_online_features`` for asyncio servers: the Redis round trip is awaited (redis-py's
        asyncio client, one per event loop, closed by ``aclose``); the rest is the same code."""
        plan, rows, keys = self._online_request(entity_rows, features, feature_service)
        results = await aread_rows(self.online, plan.reads, keys, at_ms)
        return self._assemble(plan, rows, results, request_data, full_names)

    def _online_request(self, entity_rows, features, feature_service) -> tuple["_OnlinePlan", list, list[list[str]]]:
        """(the plan of this request shape, the entity rows as dicts, the entity keys per view read)."""
        rows = entity_rows.to_dict("records") if isinstance(entity_rows, pd.DataFrame) else list(entity_rows)
        plan_key = (tuple(features) if features is not None else None, feature_service if isinstance(feature_service, (str, type(None))) else id(feature_service))
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plans[plan_key] = self._plan(features, feature_service)
        return plan, rows, self._entity_keys(plan, rows)

    def _plan(self, features, feature_service) -> _OnlinePlan:
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
        return _OnlinePlan(self.repo, refs, needed, reads, views)

    def _entity_keys(self, plan: _OnlinePlan, rows: list) -> list[list[str]]:
        """Entity keys per view read (computed once per entity shared by several views)."""
        per_entity = []
        for join_key, string_key, view in plan.entities:
            keys = []
            for i, row in enumerate(rows):
                value = row.get(join_key)
                keys.append(value if string_key and type(value) is str else self._entity_key(view, row, i))
            per_entity.append(keys)
        return [per_entity[e] for e in plan.view_entity]

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

    def _assemble(self, plan: _OnlinePlan, rows, results, request_data, full_names) -> OnlineResponse:
        n = len(rows)
        # one tuple per (view, requested feature): the rows of each view transposed
        view_columns = [col for r, (view_rows, *_) in zip(plan.reads, results)
                        for col in (zip(*view_rows) if n else [()] * len(r.features))]
        columns: dict[str, list] = {key: [row.get(key) for row in rows] for key in plan.join_keys}
        labels, pick_columns, steps, pick_views = plan.outputs(full_names)
        if steps is None:  # feature-view columns only: built in C loops, in request order
            columns.update(zip(labels, map(list, pick_columns(view_columns))))
            statuses = dict(zip(labels, map(list.copy, pick_views([res[1] for res in results]))))
            times = dict(zip(labels, map(list.copy, pick_views([res[2] for res in results]))))
            return OnlineResponse(columns, statuses, times)
        statuses: dict[str, list] = {}
        times: dict[str, list] = {}
        odfv_frames: dict[str, pd.DataFrame] = {}
        for label, (v, column, odfv, feature) in zip(labels, steps):
            if odfv is None:
                columns[label] = list(view_columns[column])
                statuses[label] = results[v][1].copy()
                times[label] = results[v][2].copy()
                continue
            if odfv.name not in odfv_frames:
                frame = pd.DataFrame({f: list(view_columns[c]) for f, c in plan.odfv_inputs[odfv.name]})
                for field_name in odfv.request_schema:
                    frame[field_name] = _request_column(request_data, field_name, n, odfv.name)
                row_status = _odfv_statuses([results[i][1] for i in plan.odfv_views[odfv.name]], n,
                                            odfv.compute_on_missing)
                out = odfv.compute(frame)
                odfv_frames[odfv.name] = (out, row_status)
            out, row_status = odfv_frames[odfv.name]
            values = out[feature].tolist()
            columns[label] = [v if st == PRESENT else None for v, st in zip(values, row_status)]
            statuses[label] = list(row_status)
            times[label] = [None] * n
        return OnlineResponse(columns, statuses, times)

    # -- offline --------------------------------------------------------------------------
    def get_historical_features(self, entity_df: pd.DataFrame, features=None, feature_service=None,
                                full_feature_names: bool = False) -> pd.DataFrame:
        """Point-in-time correct values for each (entity, event_timestamp) row: exactly what the
        online store serves at that time had every event up to it arrived."""
        return self._run(self.aget_historical_features(entity_df, features, feature_service, full_feature_names))

    async def aget_historical_features(self, entity_df: pd.DataFrame, features=None, feature_service=None,
                                       full_feature_names: bool = False) -> pd.DataFrame:
        """``get_historical_features`` on the running event loop."""
        from .historical import get_historical_features

        refs = self.resolve(features, feature_service)
        offline, registry = await self._stores()
        timings: dict[str, float] = {}
        out = await get_historical_features(offline, self.repo, registry, entity_df,
                                            [(r.view, r.feature) for r in refs], full_feature_names,
                                            timings=timings)
        self.last_timings = timings
        return out

    # -- push ----------------------------------------------------------------------------------
    def push(self, source_name: str, df: pd.DataFrame, to: str = "online", force: bool = False) -> PushResult:
        """Write events computed elsewhere (a PushSource) for source ``source_name``.

        ``df``: one event per row with the source's schema fields.  Every row is validated
        (``featurestore.schema.validate_frame``) first; if any is invalid, ``InvalidInputError``
        lists each bad row (index label, reason, detail) and NOTHING is written.

        ``to="online"``: the events go through the worker's path (``SourceProcessor``: states
        loaded from Redis, lateness and duplicate ids decided per entity, one atomic commit of
        every touched (view, entity) state).  ``to="offline"``: appended to the PostgreSQL event
        log (partition -1, offsets from a per-source sequence, so arrival order is push order);
        ``materialize`` or a later push brings them online.  ``to="online_and_offline"``: as the
        worker does, states are computed first, the events the states accepted are appended to
        the event log, then the states are committed.  Pushing to one store only makes the two
        diverge until the other is written (``materialize`` re-derives online from offline).

        Pushing online to a source whose topic a running worker consumes raises
        ``WorkerRunningError`` before anything is written (the worker's cached states would
        overwrite the pushed ones); ``force=True`` skips that check.
        """
        return self._run(self.apush(source_name, df, to, force))

    async def apush(self, source_name: str, df: pd.DataFrame, to: str = "online", force: bool = False) -> PushResult:
        """``push`` on the running event loop."""
        from .schema import validate_frame

        if to not in PUSH_TARGETS:
            raise InvalidInputError(f"push(to={to!r}): expected one of {', '.join(PUSH_TARGETS)}")
        if not isinstance(df, pd.DataFrame):
            raise InvalidInputError(f"push: df must be a pandas DataFrame, got {type(df).__name__}")
        source = self.repo.source(source_name)
        valid, rejects = validate_frame(source, df, ref_ms=int(time.time() * 1000))  # max_future: the push's clock
        if len(rejects):
            raise _invalid_rows(source, rejects, len(df))
        result = PushResult(rows=len(valid))
        if not len(valid):
            return result
        processor = None
        if to != "offline":
            processor = self._processor(source)  # raises before anything is written
            if not force:
                self.online.refuse_if_consumed([source.topic], f"push to {source.name!r} online")
        # the offline store where rows go, and wherever there is one: it holds the history of entities gone from Redis
        has_offline = self._dsn is not None or self.offline is not None
        offline = (await self._stores())[0] if to != "online" or has_offline else None

        keep = np.ones(len(valid), dtype=bool)
        records: list = []
        if processor is not None:
            from .schema import ValidEvent

            events = [ValidEvent(k, int(t), e, v) for k, t, e, v in zip(
                valid["__key"].tolist(), valid["__ts"].tolist(),
                valid["__event_id"].tolist() if "__event_id" in valid.columns else [None] * len(valid),
                _records(valid[list(source.schema)]))]
            if offline is not None:
                processor.history = self._history_of(source, processor.views, offline)
                # in a thread: the history lookup of entities absent from Redis awaits on this loop
                records, refused = await asyncio.get_running_loop().run_in_executor(None, processor.apply, events)
            else:
                records, refused = processor.apply(events)
            if refused:
                idx = sorted(refused)
                keep[idx] = False
                result.refused = pd.DataFrame({"row": valid.index[idx], "reason": [refused[i].reason for i in idx],
                                               "detail": [refused[i].detail for i in idx]})
        if offline is not None and to != "online":
            frame = valid[keep]
            if "__event_id" in frame.columns and len(frame):
                seen = await offline.existing_event_ids(source, frame["__key"].tolist(), frame["__event_id"].tolist())
                if seen:
                    dup = np.array([(k, i) in seen for k, i in zip(frame["__key"].tolist(),
                                                                   frame["__event_id"].tolist())], dtype=bool)
                    result.skipped_existing = int(dup.sum())
                    frame = frame[~dup]
            if len(frame):
                frame = frame.copy()
                frame["__partition"] = PUSH_PARTITION
                frame["__offset"] = await offline.allocate_push_offsets(source, len(frame))
                result.offline_rows = await offline.write_events(source, frame)
        if processor is not None and records:
            try:
                status = self.online.commit(records, None, {})
            except Exception as exc:  # noqa: BLE001 - reraised with what was written
                written = (f"; {result.offline_rows} row(s) were appended to the event log (re-pushing the same rows "
                           f"skips them when the source has an event id field)") if result.offline_rows else ""
                raise StoreUnavailableError(f"push to {source.name!r}: online commit failed: {exc}{written}") from exc
            if status != 1:
                raise StoreUnavailableError(f"push to {source.name!r}: online commit refused (status {status})")
            result.online_records = len(records)
        return result

    def _prepared(self, views: list[FeatureView]) -> list:
        from workers.processor import prepare_view

        missing = [v.name for v in views if v.name not in self.versions]
        if missing:
            raise UnknownNameError(f"feature view(s) {', '.join(missing)} not applied: run `featurestore apply`")
        return [prepare_view(v, self.versions[v.name], self.project) for v in views]

    @staticmethod
    def _history_of(source: EventSource, views: list, offline):
        """``SourceProcessor.history`` for ``push``: every logged event of the entities whose state the
        online store does not hold (no worker consumes the topic while a push writes states), asked
        from a thread running ``SourceProcessor.apply`` on the running loop."""
        from workers.processor import log_batches

        from .offline.postgres import event_id_column

        loop = asyncio.get_running_loop()

        def history(keys: list[str]) -> dict:
            events = asyncio.run_coroutine_threadsafe(offline.entity_events(source, keys), loop).result()
            return log_batches(views, events, event_id_column(source))

        return history

    def _processor(self, source: EventSource):
        from workers.processor import SourceProcessor

        views = [v for v in self.repo.views.values() if v.source.name == source.name]
        return SourceProcessor(self._prepared(views), self.online)

    # -- compaction of the event log ------------------------------------------------------
    def compact(self, sources: list[str] | None = None, rebuild: bool = False) -> dict:
        """Compact the event logs of ``sources`` (default: every source of the repository) into
        segments, so full scans (training sets over many entities) read packed columns instead of
        every row (``PostgresOfflineStore.compact_events``).  Returns a report per source; a source
        that cannot have segments (an entity key neither int64 nor string) reports why and is left
        alone unless named in ``sources`` (then ``InvalidInputError``)."""
        return self._run(self.acompact(sources, rebuild))

    async def acompact(self, sources: list[str] | None = None, rebuild: bool = False) -> dict:
        """``compact`` on the running event loop."""
        offline, _ = await self._stores()
        names = list(self.repo.sources) if sources is None else list(sources)
        report: dict = {}
        for name in names:
            source = self.repo.source(name)
            try:
                report[name] = await offline.compact_events(source, rebuild=rebuild)
            except InvalidInputError as exc:
                if sources is not None:
                    raise
                report[name] = {"skipped": str(exc)}
        return report

    # -- materialize -----------------------------------------------------------------------
    def materialize(self, start, end, views: list[str] | None = None, force: bool = False) -> dict:
        """Load offline values into the online store (Feast ``materialize``).

        For each view (default: all with a registered version), every entity with events in
        the event log with ``start <= ts <= end`` gets its state recomputed from ALL its logged
        events with ``ts <= end`` (windows reach back before ``start``), in arrival order with
        the stream's lateness and duplicate rules, and committed online.  An entity whose
        online state already holds an event after ``end`` is left alone (``skipped_newer``):
        materialize never moves a state back in time.  ``start``/``end``: epoch ms, ISO-8601 or
        datetime.  Returns a report per view.  Raises ``WorkerRunningError`` before writing when a
        running worker consumes one of the views' topics (``force=True`` skips that check)."""
        return self._run(self.amaterialize(start, end, views, force=force))

    async def amaterialize(self, start, end, views: list[str] | None = None, chunk_keys: int = 20_000,
                           force: bool = False) -> dict:
        """``materialize`` on the running event loop."""
        from transforms import ViewState
        from workers.processor import SourceProcessor

        from .offline.postgres import event_id_column
        from .types import parse_timestamp

        start_ms, end_ms = _as_ms(start, "start", parse_timestamp), _as_ms(end, "end", parse_timestamp)
        if start_ms > end_ms:
            raise InvalidInputError(f"materialize: start {start_ms} is after end {end_ms}")
        names = list(views) if views is not None else [n for n in self.repo.views if n in self.versions]
        prepared = self._prepared([self.repo.view(n) for n in names])
        if not force:
            self.online.refuse_if_consumed({pv.view.source.topic for pv in prepared}, "materialize")
        offline = (await self._stores())[0]
        by_source: dict[str, list] = {}
        for pv in prepared:
            by_source.setdefault(pv.view.source.name, []).append(pv)
        report: dict = {"start_ms": start_ms, "end_ms": end_ms, "views": {}}
        started = time.perf_counter()
        for source_name, pvs in by_source.items():
            source = self.repo.source(source_name)
            keys = await offline.event_keys(source, start_ms, end_ms)
            for pv in pvs:
                report["views"][pv.view.name] = {"version": pv.version, "entities": 0, "skipped_newer": 0, "events": 0}
            id_col = event_id_column(source) if source.event_id_field is not None else None
            for lo in range(0, len(keys), chunk_keys):
                chunk = keys[lo:lo + chunk_keys]
                events = await offline.load_events(source, keys=chunk, end_ms=end_ms)
                for bt in {bt.column: bt for pv in pvs for bt in pv.view.batch_transforms()}.values():
                    events[bt.column] = bt.apply(events).to_numpy() if len(events) else []
                values = _records(events.drop(columns=["key", "ts"]))
                groups = events.groupby("key", sort=False).indices
                ts_list = events["ts"].tolist()
                id_list = events[id_col].tolist() if id_col else None
                for pv in pvs:
                    entity_keys = [str(k) for k in groups]
                    current = self.online.read_values([(pv.view_key, k) for k in entity_keys])
                    records = []
                    rep = report["views"][pv.view.name]
                    for (key, rows), (_, wm, _) in zip(groups.items(), current):
                        if wm is not None and wm > end_ms:
                            rep["skipped_newer"] += 1
                            continue
                        state = ViewState(pv.specs, pv.lateness_ms)
                        state.apply([(ts_list[i], values[i], id_list[i] if id_list else None) for i in rows])
                        records.append(SourceProcessor.record(pv, str(key), state))
                        rep["events"] += len(rows)
                    for b in range(0, len(records), 2000):
                        if self.online.commit(records[b:b + 2000], None, {}) != 1:
                            raise StoreUnavailableError(f"materialize {pv.view.name!r}: online commit refused")
                    rep["entities"] += len(records)
        report["seconds"] = round(time.perf_counter() - started, 3)
        return report


def _as_ms(value, what: str, parse) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    try:
        return int(parse(value))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{what}: expected epoch ms, ISO-8601 or a datetime, got {value!r} ({exc})") from None


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of Python values, nullable-dtype nulls (pd.NA) as None."""
    frame = frame.copy()
    for c in frame.columns:
        if pd.api.types.is_extension_array_dtype(frame[c].dtype):
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame.to_dict("records")


def _invalid_rows(source: EventSource, rejects: pd.DataFrame, n: int, show: int = 20) -> InvalidInputError:
    lines = [f"row {r.row}: {r.reason}: {r.detail}" for r in rejects.head(show).itertuples()]
    more = f"; ... and {len(rejects) - show} more" if len(rejects) > show else ""
    exc = InvalidInputError(f"push to source {source.name!r}: {len(rejects)} of {n} rows are invalid, nothing was "
                            f"written: " + "; ".join(lines) + more)
    exc.rejects = rejects  # type: ignore[attr-defined]
    return exc


def _request_column(request_data, name: str, n: int, odfv: str) -> list:
    if request_data is None or name not in request_data:
        raise InvalidInputError(f"on-demand view {odfv!r} needs request data {name!r}")
    values = list(request_data[name])
    if len(values) != n:
        raise InvalidInputError(f"request data {name!r} has {len(values)} values for {n} entity rows")
    return values
