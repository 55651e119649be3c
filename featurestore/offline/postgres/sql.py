"""SQL shared by the offline store's parts: event-log row filters and temporary staging tables."""

from __future__ import annotations

from typing import Any, Sequence

import asyncpg

from ...types import INT64, ValueType


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
