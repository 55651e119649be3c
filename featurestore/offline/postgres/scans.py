"""Reads of the event log: ``load_events``, which picks its strategy itself, and the strategies:
one ordered SELECT (``_select_events``), a full scan of the log in parallel block ranges or of its
segments plus the rows after them (``_scan_events``), and an ordered COPY decoded with numpy or
pyarrow (``_copy_events``).  Every strategy gives the same frame."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, Sequence

import asyncpg
import numpy as np
import pandas as pd

from ...definitions import EventSource
from ...exceptions import InvalidInputError
from ...types import INT64, STRING, ValueType
from .copy_out import copy_columns, copy_output, decode_binary, decode_csv
from .scan_columns import (SCAN_TYPES, _aggs_sql, _decode_texts, _finish_scan, _native, _range_arrays, _range_sql,
                           _scan_columns)
from .sql import _event_filter
from .tables import TablesMixin, event_id_column, qident
from .values import _tidy

_POSITIONS = ("__partition", "__offset")


def _distinct(keys: Sequence[Any] | None) -> list[Any] | None:
    """The distinct non-null ``keys`` in first-seen order (None: every key)."""
    if keys is None:
        return None
    return list(pd.unique(pd.Series(list(keys), dtype=object).dropna()))


class ScansMixin(TablesMixin):
    """Event-log reads of ``PostgresOfflineStore`` (full scans use ``USE_SEGMENTS`` and
    ``_segment_scan`` of the segments part)."""

    #: Pages of the event log per range of the parallel scan (``_block_scan``): a range's
    #: aggregated column stays a few MB (PostgreSQL values are limited to 1 GB).
    SCAN_RANGE_PAGES = 4096
    #: ``load_events`` reads the whole event log and filters keys here when the keys asked for are
    #: at least this fraction of the log's distinct keys (planner statistics); fewer keys are
    #: looked up through the ``(entity_key, event_time)`` index.
    SCAN_KEY_FRACTION = 0.25
    #: Connections the parallel scan uses at most (also bounded by the pool and the CPU count).
    SCAN_CONNECTIONS = 4

    async def load_events(self, source: str | EventSource, keys: Sequence[Any] | None = None,
                          start_ms: int | None = None, end_ms: int | None = None,
                          partitions: Sequence[int] | None = None, positions: bool = False,
                          fields: Sequence[str] | None = None) -> pd.DataFrame:
        """Events of ``source`` (optionally of ``keys``, with ``start_ms <= ts <= end_ms`` and of the
        Kafka ``partitions``) in arrival order ``(partition, offset)``.  Columns: ``key``, ``ts``
        (int64 ms), the schema fields (all, or the ``fields`` given plus the entity and timestamp
        fields; the timestamp field equal to ``ts``; dtypes as ``validate_frame`` gives them) and
        ``event_id`` (str or None); when ``partitions`` is given, or ``positions``, ``__partition``
        and ``__offset`` (int64) come first (the worker rebuilds from them; named apart from schema
        fields such as ``partition``).

        How it reads (the frame is the same whichever way):

        * ``partitions`` or ``positions`` (the worker's rebuilds and entity lookups), or a list or
          embedding field read: one ``SELECT ... ORDER BY partition, offset`` (``_select_events``);
        * int64 or string entity keys, fields of ``SCAN_TYPES``, and no keys or keys covering a large
          part of the log (``SCAN_KEY_FRACTION``): a full scan (``_scan_events``) — the segments and
          the rows after them when the log is compacted, else block ranges over several connections
          in one snapshot — filtered and put in arrival order with numpy;
        * otherwise an ordered COPY through the index (``_copy_events``), binary when every column
          is fixed-width, else CSV; a NULL its binary layout cannot hold falls back to the SELECT.

        Rows deleted by ``forget_events`` are in none of them: it drops the segments that held them."""
        src = self._read_source(source)
        keys = _distinct(keys)
        wanted = set(src.schema) if fields is None else set(fields) | {src.entity_field, src.timestamp_field}
        if src.event_id_field is not None:
            wanted.add(src.event_id_field)
        items = [it for it in self._field_items(src) if it[0] in wanted and it[0] != src.entity_field]
        lists = any(vt.is_list or vt.pg_type.endswith("[]") for _, _, vt in items)
        if partitions is None and not positions and not lists:
            data = await self._packed_events(src, items, keys, start_ms, end_ms)
            if data is not None:
                return self._packed_frame(src, data, wanted)
        out = await self._select_events(src, keys, start_ms, end_ms, partitions, positions)
        if fields is None:
            return out
        id_col = event_id_column(src)
        return out[[c for c in out.columns if c in ("key", "ts", id_col, *_POSITIONS) or c in wanted]]

    async def _packed_events(self, src: EventSource, items: list[tuple[str, str, ValueType]],
                             keys: Sequence[Any] | None, start_ms: int | None,
                             end_ms: int | None) -> dict[str, Any] | None:
        """``items`` of the events asked for by a full scan or an ordered COPY (``load_events``):
        output name -> values, or None when the COPY met a NULL its binary layout cannot hold."""
        key_vt = src.schema[src.entity_field]
        scannable = key_vt in (INT64, STRING) and all(vt in SCAN_TYPES for _, _, vt in items)
        if scannable and (keys is None or await self._many_keys(src, len(keys))):
            return await self._scan_events(src, items, keys, start_ms, end_ms)
        return await self._copy_events(src, items, keys, start_ms, end_ms)

    @staticmethod
    def _packed_frame(src: EventSource, data: dict[str, Any], wanted: set[str]) -> pd.DataFrame:
        """``load_events``' frame of the ``wanted`` fields from a scan's or a COPY's columns."""
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
            if src.event_id_field is not None:
                out[id_col] = data["__eid"]
            else:
                none = np.empty(n, dtype=object)
                none.fill(None)
                out[id_col] = pd.Series(none, dtype=object, copy=False)  # dtype given: no 5M-element inference scan
        # copy=False: the columns are fresh arrays; no consolidation into 2-D blocks (a copy).
        # dtype=object kept for text: pandas would infer its own string dtype (the SELECT gives object).
        return pd.DataFrame({k: (v if isinstance(v, pd.Series) else
                                 pd.Series(v, copy=False, dtype=object if v.dtype == object else None))
                             for k, v in out.items()}, copy=False)

    def _read_source(self, source: str | EventSource) -> EventSource:
        """``source`` as an ``EventSource`` whose event log can be read into frames (a field named
        ``ts`` must be its timestamp field: frames carry the event time as ``ts``)."""
        src = self._source(source)
        if "ts" in src.schema and src.timestamp_field != "ts":
            raise InvalidInputError(f"source {src.name!r}: a field named 'ts' must be the timestamp field")
        return src

    async def _many_keys(self, src: EventSource, n_keys: int) -> bool:
        """Whether ``n_keys`` keys are at least ``SCAN_KEY_FRACTION`` of the event log's distinct
        keys by PostgreSQL's statistics (False when the log has never been analyzed)."""
        if n_keys == 0:
            return False
        sql = ("SELECT c.reltuples::float8, s.n_distinct::float8 FROM pg_class c "
               "JOIN pg_namespace n ON n.oid = c.relnamespace "
               "LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname "
               "AND s.attname = 'entity_key' "
               "WHERE n.nspname = $1 AND c.relname = $2")
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(sql, self.schema, self.events_table(src.name))
        if row is None or row[1] is None or row[0] is None or row[0] <= 0:
            return False
        distinct = row[1] if row[1] > 0 else -row[1] * row[0]
        return n_keys >= self.SCAN_KEY_FRACTION * distinct

    # -- full scans -------------------------------------------------------------------

    async def _scan_events(self, src: EventSource, items: list[tuple[str, str, ValueType]],
                           keys: Sequence[Any] | None, start_ms: int | None, end_ms: int | None) -> dict[str, Any]:
        """Every event (int64 or string keys, fields of ``SCAN_TYPES``): from the segments and the
        rows after them (``_segment_scan``) when there are segments, else read in ranges of
        ``SCAN_RANGE_PAGES`` blocks (TID range scans) over up to ``SCAN_CONNECTIONS`` connections
        in one exported snapshot (``_block_scan``: what one query would see, every row in exactly
        one range, the last range open-ended).  Per range one row: ``count(*)`` and per column the
        ``string_agg`` of its values' binary send form (NULL int/bool values read as a mask column,
        text as UTF-8 bytes and lengths).  Then ``keys`` / ``start_ms`` / ``end_ms`` filtered and the
        rows put in ``(partition, offset)`` order.  Returns output name -> array (int fields with
        NULLs as ``Int64``, bools as ``boolean``, text as object arrays of ``str`` / None)."""
        cols, masked, texts = _scan_columns(items, src.schema[src.entity_field], src.event_id_field is not None)
        native = await self._segment_scan(src, cols) if self.USE_SEGMENTS else None
        if native is None:
            native = await self._block_scan(src, cols)
        _decode_texts(native, texts)
        return _finish_scan(native, masked, keys, end_ms, start_ms)

    async def _block_scan(self, src: EventSource, cols: list[tuple[str, str, str]]) -> dict[str, np.ndarray]:
        """The whole event log's ``cols`` (``_scan_columns``) as native arrays, physical order, by the
        parallel block-range scan of ``_scan_events``."""
        table = self.qualified(self.events_table(src.name))
        async with contextlib.AsyncExitStack() as stack:
            conns = await self._scan_connections(stack)
            bounds, conns = await self._share_snapshot(stack, conns, table)
            parts = await self._scan_ranges(src, conns, table, cols, bounds)
        # name -> native-endian array of all ranges (one pass: byte swap while concatenating)
        return {name: np.concatenate([part[j] for part in parts], dtype=_native(dtype))
                for j, (name, _, dtype) in enumerate(cols)}

    async def _scan_connections(self, stack: contextlib.AsyncExitStack) -> list[asyncpg.Connection]:
        """Connections for a block scan, held by ``stack``: one, plus those free within a second up to
        ``SCAN_CONNECTIONS`` (and the CPU count, the pool size), so two scans never wait on each other."""
        pool_max = self.pool.get_max_size() or 1
        n_conn = max(1, min(self.SCAN_CONNECTIONS, os.cpu_count() or 1, pool_max))
        conns = [await stack.enter_async_context(self.pool.acquire())]
        while len(conns) < n_conn:
            try:
                conns.append(await stack.enter_async_context(self.pool.acquire(timeout=1.0)))
            except asyncio.TimeoutError:
                break
        return conns

    async def _share_snapshot(self, stack: contextlib.AsyncExitStack, conns: list[asyncpg.Connection],
                              table: str) -> tuple[list[int], list[asyncpg.Connection]]:
        """Opens read-only repeatable-read transactions (held by ``stack``) sharing the first one's
        snapshot; returns the first block of each range of ``table`` and the connections that scan
        them (one when there is one range, or no TID range scans before PostgreSQL 14)."""
        first = conns[0]
        await stack.enter_async_context(first.transaction(isolation="repeatable_read", readonly=True))
        blocks = int(await first.fetchval("SELECT pg_relation_size($1::text::regclass) "
                                          "/ current_setting('block_size')::bigint", table))
        ranged = first.get_server_version() >= (14, 0)  # TID range scans
        n_ranges = max(1, -(-blocks // self.SCAN_RANGE_PAGES)) if ranged else 1
        n_conn = len(conns)
        if n_ranges > 1:
            n_ranges = max(n_ranges, 2 * n_conn)
        else:
            n_conn = 1
        if n_conn > 1:
            snapshot = await first.fetchval("SELECT pg_export_snapshot()")
            for conn in conns[1:n_conn]:
                await stack.enter_async_context(conn.transaction(isolation="repeatable_read", readonly=True))
                await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        return [blocks * i // n_ranges for i in range(n_ranges)], conns[:n_conn]

    @staticmethod
    async def _scan_ranges(src: EventSource, conns: list[asyncpg.Connection], table: str,
                           cols: list[tuple[str, str, str]], bounds: list[int]) -> list[list[np.ndarray]]:
        """Each range's wire-order arrays (``_range_arrays``), in range order, the ranges taken in turn
        by the connections; every query has ended before this returns or raises."""
        aggs = _aggs_sql(cols)
        pending = list(range(len(bounds)))
        parts: dict[int, list[np.ndarray]] = {}

        async def scan(conn: asyncpg.Connection) -> None:
            while pending:
                i = pending.pop(0)
                parts[i] = _range_arrays(src.name, cols, await conn.fetchrow(_range_sql(table, aggs, bounds, i)))

        done = await asyncio.gather(*(scan(conn) for conn in conns), return_exceptions=True)
        for result in done:  # every query has ended before the connections go back to the pool
            if isinstance(result, BaseException):
                raise result
        return [parts[i] for i in range(len(bounds))]

    # -- ordered reads ----------------------------------------------------------------

    async def _copy_events(self, src: EventSource, items: list[tuple[str, str, ValueType]],
                           keys: Sequence[Any] | None, start_ms: int | None,
                           end_ms: int | None) -> dict[str, Any] | None:
        """``COPY (SELECT ... ORDER BY partition, offset) TO STDOUT`` (binary or CSV, see
        ``copy_columns``); output name -> values, or None when the SELECT must be used."""
        key_vt = src.schema[src.entity_field]
        where, args = _event_filter(key_vt, keys, start_ms, end_ms)
        cols, binary = copy_columns(src, items)
        sql = (f"SELECT {', '.join(c[1] for c in cols)} FROM {self.qualified(self.events_table(src.name))}"
               + (f" WHERE {' AND '.join(where)}" if where else "") + ' ORDER BY "partition", "offset"')
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:  # a coroutine: no thread hop per chunk (as for a file)
            chunks.append(chunk)

        async with self.pool.acquire() as conn:
            await conn.copy_from_query(sql, *args, output=sink, format="binary" if binary else "csv")
        raw = b"".join(chunks)
        chunks.clear()  # the joined copy is what is kept
        data = decode_binary(raw, cols) if binary else decode_csv(raw, cols)
        if data is None:
            return None
        return copy_output(data, cols, key_vt, src.event_id_field is not None)

    async def _select_events(self, source: str | EventSource, keys: Sequence[Any] | None = None,
                             start_ms: int | None = None, end_ms: int | None = None,
                             partitions: Sequence[int] | None = None, positions: bool = False) -> pd.DataFrame:
        """``load_events`` (every field) by one ``SELECT ... ORDER BY partition, offset``."""
        src = self._read_source(source)
        key_vt = src.schema[src.entity_field]
        items = self._field_items(src)
        where, args = _event_filter(key_vt, _distinct(keys), start_ms, end_ms, partitions)
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
