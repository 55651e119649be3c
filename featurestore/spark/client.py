"""``FeatureStore.get_historical_features(..., engine="spark")``: the store's repository, versions
and PostgreSQL event log, computed by ``training.spark_historical_features``."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigurationError, InvalidInputError

__all__ = ["ENGINES", "historical_on_spark"]

ENGINES = ("local", "spark")


def historical_on_spark(store: Any, entity_df, features=None, feature_service=None, full_feature_names: bool = False,
                        spark=None, out: str | None = None, events: str = "postgres"):
    """A Spark DataFrame of the training set (or, with ``out``, the Parquet folder written there).
    ``spark``: a SparkSession (default: the active one, else a local one)."""
    from .session import spark_session
    from .training import spark_historical_features

    dsn = getattr(store, "_dsn", None)
    if events == "postgres" and dsn is None:
        raise ConfigurationError("engine='spark' reads the event log from Spark tasks and needs the PostgreSQL DSN: "
                                 "use FeatureStore.connect(...) or pass postgres_dsn=")
    refs = store.resolve(features, feature_service)
    if dsn is not None:
        store._run(_check_registry(store, {r.view for r in refs}))
    session = spark if spark is not None else spark_session()
    pg = {"dsn": dsn, "project": store.project, "schema": store._pg_schema} if dsn else None
    frame = spark_historical_features(session, store.repo, entity_df, [(r.view, r.feature) for r in refs],
                                      full_feature_names, pg=pg, events=events)
    if out is None:
        return frame
    frame.write.mode("overwrite").parquet(out)
    return out


async def _check_registry(store: Any, owners: set[str]) -> None:
    """Every view used is applied with the repository's definition (as the local path checks)."""
    _, registry = await store._stores()
    if registry is None:
        return
    for name in owners:
        views = [name] if name in store.repo.views else [v for v, _ in store.repo.odfvs[name].inputs()]
        for v in views:
            view = store.repo.view(v)
            await registry.version_of(view.name, view.fingerprint())


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
