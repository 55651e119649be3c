"""Writes and key lookups of the event log: valid events appended idempotently, forgotten
positions, reference-time fingerprints, keys and event ids already logged, push offsets, and a
source's reset."""

from __future__ import annotations

from typing import Any, Sequence

import asyncpg
import numpy as np
import pandas as pd

from ...definitions import EventSource
from ...exceptions import InvalidInputError, StoreUnavailableError, UnknownNameError
from ...types import INT64
from .sql import _create_stage, _event_filter
from .tables import TablesMixin, qident, table_name
from .values import _to_py


class EventLogMixin(TablesMixin):
    """Event-log writes and lookups of ``PostgresOfflineStore`` (uses ``_log_lock`` and
    ``_compaction_lock`` of the segments part and ``load_events`` / ``_events_frame`` of the scans part)."""

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
        records = [(p, o, e.key, e.ts_ms, e.event_id, e.ref_ms, *[e.values.get(f) for f in fields])
                   for p, o, e in events]
        return await self._log_records(src, columns, records)

    async def forget_events(self, source: str | EventSource, positions: Sequence[tuple[int, int]]) -> int:
        """Delete the event-log rows at ``(partition, offset)`` ``positions``: records a worker logged in a
        batch that failed, and then dead-lettered (``processing_error``) instead of applying.  Segments
        holding a deleted row are dropped with it, and so are the later segments of its partition (full
        scans read the rows after a partition's last segment, and ``compact_events`` packs them again),
        in one transaction under the compaction lock: no read sees a forgotten event.  Returns the rows
        deleted."""
        src = self._source(source)
        if not positions:
            return 0
        parts, offs = zip(*positions)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._compaction_lock(src))
            gone = await conn.fetch(
                f'DELETE FROM {self.qualified(self.events_table(src.name))} WHERE ("partition", "offset") IN '
                f'(SELECT * FROM unnest($1::int[], $2::bigint[])) RETURNING "partition", "offset"',
                list(parts), list(offs))
            first: dict[int, int] = {}  # Kafka partition -> its first deleted offset
            for p, o in gone:
                if p >= 0:
                    first[p] = min(o, first.get(p, o))
            if first:
                await conn.execute(
                    f'DELETE FROM {self.qualified(self.segments_table(src.name))} AS s '
                    'USING unnest($1::int[], $2::bigint[]) AS f(p, o) WHERE s."partition" = f.p '
                    'AND s."last_offset" >= f.o', list(first), list(first.values()))
        return len(gone)

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
            segs = await conn.fetchval(f'SELECT max("last_offset") '
                                       f'FROM {self.qualified(self.segments_table(src.name))} '
                                       'WHERE "partition" = $1', partition)
        return max(-1 if rows is None else int(rows), -1 if segs is None else int(segs))

    async def source_footprint(self, source: str | EventSource) -> dict[str, int]:
        """What ``reset_source`` would delete: event-log rows, segment rows and rejects of ``source``."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            return {
                "event_log_rows": int(await conn.fetchval(
                    f"SELECT count(*) FROM {self.qualified(self.events_table(src.name))}")),
                "segment_rows": int(await conn.fetchval(
                    f"SELECT count(*) FROM {self.qualified(self.segments_table(src.name))}")),
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
                                 event_ids: Sequence[Any], times: Sequence[int] | None = None) -> set[tuple]:
        """The ``(entity key, event id)`` pairs among ``zip(keys, event_ids)`` already in the event log;
        with ``times``, the ``(entity key, event id, event time)`` triples (a redelivery carries its time:
        an id reused at another time is a new event, judged by the lateness horizon when read)."""
        src = self._source(source)
        if times is not None:
            found = await self.existing_event_ids(source, keys, event_ids)
            if not found:
                return set()
            return await self._logged_triples(src, {(k, str(e), int(t)) for k, e, t in zip(keys, event_ids, times)
                                                   if (k, str(e)) in found})
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

    async def _logged_triples(self, src: EventSource, triples: set[tuple]) -> set[tuple]:
        """The ``(entity key, event id, event time)`` triples among ``triples`` in the event log."""
        is_int = src.schema[src.entity_field] == INT64
        ks = sorted({int(k) if is_int else str(k) for k, _, _ in triples})
        sql = (f'SELECT "entity_key", "event_id", "event_time" FROM {self.qualified(self.events_table(src.name))} '
               f'WHERE "entity_key" = ANY($1::{"bigint" if is_int else "text"}[]) AND "event_id" = ANY($2::text[])')
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, ks, sorted({e for _, e, _ in triples}))
        return {(r[0], r[1], int(r[2])) for r in rows} & triples

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
