"""Versioned registry of applied definitions, in PostgreSQL.

Table ``{project}__registry`` in the offline store's schema::

    kind text, name text, version int, fingerprint text, definition jsonb,
    created_at timestamptz, updated_at timestamptz, PRIMARY KEY (kind, name, version)

``kind`` is ``entity``, ``source``, ``view``, ``odfv`` or ``service``.  A feature view
gets a new version when its ``fingerprint()`` (what changes computed values) differs
from its latest version: ``max(latest + 1, view.version or 0)``; a new view starts at
``view.version or 1``.  Metadata-only changes (owner, description, tags, ttl) rewrite
the latest version's definition in place.  The other kinds are fingerprinted by their
JSON without description/owner/tags, with the same rules.  Old versions are never
deleted, so they stay describable (and their history tables readable).  Reverting a
view to an older computation creates a new version (versions only go up).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from .definitions._base import fmt_duration
from .exceptions import RegistryError, StoreUnavailableError, UnknownNameError
from .offline.postgres import qident, table_name
from .repo import Repository

__all__ = ["Change", "Registry", "KINDS"]

KINDS = ("entity", "source", "view", "odfv", "service")
_METADATA = ("owner", "description", "tags", "ttl", "ttl_ms", "expectations")  # no new version when they change
_KIND_LABEL = {"entity": "Entity", "source": "EventSource", "view": "FeatureView",
               "odfv": "OnDemandFeatureView", "service": "FeatureService"}


@dataclass(frozen=True)
class Change:
    """One planned change: ``action`` in create/new_version/update_metadata/unchanged."""

    kind: str
    name: str
    action: str
    old_version: int | None
    new_version: int
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _definition(kind: str, obj: Any) -> dict[str, Any]:
    """JSON of ``obj`` as it reads back from jsonb (tuples as lists, keys as str)."""
    raw = obj.model_dump(mode="json") if kind == "entity" else obj.to_json()
    if kind == "view":  # effective window/hop (hop defaults from the window)
        for f, spec in zip(raw["features"], obj.agg_specs()):
            f["window_ms"], f["hop_ms"] = spec.window_ms, spec.hop_ms
    return json.loads(json.dumps(raw, default=str))


def _fingerprint(kind: str, obj: Any, definition: dict[str, Any]) -> str:
    if kind == "view":
        return obj.fingerprint()
    core = {k: v for k, v in definition.items() if k not in _METADATA}
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _objects(repo: Repository) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    for kind, table in (("entity", repo.entities), ("source", repo.sources), ("view", repo.views),
                        ("odfv", repo.odfvs), ("service", repo.services)):
        for name in sorted(table):
            out.append((kind, name, table[name]))
    return out


def _feature_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Short description of what changed between two view definitions."""
    def by_name(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f["name"]: {k: v for k, v in f.items() if k != "description"} for f in d.get("features", [])}

    a, b = by_name(old), by_name(new)
    parts = []
    added = [n for n in b if n not in a]
    removed = [n for n in a if n not in b]
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    for n in b:
        if n in a and a[n] != b[n]:
            keys = [k for k in sorted(set(a[n]) | set(b[n])) if a[n].get(k) != b[n].get(k)]
            parts.append(f"{n}: " + ", ".join(f"{k} {a[n].get(k)!r} -> {b[n].get(k)!r}" for k in keys))
    for part in ("entity", "source"):
        if old.get(part) != new.get(part):
            parts.append(f"{part} changed")
    return "; ".join(parts) or "computation changed"


def _metadata_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in _METADATA if old.get(k) != new.get(k) and k != "ttl_ms"]
    if not keys:
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k != "fingerprint"]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "metadata changed"


class Registry:
    """The registry of one project; ``await Registry.create(dsn, project, schema)`` or
    ``Registry(pool, project, schema)`` to share a pool (e.g. ``offline_store.pool``)."""

    def __init__(self, pool: asyncpg.Pool, project: str, schema: str = "public", own_pool: bool = False) -> None:
        self.pool = pool
        self.project = project
        self.schema = schema
        self._own_pool = own_pool
        self._ready = False

    @classmethod
    async def create(cls, dsn: str, project: str, schema: str = "public") -> "Registry":
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from exc
        return cls(pool, project, schema, own_pool=True)

    @classmethod
    def for_store(cls, store: Any) -> "Registry":
        """A registry sharing the pool, project and schema of an offline store."""
        return cls(store.pool, store.project, store.schema)

    async def close(self) -> None:
        if self._own_pool:
            await self.pool.close()

    @property
    def table(self) -> str:
        return f"{qident(self.schema)}.{qident(table_name(self.project, 'registry'))}"

    async def _ensure(self, conn: asyncpg.Connection) -> None:
        if self._ready:
            return
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qident(self.schema)}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (kind text NOT NULL, name text NOT NULL, "
            f"version int NOT NULL, fingerprint text NOT NULL, definition jsonb NOT NULL, "
            f"created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), "
            f"PRIMARY KEY (kind, name, version))"
        )
        self._ready = True

    async def _rows(self, conn: asyncpg.Connection, kind: str | None = None,
                    name: str | None = None) -> list[dict[str, Any]]:
        await self._ensure(conn)
        where, args = [], []
        if kind is not None:
            args.append(kind)
            where.append(f"kind = ${len(args)}")
        if name is not None:
            args.append(name)
            where.append(f"name = ${len(args)}")
        rows = await conn.fetch(
            f"SELECT kind, name, version, fingerprint, definition::text AS definition, created_at, updated_at "
            f"FROM {self.table}" + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY kind, name, version",
            *args,
        )
        out = []
        for r in rows:
            d = dict(r)
            d["definition"] = json.loads(d["definition"])
            out.append(d)
        return out

    @staticmethod
    def _latest(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:  # ordered by version
            latest[(r["kind"], r["name"])] = r
        return latest

    # -- plan / apply -----------------------------------------------------------------

    def _plan(self, repo: Repository, rows: list[dict[str, Any]]) -> list[tuple[Change, Any, dict[str, Any], str]]:
        latest = self._latest(rows)
        plan = []
        for kind, name, obj in _objects(repo):
            definition = _definition(kind, obj)
            fp = _fingerprint(kind, obj, definition)
            explicit = getattr(obj, "version", None) if kind == "view" else None
            cur = latest.get((kind, name))
            if cur is None:
                change = Change(kind, name, "create", None, explicit or 1, "new")
            elif cur["fingerprint"] != fp:
                new = max(cur["version"] + 1, explicit or 0)
                detail = _feature_diff(cur["definition"], definition) if kind == "view" else "definition changed"
                same = [r["version"] for r in rows
                        if r["kind"] == kind and r["name"] == name and r["fingerprint"] == fp]
                if same:
                    detail += f" (same computation as v{same[-1]})"
                change = Change(kind, name, "new_version", cur["version"], new, detail)
            elif cur["definition"] != definition:
                change = Change(kind, name, "update_metadata", cur["version"], cur["version"],
                                _metadata_diff(cur["definition"], definition))
            else:
                change = Change(kind, name, "unchanged", cur["version"], cur["version"], "")
            plan.append((change, obj, definition, fp))
        return plan

    async def plan(self, repo: Repository) -> list[Change]:
        """What ``apply`` would do, without changing anything."""
        try:
            async with self.pool.acquire() as conn:
                rows = await self._rows(conn)
        except (OSError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailableError(f"registry: {type(exc).__name__}: {exc}") from exc
        return [c for c, *_ in self._plan(repo, rows)]

    async def apply(self, repo: Repository, offline_store: Any = None) -> list[Change]:
        """Record the plan (one transaction, serialized by an advisory lock) and create the
        offline tables (event logs, history table of each view's current version)."""
        async with self.pool.acquire() as conn:
            await self._ensure(conn)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                   f"registry:{self.schema}:{self.project}")
                rows = await self._rows(conn)
                plan = self._plan(repo, rows)
                for change, obj, definition, fp in plan:
                    text = json.dumps(definition, default=str)
                    if change.action in ("create", "new_version"):
                        await conn.execute(
                            f"INSERT INTO {self.table} (kind, name, version, fingerprint, definition) "
                            f"VALUES ($1, $2, $3, $4, $5::jsonb)",
                            change.kind, change.name, change.new_version, fp, text,
                        )
                    elif change.action == "update_metadata":
                        await conn.execute(
                            f"UPDATE {self.table} SET definition = $4::jsonb, updated_at = now() "
                            f"WHERE kind = $1 AND name = $2 AND version = $3",
                            change.kind, change.name, change.new_version, text,
                        )
        changes = [c for c, *_ in plan]
        if offline_store is not None:
            versions = {c.name: c.new_version for c in changes if c.kind == "view"}
            await offline_store.migrate(list(repo.sources.values()),
                                        [(v, versions[n]) for n, v in repo.views.items()])
        return changes

    # -- reading ----------------------------------------------------------------------

    async def list(self) -> list[dict[str, Any]]:
        """Latest version of every registered object: kind, name, version, fingerprint,
        versions (count), owner, description, created_at, updated_at."""
        async with self.pool.acquire() as conn:
            rows = await self._rows(conn)
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            counts[(r["kind"], r["name"])] = counts.get((r["kind"], r["name"]), 0) + 1
        out = []
        for (kind, name), r in self._latest(rows).items():
            d = r["definition"]
            out.append({
                "kind": kind, "name": name, "version": r["version"], "versions": counts[(kind, name)],
                "fingerprint": r["fingerprint"], "owner": d.get("owner", ""), "description": d.get("description", ""),
                "created_at": r["created_at"].isoformat(), "updated_at": r["updated_at"].isoformat(),
            })
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(out, key=lambda d: (order.get(d["kind"], 99), d["name"]))

    async def describe(self, name: str, kind: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Description of ``name`` (a view first, else another kind); latest version unless
        ``version``.  Views: name, kind, entity, features (name, dtype, function, column,
        window, hop, default), ttl, version, versions, owner, description, tags, source topic."""
        async with self.pool.acquire() as conn:
            rows = await self._rows(conn, kind=kind, name=name)
        if not rows:
            raise UnknownNameError(f"{name!r} is not in the registry of project {self.project!r}: "
                                   f"run `featurestore apply --repo PATH`")
        kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
        kind = "view" if "view" in kinds else kinds[0]
        rows = [r for r in rows if r["kind"] == kind]
        if version is None:
            row = rows[-1]
        else:
            match = [r for r in rows if r["version"] == version]
            if not match:
                raise UnknownNameError(f"{_KIND_LABEL[kind]} {name!r} has no version {version} "
                                       f"(versions: {', '.join(str(r['version']) for r in rows)})")
            row = match[0]
        d = row["definition"]
        out: dict[str, Any] = {
            "name": name, "kind": kind, "version": row["version"], "latest_version": rows[-1]["version"],
            "fingerprint": row["fingerprint"],
            "versions": [{"version": r["version"], "fingerprint": r["fingerprint"],
                          "created_at": r["created_at"].isoformat()} for r in rows],
            "owner": d.get("owner", ""), "description": d.get("description", ""), "tags": d.get("tags", {}),
            "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat(),
        }
        if kind == "view":
            src = d.get("source", {})
            out.update({
                "entity": d.get("entity", {}).get("name"),
                "join_key": d.get("entity", {}).get("join_key"),
                "source": src.get("name"),
                "source_topic": src.get("topic"),
                "ttl": d.get("ttl"),
                "ttl_ms": d.get("ttl_ms"),
                "features": [
                    {"name": f["name"], "kind": f.get("kind"), "dtype": f.get("dtype"), "function": f.get("function"),
                     "column": None if str(f.get("column") or "").startswith("__") else f.get("column"),
                     "window": f.get("window"),
                     "hop": f.get("hop") or fmt_duration(f.get("hop_ms")),
                     "window_ms": f.get("window_ms"), "hop_ms": f.get("hop_ms"),
                     "default": f.get("default"), "description": f.get("description", "")}
                    for f in d.get("features", [])
                ],
            })
        elif kind == "source":
            out["source_topic"] = d.get("topic")
        elif kind == "service":
            out["features"] = [{"name": f"{item.get('view') or item.get('odfv')}:{name}",
                                "kind": "on-demand" if "odfv" in item else "view"}
                               for item in d.get("features", []) for name in item.get("features", [])]
        out["definition"] = d
        return out

    async def version_of(self, view_name: str, fingerprint: str | None = None) -> int:
        """Latest version of view ``view_name``, or the (latest) version whose fingerprint is
        ``fingerprint``; ``RegistryError`` when the view or that fingerprint is not applied."""
        async with self.pool.acquire() as conn:
            rows = await self._rows(conn, kind="view", name=view_name)
        hint = "run `featurestore apply --repo PATH`"
        if not rows:
            raise RegistryError(f"view {view_name!r} is not applied: {hint}")
        if fingerprint is None:
            return rows[-1]["version"]
        match = [r["version"] for r in rows if r["fingerprint"] == fingerprint]
        if not match:
            raise RegistryError(
                f"view {view_name!r} is not applied: its definition in the repository matches no registered "
                f"version (latest v{rows[-1]['version']}); {hint}"
            )
        return match[-1]

    async def versions(self, view_name: str) -> list[int]:
        async with self.pool.acquire() as conn:
            rows = await self._rows(conn, kind="view", name=view_name)
        return [r["version"] for r in rows]
