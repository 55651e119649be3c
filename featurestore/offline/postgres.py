"""``PostgresOfflineStore``: the event log, feature history and rejects in PostgreSQL (asyncpg).

Tables (all in one schema, every identifier quoted, names prefixed by the project;
a name longer than PostgreSQL's 63 bytes is cut and suffixed with a hash):

* ``{project}__events__{source}`` — one row per valid event::

      partition int, "offset" bigint, entity_key text|bigint, event_time bigint (epoch ms),
      event_id text NULL, <one column per schema field except the timestamp field>,
      ingested_at timestamptz DEFAULT now(), PRIMARY KEY (partition, "offset")

  ``(partition, offset)`` identifies a Kafka record, so replaying a batch inserts nothing
  new (a plain INSERT in a savepoint, retried with ``ON CONFLICT DO NOTHING`` when a row
  already exists).  Text entity keys use ``COLLATE "C"`` (byte order: faster index).  Files and pushes use ``partition = -1`` and a stable
  row number as offset.  Index on ``(entity_key, event_time)``.  Field columns keep the
  field name, except a field named like a system column (``partition``, ``offset``,
  ``entity_key``, ``event_time``, ``event_id``, ``ingested_at``) is stored as
  ``f__<name>`` (``field_column``).  Column types come from ``ValueType.pg_type`` except
  ``timestamp`` fields, stored as ``bigint`` epoch ms (as validated frames carry them),
  and float lists/embeddings, stored as ``double precision[]`` (``real[]`` would round
  values the online path sees unrounded).

* ``{project}__history__{view}__v{version}`` — feature values over time::

      entity_key, event_time bigint, seq int, <one typed column per feature>,
      written_at timestamptz, PRIMARY KEY (entity_key, event_time, seq)

  ``seq`` numbers rows of one entity with the same event time (0, 1, ... in the order
  given, i.e. arrival order); with the same input a rewrite hits the same keys, so
  ``write_history`` is an idempotent upsert.

* ``{project}__rejects`` — ``(source, partition, "offset", reason, detail, payload bytea,
  at timestamptz)``, PRIMARY KEY ``(source, partition, "offset")``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from typing import Any, Iterable, Mapping, Sequence

import asyncpg
import numpy as np
import pandas as pd

from ..definitions import EventSource, FeatureView
from ..exceptions import InvalidInputError, StoreUnavailableError, UnknownNameError
from ..types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType

__all__ = [
    "PostgresOfflineStore",
    "SYSTEM_COLUMNS",
    "event_id_column",
    "field_column",
    "qident",
    "table_name",
]

#: Columns of the event log that are not schema fields.
SYSTEM_COLUMNS = ("partition", "offset", "entity_key", "event_time", "event_id", "ingested_at")
_MAX_IDENT = 63


def qident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def table_name(*parts: str) -> str:
    """``a__b__c``, cut to 63 bytes with a stable hash suffix when longer."""
    name = "__".join(parts)
    if len(name.encode()) <= _MAX_IDENT:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return name.encode()[: _MAX_IDENT - 11].decode(errors="ignore") + "_" + digest


def field_column(field: str) -> str:
    """Column of schema field ``field`` in an event log table."""
    return f"f__{field}" if field in SYSTEM_COLUMNS else field


def event_id_column(src: EventSource) -> str:
    """Column of ``load_events`` frames holding the event id: ``event_id`` (the typed id
    field itself when the id field is named so), or ``__event_id`` when a schema field
    named ``event_id`` is not the id field."""
    if "event_id" in src.schema and src.event_id_field != "event_id":
        return "__event_id"
    return "event_id"


def event_pg_type(vt: ValueType) -> str:
    """Column type of an event field (see the module docstring for the exceptions)."""
    if vt == TIMESTAMP:
        return "bigint"
    if vt.is_list and vt.element == "float64":
        return "double precision[]"
    return vt.pg_type


feature_pg_type = event_pg_type


def _to_py(s: pd.Series, vt: ValueType | None = None) -> list[Any]:
    """A column as a list of Python values with ``None`` for nulls (NaN kept in float columns)."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return s.tolist()
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        if vt is not None and vt in (INT64, TIMESTAMP):
            return [None if v != v else int(v) for v in s.tolist()]
        return s.tolist()
    if pd.api.types.is_extension_array_dtype(dtype):
        return s.astype(object).where(s.notna(), None).tolist()
    out = s.tolist()
    is_list = vt is not None and vt.is_list
    for i, v in enumerate(out):
        if v is None:
            continue
        if v is pd.NA or v is pd.NaT:
            out[i] = None
        elif isinstance(v, float) and v != v and vt != FLOAT64:
            out[i] = None
        elif is_list and isinstance(v, np.ndarray):
            out[i] = v.tolist()
        elif isinstance(v, np.generic):
            out[i] = v.item()
    return out


def _tidy(s: pd.Series, vt: ValueType) -> pd.Series:
    """The dtype ``validate_frame`` gives a field (so batch transforms see the same frame)."""
    if vt in (INT64, TIMESTAMP):
        return s.astype("Int64") if s.isna().any() else s.astype("int64")
    if vt == FLOAT64:
        return s.astype("float64")
    if vt == BOOL:
        return s.astype("boolean") if s.isna().any() else s.astype("bool")
    return s.astype(object)


class PostgresOfflineStore:
    """Offline store on an asyncpg pool; create with ``await PostgresOfflineStore.create(...)``."""

    def __init__(self, pool: asyncpg.Pool, project: str, schema: str = "public") -> None:
        self.pool = pool
        self.project = project
        self.schema = schema
        self._sources: dict[str, EventSource] = {}

    # -- lifecycle --------------------------------------------------------------------

    @classmethod
    async def create(cls, dsn: str, project: str, schema: str = "public",
                     min_size: int = 1, max_size: int = 4) -> "PostgresOfflineStore":
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from exc
        return cls(pool, project, schema)

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> "PostgresOfflineStore":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- names ------------------------------------------------------------------------

    def qualified(self, table: str) -> str:
        return f"{qident(self.schema)}.{qident(table)}"

    def events_table(self, source: str) -> str:
        return table_name(self.project, "events", source)

    def history_table(self, view: str, version: int) -> str:
        return table_name(self.project, "history", view, f"v{int(version)}")

    def rejects_table(self) -> str:
        return table_name(self.project, "rejects")

    def register_source(self, source: EventSource) -> None:
        """Remember ``source`` (``migrate`` does it) so writes and loads know its schema."""
        self._sources[source.name] = source

    def _source(self, source: str | EventSource) -> EventSource:
        if isinstance(source, EventSource):
            self._sources.setdefault(source.name, source)
            return source
        try:
            return self._sources[source]
        except KeyError:
            raise UnknownNameError(
                f"event source {source!r} is unknown to the offline store: pass the EventSource or run migrate"
            ) from None

    # -- DDL --------------------------------------------------------------------------

    def _events_ddl(self, src: EventSource) -> list[str]:
        table = self.events_table(src.name)
        q = self.qualified(table)
        key_type = "bigint" if src.schema[src.entity_field] == INT64 else 'text COLLATE "C"'
        cols = [
            '"partition" int NOT NULL', '"offset" bigint NOT NULL', f'"entity_key" {key_type} NOT NULL',
            '"event_time" bigint NOT NULL', '"event_id" text',
        ]
        fields = [(field_column(f), event_pg_type(vt)) for f, vt in src.schema.items() if f != src.timestamp_field]
        cols += [f"{qident(c)} {t}" for c, t in fields]
        cols += ['"ingested_at" timestamptz NOT NULL DEFAULT now()', 'PRIMARY KEY ("partition", "offset")']
        stmts = [f"CREATE TABLE IF NOT EXISTS {q} ({', '.join(cols)})"]
        stmts += [f"ALTER TABLE {q} ADD COLUMN IF NOT EXISTS {qident(c)} {t}" for c, t in fields]
        idx = table_name(table, "key_time")
        stmts.append(f'CREATE INDEX IF NOT EXISTS {qident(idx)} ON {q} ("entity_key", "event_time")')
        return stmts

    def _history_ddl(self, view: FeatureView, version: int) -> list[str]:
        q = self.qualified(self.history_table(view.name, version))
        key_type = "bigint" if view.entity.key_type == "int64" else "text"
        cols = [f'"entity_key" {key_type} NOT NULL', '"event_time" bigint NOT NULL', '"seq" int NOT NULL DEFAULT 0']
        cols += [f"{qident(f.name)} {feature_pg_type(f.dtype)}" for f in view.features]
        cols += ['"written_at" timestamptz NOT NULL DEFAULT now()', 'PRIMARY KEY ("entity_key", "event_time", "seq")']
        return [f"CREATE TABLE IF NOT EXISTS {q} ({', '.join(cols)})"]

    def _rejects_ddl(self) -> list[str]:
        q = self.qualified(self.rejects_table())
        return [
            f'CREATE TABLE IF NOT EXISTS {q} ("source" text NOT NULL, "partition" int NOT NULL, '
            f'"offset" bigint NOT NULL, "reason" text NOT NULL, "detail" text, "payload" bytea, '
            f'"at" timestamptz NOT NULL DEFAULT now(), PRIMARY KEY ("source", "partition", "offset"))'
        ]

    async def migrate(self, sources: Iterable[EventSource],
                      views: Iterable[FeatureView | tuple[FeatureView, int]] = ()) -> None:
        """Create (if missing) the schema, the rejects table, an event log per source and a
        history table per view version; ``views`` items are views (version ``view.version``
        or 1) or ``(view, version)`` pairs.  Adds columns for new source fields."""
        stmts = [f"CREATE SCHEMA IF NOT EXISTS {qident(self.schema)}"] + self._rejects_ddl()
        for src in sources:
            self.register_source(src)
            stmts += self._events_ddl(src)
        for item in views:
            view, version = item if isinstance(item, tuple) else (item, item.version or 1)
            self.register_source(view.source)
            stmts += self._events_ddl(view.source)
            stmts += self._history_ddl(view, version)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                # Serialize concurrent migrations of the same project (CREATE IF NOT EXISTS races).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{self.schema}:{self.project}")
                for sql in stmts:
                    await conn.execute(sql)

    # -- events -----------------------------------------------------------------------

    def _field_items(self, src: EventSource) -> list[tuple[str, str, ValueType]]:
        """(schema field, column, type) of the stored fields, in schema order."""
        return [(f, field_column(f), vt) for f, vt in src.schema.items() if f != src.timestamp_field]

    async def write_events(self, source: str | EventSource, df: pd.DataFrame) -> int:
        """Append valid events; returns the number of rows inserted (0 for a replay).

        ``df``: ``__partition``, ``__offset``, ``__key``, ``__ts`` (epoch ms), ``__event_id``
        (optional) and the schema fields (as ``validate_frame`` returns them; missing optional
        fields are stored as NULL).  COPY into a temporary table, then ``INSERT ... SELECT ...
        ON CONFLICT DO NOTHING``, in one transaction.
        """
        src = self._source(source)
        if len(df) == 0:
            return 0
        missing = [c for c in ("__partition", "__offset", "__key", "__ts") if c not in df.columns]
        if missing:
            raise InvalidInputError(f"write_events({src.name!r}): frame lacks columns {missing}")
        n = len(df)
        key_vt = src.schema[src.entity_field]
        if df["__key"].isna().any() or df["__ts"].isna().any():
            raise InvalidInputError(f"write_events({src.name!r}): null __key or __ts")
        columns = ["partition", "offset", "entity_key", "event_time", "event_id"]
        data: list[list[Any]] = [
            df["__partition"].astype("int64").tolist(),
            df["__offset"].astype("int64").tolist(),
            _to_py(df["__key"], key_vt),
            df["__ts"].astype("int64").tolist(),
        ]
        if "__event_id" in df.columns:
            ids = _to_py(df["__event_id"])
            data.append([None if v is None else (v if type(v) is str else str(v)) for v in ids])
        else:
            data.append([None] * n)
        for field, col, vt in self._field_items(src):
            columns.append(col)
            data.append(_to_py(df[field], vt) if field in df.columns else [None] * n)
        records = list(zip(*data))
        target = self.qualified(self.events_table(src.name))
        cols_sql = ", ".join(qident(c) for c in columns)
        stage = "_fs_stage_events"
        try:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(
                        f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols_sql} FROM {target} WITH NO DATA"
                    )
                    await conn.copy_records_to_table(stage, records=records, columns=columns)
                    insert = f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage}"
                    try:
                        # A plain INSERT is ~35% faster than ON CONFLICT; replays fall back to it.
                        async with conn.transaction():
                            status = await conn.execute(insert)
                    except asyncpg.UniqueViolationError:
                        status = await conn.execute(insert + ' ON CONFLICT ("partition", "offset") DO NOTHING')
        except asyncpg.UndefinedTableError as exc:
            raise UnknownNameError(
                f"event log of source {src.name!r} does not exist: run `featurestore apply` (offline migrate)"
            ) from exc
        except (OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError) as exc:
            raise StoreUnavailableError(f"write_events({src.name!r}): {type(exc).__name__}: {exc}") from exc
        return int(status.rsplit(" ", 1)[-1])

    async def count_events(self, source: str | EventSource) -> int:
        src = self._source(source)
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self.qualified(self.events_table(src.name))}"))

    async def load_events(self, source: str | EventSource, keys: Sequence[Any] | None = None,
                          start_ms: int | None = None, end_ms: int | None = None,
                          partitions: Sequence[int] | None = None) -> pd.DataFrame:
        """Events of ``source`` (optionally of ``keys``, with ``start_ms <= ts <= end_ms`` and
        of the Kafka ``partitions``) in arrival order ``(partition, offset)``.  Columns: ``key``,
        ``ts`` (int64 ms), every schema field (the timestamp field equal to ``ts``; dtypes as
        ``validate_frame`` gives them) and ``event_id`` (str or None); when ``partitions`` is
        given, ``partition`` and ``offset`` (int64) come first (the worker rebuilds from them)."""
        src = self._source(source)
        if "ts" in src.schema and src.timestamp_field != "ts":
            raise InvalidInputError(f"source {src.name!r}: a field named 'ts' must be the timestamp field")
        key_vt = src.schema[src.entity_field]
        items = self._field_items(src)
        where, args = [], []
        if keys is not None:
            keys = list(pd.unique(pd.Series(list(keys), dtype=object).dropna()))
            if key_vt == INT64:
                keys = [int(k) for k in keys]
                args.append(keys)
                where.append(f'"entity_key" = ANY(${len(args)}::bigint[])')
            else:
                args.append([str(k) for k in keys])
                where.append(f'"entity_key" = ANY(${len(args)}::text[])')
        if start_ms is not None:
            args.append(int(start_ms))
            where.append(f'"event_time" >= ${len(args)}')
        if end_ms is not None:
            args.append(int(end_ms))
            where.append(f'"event_time" <= ${len(args)}')
        if partitions is not None:
            args.append([int(p) for p in partitions])
            where.append(f'"partition" = ANY(${len(args)}::int[])')
        select = ['"entity_key"', '"event_time"', '"event_id"'] + [qident(c) for _, c, _ in items]
        select += ['"partition"', '"offset"']
        sql = (f"SELECT {', '.join(select)} FROM {self.qualified(self.events_table(src.name))}"
               + (f" WHERE {' AND '.join(where)}" if where else "") + ' ORDER BY "partition", "offset"')
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        names = ["key", "ts", "event_id"] + [f for f, _, _ in items] + ["partition", "offset"]
        if rows:
            cols = list(zip(*rows))
        else:
            cols = [()] * len(names)
        out: dict[str, pd.Series] = {}
        out["key"] = pd.Series(cols[0], dtype="int64" if key_vt == INT64 else object)
        out["ts"] = pd.Series(cols[1], dtype="int64")
        for (field, _, vt), values in zip(items, cols[3:]):
            s = pd.Series(values, dtype=object)
            out[field] = _tidy(s, vt)
        if src.timestamp_field != "ts":
            out[src.timestamp_field] = out["ts"].copy()
        id_col = event_id_column(src)
        if id_col not in out:
            out[id_col] = pd.Series(cols[2], dtype=object)
        order = ["key", "ts"] + [f for f in src.schema if f != "ts"] + ([id_col] if id_col not in src.schema else [])
        if partitions is not None:
            out["partition"] = pd.Series(cols[-2], dtype="int64")
            out["offset"] = pd.Series(cols[-1], dtype="int64")
            order = ["partition", "offset"] + order
        return pd.DataFrame(out)[order]

    # -- history ----------------------------------------------------------------------

    async def write_history(self, view: FeatureView, version: int, df: pd.DataFrame) -> int:
        """Upsert feature values of ``view`` version ``version``: ``df`` has ``key``, ``ts``
        (epoch ms), optional ``seq`` (else numbered per (key, ts) in row order) and feature
        columns (missing ones are NULL).  Returns the rows written."""
        if len(df) == 0:
            return 0
        for c in ("key", "ts"):
            if c not in df.columns:
                raise InvalidInputError(f"write_history({view.name!r}): frame lacks column {c!r}")
        n = len(df)
        seq = df["seq"] if "seq" in df.columns else df.groupby(["key", "ts"], sort=False).cumcount()
        key_vt = INT64 if view.entity.key_type == "int64" else STRING
        columns = ["entity_key", "event_time", "seq"]
        data = [_to_py(df["key"], key_vt), df["ts"].astype("int64").tolist(), seq.astype("int64").tolist()]
        for f in view.features:
            columns.append(f.name)
            data.append(_to_py(df[f.name], f.dtype) if f.name in df.columns else [None] * n)
        records = list(zip(*data))
        target = self.qualified(self.history_table(view.name, version))
        cols_sql = ", ".join(qident(c) for c in columns)
        updates = ", ".join(f"{qident(c)} = EXCLUDED.{qident(c)}" for c in columns[3:])
        updates = (updates + ", " if updates else "") + '"written_at" = now()'
        stage = "_fs_stage_history"
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols_sql} FROM {target} WITH NO DATA"
                )
                await conn.copy_records_to_table(stage, records=records, columns=columns)
                status = await conn.execute(
                    f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage} "
                    f'ON CONFLICT ("entity_key", "event_time", "seq") DO UPDATE SET {updates}'
                )
        return int(status.rsplit(" ", 1)[-1])

    async def load_history(self, view: FeatureView, version: int) -> pd.DataFrame:
        """All rows of a history table ordered by key, ts, seq (``key``, ``ts``, ``seq``, features)."""
        names = [f.name for f in view.features]
        sel = ", ".join(['"entity_key"', '"event_time"', '"seq"'] + [qident(c) for c in names])
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f'SELECT {sel} FROM {self.qualified(self.history_table(view.name, version))} '
                f'ORDER BY "entity_key", "event_time", "seq"'
            )
        cols = list(zip(*rows)) if rows else [()] * (3 + len(names))
        out = {"key": pd.Series(cols[0], dtype="int64" if view.entity.key_type == "int64" else object),
               "ts": pd.Series(cols[1], dtype="int64"), "seq": pd.Series(cols[2], dtype="int64")}
        for f, values in zip(view.features, cols[3:]):
            out[f.name] = pd.Series(values, dtype="float64" if f.dtype == FLOAT64 else object)
        return pd.DataFrame(out)

    # -- rejects ----------------------------------------------------------------------

    async def write_rejects(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Record invalid events: each row has ``source``, ``partition``, ``offset``, ``reason``
        and optionally ``detail``, ``payload`` (bytes/str) and ``at`` (datetime).  A record
        already recorded (same source, partition, offset) is kept; returns rows inserted."""
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        records = []
        for i, r in enumerate(rows):
            try:
                payload = r.get("payload")
                if isinstance(payload, str):
                    payload = payload.encode()
                at = r.get("at")
                records.append((str(r["source"]), int(r["partition"]), int(r["offset"]), str(r["reason"]),
                                None if r.get("detail") is None else str(r["detail"]),
                                None if payload is None else bytes(payload),
                                None if at is None or at is pd.NaT else at))
            except KeyError as exc:
                raise InvalidInputError(f"write_rejects: row {i} lacks {exc}") from None
        if not records:
            return 0
        target = self.qualified(self.rejects_table())
        cols = ["source", "partition", "offset", "reason", "detail", "payload", "at"]
        cols_sql = ", ".join(qident(c) for c in cols)
        stage = "_fs_stage_rejects"
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols_sql} FROM {target} WITH NO DATA"
                )
                await conn.copy_records_to_table(stage, records=records, columns=cols)
                status = await conn.execute(
                    f"INSERT INTO {target} ({cols_sql}) SELECT source, partition, \"offset\", reason, detail, "
                    f"payload, coalesce(at, now()) FROM {stage} "
                    f'ON CONFLICT ("source", "partition", "offset") DO NOTHING'
                )
        return int(status.rsplit(" ", 1)[-1])

    async def load_rejects(self, source: str | None = None) -> pd.DataFrame:
        sql = f'SELECT source, partition, "offset", reason, detail, payload, at FROM {self.qualified(self.rejects_table())}'
        args: list[Any] = []
        if source is not None:
            sql += " WHERE source = $1"
            args.append(source)
        sql += ' ORDER BY source, partition, "offset"'
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        names = ["source", "partition", "offset", "reason", "detail", "payload", "at"]
        cols = list(zip(*rows)) if rows else [()] * len(names)
        return pd.DataFrame({n: pd.Series(c, dtype="int64" if n in ("partition", "offset") else object)
                             for n, c in zip(names, cols)})
