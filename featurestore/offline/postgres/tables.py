"""Names and DDL of the offline store's tables: quoted identifiers, table names cut to
PostgreSQL's 63 bytes, event-log column names and types, and ``TablesMixin`` (qualified names,
the sources the store knows, ``migrate``).  The layout of every table is described in the
package docstring (``featurestore/offline/postgres/__init__.py``)."""

from __future__ import annotations

import hashlib
from typing import Iterable

import asyncpg
import pandas as pd

from ...definitions import EventSource, FeatureView
from ...exceptions import UnknownNameError
from ...types import INT64, TIMESTAMP, ValueType

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


class TablesMixin:
    """Names, sources and DDL of ``PostgresOfflineStore``; the base of its other parts, which share
    ``pool``, ``project`` and ``schema`` (set by ``PostgresOfflineStore.__init__``)."""

    pool: asyncpg.Pool
    project: str
    schema: str
    _sources: dict[str, EventSource]
    _no_events: dict[str, pd.DataFrame]

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
        stmts += [f"ALTER TABLE {q} ADD COLUMN IF NOT EXISTS {qident(c)} {t}"
                  for c, t in [*fields, ("__ref_time", "bigint")]]
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
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                   f"migrate:{self.schema}:{self.project}")
                for sql in stmts:
                    await conn.execute(sql)

    @staticmethod
    def _field_items(src: EventSource) -> list[tuple[str, str, ValueType]]:
        """(schema field, column, type) of the stored fields, in schema order."""
        return [(f, field_column(f), vt) for f, vt in src.schema.items() if f != src.timestamp_field]
