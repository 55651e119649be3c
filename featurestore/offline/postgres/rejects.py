"""Rejects and dead letters: records refused by a backfill or a worker, and the worker's dead
letters recorded before they are sent and marked after."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ...exceptions import InvalidInputError
from .sql import _create_stage
from .tables import TablesMixin, qident


class RejectsMixin(TablesMixin):
    """Rejects of ``PostgresOfflineStore`` (writes through ``_staged_insert`` of the history part)."""

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
                sent = await conn.fetch(f'SELECT r.source, r.partition, r."offset" '
                                        f'FROM {target} r JOIN _fs_stage_dead d '
                                        'USING ("source", "partition", "offset") WHERE r.sent_at IS NOT NULL')
        return {(r["source"], r["partition"], r["offset"]) for r in sent}

    async def mark_dead_letters(
        self, source: str, positions: Sequence[tuple[int, int]], error: str | None = None
    ) -> None:
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
        sql = (f'SELECT source, partition, "offset", reason, detail, payload, at '
               f'FROM {self.qualified(self.rejects_table())}')
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
