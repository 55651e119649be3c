"""Reads of the event log: ``load_events`` (rows in arrival order, one query) and
``load_events_fast`` (the same frame by a parallel block-range or segment scan, or an ordered
COPY decoded with numpy or pyarrow)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from typing import Any, Sequence

import asyncpg
import numpy as np
import pandas as pd

from ...definitions import EventSource
from ...exceptions import InvalidInputError, StoreUnavailableError
from ...types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType
from .scan_columns import SCAN_TYPES, TEXT, _aggs_sql, _decode_texts, _finish_scan, _native, _scan_columns, _wire
from .sql import _event_filter
from .tables import TablesMixin, event_id_column, qident
from .values import _tidy


class ScansMixin(TablesMixin):
    """Event-log reads of ``PostgresOfflineStore`` (full scans use ``USE_SEGMENTS`` and
    ``_segment_scan`` of the segments part)."""

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
            blocks = int(await first.fetchval("SELECT pg_relation_size($1::text::regclass) "
                                              "/ current_setting('block_size')::bigint",
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
