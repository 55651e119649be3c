"""Statistics runs: ``run_statistics`` computes the statistics of a feature view's features as of a time,
over all its entities or a sample, through the training-set path (``aget_historical_features``: the values
serving returns), with drift against a reference run; each run is stored in PostgreSQL, table
``{project}__feature_stats``::

    run_id bigserial, view text, version int, at_ms bigint, computed_at timestamptz, entities int,
    sampled bool, reference_run bigint, seconds double precision, stats jsonb (feature -> statistics),
    checks jsonb (the results of the expectations on the view, ``checks.evaluate``; null before they existed)

so the console shows the latest run, its failed checks and the drift of every run over time."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pandas as pd

from featurestore.exceptions import InvalidInputError

from .checks import checks_of, evaluate
from .statistics import column_stats

__all__ = ["ensure_table", "load_runs", "run_statistics", "stats_table"]


def stats_table(offline: Any) -> str:
    from featurestore.offline.postgres import table_name

    return offline.qualified(table_name(offline.project, "feature_stats"))


async def ensure_table(offline: Any) -> str:
    table = stats_table(offline)
    async with offline.pool.acquire() as conn:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (run_id bigserial PRIMARY KEY, view text NOT NULL, version int, "
            f"at_ms bigint NOT NULL, computed_at timestamptz NOT NULL DEFAULT now(), entities int NOT NULL, "
            f"sampled bool NOT NULL, reference_run bigint, seconds double precision, stats jsonb NOT NULL)")
        await conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS checks jsonb")
    return table


_COLUMNS = ("run_id, view, version, at_ms, computed_at, entities, sampled, reference_run, seconds, "
            "stats::text AS stats, (to_jsonb(t) -> 'checks')::text AS checks")


async def load_runs(offline: Any, view: str, limit: int = 50, first: bool = False,
                    run_id: int | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` runs of ``view``, oldest first ([] when none was stored); ``first``: its first
    ``limit`` runs instead; ``run_id``: that run only."""
    table = stats_table(offline)
    where, args = ("view = $1 AND run_id = $2", [view, run_id]) if run_id is not None else ("view = $1", [view])
    async with offline.pool.acquire() as conn:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            return []
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {table} t WHERE {where} "
                                f"ORDER BY run_id {'ASC' if first else 'DESC'} LIMIT {int(limit)}", *args)
    out = []
    for r in (rows if first else reversed(rows)):
        d = dict(r)
        d["stats"] = orjson.loads(d["stats"])
        d["checks"] = (orjson.loads(d["checks"]) if d["checks"] is not None else None) or []
        d["computed_ms"] = int(d["computed_at"].timestamp() * 1000)
        d["computed_at"] = d["computed_at"].isoformat()
        out.append(d)
    return out


async def _reference(offline: Any, view_name: str, reference_run: int | None) -> dict[str, Any] | None:
    """The run drift is measured against: ``reference_run``, else the view's first run (None: no run yet)."""
    if reference_run is None:
        runs = await load_runs(offline, view_name, limit=1, first=True)
        return runs[0] if runs else None
    runs = await load_runs(offline, view_name, run_id=reference_run)
    if runs:
        return runs[0]
    async with offline.pool.acquire() as conn:
        ids = [r[0] for r in await conn.fetch(f"SELECT run_id FROM {stats_table(offline)} WHERE view = $1 "
                                              f"ORDER BY run_id", view_name)]
    known = ", ".join(str(i) for i in ids) or "none"
    raise InvalidInputError(f"--reference {reference_run}: no statistics run of view {view_name!r} has that "
                            f"id (runs: {known})")


async def _entity_keys(offline: Any, view: Any, at_ms: int, sample: int | None, seed: int) -> tuple[list, bool]:
    keys = await offline.event_keys(view.source, end_ms=at_ms)
    if sample is not None and sample < len(keys):
        return sorted(random.Random(seed).sample(keys, sample)), True
    return keys, False


async def run_statistics(store: Any, view_name: str, at_ms: int | None = None, entities: int | None = None,
                         reference_run: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Compute, store and return one run (its row of the table, ``stats`` by feature).  ``reference_run``:
    the run drift is measured against (default: the view's first stored run; none for the first run)."""
    if entities is not None and entities < 1:
        raise InvalidInputError(f"--entities {entities}: at least 1 (or leave it out for every entity)")
    view = store.repo.view(view_name)
    started = time.perf_counter()
    at = int(time.time() * 1000) if at_ms is None else at_ms
    offline, _ = await store.astores()
    table = await ensure_table(offline)
    reference = await _reference(offline, view_name, reference_run)
    keys, sampled = await _entity_keys(offline, view, at, entities, seed)
    frame = pd.DataFrame({view.entity.join_key: keys, "event_timestamp": pd.to_datetime(at, unit="ms", utc=True)})
    features = [f"{view_name}:{f.name}" for f in view.features]
    values = await store.aget_historical_features(frame, features=features, full_feature_names=True) if keys \
        else pd.DataFrame({f"{view_name}__{f.name}": [] for f in view.features})
    stats = {}
    for f in view.features:
        ref = reference["stats"].get(f.name) if reference is not None else None
        stats[f.name] = column_stats(values[f"{view_name}__{f.name}"], ref)
    plain = pd.DataFrame({f.name: values[f"{view_name}__{f.name}"].to_numpy() for f in view.features})
    checks = evaluate(checks_of(store.repo, view_name), plain, keys)
    seconds = time.perf_counter() - started
    dumps = orjson.OPT_SERIALIZE_NUMPY
    async with offline.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"INSERT INTO {table} (view, version, at_ms, entities, sampled, reference_run, seconds, stats, checks) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb) RETURNING run_id, computed_at",
            view_name, store.versions.get(view_name), at, len(keys), sampled,
            reference["run_id"] if reference is not None else None, seconds,
            orjson.dumps(stats, option=dumps).decode(), orjson.dumps(checks, option=dumps).decode())
    return {"run_id": row["run_id"], "view": view_name, "version": store.versions.get(view_name), "at_ms": at,
            "computed_at": row["computed_at"].isoformat(), "entities": len(keys), "sampled": sampled,
            "reference_run": reference["run_id"] if reference is not None else None, "seconds": round(seconds, 3),
            "stats": stats, "checks": checks}
