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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from .definitions import FeatureService, FeatureView
from .exceptions import ConfigurationError, InvalidInputError, RegistryError, UnknownNameError
from .online.reader import PRESENT, ViewRead, aread_rows, read_rows
from .read_plan import PlanCache, _OnlinePlan, _odfv_statuses
from .repo import Repository
from .responses import FeatureRef, OnlineResponse, PushResult
from .writes import PUSH_TARGETS, WritesMixin

__all__ = ["PUSH_TARGETS", "FeatureRef", "FeatureStore", "OnlineResponse", "PushResult"]

logger = logging.getLogger(__name__)

class FeatureStore(WritesMixin):
    """Reads features of one repository from the online (Redis) and offline (PostgreSQL) stores.

    ``versions`` maps each view name to the registered version to read
    (``featurestore apply`` assigns them; ``FeatureStore.connect`` looks them up).
    """

    #: count ``get_online_features`` reads per service and feature in Redis, batched, for the console's usage
    #: page (``featurestore.console.usage.ReadCounter``); set False to not count
    count_usage = True

    def __init__(self, repo: Repository, online, versions: dict[str, int], project: str = "default", offline=None,
                 registry=None, *, postgres_dsn: str | None = None, pg_schema: str = "public"):
        self.repo = repo
        self.online = online
        self.offline = offline
        self.registry = registry
        self.versions = versions
        self.project = project
        self._plans = PlanCache()  # compiled read plans of the latest request shapes
        self._dsn = postgres_dsn
        self._pg_schema = pg_schema
        self._loop: asyncio.AbstractEventLoop | None = None  # private loop of the synchronous methods
        self._lock = threading.Lock()
        self._pools: dict[Any, tuple[Any, Any]] = {}  # event loop -> (offline store, registry) opened here
        #: Seconds spent per step by the last ``get_historical_features`` (load, compute, ...).
        self.last_timings: dict[str, float] = {}
        self._usage: Any = None  # the ReadCounter, opened by the first counted read
        #: kafka-python options of the deployment's broker (None: not configured); a Redis Cluster online store
        #: reads the views' topic partition counts from it when no worker recorded them (``featurestore.placement``)
        self.kafka_options: dict | None = None

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
        if rt.settings.kafka_bootstrap_servers:
            store.kafka_options = rt.kafka_options()
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

    async def astores(self) -> tuple[Any, Any]:
        """(offline store, registry) usable on the running event loop, opened on first use
        (``ConfigurationError`` when this store has no offline store)."""
        return await self._stores()

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
        """Write the read counts not yet written; close the pools this store opened (not those passed in) and
        its private loop."""
        if self._usage is not None:
            self._usage.flush()
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

    def use_versions(self, versions: dict[str, int], repo: Repository | None = None) -> None:
        """Read ``versions`` (of the definitions of ``repo``, when given) from now on; the compiled
        read plans are dropped (the feature server, after an ``apply``)."""
        if repo is not None:
            self.repo = repo
        self.versions = versions
        self._plans.clear()

    # -- resolving what was asked ------------------------------------------------------
    def resolve(self, features=None, feature_service: str | FeatureService | None = None) -> list[FeatureRef]:
        if (features is None) == (feature_service is None):
            raise InvalidInputError("pass exactly one of features=[...] or feature_service=...")
        if feature_service is not None:
            service = (feature_service if isinstance(feature_service, FeatureService)
                       else self.repo.service(feature_service))
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
        if self.count_usage:
            self._count_read(plan, feature_service, len(rows))
        return self._assemble(plan, rows, results, request_data, full_names)

    def _count_read(self, plan: _OnlinePlan, feature_service, rows: int) -> None:
        if self._usage is None:
            from .console.usage import ReadCounter

            client = getattr(self.online, "client", None)
            if client is None or not hasattr(client, "pipeline"):
                self.count_usage = False  # an online store without a Redis client: nothing to count in
                return
            self._usage = ReadCounter(client, self.project)
        service = feature_service if isinstance(feature_service, (str, type(None))) else feature_service.name
        self._usage.add(plan, service, rows)

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
        by_name = isinstance(feature_service, (str, type(None)))
        # A FeatureService object (unhashable: its tags are a dict) is keyed by identity, and its plan
        # holds it: while the plan is cached, no other object can take that identity.
        plan_key = (tuple(features) if features is not None else None,
                    feature_service if by_name else ("object", id(feature_service)))
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plans[plan_key] = self._plan(features, feature_service)
            plan.service = None if by_name else feature_service
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
                                full_feature_names: bool = False, engine: str = "local", spark=None,
                                out: str | None = None):
        """Point-in-time correct values for each (entity, event_timestamp) row: exactly what the
        online store serves at that time had every event up to it arrived.  ``engine="spark"``: the
        same values computed in Spark tasks (docs/spark.md) on ``spark`` (default: the active
        session, else a local one), returned as a Spark DataFrame, or written as Parquet to ``out``."""
        if engine != "local":
            from .spark.client import check_engine, historical_on_spark

            check_engine(engine)
            return historical_on_spark(self, entity_df, features, feature_service, full_feature_names, spark, out)
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





def _request_column(request_data, name: str, n: int, odfv: str) -> list:
    if request_data is None or name not in request_data:
        raise InvalidInputError(f"on-demand view {odfv!r} needs request data {name!r}")
    values = list(request_data[name])
    if len(values) != n:
        raise InvalidInputError(f"request data {name!r} has {len(values)} values for {n} entity rows")
    return values
