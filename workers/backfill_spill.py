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
from featurestore.events_layout import event_schema, events_frame, source_fields
from featurestore.types import BOOL, FLOAT64, INT64, TIMESTAMP

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

class Spill:
    """Events of this shard's buckets on local disk, appended in arrival order."""

    def __init__(self, directory: Path, source: EventSource):
        self.dir = directory
        self.source = source
        self.fields = source_fields(source)
        self.schema = event_schema(source, bucket=False)
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
        raw = table.to_pandas(integer_object_nulls=True)  # nullable ints as ints: float64 is exact to 2^53 only
        del table
        return events_frame(src, raw)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
