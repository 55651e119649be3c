"""``PostgresOfflineStore``: the facade combining the offline store's parts (one mixin per job),
all sharing one asyncpg pool, project and schema."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pandas as pd

from ...definitions import EventSource
from ...exceptions import StoreUnavailableError
from .buckets import BucketsMixin
from .event_log import EventLogMixin
from .history import HistoryMixin
from .progress import ProgressMixin
from .rejects import RejectsMixin
from .scans import ScansMixin
from .segments import SegmentsMixin


class PostgresOfflineStore(EventLogMixin, ScansMixin, SegmentsMixin, HistoryMixin, RejectsMixin, BucketsMixin,
                           ProgressMixin):
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
