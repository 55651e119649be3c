"""Segments: columnar copies of the event log for full scans.  ``compact_events`` packs runs of a
Kafka partition's events into one row per column; ``_segment_scan`` reads them back with the
log's rows after them."""

from __future__ import annotations

import hashlib

import asyncpg
import numpy as np

from ...definitions import EventSource
from ...exceptions import InvalidInputError, UnknownNameError
from ...types import INT64, STRING, ValueType
from .scan_columns import SCAN_TYPES, TEXT, _aggs_sql, _native, _scan_columns, _unpack_aggs
from .tables import TablesMixin


class SegmentsMixin(TablesMixin):
    """Compaction and segment reads of ``PostgresOfflineStore``."""

    #: Events per segment written by ``compact_events``.
    SEGMENT_ROWS = 1 << 20
    #: Full scans read the segments (and the log's rows after them) when there are any.
    USE_SEGMENTS = True

    def _log_lock(self, src: EventSource) -> int:
        """Advisory lock key of a source's event log (writers shared, ``compact_events`` exclusive)."""
        digest = hashlib.sha1(f"fs-events:{self.schema}:{self.events_table(src.name)}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _compaction_lock(self, src: EventSource) -> str:
        """Name of the transaction lock segments of a source are written under (``compact_events``) and
        dropped under (``forget_events``)."""
        return f"compact:{self.schema}:{self.qualified(self.segments_table(src.name))}"

    @staticmethod
    def _segment_items(src: EventSource) -> list[tuple[str, str, ValueType]]:
        """The fields segments hold (those of ``SCAN_TYPES``: lists and embeddings are left out, and a
        full scan asking for one reads the rows); ``InvalidInputError`` when the source's entity key
        is neither int64 nor string."""
        if src.schema[src.entity_field] not in (INT64, STRING):
            raise InvalidInputError(f"source {src.name!r}: segments need int64 or string entity keys "
                                    f"({src.entity_field!r} is {src.schema[src.entity_field]})")
        return [(f, c, vt) for f, c, vt in TablesMixin._field_items(src)
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
        (``load_events`` over many keys, so ``get_historical_features``) then read the
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
                        ends[p] = int(await conn.fetchval(
                            f'SELECT max("offset") FROM {table} WHERE "partition" = $1', p))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)
            async with conn.transaction():  # all segments of this run or none
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._compaction_lock(src))
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
                        f"SELECT count(*), {select} FROM (SELECT * FROM {table} "
                        f"WHERE \"partition\" = $1 AND \"offset\" > $2 "
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
            rows = await conn.fetch(f'SELECT "partition", "first_offset", "last_offset", "n", "field", "data" '
                                    f'FROM {seg} '
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
        return _segments_and_tail(cols, segments, sizes, int(tail[0]), _unpack_aggs(cols, tail[1:]))


def _segments_and_tail(cols: list[tuple[str, str, str]], segments: dict[tuple[int, int], dict],
                       sizes: dict[tuple[int, int], int], n_tail: int,
                       tail_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns of the ``segments`` (``(partition, first offset) -> column -> packed values``, in that
    order, ``sizes`` rows each) and of the ``n_tail`` rows after them, each partition's segments then
    its tail rows: arrival order when the tail comes by partition (else ``_finish_scan`` sorts)."""
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
                piece = {name: np.frombuffer(parts[name], dtype=_native(dtype))
                         for name, _, dtype in cols if name != "__p"}
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
