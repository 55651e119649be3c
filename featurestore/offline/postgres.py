"""``PostgresOfflineStore``: the event log, feature history and rejects in PostgreSQL (asyncpg).

Tables (all in one schema, every identifier quoted, names prefixed by the project;
a name longer than PostgreSQL's 63 bytes is cut and suffixed with a hash):

* ``{project}__events__{source}`` — one row per valid event::

      partition int, "offset" bigint, entity_key text|bigint, event_time bigint (epoch ms),
      event_id text NULL, <one column per schema field except the timestamp field>,
      ingested_at timestamptz DEFAULT now(), __ref_time bigint NULL, PRIMARY KEY (partition, "offset")

  ``(partition, offset)`` identifies a Kafka record, so replaying a batch inserts nothing
  new (a plain INSERT in a savepoint, retried with ``ON CONFLICT DO NOTHING`` when a row
  already exists).  ``__ref_time`` is the reference time (epoch ms) the event time was judged
  against by the source's ``max_future`` (the Kafka record's timestamp; the clock of a push or
  of the backfill that read a file), NULL where none was recorded.  Text entity keys use ``COLLATE "C"`` (byte order: faster index).  Files and pushes use ``partition = -1`` and a stable
  row number as offset.  Index on ``(entity_key, event_time)``.  Field columns keep the
  field name, except a field named like a system column (``partition``, ``offset``,
  ``entity_key``, ``event_time``, ``event_id``, ``ingested_at``) is stored as
  ``f__<name>`` (``field_column``).  Column types come from ``ValueType.pg_type`` except
  ``timestamp`` fields, stored as ``bigint`` epoch ms (as validated frames carry them),
  and float lists/embeddings, stored as ``double precision[]`` (``real[]`` would round
  values the online path sees unrounded).

* ``{project}__evseg__{source}`` — segments of the event log (``compact_events``)::

      partition int, first_offset bigint, last_offset bigint, n int, field text, data bytea,
      PRIMARY KEY (partition, first_offset, field)

  one row per (run of up to ``SEGMENT_ROWS`` events of a Kafka partition, column): the column's
  values packed as a full scan reads them (``_scan_columns``), ``data`` stored uncompressed.
  Event-log writers hold an advisory lock (``_log_lock``) shared until they commit.

* ``{project}__history__{view}__v{version}`` — feature values over time::

      entity_key, event_time bigint, seq int, <one typed column per feature>,
      written_at timestamptz, PRIMARY KEY (entity_key, event_time, seq)

  ``seq`` numbers rows of one entity with the same event time (0, 1, ... in the order
  given, i.e. arrival order); with the same input a rewrite hits the same keys, so
  ``write_history`` is an idempotent upsert.

* ``{project}__rejects`` — ``(source, partition, "offset", reason, detail, payload bytea,
  at timestamptz, key bytea, dead_letter_topic text, sent_at timestamptz, send_error text)``,
  PRIMARY KEY ``(source, partition, "offset")``: every record refused by a backfill or a worker.
  A worker records its dead letters here before sending them (``record_dead_letters``) and
  marks each sent (``sent_at``) or refused by the topic (``send_error``) before its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
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
PUSH_PARTITION = -1  # event-log partition of events not read from Kafka (pushes, files); offsets from a sequence
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


def _event_filter(key_vt: ValueType, keys: Sequence[Any] | None = None, start_ms: int | None = None,
                  end_ms: int | None = None, partitions: Sequence[int] | None = None) -> tuple[list[str], list[Any]]:
    """WHERE conditions and their arguments selecting event-log rows by entity key, event time and partition."""
    where: list[str] = []
    args: list[Any] = []
    if keys is not None:
        if key_vt == INT64:
            args.append([int(k) for k in keys])
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
    return where, args


async def _create_stage(conn: asyncpg.Connection, stage: str, cols_sql: str, target: str) -> None:
    """A temporary staging table shaped like ``target`` (these columns), dropped at commit."""
    await conn.execute(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols_sql} FROM {target} WITH NO DATA")


# -- full scans of the event log: block ranges or segments ----------------------------------

#: Value types a full scan reads (``_scan_columns``); lists and embeddings are read row by row.
SCAN_TYPES = (FLOAT64, INT64, TIMESTAMP, BOOL, STRING)
TEXT = "text"  # dtype of a column of ``_scan_columns`` holding UTF-8 bytes (lengths in ``__len_<name>``)


def _text_columns(name: str, column_sql: str, nullable: bool) -> list[tuple[str, str, str]]:
    """A text column as scanned: its values' UTF-8 bytes end to end, their lengths, and (``nullable``)
    a NULL mask."""
    value = f"coalesce({column_sql}, '')" if nullable else column_sql
    cols = [(name, f"convert_to({value}, 'UTF8')", TEXT), (f"__len_{name}", f"int4send(octet_length({value}))", ">i4")]
    if nullable:
        cols.append((f"__null_{name}", f"CASE WHEN {column_sql} IS NULL THEN '\\x01'::bytea ELSE '\\x00'::bytea END", "u1"))
    return cols


def _scan_columns(items: list[tuple[str, str, ValueType]], key_vt: ValueType = INT64, with_id: bool = False
                  ) -> tuple[list[tuple[str, str, str]], list[tuple[str, ValueType]], list[str]]:
    """What a full scan reads: (name, SQL of the binary value, numpy dtype or ``TEXT``) per column —
    key, time, partition, offset, the event id and each field (NULL-able int/bool fields with a
    ``__null_<field>`` mask column, text with ``_text_columns``) — the masked (field, type) pairs
    and the text columns."""
    cols: list[tuple[str, str, str]] = []
    texts: list[str] = []
    if key_vt == INT64:
        cols.append(("key", 'int8send("entity_key")', ">i8"))
    else:
        cols += _text_columns("key", '"entity_key"', nullable=False)
        texts.append("key")
    cols += [("ts", 'int8send("event_time")', ">i8"), ("__p", 'int4send("partition")', ">i4"),
             ("__o", 'int8send("offset")', ">i8")]
    if with_id:
        cols += _text_columns("__eid", '"event_id"', nullable=True)
        texts.append("__eid")
    masked: list[tuple[str, ValueType]] = []
    for field, col, vt in items:
        c = qident(col)
        if vt == FLOAT64:
            cols.append((field, f"float8send(coalesce({c}, 'NaN'::float8))", ">f8"))
            continue
        if vt == STRING:
            cols += _text_columns(field, c, nullable=True)
            texts.append(field)
            continue
        if vt == BOOL:
            cols.append((field, f"CASE WHEN {c} THEN '\\x01'::bytea ELSE '\\x00'::bytea END", "u1"))
        else:
            cols.append((field, f"int8send(coalesce({c}, 0))", ">i8"))
        cols.append((f"__null_{field}", f"CASE WHEN {c} IS NULL THEN '\\x01'::bytea ELSE '\\x00'::bytea END", "u1"))
        masked.append((field, vt))
    return cols, masked, texts


def _wire(dtype: str) -> str:
    """The dtype of a scanned column as PostgreSQL sends it (``TEXT``: its bytes)."""
    return "u1" if dtype == TEXT else dtype


def _native(dtype: str) -> str:
    """The in-memory dtype of a scanned column (``TEXT``: its bytes)."""
    return "u1" if dtype == TEXT else dtype.replace(">", "<")


def _aggs_sql(cols: list[tuple[str, str, str]], order: str = "") -> str:
    """One ``string_agg`` of the binary values per scanned column (``order``: an ORDER BY clause)."""
    return ", ".join(f"string_agg({expr}, ''::bytea{order})" for _, expr, _ in cols)


def _unpack_aggs(cols: list[tuple[str, str, str]], raws) -> dict[str, np.ndarray]:
    """The native arrays of one row of ``_aggs_sql`` values."""
    return {name: np.frombuffer(raw or b"", dtype=_wire(dtype)).astype(_native(dtype))
            for (name, _, dtype), raw in zip(cols, raws)}


def _decode_texts(native: dict[str, np.ndarray], texts: list[str]) -> None:
    """Replace each text column's bytes (and lengths, NULL mask) by an object array of ``str`` / None."""
    import pyarrow as pa

    for name in texts:
        lengths = native.pop(f"__len_{name}")
        null = native.pop(f"__null_{name}", None)
        offsets = np.zeros(len(lengths) + 1, dtype="int64")
        np.cumsum(lengths, out=offsets[1:])
        data = native[name]
        if offsets[-1] != len(data):
            raise StoreUnavailableError(f"full scan: text column {name!r} holds {len(data)} bytes, its lengths add up to {offsets[-1]}")
        values = pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))
        out = values.to_numpy(zero_copy_only=False)
        if out.dtype != object:
            out = out.astype(object)
        if null is not None and null.any():
            out[null.view(bool)] = None
        native[name] = out


def _finish_scan(native: dict[str, np.ndarray], masked: list[tuple[str, ValueType]], keys: Sequence[Any] | None,
                 end_ms: int | None) -> dict[str, Any]:
    """Scanned columns filtered by ``keys`` / ``end_ms`` and put in arrival order ``(partition, offset)``."""
    keep = None
    if end_ms is not None:
        keep = native["ts"] <= int(end_ms)
    if keys is not None:
        if native["key"].dtype == object:  # text keys: a hash lookup (np.isin would sort the strings)
            wanted = pd.Series(native["key"], copy=False, dtype=object).isin([str(k) for k in keys]).to_numpy()
        else:
            wanted = np.isin(native["key"], np.asarray([int(k) for k in keys], dtype="int64"))
        keep = wanted if keep is None else keep & wanted
    rows = np.flatnonzero(keep) if keep is not None and not keep.all() else None
    # Arrival order: usually the physical order already; else sort by (partition, offset).
    p, o = native.pop("__p"), native.pop("__o")
    p, o = (p, o) if rows is None else (p[rows], o[rows])
    if len(p) > 1 and not np.all((p[1:] > p[:-1]) | ((p[1:] == p[:-1]) & (o[1:] > o[:-1]))):
        order = np.lexsort((o, p))
        rows = order if rows is None else rows[order]
    data: dict[str, Any] = {}
    for name, arr in native.items():
        if name.startswith("__null_"):
            continue
        data[name] = arr if rows is None else arr[rows]
    for field, vt in masked:
        null = native[f"__null_{field}"].view(bool)
        null = null if rows is None else null[rows]
        values = data[field].astype(bool) if vt == BOOL else data[field]
        if null.any():
            data[field] = (pd.arrays.BooleanArray(values, null.copy()) if vt == BOOL
                           else pd.arrays.IntegerArray(values, null.copy()))
        else:
            data[field] = values
    return data


class PostgresOfflineStore:
    """Offline store on an asyncpg pool; create with ``await PostgresOfflineStore.create(...)``."""

    def __init__(self, pool: asyncpg.Pool, project: str, schema: str = "public") -> None:
        self.pool = pool
        self.project = project
        self.schema = schema
        self._sources: dict[str, EventSource] = {}
        self._no_events: dict[str, pd.DataFrame] = {}  # entity_events of keys with no row, per source

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

    def segments_table(self, source: str) -> str:
        return table_name(self.project, "evseg", source)

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
        cols += ['"ingested_at" timestamptz NOT NULL DEFAULT now()', '"__ref_time" bigint',
                 'PRIMARY KEY ("partition", "offset")']
        stmts = [f"CREATE TABLE IF NOT EXISTS {q} ({', '.join(cols)})"]
        stmts += [f"ALTER TABLE {q} ADD COLUMN IF NOT EXISTS {qident(c)} {t}" for c, t in [*fields, ("__ref_time", "bigint")]]
        idx = table_name(table, "key_time")
        stmts.append(f'CREATE INDEX IF NOT EXISTS {qident(idx)} ON {q} ("entity_key", "event_time")')
        seg = self.qualified(self.segments_table(src.name))
        stmts.append(f'CREATE TABLE IF NOT EXISTS {seg} ("partition" int NOT NULL, "first_offset" bigint NOT NULL, '
                     '"last_offset" bigint NOT NULL, "n" int NOT NULL, "field" text NOT NULL, "data" bytea NOT NULL, '
                     'PRIMARY KEY ("partition", "first_offset", "field"))')
        # Stored uncompressed (packed numbers barely compress, and decompressing costs time); set once,
        # as ALTER TABLE locks the table against readers.
        stmts.append(f"DO $$ BEGIN IF (SELECT attstorage FROM pg_attribute WHERE attrelid = '{seg}'::regclass "
                     f"AND attname = 'data') <> 'e' THEN ALTER TABLE {seg} ALTER COLUMN \"data\" SET STORAGE EXTERNAL; "
                     "END IF; END $$")
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
            f'"at" timestamptz NOT NULL DEFAULT now(), PRIMARY KEY ("source", "partition", "offset"))',
            *(f"ALTER TABLE {q} ADD COLUMN IF NOT EXISTS {qident(c)} {t}"
              for c, t in (("key", "bytea"), ("dead_letter_topic", "text"), ("sent_at", "timestamptz"),
                           ("send_error", "text"))),
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

    @staticmethod
    def _field_items(src: EventSource) -> list[tuple[str, str, ValueType]]:
        """(schema field, column, type) of the stored fields, in schema order."""
        return [(f, field_column(f), vt) for f, vt in src.schema.items() if f != src.timestamp_field]

    async def write_events(self, source: str | EventSource, df: pd.DataFrame) -> int:
        """Append valid events; returns the number of rows inserted (0 for a replay).

        ``df``: ``__partition``, ``__offset``, ``__key``, ``__ts`` (epoch ms), ``__event_id``
        (optional) and the schema fields (as ``validate_frame`` returns them; missing optional
        fields are stored as NULL), written by ``_log_records``.
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
        if "__ref" in df.columns:
            columns.append("__ref_time")
            data.append(_to_py(df["__ref"], INT64))
        for field, col, vt in self._field_items(src):
            columns.append(col)
            data.append(_to_py(df[field], vt) if field in df.columns else [None] * n)
        return await self._log_records(src, columns, list(zip(*data)))

    async def write_valid_events(self, source: str | EventSource, events: Sequence[tuple[int, int, Any]]) -> int:
        """``write_events`` for the worker: ``(partition, offset, ValidEvent)`` triples, whose values the
        schema validator already made plain Python (ints, floats, bools, strings, lists; the timestamp as
        epoch ms; None for a missing optional field), written without a DataFrame in between."""
        src = self._source(source)
        if not events:
            return 0
        fields = [f for f, _, _ in self._field_items(src)]
        columns = ["partition", "offset", "entity_key", "event_time", "event_id", "__ref_time",
                   *[c for _, c, _ in self._field_items(src)]]
        records = [(p, o, e.key, e.ts_ms, e.event_id, e.ref_ms, *[e.values.get(f) for f in fields]) for p, o, e in events]
        return await self._log_records(src, columns, records)

    async def forget_events(self, source: str | EventSource, positions: Sequence[tuple[int, int]]) -> int:
        """Delete the event-log rows at ``(partition, offset)`` ``positions``: records a worker logged in a
        batch that failed, and then dead-lettered (``processing_error``) instead of applying."""
        src = self._source(source)
        if not positions:
            return 0
        parts, offs = zip(*positions)
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                f'DELETE FROM {self.qualified(self.events_table(src.name))} WHERE ("partition", "offset") IN '
                f'(SELECT * FROM unnest($1::int[], $2::bigint[]))', list(parts), list(offs))
        return int(status.rsplit(" ", 1)[-1])

    async def _log_records(self, src: EventSource, columns: list[str], records: list[tuple]) -> int:
        """Append event-log rows, idempotently: one COPY straight into the log (atomic: all rows or
        none); when some row is already there (a replay), COPY into a temporary table and ``INSERT ...
        SELECT ... ON CONFLICT DO NOTHING`` in one transaction.  Returns the rows inserted.  Writers
        hold the log's advisory lock shared (``_log_lock``) until they commit."""
        target = self.qualified(self.events_table(src.name))
        cols_sql = ", ".join(qident(c) for c in columns)
        stage = "_fs_stage_events"
        try:
            lock = self._log_lock(src)  # shared with other writers; ``compact_events`` takes it alone
            async with self.pool.acquire() as conn:
                try:  # all rows or none: the common case (nothing logged yet) in one COPY
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", lock)
                        status = await conn.copy_records_to_table(self.events_table(src.name), schema_name=self.schema,
                                                                  records=records, columns=columns)
                except asyncpg.UniqueViolationError:  # a replay: stage, then skip the rows already logged
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", lock)
                        await _create_stage(conn, stage, cols_sql, target)
                        await conn.copy_records_to_table(stage, records=records, columns=columns)
                        status = await conn.execute(f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage} "
                                                    'ON CONFLICT ("partition", "offset") DO NOTHING')
        except asyncpg.UndefinedTableError as exc:
            raise UnknownNameError(
                f"event log of source {src.name!r} does not exist: run `featurestore apply` (offline migrate)"
            ) from exc
        except (OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError) as exc:
            raise StoreUnavailableError(f"write_events({src.name!r}): {type(exc).__name__}: {exc}") from exc
        return int(status.rsplit(" ", 1)[-1])

    async def logged_fingerprint(self, source: str | EventSource, partition: int, upto: int) -> tuple[int, int] | None:
        """``(offset, reference time)`` of the last event-log row of Kafka ``partition`` at or below offset
        ``upto`` that recorded its reference time (the record's Kafka timestamp), or None: the worker
        compares it with the broker's record at that offset to tell a topic recreated under it."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f'SELECT "offset", "__ref_time" FROM {self.qualified(self.events_table(src.name))} '
                'WHERE "partition" = $1 AND "offset" <= $2 AND "__ref_time" IS NOT NULL ORDER BY "offset" DESC LIMIT 1',
                partition, upto)
        return None if row is None else (int(row["offset"]), int(row["__ref_time"]))

    async def last_logged_offset(self, source: str | EventSource, partition: int) -> int:
        """Highest offset of Kafka ``partition`` in the event log (rows and segments), -1 when none."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            rows = await conn.fetchval(f'SELECT max("offset") FROM {self.qualified(self.events_table(src.name))} '
                                       'WHERE "partition" = $1', partition)
            segs = await conn.fetchval(f'SELECT max("last_offset") FROM {self.qualified(self.segments_table(src.name))} '
                                       'WHERE "partition" = $1', partition)
        return max(-1 if rows is None else int(rows), -1 if segs is None else int(segs))

    async def source_footprint(self, source: str | EventSource) -> dict[str, int]:
        """What ``reset_source`` would delete: event-log rows, segment rows and rejects of ``source``."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            return {
                "event_log_rows": int(await conn.fetchval(f"SELECT count(*) FROM {self.qualified(self.events_table(src.name))}")),
                "segment_rows": int(await conn.fetchval(f"SELECT count(*) FROM {self.qualified(self.segments_table(src.name))}")),
                "rejects": int(await conn.fetchval(f"SELECT count(*) FROM {self.qualified(self.rejects_table())} "
                                                   "WHERE source = $1", src.name)),
            }

    async def reset_source(self, source: str | EventSource) -> None:
        """Delete the event log (rows and segments) and the rejects of ``source``, in one transaction."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._log_lock(src))
                await conn.execute(f"TRUNCATE {self.qualified(self.events_table(src.name))}, "
                                   f"{self.qualified(self.segments_table(src.name))}")
                await conn.execute(f"DELETE FROM {self.qualified(self.rejects_table())} WHERE source = $1", src.name)

    async def count_events(self, source: str | EventSource) -> int:
        src = self._source(source)
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self.qualified(self.events_table(src.name))}"))

    async def event_keys(self, source: str | EventSource, start_ms: int | None = None,
                         end_ms: int | None = None) -> list[Any]:
        """Distinct entity keys with events of ``source`` in ``[start_ms, end_ms]`` (sorted)."""
        src = self._source(source)
        where, args = _event_filter(src.schema[src.entity_field], start_ms=start_ms, end_ms=end_ms)
        sql = (f'SELECT DISTINCT "entity_key" FROM {self.qualified(self.events_table(src.name))}'
               + (f" WHERE {' AND '.join(where)}" if where else "") + ' ORDER BY "entity_key"')
        async with self.pool.acquire() as conn:
            return [r[0] for r in await conn.fetch(sql, *args)]

    async def existing_event_ids(self, source: str | EventSource, keys: Sequence[Any],
                                 event_ids: Sequence[Any]) -> set[tuple[Any, str]]:
        """The ``(entity key, event id)`` pairs among ``zip(keys, event_ids)`` already in the event log."""
        src = self._source(source)
        pairs = {(k, str(e)) for k, e in zip(keys, event_ids) if e is not None and k is not None}
        if not pairs:
            return set()
        is_int = src.schema[src.entity_field] == INT64
        ks = sorted({int(k) if is_int else str(k) for k, _ in pairs})
        ids = sorted({e for _, e in pairs})
        sql = (f'SELECT "entity_key", "event_id" FROM {self.qualified(self.events_table(src.name))} '
               f'WHERE "entity_key" = ANY($1::{"bigint" if is_int else "text"}[]) AND "event_id" = ANY($2::text[])')
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, ks, ids)
        return {(r[0], r[1]) for r in rows} & pairs

    async def keys_on_kafka_partitions(self, source: str | EventSource, keys: Sequence[Any]) -> set:
        """Those of ``keys`` with at least one event-log row from a Kafka partition (>= 0), through the
        (entity_key, event_time) index."""
        return await self._keys_with_rows(source, keys, None, '"partition" >= 0')

    async def logged_keys(self, source: str | EventSource, keys: Sequence[Any],
                          partitions: Sequence[int] | None = None) -> set:
        """Those of ``keys`` with at least one event-log row (of ``partitions`` when given), through the
        (entity_key, event_time) index: a round trip where ``load_events`` of nothing costs ~3 ms."""
        return await self._keys_with_rows(source, keys, partitions)

    async def entity_events(self, source: str | EventSource, keys: Sequence[Any],
                            partitions: Sequence[int] | None = None) -> pd.DataFrame:
        """``load_events(positions=True)`` of ``keys`` (of ``partitions`` when given), asking first which
        of them have rows at all (``logged_keys``): entities new to the log, the common case for
        whoever asks, cost one index probe each instead of building an empty frame (~3 ms)."""
        logged = await self.logged_keys(source, keys, partitions)
        if logged:
            return await self.load_events(source, keys=sorted(logged), partitions=partitions, positions=True)
        src = self._source(source)
        empty = self._no_events.get(src.name)
        if empty is None:  # the frame's columns and dtypes, built once per source
            empty = self._no_events[src.name] = self._events_frame(src, [], positions=True)
        return empty.copy()

    async def _keys_with_rows(self, source: str | EventSource, keys: Sequence[Any], partitions: Sequence[int] | None,
                              condition: str | None = None) -> set:
        src = self._source(source)
        if not len(keys):
            return set()
        where, args = _event_filter(src.schema[src.entity_field], keys, partitions=partitions)
        sql = (f'SELECT DISTINCT "entity_key" FROM {self.qualified(self.events_table(src.name))} '
               f'WHERE {" AND ".join(where + ([condition] if condition else []))}')
        async with self.pool.acquire() as conn:
            return {r[0] for r in await conn.fetch(sql, *args)}

    async def allocate_push_offsets(self, source: str | EventSource, n: int) -> np.ndarray:
        """``n`` increasing offsets for pushed events of ``source`` (partition -1): consecutive
        values of a per-source sequence ``{project}__push_seq__{source}`` (created on first use),
        reserved under an advisory lock, so concurrent pushes never share an offset and
        the event log's arrival order of pushed rows is push order."""
        src = self._source(source)
        seq = self.qualified(table_name(self.project, "push_seq", src.name))
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"push:{self.schema}:{seq}")
                await conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint MINVALUE 0 START 0")
                first = int(await conn.fetchval(f"SELECT nextval('{seq}')"))
                if n > 1:
                    await conn.execute(f"SELECT setval('{seq}', {first + n - 1})")
        return np.arange(first, first + n, dtype="int64")

    #: Pages of the event log per range of the parallel scan (``_scan_events``): a range's
    #: aggregated column stays a few MB (PostgreSQL values are limited to 1 GB).
    SCAN_RANGE_PAGES = 4096
    #: ``load_events_fast`` reads the whole event log and filters keys here when the keys asked
    #: for are at least this fraction of the log's distinct keys (planner statistics); fewer
    #: keys are looked up through the ``(entity_key, event_time)`` index.
    SCAN_KEY_FRACTION = 0.25
    #: Connections the parallel scan uses at most (also bounded by the pool and the CPU count).
    SCAN_CONNECTIONS = 4

    async def load_events_fast(self, source: str | EventSource, keys: Sequence[Any] | None = None,
                               end_ms: int | None = None, fields: Sequence[str] | None = None) -> pd.DataFrame:
        """``load_events`` (same rows, order and dtypes) of only the schema ``fields`` given
        (default all; the entity and timestamp fields and the event id come anyway).

        * int64 or string entity keys, fields of ``SCAN_TYPES`` (no list or embedding), and no keys
          or keys covering a large part of the log (``SCAN_KEY_FRACTION``): the log is read in block
          ranges over several connections sharing one snapshot (or from its segments, see
          ``compact_events``), each range as one ``string_agg`` of binary values per column (text:
          UTF-8 bytes end to end plus lengths; ``_scan_events``: no per-row protocol messages),
          keys and ``end_ms`` filtered and rows put in arrival order ``(partition, offset)`` with numpy;
        * otherwise ``COPY (query ORDER BY partition, offset) TO STDOUT``: binary, decoded with
          one numpy ``frombuffer``, when every column read is fixed-width (a NULL float is read
          as NaN, as ``load_events`` gives it), else CSV parsed by pyarrow.
        Falls back to ``load_events`` for list/embedding fields and, on the COPY path, for
        NULL-able non-float fixed-width fields (which change the binary row width)."""
        src = self._source(source)
        if "ts" in src.schema and src.timestamp_field != "ts":
            raise InvalidInputError(f"source {src.name!r}: a field named 'ts' must be the timestamp field")
        wanted = set(src.schema) if fields is None else set(fields) | {src.entity_field, src.timestamp_field}
        if src.event_id_field is not None:
            wanted.add(src.event_id_field)
        items = [it for it in self._field_items(src) if it[0] in wanted and it[0] != src.entity_field]
        if any(vt.is_list or vt.pg_type.endswith("[]") for _, _, vt in items):
            out = await self.load_events(source, keys=keys, end_ms=end_ms)
            return out[[c for c in out.columns if c in ("key", "ts") or c in wanted or c == event_id_column(src)]]
        key_vt = src.schema[src.entity_field]
        if keys is not None:
            keys = list(pd.unique(pd.Series(list(keys), dtype=object).dropna()))
        with_id = src.event_id_field is not None
        data: dict[str, Any] = {}
        scannable = key_vt in (INT64, STRING) and all(vt in SCAN_TYPES for _, _, vt in items)
        if scannable and (keys is None or await self._many_keys(src, len(keys))):
            data = await self._scan_events(src, items, keys, end_ms)
        else:
            data = await self._copy_events(src, items, keys, end_ms)
            if data is None:
                out = await self.load_events(source, keys=keys, end_ms=end_ms)
                return out[[c for c in out.columns if c in ("key", "ts") or c in wanted or c == event_id_column(src)]]
        n = len(data["ts"])
        out: dict[str, Any] = {"key": data["key"], "ts": data["ts"]}
        for field in src.schema:
            if field == "ts":
                continue
            if field == src.timestamp_field:
                out[field] = data["ts"].copy()
            elif field == src.entity_field:
                if field in wanted:
                    out[field] = data["key"].copy()
            elif field in data:
                out[field] = data[field]
        id_col = event_id_column(src)
        if id_col not in out:
            if with_id:
                out[id_col] = data["__eid"]
            else:
                none = np.empty(n, dtype=object)
                none.fill(None)
                out[id_col] = pd.Series(none, dtype=object, copy=False)  # dtype given: no 5M-element inference scan
        # copy=False: the columns are fresh arrays; no consolidation into 2-D blocks (a copy).
        # dtype=object kept for text: pandas would infer its own string dtype (load_events gives object).
        return pd.DataFrame({k: (v if isinstance(v, pd.Series) else
                                 pd.Series(v, copy=False, dtype=object if v.dtype == object else None))
                             for k, v in out.items()}, copy=False)

    async def _many_keys(self, src: EventSource, n_keys: int) -> bool:
        """Whether ``n_keys`` keys are at least ``SCAN_KEY_FRACTION`` of the event log's distinct
        keys by PostgreSQL's statistics (False when the log has never been analyzed)."""
        if n_keys == 0:
            return False
        sql = ("SELECT c.reltuples::float8, s.n_distinct::float8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'entity_key' "
               "WHERE n.nspname = $1 AND c.relname = $2")
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(sql, self.schema, self.events_table(src.name))
        if row is None or row[1] is None or row[0] is None or row[0] <= 0:
            return False
        distinct = row[1] if row[1] > 0 else -row[1] * row[0]
        return n_keys >= self.SCAN_KEY_FRACTION * distinct

    async def _scan_events(self, src: EventSource, items: list[tuple[str, str, ValueType]],
                           keys: Sequence[Any] | None, end_ms: int | None) -> dict[str, Any]:
        """Every event (int64 or string keys, fields of ``SCAN_TYPES``): from the segments and the
        rows after them (``_segment_scan``) when there are segments, else read in ranges of
        ``SCAN_RANGE_PAGES`` blocks (TID range scans) over up to ``SCAN_CONNECTIONS`` connections
        in one exported snapshot (``_block_scan``: what one query would see, every row in exactly
        one range, the last range open-ended).  Per range one row: ``count(*)`` and per column the
        ``string_agg`` of its values' binary send form (NULL int/bool values read as a mask column,
        text as UTF-8 bytes and lengths).  Then ``keys`` / ``end_ms`` filtered and the rows put in
        ``(partition, offset)`` order.  Returns output name -> array (int fields with NULLs as
        ``Int64``, bools as ``boolean``, text as object arrays of ``str`` / None)."""
        cols, masked, texts = _scan_columns(items, src.schema[src.entity_field], src.event_id_field is not None)
        native = await self._segment_scan(src, cols) if self.USE_SEGMENTS else None
        if native is None:
            native = await self._block_scan(src, cols)
        _decode_texts(native, texts)
        return _finish_scan(native, masked, keys, end_ms)

    async def _block_scan(self, src: EventSource, cols: list[tuple[str, str, str]]) -> dict[str, np.ndarray]:
        """The whole event log's ``cols`` (``_scan_columns``) as native arrays, physical order, by the
        parallel block-range scan of ``_scan_events``."""
        table = self.qualified(self.events_table(src.name))
        aggs = _aggs_sql(cols)
        pool_max = self.pool.get_max_size() or 1
        n_conn = max(1, min(self.SCAN_CONNECTIONS, os.cpu_count() or 1, pool_max))
        parts: dict[int, list[np.ndarray]] = {}
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(self.pool.acquire())]
            while len(conns) < n_conn:  # extra connections only if free soon (two scans never wait on each other)
                try:
                    conns.append(await stack.enter_async_context(self.pool.acquire(timeout=1.0)))
                except asyncio.TimeoutError:
                    break
            n_conn = len(conns)
            first = conns[0]
            await stack.enter_async_context(first.transaction(isolation="repeatable_read", readonly=True))
            blocks = int(await first.fetchval("SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint",
                                              table))
            ranged = first.get_server_version() >= (14, 0)  # TID range scans
            n_ranges = max(1, -(-blocks // self.SCAN_RANGE_PAGES)) if ranged else 1
            if n_ranges > 1:
                n_ranges = max(n_ranges, 2 * n_conn)
            else:
                n_conn = 1
            if n_conn > 1:
                snapshot = await first.fetchval("SELECT pg_export_snapshot()")
                for conn in conns[1:n_conn]:
                    await stack.enter_async_context(conn.transaction(isolation="repeatable_read", readonly=True))
                    await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            bounds = [blocks * i // n_ranges for i in range(n_ranges)]
            pending = list(range(n_ranges))

            def range_sql(i: int) -> str:
                where = []
                if i > 0:
                    where.append(f"ctid >= '({bounds[i]},0)'::tid")
                if i + 1 < n_ranges:
                    where.append(f"ctid < '({bounds[i + 1]},0)'::tid")
                return f"SELECT count(*), {aggs} FROM {table}" + (f" WHERE {' AND '.join(where)}" if where else "")

            async def worker(conn: asyncpg.Connection) -> None:
                while pending:
                    i = pending.pop(0)
                    row = await conn.fetchrow(range_sql(i))
                    count = int(row[0])
                    arrays = []
                    for (name, _, dtype), raw in zip(cols, row[1:]):
                        arr = np.frombuffer(raw or b"", dtype=_wire(dtype))
                        if len(arr) != count and dtype != TEXT:
                            raise StoreUnavailableError(f"load_events_fast({src.name!r}): column {name!r} has "
                                                        f"{len(arr)} values for {count} rows")
                        arrays.append(arr)
                    parts[i] = arrays

            done = await asyncio.gather(*(worker(conn) for conn in conns[:n_conn]), return_exceptions=True)
            for result in done:  # every query has ended before the connections go back to the pool
                if isinstance(result, BaseException):
                    raise result
        native = {}  # name -> native-endian array of all ranges (one pass: byte swap while concatenating)
        for j, (name, _, dtype) in enumerate(cols):
            native[name] = np.concatenate([parts[i][j] for i in range(n_ranges)], dtype=_native(dtype))
        return native

    # -- segments: columnar copies of the event log for full scans ----------------------

    #: Events per segment written by ``compact_events``.
    SEGMENT_ROWS = 1 << 20
    #: Full scans read the segments (and the log's rows after them) when there are any.
    USE_SEGMENTS = True

    def _log_lock(self, src: EventSource) -> int:
        """Advisory lock key of a source's event log (writers shared, ``compact_events`` exclusive)."""
        digest = hashlib.sha1(f"fs-events:{self.schema}:{self.events_table(src.name)}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @staticmethod
    def _segment_items(src: EventSource) -> list[tuple[str, str, ValueType]]:
        """The fields segments hold (those of ``SCAN_TYPES``: lists and embeddings are left out, and a
        full scan asking for one reads the rows); ``InvalidInputError`` when the source's entity key
        is neither int64 nor string."""
        if src.schema[src.entity_field] not in (INT64, STRING):
            raise InvalidInputError(f"source {src.name!r}: segments need int64 or string entity keys "
                                    f"({src.entity_field!r} is {src.schema[src.entity_field]})")
        return [(f, c, vt) for f, c, vt in PostgresOfflineStore._field_items(src)
                if vt in SCAN_TYPES and f != src.entity_field]

    async def _partitions(self, conn: asyncpg.Connection, table: str) -> list[int]:
        """Distinct partitions of an event log, by a skip scan of its primary key (one probe per partition)."""
        rows = await conn.fetch(
            f'WITH RECURSIVE p AS (SELECT min("partition") AS p FROM {table} UNION ALL '
            f'SELECT (SELECT min("partition") FROM {table} WHERE "partition" > p.p) FROM p WHERE p.p IS NOT NULL) '
            'SELECT p FROM p WHERE p IS NOT NULL')
        return [int(r[0]) for r in rows]

    async def compact_events(self, source: str | EventSource, segment_rows: int | None = None,
                             rebuild: bool = False) -> dict:
        """Copy the event log's rows of Kafka partitions (>= 0) not in a segment yet into segments:
        per partition, runs of up to ``SEGMENT_ROWS`` events in offset order, one row per column
        holding its values packed (little-endian, as numpy reads them).  Full scans
        (``load_events_fast`` over many keys, so ``get_historical_features``) then read the
        segments and only the rows after them, instead of every row.  The rows stay (they keep
        replays idempotent and serve the other reads).  Safe while workers write: it waits for the
        writes in flight (``_log_lock``), notes each partition's last offset and compacts up to it
        (every later write has a higher offset, or is a replay of a row already there); rows of
        partition -1 (files, pushes) are never compacted.  ``rebuild`` drops the segments first
        (segments written before a field was added to the schema lack it, and full scans asking for
        it read the rows instead).  Returns the segments and events written."""
        src = self._source(source)
        items = self._segment_items(src)
        size = int(segment_rows or self.SEGMENT_ROWS)
        table = self.qualified(self.events_table(src.name))
        seg = self.qualified(self.segments_table(src.name))
        cols, _, _ = _scan_columns(items, src.schema[src.entity_field], src.event_id_field is not None)
        cols = [c for c in cols if c[0] != "__p"]
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass($1)", table) is None:
                raise UnknownNameError(f"event log of source {src.name!r} does not exist: run `featurestore apply`")
            # Outside a transaction (a session lock taken in one outlives its rollback): wait for the
            # writes in flight, note each partition's last offset, let writers go on.
            lock = self._log_lock(src)
            await conn.execute("SELECT pg_advisory_lock($1)", lock)
            try:
                ends = {}
                for p in await self._partitions(conn, table):
                    if p >= 0:
                        ends[p] = int(await conn.fetchval(f'SELECT max("offset") FROM {table} WHERE "partition" = $1', p))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)
            async with conn.transaction():  # all segments of this run or none
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"compact:{self.schema}:{seg}")
                return await self._compact_up_to(conn, table, seg, cols, ends, size, rebuild)

    async def _compact_up_to(self, conn: asyncpg.Connection, table: str, seg: str, cols: list, ends: dict[int, int],
                             size: int, rebuild: bool) -> dict:
        """``compact_events``' writes, in its transaction: segments of each partition up to ``ends``;
        returns the segments and events written."""
        added = {"segments": 0, "events": 0}
        # Rows in offset order: a sorted subquery feeds the aggregates in order in practice; when it
        # did not (checked below), every aggregate sorts its input.
        aggs, ordered_aggs = _aggs_sql(cols), _aggs_sql(cols, ' ORDER BY "offset"')
        if rebuild:
            await conn.execute(f"DELETE FROM {seg}")
        done = {int(r[0]): int(r[1]) for r in await conn.fetch(
            f'SELECT "partition", max("last_offset") FROM {seg} WHERE "field" = \'__o\' GROUP BY "partition"')}
        for p, end in sorted(ends.items()):
            after = done.get(p, -1)
            while after < end:
                for select in (aggs, ordered_aggs):
                    row = await conn.fetchrow(
                        f"SELECT count(*), {select} FROM (SELECT * FROM {table} WHERE \"partition\" = $1 AND \"offset\" > $2 "
                        f"AND \"offset\" <= $3 ORDER BY \"offset\" LIMIT $4) e", p, after, end, size)
                    n = int(row[0])
                    arrays = _unpack_aggs(cols, row[1:])
                    offsets = arrays["__o"]
                    if np.all(offsets[1:] > offsets[:-1]):
                        break
                if n == 0:
                    break
                first, last = int(offsets[0]), int(offsets[-1])
                await conn.executemany(
                    f'INSERT INTO {seg} ("partition", "first_offset", "last_offset", "n", "field", "data") '
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    [(p, first, last, n, name, arr.tobytes()) for name, arr in arrays.items()])
                added["segments"] += 1
                added["events"] += n
                after = last
        return added

    async def _segment_scan(self, src: EventSource, cols: list[tuple[str, str, str]]) -> dict[str, np.ndarray] | None:
        """``_block_scan``'s columns from the segments plus the log's rows after them (one snapshot),
        in arrival order; None when there are no segments or they lack a column."""
        seg = self.qualified(self.segments_table(src.name))
        table = self.qualified(self.events_table(src.name))
        names = [name for name, _, _ in cols if name != "__p"]
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            if await conn.fetchval("SELECT to_regclass($1)", seg) is None:  # a log migrated before segments existed
                return None
            rows = await conn.fetch(f'SELECT "partition", "first_offset", "last_offset", "n", "field", "data" FROM {seg} '
                                    'WHERE "field" = ANY($1::text[]) ORDER BY "partition", "first_offset"', names)
            if not rows:
                return None
            segments: dict[tuple[int, int], dict] = {}  # (partition, first offset) -> column -> packed values
            sizes: dict[tuple[int, int], int] = {}
            done: dict[int, int] = {}  # partition -> last offset in a segment
            for r in rows:
                at = (int(r[0]), int(r[1]))
                segments.setdefault(at, {})[r[4]] = r[5]
                sizes[at] = int(r[3])
                done[at[0]] = max(done.get(at[0], -1), int(r[2]))
            if any(len(parts) != len(names) for parts in segments.values()):
                return None  # a field added to the schema after these segments were written
            partitions = await self._partitions(conn, table)
            after = [done.get(p, -(2**63)) for p in partitions]
            aggs = _aggs_sql(cols)
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin"):
                await conn.execute(f"SET LOCAL {setting} = off")  # the tail through the primary key, in offset order
            tail = await conn.fetchrow(
                f"SELECT count(*), {aggs} FROM unnest($1::int[], $2::bigint[]) AS w(p, o) CROSS JOIN LATERAL "
                f'(SELECT * FROM {table} WHERE "partition" = w.p AND "offset" > w.o) e', partitions, after)
        n_tail = int(tail[0])
        tail_arrays = _unpack_aggs(cols, tail[1:])
        tail_bytes = {}  # text column -> byte offset of each tail row (and the end)
        for name, _, dtype in cols:
            if dtype == TEXT:
                tail_bytes[name] = np.zeros(n_tail + 1, dtype="int64")
                np.cumsum(tail_arrays[f"__len_{name}"], out=tail_bytes[name][1:])
        pieces: list[dict[str, np.ndarray]] = []
        tail_p = tail_arrays["__p"]
        by_partition = n_tail == 0 or bool(np.all(tail_p[1:] >= tail_p[:-1]))
        for p in sorted({p for p, _ in segments} | (set(np.unique(tail_p).tolist()) if by_partition else set())):
            for at, parts in segments.items():  # in (partition, first offset) order
                if at[0] == p:
                    piece = {name: np.frombuffer(parts[name], dtype=_native(dtype)) for name, _, dtype in cols if name != "__p"}
                    piece["__p"] = np.full(sizes[at], p, dtype="int32")
                    pieces.append(piece)
            if by_partition and n_tail:
                lo, hi = np.searchsorted(tail_p, [p, p + 1])
                if hi > lo:
                    piece = {}
                    for name, _, dtype in cols:  # rows lo..hi; a text column's bytes by its lengths
                        arr = tail_arrays[name]
                        if dtype == TEXT:
                            a, b = (int(x) for x in tail_bytes[name][[lo, hi]])
                            piece[name] = arr[a:b]
                        else:
                            piece[name] = arr[lo:hi]
                    pieces.append(piece)
        if not by_partition:  # never seen: _finish_scan sorts by (partition, offset)
            pieces.append(tail_arrays)
        return {name: np.concatenate([piece[name] for piece in pieces]) if pieces
                else np.zeros(0, dtype=_native(dtype)) for name, _, dtype in cols}

    async def _copy_events(self, src: EventSource, items: list[tuple[str, str, ValueType]],
                           keys: Sequence[Any] | None, end_ms: int | None) -> dict[str, Any] | None:
        """``COPY (SELECT ... ORDER BY partition, offset) TO STDOUT`` (binary or CSV, see
        ``load_events_fast``); output name -> values, or None when ``load_events`` must be used."""
        key_vt = src.schema[src.entity_field]
        where, args = _event_filter(key_vt, keys, end_ms=end_ms)
        with_id = src.event_id_field is not None
        # (output name, SQL expression, kind): kind in i8 i4 f8 b text
        cols: list[tuple[str, str, str, ValueType | None]] = [
            ("key", '"entity_key"', "i8" if key_vt == INT64 else "text", None), ("ts", '"event_time"', "i8", None)]
        if with_id:
            cols.append(("__eid", '"event_id"', "text", None))
        nullable_fixed = False
        for field, col, vt in items:
            if vt == FLOAT64:
                cols.append((field, f"coalesce({qident(col)}, 'NaN'::float8)", "f8", vt))
            elif vt in (INT64, TIMESTAMP):
                cols.append((field, qident(col), "i8", vt))
                nullable_fixed |= field in src.optional_fields
            elif vt == BOOL:
                cols.append((field, qident(col), "b", vt))
                nullable_fixed |= field in src.optional_fields
            else:
                cols.append((field, qident(col), "text", vt))
        sql = (f"SELECT {', '.join(c[1] for c in cols)} FROM {self.qualified(self.events_table(src.name))}"
               + (f" WHERE {' AND '.join(where)}" if where else "") + ' ORDER BY "partition", "offset"')
        binary = not nullable_fixed and all(c[2] != "text" for c in cols)
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:  # a coroutine: no thread hop per chunk (as for a file)
            chunks.append(chunk)

        async with self.pool.acquire() as conn:
            await conn.copy_from_query(sql, *args, output=sink, format="binary" if binary else "csv")
        raw = b"".join(chunks)
        chunks.clear()  # the joined copy is what is kept
        data: dict[str, Any] = {}
        if binary:
            width = {"i8": 8, "i4": 4, "f8": 8, "b": 1}
            spec = [("n", ">i2")]
            for name, _, kind, _ in cols:
                spec += [(f"len_{name}", ">i4"), (name, {"i8": ">i8", "i4": ">i4", "f8": ">f8", "b": "?"}[kind])]
            dtype = np.dtype(spec)
            header = 19 + int.from_bytes(raw[15:19], "big")  # signature, flags, extension area
            body = memoryview(raw)[header:len(raw) - 2]  # trailer: int16 -1
            if len(body) % dtype.itemsize:
                raise StoreUnavailableError("load_events_fast: unexpected binary COPY layout")
            rows = np.frombuffer(body, dtype=dtype)
            if len(rows) and not all(np.all(rows[f"len_{c[0]}"] == width[c[2]]) for c in cols):
                # A NULL in a column no optional field should leave NULL: read it the general way.
                return None
            for name, _, kind, _ in cols:
                data[name] = rows[name].astype({"i8": "int64", "i4": "int32", "f8": "float64", "b": "bool"}[kind])
        else:
            import pyarrow as pa
            import pyarrow.csv as pcsv

            types = {"i8": pa.int64(), "i4": pa.int32(), "f8": pa.float64(), "b": pa.bool_(), "text": pa.string()}
            names = [c[0] for c in cols]
            table = pcsv.read_csv(
                io.BytesIO(raw),
                read_options=pcsv.ReadOptions(column_names=names, block_size=1 << 24),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types={c[0]: types[c[2]] for c in cols}, strings_can_be_null=True,
                    quoted_strings_can_be_null=False, null_values=[""], true_values=["t"], false_values=["f"]))
            for name, _, kind, _ in cols:
                arr = table.column(name)
                if kind == "text":
                    data[name] = pd.Series(arr.to_pylist(), dtype=object)
                elif kind == "f8":
                    data[name] = arr.to_numpy(zero_copy_only=False).astype("float64")
                else:
                    data[name] = pd.Series(arr.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(),
                                                                       pa.bool_(): pd.BooleanDtype()}.get))
        out: dict[str, Any] = {"key": pd.Series(data["key"], dtype="int64" if key_vt == INT64 else object),
                               "ts": pd.Series(data["ts"], dtype="int64")}
        if with_id:
            out["__eid"] = pd.Series(data["__eid"], dtype=object)
        for name, _, kind, vt in cols[2 + with_id:]:
            out[name] = _tidy(pd.Series(data[name]), vt)
        return out

    async def load_events(self, source: str | EventSource, keys: Sequence[Any] | None = None,
                          start_ms: int | None = None, end_ms: int | None = None,
                          partitions: Sequence[int] | None = None, positions: bool = False) -> pd.DataFrame:
        """Events of ``source`` (optionally of ``keys``, with ``start_ms <= ts <= end_ms`` and
        of the Kafka ``partitions``) in arrival order ``(partition, offset)``.  Columns: ``key``,
        ``ts`` (int64 ms), every schema field (the timestamp field equal to ``ts``; dtypes as
        ``validate_frame`` gives them) and ``event_id`` (str or None); when ``partitions`` is
        given, or ``positions``, ``__partition`` and ``__offset`` (int64) come first (the worker
        rebuilds from them; named apart from schema fields such as ``partition``)."""
        src = self._source(source)
        if "ts" in src.schema and src.timestamp_field != "ts":
            raise InvalidInputError(f"source {src.name!r}: a field named 'ts' must be the timestamp field")
        key_vt = src.schema[src.entity_field]
        items = self._field_items(src)
        if keys is not None:
            keys = list(pd.unique(pd.Series(list(keys), dtype=object).dropna()))
        where, args = _event_filter(key_vt, keys, start_ms, end_ms, partitions)
        select = ['"entity_key"', '"event_time"', '"event_id"'] + [qident(c) for _, c, _ in items]
        select += ['"partition"', '"offset"']
        sql = (f"SELECT {', '.join(select)} FROM {self.qualified(self.events_table(src.name))}"
               + (f" WHERE {' AND '.join(where)}" if where else "") + ' ORDER BY "partition", "offset"')
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return self._events_frame(src, rows, partitions is not None or positions)

    def _events_frame(self, src: EventSource, rows: list, positions: bool) -> pd.DataFrame:
        """``load_events``' frame of its query's rows (entity key, event time, event id, the fields,
        partition, offset)."""
        key_vt = src.schema[src.entity_field]
        items = self._field_items(src)
        if rows:
            cols = list(zip(*rows))
        else:
            cols = [()] * (len(items) + 5)
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
        if positions:
            out["__partition"] = pd.Series(cols[-2], dtype="int64")
            out["__offset"] = pd.Series(cols[-1], dtype="int64")
            order = ["__partition", "__offset"] + order
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
        return await self._staged_insert(
            target, columns, records, stage,
            f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage} "
            f'ON CONFLICT ("entity_key", "event_time", "seq") DO UPDATE SET {updates}')

    async def _staged_insert(self, target: str, columns: list[str], records: list, stage: str, insert_sql: str) -> int:
        """COPY ``records`` into a temporary ``stage`` shaped like ``target``, then run ``insert_sql``
        (which reads the stage) in the same transaction; returns the rows it inserted or updated."""
        cols_sql = ", ".join(qident(c) for c in columns)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await _create_stage(conn, stage, cols_sql, target)
                await conn.copy_records_to_table(stage, records=records, columns=columns)
                status = await conn.execute(insert_sql)
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
        return await self._staged_insert(
            target, cols, records, stage,
            f"INSERT INTO {target} ({cols_sql}) SELECT source, partition, \"offset\", reason, detail, "
            f"payload, coalesce(at, now()) FROM {stage} "
            f'ON CONFLICT ("source", "partition", "offset") DO NOTHING')

    async def record_dead_letters(self, rows: Sequence[tuple]) -> set[tuple[str, int, int]]:
        """Record dead letters before they are sent: ``(source, partition, offset, reason, detail,
        payload, key, dead_letter_topic)`` rows, kept when already recorded.  Returns the
        ``(source, partition, offset)`` of those already marked sent (by an attempt that crashed
        before its commit): the caller does not send them again."""
        if not rows:
            return set()
        target = self.qualified(self.rejects_table())
        cols = ["source", "partition", "offset", "reason", "detail", "payload", "key", "dead_letter_topic"]
        cols_sql = ", ".join(qident(c) for c in cols)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await _create_stage(conn, "_fs_stage_dead", cols_sql, target)
                await conn.copy_records_to_table("_fs_stage_dead", records=list(rows), columns=cols)
                await conn.execute(f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM _fs_stage_dead "
                                   'ON CONFLICT ("source", "partition", "offset") DO NOTHING')
                sent = await conn.fetch(f'SELECT r.source, r.partition, r."offset" FROM {target} r JOIN _fs_stage_dead d '
                                        'USING ("source", "partition", "offset") WHERE r.sent_at IS NOT NULL')
        return {(r["source"], r["partition"], r["offset"]) for r in sent}

    async def mark_dead_letters(self, source: str, positions: Sequence[tuple[int, int]], error: str | None = None) -> None:
        """Mark recorded dead letters of ``source`` sent (``error`` None) or refused by the topic."""
        if not positions:
            return
        parts, offs = zip(*positions)
        sql = (f'UPDATE {self.qualified(self.rejects_table())} SET '
               + ("sent_at = now(), send_error = NULL" if error is None else "send_error = $4")
               + ' WHERE source = $1 AND ("partition", "offset") IN (SELECT * FROM unnest($2::int[], $3::bigint[]))')
        args = [source, list(parts), list(offs)] + ([] if error is None else [error])
        async with self.pool.acquire() as conn:
            await conn.execute(sql, *args)

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

    # -- backfill: hashed event reads, binary history COPY, progress -------------------

    @staticmethod
    def bucket_sql(n_buckets: int) -> str:
        """SQL expression of an event's entity bucket in ``[0, n_buckets)`` (``hashtext`` of the key's text)."""
        b = int(n_buckets)
        return f'(((hashtext("entity_key"::text)::bigint % {b}) + {b}) % {b})'

    async def event_log_offsets(self, source: str | EventSource) -> dict[int, int]:
        """Last offset stored per Kafka partition (partitions >= 0) of the event log."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f'SELECT "partition", max("offset") FROM {self.qualified(self.events_table(src.name))} '
                                    f'WHERE "partition" >= 0 GROUP BY "partition"')
        return {int(r[0]): int(r[1]) for r in rows}

    async def iter_events_by_bucket(self, source: str | EventSource, n_buckets: int, buckets: Sequence[int],
                                    end_ms: int | None = None, cut: Mapping[int, int] | None = None,
                                    batch_rows: int = 100_000):
        """Events of the entity ``buckets`` (see ``bucket_sql``), in arrival order ``(partition, offset)``,
        as frames of at most ``batch_rows`` rows shaped like ``load_events(partitions=...)`` plus a
        ``bucket`` column.  ``cut``: partition -> last offset to read (rows of other Kafka partitions
        are skipped; partition < 0 rows — files, pushes — are all read).  One server-side cursor:
        the event log is read once whatever the number of buckets."""
        src = self._source(source)
        key_vt = src.schema[src.entity_field]
        items = self._field_items(src)
        bucket = self.bucket_sql(n_buckets)
        where, args = _event_filter(key_vt, end_ms=end_ms)
        args.append([int(b) for b in buckets])
        where.append(f"{bucket} = ANY(${len(args)}::bigint[])")
        if cut is not None:
            whens = " ".join(f'WHEN {int(p)} THEN "offset" <= {int(o)}' for p, o in sorted(cut.items()))
            where.append(f'(CASE "partition" {whens} ELSE "partition" < 0 END)' if whens else '"partition" < 0')
        select = ['"entity_key"', '"event_time"', '"event_id"'] + [qident(c) for _, c, _ in items]
        select += ['"partition"', '"offset"', f'{bucket} AS "bucket"']
        sql = (f"SELECT {', '.join(select)} FROM {self.qualified(self.events_table(src.name))} "
               f"WHERE {' AND '.join(where)} ORDER BY \"partition\", \"offset\"")
        id_col = event_id_column(src)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                cursor = await conn.cursor(sql, *args)
                while True:
                    rows = await cursor.fetch(batch_rows)
                    if not rows:
                        break
                    cols = list(zip(*rows))
                    out: dict[str, pd.Series] = {
                        "__partition": pd.Series(cols[-3], dtype="int64"), "__offset": pd.Series(cols[-2], dtype="int64"),
                        "bucket": pd.Series(cols[-1], dtype="int64"),
                        "key": pd.Series(cols[0], dtype="int64" if key_vt == INT64 else object),
                        "ts": pd.Series(cols[1], dtype="int64")}
                    for (field, _, vt), values in zip(items, cols[3:]):
                        out[field] = _tidy(pd.Series(values, dtype=object), vt)
                    if src.timestamp_field != "ts":
                        out[src.timestamp_field] = out["ts"].copy()
                    if id_col not in out:
                        out[id_col] = pd.Series(cols[2], dtype=object)
                    yield pd.DataFrame(out)
                    if len(rows) < batch_rows:
                        break

    def history_copy_payload(self, view: FeatureView, df: pd.DataFrame) -> tuple[list[str], bytes] | None:
        """``df`` (``key``, ``ts``, optional ``seq``, feature columns; sorted by key, ts as
        ``compute_batch`` returns it) encoded as one PostgreSQL binary COPY payload, built with
        numpy (no per-row Python).  NaN in float features and None are written as NULL.  Returns
        ``(columns, payload)``, or None when a feature type has no fast encoding (lists,
        embeddings): use ``write_history`` then."""
        n = len(df)
        key_kind = "int8" if view.entity.key_type == "int64" else "text"
        cols: list[tuple[str, str, Any, np.ndarray | None]] = [("entity_key", key_kind, df["key"], None),
                                                               ("event_time", "int8", df["ts"], None)]
        if "seq" in df.columns:
            seq = df["seq"].to_numpy(dtype="int64")
        else:
            codes = pd.factorize(df["key"])[0]
            ts = df["ts"].to_numpy(dtype="int64")
            idx = np.arange(n)
            change = np.ones(n, dtype=bool)
            if n > 1:
                change[1:] = (codes[1:] != codes[:-1]) | (ts[1:] != ts[:-1])
            d_codes, d_ts = np.diff(codes), np.diff(ts)
            if ((d_codes > 0) | ((d_codes == 0) & (d_ts >= 0))).all():  # sorted by key, ts: runs are (key, ts) groups
                seq = idx - np.maximum.accumulate(np.where(change, idx, 0))
            else:
                seq = df.groupby(["key", "ts"], sort=False).cumcount().to_numpy()
        cols.append(("seq", "int4", seq, None))
        kinds = {INT64: "int8", TIMESTAMP: "int8", FLOAT64: "float8", BOOL: "bool", STRING: "text"}
        for f in view.features:
            kind = kinds.get(f.dtype)
            if kind is None:
                return None
            cols.append((f.name, kind, df[f.name] if f.name in df.columns else pd.Series([None] * n, dtype=object), None))
        return [c[0] for c in cols], encode_copy_binary([(kind, values) for _, kind, values, _ in cols], n)

    async def copy_history(self, view: FeatureView, version: int, columns: list[str], payload: bytes) -> int:
        """Write a ``history_copy_payload`` idempotently: a binary COPY straight into the history
        table (fast path: none of the rows exists yet); when a row already exists, the same rows
        go through a staging table and ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the values
        differ.  Returns the rows inserted or changed (0 when rewriting identical values)."""
        table = self.history_table(view.name, version)
        target = self.qualified(table)
        cols_sql = ", ".join(qident(c) for c in columns)
        feats = columns[3:]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                try:
                    async with conn.transaction():
                        status = await conn.copy_to_table(table, source=_chunks_of(payload), columns=columns,
                                                          schema_name=self.schema, format="binary")
                    return int(status.rsplit(" ", 1)[-1])
                except asyncpg.UniqueViolationError:
                    pass
                stage = "_fs_stage_history_copy"
                await _create_stage(conn, stage, cols_sql, target)
                await conn.copy_to_table(stage, source=_chunks_of(payload), columns=columns, format="binary")
                updates = ", ".join(f"{qident(c)} = EXCLUDED.{qident(c)}" for c in feats)
                updates = (updates + ", " if updates else "") + '"written_at" = now()'
                if feats:
                    mine = ", ".join(f"{target}.{qident(c)}" for c in feats)
                    theirs = ", ".join(f"EXCLUDED.{qident(c)}" for c in feats)
                    cond = f" WHERE ({mine}) IS DISTINCT FROM ({theirs})" if len(feats) > 1 else \
                        f" WHERE {mine} IS DISTINCT FROM {theirs}"
                else:
                    cond = " WHERE false"
                status = await conn.execute(
                    f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage} "
                    f'ON CONFLICT ("entity_key", "event_time", "seq") DO UPDATE SET {updates}{cond}')
                return int(status.rsplit(" ", 1)[-1])

    def backfill_progress_table(self) -> str:
        return table_name(self.project, "backfill_progress")

    async def ensure_backfill_progress(self) -> None:
        """Create ``{project}__backfill_progress``: (view, version, run, chunk) -> info, done_at."""
        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{self.schema}:{self.project}")
                await conn.execute(
                    f'CREATE TABLE IF NOT EXISTS {q} ("view" text NOT NULL, "version" int NOT NULL, "run" text NOT NULL, '
                    f'"chunk" text NOT NULL, "info" jsonb, "done_at" timestamptz NOT NULL DEFAULT now(), '
                    f'PRIMARY KEY ("view", "version", "run", "chunk"))')

    async def backfill_claim(self, view: str, version: int, run: str, chunk: str, info: Mapping[str, Any]) -> dict:
        """Insert ``chunk`` with ``info`` unless it exists; return the stored info (first writer wins)."""
        import json

        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            await conn.execute(f'INSERT INTO {q} ("view", "version", "run", "chunk", "info") VALUES ($1, $2, $3, $4, $5::jsonb) '
                               f'ON CONFLICT DO NOTHING', view, int(version), run, chunk, json.dumps(info))
            stored = await conn.fetchval(f'SELECT "info" FROM {q} WHERE "view" = $1 AND "version" = $2 AND "run" = $3 '
                                         f'AND "chunk" = $4', view, int(version), run, chunk)
        return json.loads(stored) if isinstance(stored, str) else dict(stored or {})

    async def backfill_progress(self, view: str, version: int, run: str) -> dict[str, dict]:
        """Chunks recorded for a run: chunk -> info."""
        import json

        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f'SELECT "chunk", "info" FROM {q} WHERE "view" = $1 AND "version" = $2 AND "run" = $3',
                                    view, int(version), run)
        return {r[0]: (json.loads(r[1]) if isinstance(r[1], str) else dict(r[1] or {})) for r in rows}

    async def backfill_reset(self, view: str, version: int, run: str) -> int:
        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            status = await conn.execute(f'DELETE FROM {q} WHERE "view" = $1 AND "version" = $2 AND "run" = $3',
                                        view, int(version), run)
        return int(status.rsplit(" ", 1)[-1])


# -- binary COPY encoding (backfill) ---------------------------------------------------------

async def _chunks_of(payload: bytes, size: int = 1 << 20):
    """``payload`` as an async iterable of 1 MiB slices (what ``copy_to_table`` streams)."""
    view = memoryview(payload)
    for lo in range(0, len(view), size):
        yield view[lo:lo + size]


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_FIXED = {"int8": (8, ">i8"), "int4": (4, ">i4"), "float8": (8, ">f8"), "bool": (1, "u1")}


def _scatter(buf: np.ndarray, pos: np.ndarray, data: np.ndarray) -> None:
    """``buf[pos[i] : pos[i] + w] = data[i]`` for every row i of the (n, w) uint8 ``data``."""
    if len(pos):
        buf[pos[:, None] + np.arange(data.shape[1])] = data


def _fixed_column(kind: str, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values as a numpy array of the kind's dtype, null mask)."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    dtype = s.dtype
    if kind == "float8":
        if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
            x = s.to_numpy(dtype="float64")
        else:
            x = pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce").to_numpy(dtype="float64")
        null = np.isnan(x)
        return x, null
    if kind in ("int8", "int4"):
        if isinstance(dtype, np.dtype) and dtype.kind in "iub":
            return s.to_numpy(dtype="int64"), np.zeros(len(s), dtype=bool)
        if isinstance(dtype, np.dtype) and dtype.kind == "f":
            x = s.to_numpy(dtype="float64")
            null = np.isnan(x)
            return np.where(null, 0, x).astype("int64"), null
        t = s.astype(object).where(s.notna(), None).astype("Int64")
        null = t.isna().to_numpy()
        return t.fillna(0).to_numpy(dtype="int64"), null
    t = s.astype(object).where(s.notna(), None).astype("boolean")  # bool
    null = t.isna().to_numpy()
    return t.fillna(False).to_numpy(dtype=bool), null


def encode_copy_binary(columns: list[tuple[str, Any]], n: int) -> bytes:
    """Rows of ``columns`` ((kind, values) with kind int8, int4, float8, bool or text; None/NaN
    = NULL) in PostgreSQL's binary COPY format, vectorized with numpy.

    Rows are grouped by their shape (text lengths, null pattern): within a group every row
    has the same layout, so the group is one numpy structured array written with
    ``tobytes()``.  Row order is not kept (COPY does not need it).  With many shapes the
    rows are scattered byte-wise instead (slower, same bytes per row)."""
    cols = []
    shape_cols = []
    for kind, values in columns:
        if kind == "text":
            s = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
            codes, uniques = pd.factorize(s)
            enc = [str(u).encode() for u in uniques]
            ulen = np.array([len(e) for e in enc], dtype=np.int64)
            lens = np.where(codes >= 0, ulen[np.maximum(codes, 0)] if len(enc) else 0, -1)
            cols.append(("text", (codes, enc, np.array(enc, dtype=f"S{max(1, int(ulen.max(initial=1)))}")), lens))
            if len(ulen) and (ulen.min() != ulen.max() or (codes < 0).any()):
                shape_cols.append(lens)
        else:
            width, be = _FIXED[kind]
            x, null = _fixed_column(kind, values)
            cols.append((kind, x.astype(be), np.where(null, -1, width)))
            if null.any():
                shape_cols.append(np.where(null, -1, width))
    if not shape_cols:
        inverse, n_groups = np.zeros(n, dtype=np.int64), 1
    else:
        combined = np.zeros(n, dtype=np.int64)
        for lens in shape_cols:
            codes, uniq = pd.factorize(lens)
            combined = combined * len(uniq) + codes
            if len(uniq) and combined.max() > 2**40:  # keep the mixed radix small
                combined = pd.factorize(combined)[0].astype(np.int64)
        inverse, uniq = pd.factorize(combined)
        n_groups = len(uniq)
    if n_groups > max(64, n // 50):
        return _encode_copy_scatter(cols, n)
    parts = [_COPY_HEADER]
    small = inverse.astype(np.int16) if n_groups < 32_000 else inverse  # radix sort
    order = np.argsort(small, kind="stable") if n_groups > 1 else np.arange(n)
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1 if n_groups > 1 else np.array([], dtype=np.int64)
    for rows in np.split(order, bounds) if n else []:
        first = rows[0]
        fields = [("n", ">i2")]
        fill = []
        for i, (kind, data, lens) in enumerate(cols):
            ln = int(lens[first])
            fields.append((f"l{i}", ">i4"))
            fill.append((f"l{i}", ln))
            if ln < 0:
                continue
            if kind == "text":
                codes = data[0]
                fields.append((f"d{i}", f"S{ln}" if ln else "V0"))
                if ln:
                    fill.append((f"d{i}", data[2][codes if n_groups == 1 else codes[rows]].astype(f"S{ln}")))
            else:
                fields.append((f"d{i}", data.dtype))
                fill.append((f"d{i}", data if n_groups == 1 else data[rows]))
        dtype = np.dtype(fields)
        template = np.zeros(1, dtype=dtype)
        template["n"] = len(cols)
        out = np.empty(len(rows), dtype=dtype)
        for name, value in fill:
            if not isinstance(value, np.ndarray):
                template[name] = value
        out[...] = template[0]  # the constant fields (count, lengths) of every row at once
        for name, value in fill:
            if isinstance(value, np.ndarray):
                out[name] = value
        parts.append(out.tobytes())
    parts.append(b"\xff\xff")
    return b"".join(parts)


def _encode_copy_scatter(cols: list, n: int) -> bytes:
    sizes = np.full(n, 2, dtype=np.int64)
    for _, _, lens in cols:
        sizes += 4 + np.maximum(lens, 0)
    starts = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(sizes[:-1], out=starts[1:])
    starts += len(_COPY_HEADER)
    total = len(_COPY_HEADER) + int(sizes.sum()) + 2
    buf = np.empty(total, dtype=np.uint8)
    buf[: len(_COPY_HEADER)] = np.frombuffer(_COPY_HEADER, dtype=np.uint8)
    buf[-2:] = 0xFF
    _scatter(buf, starts, np.full(n, len(cols), dtype=">i2").view(np.uint8).reshape(n, 2))
    cursor = starts + 2
    for kind, data, lens in cols:
        _scatter(buf, cursor, lens.astype(">i4").view(np.uint8).reshape(n, 4))
        ok = lens > 0
        if kind == "text":
            codes, enc, _ = data
            ulen = np.array([len(e) for e in enc], dtype=np.int64)
            ustart = np.zeros(len(enc), dtype=np.int64)
            if len(enc) > 1:
                np.cumsum(ulen[:-1], out=ustart[1:])
            blob = np.frombuffer(b"".join(enc), dtype=np.uint8)
            ln = lens[ok]
            total_bytes = int(ln.sum())
            if total_bytes:
                within = np.arange(total_bytes) - np.repeat(np.cumsum(ln) - ln, ln)
                buf[np.repeat(cursor[ok] + 4, ln) + within] = blob[np.repeat(ustart[codes[ok]], ln) + within]
        else:
            width = _FIXED[kind][0]
            _scatter(buf, (cursor + 4)[ok], np.ascontiguousarray(data[ok]).view(np.uint8).reshape(-1, width))
        cursor = cursor + 4 + np.maximum(lens, 0)
    return buf.tobytes()
