"""Feature history: upserts of feature values over time, their loads, and the backfill's binary
COPY payloads written idempotently."""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from ...definitions import FeatureView
from ...exceptions import InvalidInputError
from ...types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP
from .copy_binary import _chunks_of, encode_copy_binary
from .sql import _create_stage
from .tables import TablesMixin, qident
from .values import _to_py


class HistoryMixin(TablesMixin):
    """History writes and loads of ``PostgresOfflineStore`` (``_staged_insert`` also serves the
    rejects part)."""

    async def write_history(self, view: FeatureView, version: int, df: pd.DataFrame) -> int:
        """Upsert feature values of ``view`` version ``version``: ``df`` has ``key``, ``ts``
        (epoch ms), optional ``seq`` (else numbered per (key, ts) in row order) and feature
        columns (missing ones are NULL).  Returns the rows written."""
        if len(df) == 0:
            return 0
        for c in ("key", "ts"):
            if c not in df.columns:
                raise InvalidInputError(f"write_history({view.name!r}): frame lacks column {c!r}")
        n = len(df)
        seq = df["seq"] if "seq" in df.columns else df.groupby(["key", "ts"], sort=False).cumcount()
        key_vt = INT64 if view.entity.key_type == "int64" else STRING
        columns = ["entity_key", "event_time", "seq"]
        data = [_to_py(df["key"], key_vt), df["ts"].astype("int64").tolist(), seq.astype("int64").tolist()]
        for f in view.features:
            columns.append(f.name)
            data.append(_to_py(df[f.name], f.dtype) if f.name in df.columns else [None] * n)
        records = list(zip(*data))
        target = self.qualified(self.history_table(view.name, version))
        cols_sql = ", ".join(qident(c) for c in columns)
        updates = ", ".join(f"{qident(c)} = EXCLUDED.{qident(c)}" for c in columns[3:])
        updates = (updates + ", " if updates else "") + '"written_at" = now()'
        stage = "_fs_stage_history"
        return await self._staged_insert(
            target, columns, records, stage,
            f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage} "
            f'ON CONFLICT ("entity_key", "event_time", "seq") DO UPDATE SET {updates}')

    async def _staged_insert(self, target: str, columns: list[str], records: list, stage: str, insert_sql: str) -> int:
        """COPY ``records`` into a temporary ``stage`` shaped like ``target``, then run ``insert_sql``
        (which reads the stage) in the same transaction; returns the rows it inserted or updated."""
        cols_sql = ", ".join(qident(c) for c in columns)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await _create_stage(conn, stage, cols_sql, target)
                await conn.copy_records_to_table(stage, records=records, columns=columns)
                status = await conn.execute(insert_sql)
        return int(status.rsplit(" ", 1)[-1])

    async def load_history(self, view: FeatureView, version: int) -> pd.DataFrame:
        """All rows of a history table ordered by key, ts, seq (``key``, ``ts``, ``seq``, features)."""
        names = [f.name for f in view.features]
        sel = ", ".join(['"entity_key"', '"event_time"', '"seq"'] + [qident(c) for c in names])
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f'SELECT {sel} FROM {self.qualified(self.history_table(view.name, version))} '
                f'ORDER BY "entity_key", "event_time", "seq"'
            )
        cols = list(zip(*rows)) if rows else [()] * (3 + len(names))
        out = {"key": pd.Series(cols[0], dtype="int64" if view.entity.key_type == "int64" else object),
               "ts": pd.Series(cols[1], dtype="int64"), "seq": pd.Series(cols[2], dtype="int64")}
        for f, values in zip(view.features, cols[3:]):
            out[f.name] = pd.Series(values, dtype="float64" if f.dtype == FLOAT64 else object)
        return pd.DataFrame(out)

    def history_copy_payload(self, view: FeatureView, df: pd.DataFrame) -> tuple[list[str], bytes] | None:
        """``df`` (``key``, ``ts``, optional ``seq``, feature columns; sorted by key, ts as
        ``compute_batch`` returns it) encoded as one PostgreSQL binary COPY payload, built with
        numpy (no per-row Python).  NaN in float features and None are written as NULL.  Returns
        ``(columns, payload)``, or None when a feature type has no fast encoding (lists,
        embeddings): use ``write_history`` then."""
        n = len(df)
        key_kind = "int8" if view.entity.key_type == "int64" else "text"
        cols: list[tuple[str, str, Any, np.ndarray | None]] = [("entity_key", key_kind, df["key"], None),
                                                               ("event_time", "int8", df["ts"], None)]
        if "seq" in df.columns:
            seq = df["seq"].to_numpy(dtype="int64")
        else:
            codes = pd.factorize(df["key"])[0]
            ts = df["ts"].to_numpy(dtype="int64")
            idx = np.arange(n)
            change = np.ones(n, dtype=bool)
            if n > 1:
                change[1:] = (codes[1:] != codes[:-1]) | (ts[1:] != ts[:-1])
            d_codes, d_ts = np.diff(codes), np.diff(ts)
            if ((d_codes > 0) | ((d_codes == 0) & (d_ts >= 0))).all():  # sorted by key, ts: runs are (key, ts) groups
                seq = idx - np.maximum.accumulate(np.where(change, idx, 0))
            else:
                seq = df.groupby(["key", "ts"], sort=False).cumcount().to_numpy()
        cols.append(("seq", "int4", seq, None))
        kinds = {INT64: "int8", TIMESTAMP: "int8", FLOAT64: "float8", BOOL: "bool", STRING: "text"}
        for f in view.features:
            kind = kinds.get(f.dtype)
            if kind is None:
                return None
            cols.append((f.name, kind,
                         df[f.name] if f.name in df.columns else pd.Series([None] * n, dtype=object), None))
        return [c[0] for c in cols], encode_copy_binary([(kind, values) for _, kind, values, _ in cols], n)

    async def copy_history(self, view: FeatureView, version: int, columns: list[str], payload: bytes) -> int:
        """Write a ``history_copy_payload`` idempotently: a binary COPY straight into the history
        table (fast path: none of the rows exists yet); when a row already exists, the same rows
        go through a staging table and ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the values
        differ.  Returns the rows inserted or changed (0 when rewriting identical values)."""
        table = self.history_table(view.name, version)
        target = self.qualified(table)
        cols_sql = ", ".join(qident(c) for c in columns)
        feats = columns[3:]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                try:
                    async with conn.transaction():
                        status = await conn.copy_to_table(table, source=_chunks_of(payload), columns=columns,
                                                          schema_name=self.schema, format="binary")
                    return int(status.rsplit(" ", 1)[-1])
                except asyncpg.UniqueViolationError:
                    pass
                stage = "_fs_stage_history_copy"
                await _create_stage(conn, stage, cols_sql, target)
                await conn.copy_to_table(stage, source=_chunks_of(payload), columns=columns, format="binary")
                updates = ", ".join(f"{qident(c)} = EXCLUDED.{qident(c)}" for c in feats)
                updates = (updates + ", " if updates else "") + '"written_at" = now()'
                if feats:
                    mine = ", ".join(f"{target}.{qident(c)}" for c in feats)
                    theirs = ", ".join(f"EXCLUDED.{qident(c)}" for c in feats)
                    cond = f" WHERE ({mine}) IS DISTINCT FROM ({theirs})" if len(feats) > 1 else \
                        f" WHERE {mine} IS DISTINCT FROM {theirs}"
                else:
                    cond = " WHERE false"
                status = await conn.execute(
                    f"INSERT INTO {target} ({cols_sql}) SELECT {cols_sql} FROM {stage} "
                    f'ON CONFLICT ("entity_key", "event_time", "seq") DO UPDATE SET {updates}{cond}')
                return int(status.rsplit(" ", 1)[-1])
