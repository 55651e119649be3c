"""Backfill reads of the event log: events by entity bucket (a hash of the key) through one
server-side cursor, and the last offset logged per Kafka partition."""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ...definitions import EventSource
from ...types import INT64
from .sql import _event_filter
from .tables import TablesMixin, event_id_column, qident
from .values import _tidy


class BucketsMixin(TablesMixin):
    """Hashed event reads of ``PostgresOfflineStore`` for the backfill."""

    @staticmethod
    def bucket_sql(n_buckets: int) -> str:
        """SQL expression of an event's entity bucket in ``[0, n_buckets)`` (``hashtext`` of the key's text)."""
        b = int(n_buckets)
        return f'(((hashtext("entity_key"::text)::bigint % {b}) + {b}) % {b})'

    async def event_log_offsets(self, source: str | EventSource) -> dict[int, int]:
        """Last offset stored per Kafka partition (partitions >= 0) of the event log."""
        src = self._source(source)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f'SELECT "partition", max("offset") '
                                    f'FROM {self.qualified(self.events_table(src.name))} '
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
                        "__partition": pd.Series(cols[-3], dtype="int64"),
                        "__offset": pd.Series(cols[-2], dtype="int64"),
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
