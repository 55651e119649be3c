"""Backfill progress: chunks of a backfill run claimed and recorded in
``{project}__backfill_progress``, so an interrupted run resumes where it stopped."""

from __future__ import annotations

from typing import Any, Mapping

from .tables import TablesMixin, table_name


class ProgressMixin(TablesMixin):
    """Backfill progress of ``PostgresOfflineStore``."""

    def backfill_progress_table(self) -> str:
        return table_name(self.project, "backfill_progress")

    async def ensure_backfill_progress(self) -> None:
        """Create ``{project}__backfill_progress``: (view, version, run, chunk) -> info, done_at."""
        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                   f"migrate:{self.schema}:{self.project}")
                await conn.execute(
                    f'CREATE TABLE IF NOT EXISTS {q} ("view" text NOT NULL, "version" int NOT NULL, '
                    f'"run" text NOT NULL, '
                    f'"chunk" text NOT NULL, "info" jsonb, "done_at" timestamptz NOT NULL DEFAULT now(), '
                    f'PRIMARY KEY ("view", "version", "run", "chunk"))')

    async def backfill_claim(self, view: str, version: int, run: str, chunk: str, info: Mapping[str, Any]) -> dict:
        """Insert ``chunk`` with ``info`` unless it exists; return the stored info (first writer wins)."""
        import json

        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            await conn.execute(f'INSERT INTO {q} ("view", "version", "run", "chunk", "info") '
                               f'VALUES ($1, $2, $3, $4, $5::jsonb) '
                               f'ON CONFLICT DO NOTHING', view, int(version), run, chunk, json.dumps(info))
            stored = await conn.fetchval(f'SELECT "info" FROM {q} WHERE "view" = $1 AND "version" = $2 AND "run" = $3 '
                                         f'AND "chunk" = $4', view, int(version), run, chunk)
        return json.loads(stored) if isinstance(stored, str) else dict(stored or {})

    async def backfill_progress(self, view: str, version: int, run: str) -> dict[str, dict]:
        """Chunks recorded for a run: chunk -> info."""
        import json

        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f'SELECT "chunk", "info" FROM {q} '
                                    f'WHERE "view" = $1 AND "version" = $2 AND "run" = $3',
                                    view, int(version), run)
        return {r[0]: (json.loads(r[1]) if isinstance(r[1], str) else dict(r[1] or {})) for r in rows}

    async def backfill_reset(self, view: str, version: int, run: str) -> int:
        q = self.qualified(self.backfill_progress_table())
        async with self.pool.acquire() as conn:
            status = await conn.execute(f'DELETE FROM {q} WHERE "view" = $1 AND "version" = $2 AND "run" = $3',
                                        view, int(version), run)
        return int(status.rsplit(" ", 1)[-1])
