"""Phase 1 of a backfill, the storage side: entity buckets and their spill to local disk.

Each event goes to the entity bucket ``crc32(key) % B`` (``hashtext`` for the event log,
computed by the server), ``B = shards × chunks``; bucket ``b`` belongs to shard ``b % shards``.
A shard's buckets are spilled to Arrow IPC files (one a bucket), so a bucket holds the complete
history of its entities (windows need every earlier event) in arrival order.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from featurestore.definitions import EventSource
from featurestore.offline.postgres import _tidy, event_id_column
from featurestore.types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP

__all__ = ["Spill", "crc_buckets", "shard_mask"]


# -- entity buckets -----------------------------------------------------------------------------

def crc_buckets(keys: pd.Series, n_buckets: int) -> np.ndarray:
    """``crc32(str(key)) % n_buckets`` per row (one crc32 per distinct key)."""
    codes, uniques = pd.factorize(keys)
    h = np.fromiter((zlib.crc32(str(k).encode()) for k in uniques), dtype=np.int64, count=len(uniques))
    return (h % n_buckets)[codes] if len(uniques) else np.zeros(len(keys), dtype=np.int64)


def shard_mask(keys: pd.Series, shards: int, shard: int) -> np.ndarray:
    """Stable split of entities across ``shards`` processes (crc32 of the key's text)."""
    if shards == 1:
        return np.ones(len(keys), dtype=bool)
    return crc_buckets(keys, shards) == shard


def _owner(raw_key, shards: int) -> int:
    """Shard that reports a row refused before it had a valid key (shard 0 when it has none)."""
    if raw_key is None or (isinstance(raw_key, float) and raw_key != raw_key) or shards == 1:
        return 0
    return zlib.crc32(str(raw_key).encode()) % shards


# -- spill: one Arrow IPC file per bucket ------------------------------------------------------

def _arrow_type(vt) -> pa.DataType:
    if vt in (INT64, TIMESTAMP):
        return pa.int64()
    if vt == FLOAT64:
        return pa.float64()
    if vt == BOOL:
        return pa.bool_()
    if vt == STRING:
        return pa.string()
    if vt.is_list:
        return pa.list_(pa.int64() if vt.element == "int64" else pa.float64())
    return pa.string()


class Spill:
    """Events of this shard's buckets on local disk, appended in arrival order."""

    def __init__(self, directory: Path, source: EventSource):
        self.dir = directory
        self.source = source
        self.fields = [f for f in source.schema if f != source.timestamp_field]
        key_t = pa.int64() if source.schema[source.entity_field] == INT64 else pa.string()
        self.schema = pa.schema([("__key", key_t), ("__ts", pa.int64()), ("__eid", pa.string()),
                                 ("__part", pa.int32()), ("__off", pa.int64())]
                                + [(f"f_{f}", _arrow_type(source.schema[f])) for f in self.fields])
        self.writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self.sinks: dict[int, object] = {}
        self.rows: dict[int, int] = {}

    def add(self, frame: pd.DataFrame, buckets: np.ndarray) -> None:
        """``frame``: ``__key``, ``__ts``, ``__eid``, ``__part``, ``__off`` and the schema fields."""
        if not len(frame):
            return
        cols = {"__key": frame["__key"], "__ts": frame["__ts"], "__eid": frame["__eid"],
                "__part": frame["__part"], "__off": frame["__off"]}
        for f in self.fields:
            s = frame[f] if f in frame.columns else pd.Series([None] * len(frame), dtype=object)
            if self.source.schema[f] in (INT64, TIMESTAMP, FLOAT64, BOOL) and s.dtype == object:
                s = s.where(s.notna(), None)
            cols[f"f_{f}"] = s
        table = pa.Table.from_pandas(pd.DataFrame(cols, index=None).reset_index(drop=True), schema=self.schema,
                                     preserve_index=False)
        order = np.argsort(buckets, kind="stable")
        sorted_b = buckets[order]
        table = table.take(pa.array(order))
        bounds = np.flatnonzero(np.diff(sorted_b)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(sorted_b)]])
        for lo, hi in zip(starts, ends):
            b = int(sorted_b[lo])
            if b not in self.writers:
                sink = pa.OSFile(str(self.dir / f"b{b}.arrow"), "wb")
                self.sinks[b] = sink
                self.writers[b] = pa.ipc.new_stream(sink, self.schema)
            self.writers[b].write_table(table.slice(lo, hi - lo))
            self.rows[b] = self.rows.get(b, 0) + int(hi - lo)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        for s in self.sinks.values():
            s.close()
        self.writers.clear()
        self.sinks.clear()

    def read(self, bucket: int) -> pd.DataFrame:
        """The bucket's events in arrival order ``(partition, offset)``, shaped for ``compute_batch``."""
        src = self.source
        path = self.dir / f"b{bucket}.arrow"
        if path.exists():
            with pa.memory_map(str(path)) as mm:
                table = pa.ipc.open_stream(mm).read_all()
        else:
            table = self.schema.empty_table()
        raw = table.to_pandas()
        del table
        raw = raw.sort_values(["__part", "__off"], kind="stable").reset_index(drop=True)
        key_vt = src.schema[src.entity_field]
        out = {"key": _tidy(raw["__key"], key_vt), "ts": raw["__ts"].astype("int64")}
        for f in src.schema:
            if f == src.timestamp_field:
                out[f] = out["ts"].copy()
            elif f != "ts":
                col = raw[f"f_{f}"]
                vt = src.schema[f]
                out[f] = col if vt.is_list else _tidy(col, vt)
        id_col = event_id_column(src)
        if id_col not in out:
            out[id_col] = raw["__eid"].astype(object).where(raw["__eid"].notna(), None)
        out["__part"] = raw["__part"].astype("int64")
        out["__off"] = raw["__off"].astype("int64")
        return pd.DataFrame(out)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
