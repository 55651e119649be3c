"""History rows from Spark tasks into the view's PostgreSQL history table: each task encodes its
rows with the offline store's binary COPY (``history_copy_payload``) and writes them with
``copy_history``, the local backfill's upsert — a task retried, or a job run again, rewrites the
same rows and changes nothing."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from ..processing import PreparedView

__all__ = ["write_postgres_history"]


def write_postgres_history(history, pv: PreparedView, pg: dict) -> int:
    """Write ``history`` (Spark DataFrame: key, ts, seq, features); returns the rows inserted or changed."""
    view, version = pv.view, pv.version
    dsn, project, schema = pg["dsn"], pg["project"], pg.get("schema", "public")

    def write(batches):
        from ..offline.postgres import PostgresOfflineStore

        loop = asyncio.new_event_loop()
        store = loop.run_until_complete(PostgresOfflineStore.create(dsn, project, schema, max_size=1))
        changed = 0
        try:
            for batch in batches:
                frame = batch.to_pandas()
                if not len(frame):
                    continue
                payload = store.history_copy_payload(view, frame)
                if payload is None:
                    changed += loop.run_until_complete(store.write_history(view, version, frame))
                else:
                    changed += loop.run_until_complete(store.copy_history(view, version, *payload))
        finally:
            loop.run_until_complete(store.close())
            loop.close()
        yield pa.RecordBatch.from_pydict({"changed": [changed]})

    rows = history.mapInArrow(write, "changed long").collect()
    return sum(int(r["changed"]) for r in rows)
