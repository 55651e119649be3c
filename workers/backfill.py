"""Backfill: the same transforms over historical events, into the offline (and online) store.

Sources: the view source's history file (Parquet or CSV), the PostgreSQL event log, or the
Kafka topic itself.  Whatever the source, a run has two phases:

1. **read and shard**: the source is read once, in batches; each event goes to the entity
   bucket ``crc32(key) % B`` (``hashtext`` for the event log, computed by the server),
   ``B = shards × chunks``; bucket ``b`` belongs to shard ``b % shards``.  A shard's
   buckets are spilled to Arrow IPC files on local disk, so a bucket holds the complete
   history of its entities (windows need every earlier event) in arrival order;
2. **compute and write**, bucket by bucket (a *chunk*): ``compute_batch`` gives the values
   as of each accepted event (the batch path of the transforms), written to the view's
   history table with a binary COPY (an upsert that changes nothing when a row is already
   there with the same values); refused rows go to the rejects table; with Kafka as the
   source the accepted events also go to the event log (keyed by partition and offset);
   with ``online`` each entity's final ``ViewState`` goes to Redis.  The chunk is then
   marked done in ``{project}__backfill_progress``: a rerun after a crash skips it.

Memory is bounded by the read batch and the largest chunk, not by the history length
(the computation of chunk i+1 runs in a thread while chunk i is written).

Hand-off to the worker (Kafka and event-log sources, ``online``): the run records the
per-partition cut-over (the last offset it covers) and, after the last chunk of the last
shard, writes it into the worker group's Redis offsets hash with the same compare-and-set
Lua commit the worker uses; a worker started afterwards resumes right after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from featurestore.definitions import EventSource, FeatureView, FileHistory
from featurestore.exceptions import FeatureStoreError, InvalidInputError
from featurestore.offline.postgres import _tidy, event_id_column
from featurestore.schema import validate_frame, validator_for
from featurestore.types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP
from transforms import ViewState, compute_batch

from .processor import PreparedView, SourceProcessor, encode_applied

logger = logging.getLogger(__name__)

SOURCES = ("files", "postgres", "kafka")
CHUNK_EVENTS = 400_000  # target events per chunk when the number of chunks is automatic
READ_ROWS = 200_000  # rows per read batch
ONLINE_BATCH = 2000  # states per Redis commit
SAMPLE_REJECTS = 50  # rejects kept in memory for the report (all go to the rejects table)


class BackfillError(FeatureStoreError):
    """A backfill that cannot go on (fenced hand-off, strict mode, worker ahead of the cut-over)."""


@dataclass
class BackfillOptions:
    source: str = "files"
    start_ms: int | None = None
    end_ms: int | None = None
    shards: int = 1
    shard: int = 0
    online: bool = False
    group: str | None = None  # worker group whose offsets the hand-off writes (kafka/postgres + online)
    strict: bool = False
    chunks: int | None = None  # chunks per shard (None: about CHUNK_EVENTS events each)
    restart: bool = False  # forget the progress of this run and start again
    progress: bool = False  # tqdm progress bars on stderr
    spill_dir: str | None = None
    write: bool = True  # False: read and compute only (benchmarks)
    read_rows: int = READ_ROWS
    kafka_options: dict = field(default_factory=dict)
    idle_timeout_s: float = 10.0  # kafka: stop reading a partition after this long without records


@dataclass
class BackfillReport:
    """What a backfill read, wrote and refused."""

    run: str = ""
    events_read: int = 0
    rows_written: int = 0
    rows_changed: int = 0
    events_logged: int = 0
    entities_online: int = 0
    chunks: int = 0
    chunks_skipped: int = 0
    rejected: int = 0
    rejected_by_reason: dict = field(default_factory=dict)
    rejects: list = field(default_factory=list)  # a sample, with locations
    cutover: dict = field(default_factory=dict)  # "topic:partition" -> last offset covered
    offsets_committed: bool = False
    already_complete: bool = False
    seconds: float = 0.0
    phases: dict = field(default_factory=lambda: {"read_s": 0.0, "compute_s": 0.0, "encode_s": 0.0, "write_s": 0.0})

    def reject(self, location: str, reason: str, detail) -> None:
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        if len(self.rejects) < SAMPLE_REJECTS:
            self.rejects.append({"location": location, "reason": reason, "detail": detail})

    def as_dict(self) -> dict:
        return {"run": self.run, "events_read": self.events_read, "rows_written": self.rows_written,
                "rows_changed": self.rows_changed, "events_logged": self.events_logged,
                "entities_online": self.entities_online, "chunks": self.chunks, "chunks_skipped": self.chunks_skipped,
                "rejected": self.rejected, "rejected_by_reason": self.rejected_by_reason,
                "cutover": self.cutover, "offsets_committed": self.offsets_committed,
                "already_complete": self.already_complete, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_read / self.seconds) if self.seconds and self.events_read else None,
                "phases": {k: round(v, 3) for k, v in self.phases.items()}}


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


# -- readers: each yields (frame for the spill, buckets, refused rows) ---------------------------

def _file_location(path: str, part: int, off: int) -> str:
    return f"{path}:row {off}"


def _kafka_location(topic: str, part: int, off: int) -> str:
    return f"{topic}:{part}@{off}" if part >= 0 else f"event log row {off} (partition {part})"


def iter_file_history(source: EventSource, read_rows: int):
    """Validated batches of the source's history file: (valid frame with ``__part``/``__off``, rejects).

    ``__part`` = -1 and ``__off`` = the row number in the file (0-based, data rows)."""
    history = source.history
    if not isinstance(history, FileHistory):
        raise InvalidInputError(f"event source {source.name!r} has no history file (history={history!r}): "
                                f"use --source postgres or kafka")
    path = history.path
    if not Path(path).exists():
        raise InvalidInputError(f"history file {path} of source {source.name!r} does not exist")
    row0 = 0
    started_ms = int(time.time() * 1000)  # max_future's reference for files without a reference column
    if history.format == "parquet":
        import pyarrow.parquet as pq

        batches = (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=read_rows))
    else:
        batches = pd.read_csv(path, chunksize=read_rows)
    for raw in batches:
        raw.index = pd.RangeIndex(row0, row0 + len(raw))
        row0 += len(raw)
        ref: Any = started_ms
        if history.reference_column is not None:
            if history.reference_column not in raw.columns:
                raise InvalidInputError(f"history file {path} of source {source.name!r} has no column "
                                        f"{history.reference_column!r} (FileHistory reference_column)")
            ref = pd.to_numeric(raw[history.reference_column], errors="coerce").fillna(started_ms).to_numpy("int64")
        valid, rejects = validate_frame(source, raw, ref)
        valid = valid.drop(columns="__ref")
        valid["__part"] = -1
        valid["__off"] = valid.index.to_numpy(dtype="int64")
        if "__event_id" not in valid.columns:
            valid["__event_id"] = None
        valid = valid.rename(columns={"__event_id": "__eid"})
        refused = []
        for r in rejects.itertuples():
            row = raw.loc[r.row]
            refused.append((-1, int(r.row), r.reason, r.detail, orjson.dumps(row.to_dict(), default=str),
                            row.get(source.entity_field)))
        yield valid, refused


def file_rows_estimate(source: EventSource) -> int:
    history = source.history
    if not isinstance(history, FileHistory) or not Path(history.path).exists():
        return 0
    if history.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(history.path).metadata.num_rows
    return max(1, os.path.getsize(history.path) // 60)


class KafkaHistory:
    """The topic read from the beginning (or a time) up to a fixed bound per partition."""

    def __init__(self, source: EventSource, options: dict, idle_timeout_s: float = 10.0):
        from kafka import KafkaConsumer, TopicPartition

        self.source = source
        self.consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                      max_poll_records=5000, max_partition_fetch_bytes=4 * 1024 * 1024,
                                      **options)
        deadline = time.monotonic() + 30
        parts = None
        while not parts:
            parts = self.consumer.partitions_for_topic(source.topic)
            if not parts:
                if time.monotonic() > deadline:
                    raise InvalidInputError(f"topic {source.topic!r} of source {source.name!r} has no partitions")
                self.consumer.poll(timeout_ms=200)
        self.tps = [TopicPartition(source.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.tps)
        self.idle_timeout_s = idle_timeout_s

    def bounds(self) -> tuple[dict[int, int], dict[int, int]]:
        """(beginning, end) offsets per partition; end is exclusive."""
        begin = self.consumer.beginning_offsets(self.tps)
        end = self.consumer.end_offsets(self.tps)
        return ({tp.partition: int(begin[tp]) for tp in self.tps}, {tp.partition: int(end[tp]) for tp in self.tps})

    def close(self) -> None:
        self.consumer.close()

    def read(self, ends: dict[int, int], end_ms: int | None, from_ms: int | None, read_rows: int, cut: dict):
        """Yield (valid frame, refused) batches; fills ``cut`` (partition -> last offset read).

        A partition stops at its bound, or (``end_ms``) at its first valid record whose event
        time is after ``end_ms``: the cut-over is a prefix of each partition."""
        validate = validator_for(self.source)
        src = self.source
        todo = {tp.partition for tp in self.tps if ends.get(tp.partition, 0) > 0}
        by_part = {tp.partition: tp for tp in self.tps}
        if from_ms is not None and todo:
            found = self.consumer.offsets_for_times({by_part[p]: from_ms for p in todo})
            for p in list(todo):
                hit = found.get(by_part[p])
                self.consumer.seek(by_part[p], hit.offset if hit is not None else ends[p])
        elif todo:
            self.consumer.seek_to_beginning(*[by_part[p] for p in todo])
        for tp in self.tps:
            if tp.partition not in todo:
                self.consumer.pause(tp)
        for p in list(todo):
            if self.consumer.position(by_part[p]) >= ends[p]:
                todo.discard(p)
                self.consumer.pause(by_part[p])
        rows, refused = [], []
        last_seen = time.monotonic()
        while todo:
            batch = self.consumer.poll(timeout_ms=500)
            if not batch:
                if time.monotonic() - last_seen > self.idle_timeout_s:
                    logger.warning("kafka: no records for %.0f s on partitions %s below their end offsets; stopping there",
                                   self.idle_timeout_s, sorted(todo))
                    break
                continue
            last_seen = time.monotonic()
            for tp, records in batch.items():
                p = tp.partition
                if p not in todo:
                    continue
                for rec in records:
                    if rec.offset >= ends[p]:
                        todo.discard(p)
                        break
                    raw = rec.value
                    if not raw or len(raw) > src.max_message_bytes:
                        reason = "oversize" if raw else "empty_message"
                        refused.append((p, rec.offset, reason, f"message of {len(raw or b'')} bytes", raw, None))
                        cut[p] = rec.offset
                        continue
                    try:
                        obj = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        refused.append((p, rec.offset, "malformed_json", str(exc), raw, None))
                        cut[p] = rec.offset
                        continue
                    result = validate(obj, rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0
                                      else int(time.time() * 1000))  # as the worker judges max_future
                    if not result.ok:
                        refused.append((p, rec.offset, result.reason, result.detail, raw,
                                        obj.get(src.entity_field) if isinstance(obj, dict) else None))
                        cut[p] = rec.offset
                        continue
                    if end_ms is not None and result.ts_ms > end_ms:
                        todo.discard(p)  # cut-over by event time: this partition's prefix ends here
                        break
                    rows.append((result.key, result.ts_ms, result.event_id, p, rec.offset, result.values))
                    cut[p] = rec.offset
                    if rec.offset + 1 >= ends[p]:
                        todo.discard(p)
                        break
                if p not in todo:
                    self.consumer.pause(tp)
            if len(rows) >= read_rows:
                yield self._frame(rows), refused
                rows, refused = [], []
        if rows or refused:
            yield self._frame(rows), refused

    def _frame(self, rows) -> pd.DataFrame:
        if not rows:
            return pd.DataFrame({"__key": [], "__ts": [], "__eid": [], "__part": [], "__off": []})
        keys, ts, ids, parts, offs, values = zip(*rows)
        frame = pd.DataFrame(list(values))
        frame["__key"] = list(keys)
        frame["__ts"] = np.asarray(ts, dtype="int64")
        frame["__eid"] = list(ids)
        frame["__part"] = np.asarray(parts, dtype="int64")
        frame["__off"] = np.asarray(offs, dtype="int64")
        return frame


# -- the computation of one chunk -----------------------------------------------------------------

def add_batch_transforms(view: FeatureView, events: pd.DataFrame) -> pd.DataFrame:
    for bt in view.batch_transforms():
        events[bt.column] = bt.apply(events).to_numpy() if len(events) else []
    return events


def compute_history(view: FeatureView, events: pd.DataFrame, start_ms: int | None = None):
    """Values as of each accepted event (rows with ts >= start_ms), the refused rows and the accepted mask."""
    id_col = event_id_column(view.source)
    result = compute_batch(view.agg_specs(), events, None, view.source.allowed_lateness,
                           id_column=id_col if view.source.event_id_field is not None and id_col in events.columns else None)
    values = result.values
    if start_ms is not None:
        values = values[values["ts"] >= start_ms].reset_index(drop=True)
    return values, result.rejects, result.accepted


def final_states(pv: PreparedView, events: pd.DataFrame) -> list:
    """Each entity's state after all its accepted events (arrival order), as online records."""
    if not len(events):
        return []
    id_col = event_id_column(pv.view.source)
    cols = [c for c in events.columns if c not in ("key", "ts", id_col, "__part", "__off")]
    codes, uniques = pd.factorize(events["key"])
    order = np.argsort(codes, kind="stable")
    rows = events[cols].iloc[order].to_dict("records")
    ts = events["ts"].to_numpy()[order].tolist()
    ids = events[id_col].iloc[order].tolist() if id_col in events.columns else [None] * len(events)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes[order])) + 1, [len(order)]]).tolist()
    records = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        state = ViewState(pv.specs, pv.lateness_ms)
        state.apply(list(zip(ts[lo:hi], rows[lo:hi], ids[lo:hi])))
        records.append(SourceProcessor.record(pv, str(uniques[codes[order[lo]]]), state))
    return records


@dataclass
class _Chunk:
    bucket: int
    events: int
    history: tuple | None  # (columns, payload) of the binary COPY, or None
    values: pd.DataFrame | None  # when no fast encoding exists
    rejects: list
    log_frame: pd.DataFrame | None
    records: list
    compute_s: float
    encode_s: float
    rows: int = 0


# -- run identity, cut-over -----------------------------------------------------------------------

def run_fingerprint(pv: PreparedView, opts: BackfillOptions, offline, group: str | None) -> str:
    """Identity of a rebuild: view definition and version, source (and file identity), range,
    shard count, online/group.  The shard index is not part of it: all shards of a rebuild
    share the run (and its cut-over); their chunks have distinct ids."""
    src = pv.view.source
    ident = {"view": pv.view.name, "fingerprint": pv.view.fingerprint(), "version": pv.version, "source": opts.source,
             "start": opts.start_ms, "end": opts.end_ms, "shards": opts.shards, "chunks": opts.chunks,
             "online": opts.online, "group": group if opts.online else None}
    if opts.source == "files" and isinstance(src.history, FileHistory) and Path(src.history.path).exists():
        st = os.stat(src.history.path)
        ident["file"] = [str(Path(src.history.path).resolve()), st.st_size, st.st_mtime_ns]
    elif opts.source == "postgres":
        ident["table"] = offline.events_table(src.name)
    elif opts.source == "kafka":
        ident["topic"] = src.topic
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _has_lifetime(pv: PreparedView) -> bool:
    return any(s.window_ms is None for s in pv.specs)


def _horizon(pv: PreparedView) -> int:
    return max((s.window_ms + (s.hop_ms or 0) for s in pv.specs if s.window_ms), default=0) + pv.lateness_ms


# -- the run --------------------------------------------------------------------------------------

async def run_backfill(pv: PreparedView, offline, online, opts: BackfillOptions | str = "files", *legacy,
                       **kw) -> BackfillReport:
    """Backfill one view; see the module docstring.  ``opts`` may be a ``BackfillOptions`` or the
    source name followed by the old positional arguments (start, end, shards, shard, online)."""
    if not isinstance(opts, BackfillOptions):
        names = ["start_ms", "end_ms", "shards", "shard", "online"]
        opts = BackfillOptions(source=opts, **dict(zip(names, legacy)),
                               **{("online" if k == "write_online" else k): v for k, v in kw.items()})
    return await _Backfill(pv, offline, online, opts).run()


class _Backfill:
    def __init__(self, pv: PreparedView, offline, online, opts: BackfillOptions):
        if opts.source not in SOURCES:
            raise InvalidInputError(f"unknown backfill source {opts.source!r}: use one of {', '.join(SOURCES)}")
        if not 0 <= opts.shard < opts.shards:
            raise InvalidInputError(f"shard {opts.shard} must be in [0, shards {opts.shards})")
        if opts.chunks is not None and opts.chunks < 1:
            raise InvalidInputError("chunks must be at least 1")
        self.pv, self.view, self.src = pv, pv.view, pv.view.source
        self.offline, self.online, self.opts = offline, online, opts
        self.handoff = opts.online and opts.source in ("kafka", "postgres")
        self.group = opts.group or (f"featurestore-{online.project}" if online is not None else None)
        self.report = BackfillReport()
        self.epoch: str | None = None
        self.location = (lambda p, o: _file_location(self.src.history.path, p, o)) if opts.source == "files" else \
            (lambda p, o: _kafka_location(self.src.topic, p, o))

    # -- helpers
    def _bar(self, total, desc):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="ev", unit_scale=True, disable=not self.opts.progress,
                    dynamic_ncols=True, smoothing=0.1)

    def _reject_rows(self, refused: list) -> list[dict]:
        """(partition, offset, reason, detail, payload, raw key) -> rejects table rows (this shard's only)."""
        out = []
        for part, off, reason, detail, payload, raw_key in refused:
            if _owner(raw_key, self.opts.shards) != self.opts.shard:
                continue
            self.report.reject(self.location(part, off), reason, detail)
            out.append({"source": self.src.name, "partition": part, "offset": off, "reason": reason,
                        "detail": detail, "payload": payload})
        return out

    async def _write_rejects(self, rows: list[dict]) -> None:
        if rows and self.opts.write:
            await self.offline.write_rejects(rows)
        if rows and self.opts.strict:
            first = self.report.rejects[0]
            raise BackfillError(f"--strict: {len(rows)} row(s) refused, first at {first['location']}: "
                                f"{first['reason']}: {first['detail']}")

    # -- main
    async def run(self) -> BackfillReport:
        started = time.perf_counter()
        o, rep = self.opts, self.report
        if o.write:
            await self.offline.migrate([self.src], [(self.view, self.pv.version)])
            await self.offline.ensure_backfill_progress()
        run = rep.run = run_fingerprint(self.pv, o, self.offline, self.group)
        name, version = self.view.name, self.pv.version
        if o.restart and o.write:
            await self.offline.backfill_reset(name, version, run)
        done = await self.offline.backfill_progress(name, version, run) if o.write else {}
        if "complete" in done:
            rep.already_complete = True
            rep.cutover = done["complete"].get("cutover", {})
            rep.offsets_committed = bool(done["complete"].get("offsets_committed"))
            rep.seconds = time.perf_counter() - started
            return rep

        kafka = KafkaHistory(self.src, o.kafka_options, o.idle_timeout_s) if o.source == "kafka" else None
        try:
            header = await self._header(run, kafka)
            self._stored = header.get("stored", {})
            chunks = int(header["chunks"])
            n_buckets = chunks * o.shards
            mine = [o.shard + o.shards * c for c in range(chunks)]
            todo = [b for b in mine if f"b{b}" not in done]
            rep.chunks = len(mine)
            rep.chunks_skipped = len(mine) - len(todo)
            if self.handoff or o.online:
                self.online.refuse_if_consumed([self.src.topic], f"backfill of {self.pv.view.name!r} --online")
                self.epoch = self.online.ensure_epoch(uuid.uuid4().hex)
            spill = Spill(Path(tempfile.mkdtemp(prefix=f"fs-backfill-{run}-s{o.shard}-", dir=o.spill_dir)), self.src)
            try:
                if todo or o.source == "kafka":  # kafka: the cut-over is found by reading
                    cut = await self._read(spill, header, n_buckets, set(todo), kafka)
                else:
                    cut = {int(p): int(v) for p, v in header.get("cut", {}).items()}
                if kafka is not None:
                    kafka.close()
                    kafka = None
                self._check_cut(header, cut)
                await self._chunks(spill, todo)
            finally:
                spill.close()
                spill.remove()
            await self.offline.backfill_claim(name, version, run, f"shard{o.shard}",
                                              {"cutover": rep.cutover}) if o.write else None
            if o.write:
                progress = await self.offline.backfill_progress(name, version, run)
                shards_done = sum(1 for k in progress if k.startswith("shard"))
                if shards_done == o.shards:
                    if self.handoff:
                        self._commit_offsets(header)
                    await self.offline.backfill_claim(name, version, run, "complete",
                                                      {"cutover": rep.cutover, "offsets_committed": rep.offsets_committed})
        finally:
            if kafka is not None:
                kafka.close()
        rep.seconds = time.perf_counter() - started
        return rep

    async def _header(self, run: str, kafka: KafkaHistory | None) -> dict:
        """The run's shared facts, decided by its first process: chunks per shard, the source bound
        (kafka end offsets / event-log last offsets) and the group's stored offsets (the CAS base)."""
        o = self.opts
        info: dict = {}
        if o.source == "files":
            estimate = file_rows_estimate(self.src)
        elif o.source == "postgres":
            estimate = await self.offline.count_events(self.src)
            info["cut"] = {str(p): off for p, off in (await self.offline.event_log_offsets(self.src)).items()}
        else:
            begin, end = kafka.bounds()
            estimate = sum(max(0, end[p] - begin[p]) for p in end)
            info["ends"] = {str(p): e for p, e in end.items()}
        info["estimate"] = int(estimate)
        info["chunks"] = o.chunks or max(1, math.ceil(estimate / o.shards / CHUNK_EVENTS))
        if self.handoff:
            stored = self.online.load_offsets(self.group)
            info["stored"] = {k: v for k, v in stored.items() if k.rsplit(":", 1)[0] == self.src.topic}
        if not o.write:
            return info
        return await self.offline.backfill_claim(self.view.name, self.pv.version, run, "run", info)

    async def _read(self, spill: Spill, header: dict, n_buckets: int, todo: set[int], kafka) -> dict[int, int]:
        """Phase 1: read the source once, validate, spill this shard's undone buckets.  Returns the
        cut (partition -> last offset read) for Kafka and the event log."""
        o, rep = self.opts, self.report
        t0 = time.perf_counter()
        bar = self._bar(int(header.get("estimate", 0)) or None, "read")
        cut: dict[int, int] = {}
        reject_rows: list[dict] = []
        loop = asyncio.get_running_loop()
        if o.source == "postgres":
            cut = {int(p): int(v) for p, v in header["cut"].items()}
            async for frame in self.offline.iter_events_by_bucket(self.src, n_buckets, sorted(todo), o.end_ms, cut,
                                                                  o.read_rows):
                id_col = event_id_column(self.src)
                frame = frame.rename(columns={"key": "__key", "ts": "__ts", id_col: "__eid",
                                              "__partition": "__part", "__offset": "__off"})
                spill.add(frame, frame["bucket"].to_numpy())
                bar.update(len(frame))
        else:
            if o.source == "files":
                batches = iter_file_history(self.src, o.read_rows)
            else:
                ends = {int(p): int(e) for p, e in header["ends"].items()}
                from_ms = None
                if o.start_ms is not None and not o.online and not _has_lifetime(self.pv):
                    from_ms = o.start_ms - _horizon(self.pv)  # the broker may answer 0: still correct
                batches = kafka.read(ends, o.end_ms, from_ms, o.read_rows, cut)
            sentinel = object()
            while True:
                item = await loop.run_in_executor(None, next, batches, sentinel)
                if item is sentinel:
                    break
                frame, refused = item
                reject_rows += self._reject_rows(refused)
                if reject_rows and (o.strict or len(reject_rows) >= 10_000):
                    await self._write_rejects(reject_rows)
                    reject_rows = []
                if o.source == "files" and o.end_ms is not None and len(frame):
                    frame = frame[frame["__ts"].to_numpy() <= o.end_ms]
                if len(frame):
                    buckets = crc_buckets(frame["__key"], n_buckets)
                    keep = np.isin(buckets, list(todo))
                    if not keep.all():
                        frame, buckets = frame[keep], buckets[keep]
                    spill.add(frame, buckets)
                bar.update(len(frame) + len(refused))
        bar.close()
        spill.close()
        await self._write_rejects(reject_rows)
        rep.phases["read_s"] += time.perf_counter() - t0
        return cut

    def _check_cut(self, header: dict, cut: dict[int, int]) -> None:
        rep = self.report
        if self.opts.source == "kafka":
            rep.cutover = {f"{self.src.topic}:{p}": off for p, off in sorted(cut.items())}
        elif self.opts.source == "postgres":
            stored = header.get("stored", {})
            merged = {f"{self.src.topic}:{p}": off for p, off in sorted(cut.items())}
            for name, off in stored.items():  # records after the last logged event were dead letters
                merged[name] = max(merged.get(name, -1), int(off))
            rep.cutover = merged
        if self.handoff and self.opts.source == "kafka":
            ahead = {n: v for n, v in header.get("stored", {}).items() if v > rep.cutover.get(n, -1)}
            if ahead:
                raise BackfillError(
                    f"group {self.group!r} already applied offsets {ahead} beyond this backfill's cut-over "
                    f"{rep.cutover}: the worker's online state is newer.  Rebuild from its event log "
                    f"(--source postgres) or run without --online")

    async def _chunks(self, spill: Spill, todo: list[int]) -> None:
        """Phase 2: compute chunk i+1 (thread) while chunk i is written (event loop)."""
        rep = self.report
        loop = asyncio.get_running_loop()
        bar = self._bar(sum(spill.rows.get(b, 0) for b in todo), "compute")
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill")
        pending: asyncio.Task | None = None
        try:
            for b in todo:
                chunk = await loop.run_in_executor(pool, self._prepare, spill, b)
                rep.phases["compute_s"] += chunk.compute_s
                rep.phases["encode_s"] += chunk.encode_s
                if pending is not None:
                    await pending
                pending = asyncio.create_task(self._write(chunk, bar))
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            pool.shutdown(wait=True)
            bar.close()

    def _prepare(self, spill: Spill, bucket: int) -> _Chunk:
        o = self.opts
        t0 = time.perf_counter()
        events = spill.read(bucket)
        events = add_batch_transforms(self.view, events)
        values, rejects, accepted = compute_history(self.view, events, o.start_ms)
        refused = []
        if len(rejects):
            parts = events["__part"].to_numpy()
            offs = events["__off"].to_numpy()
            for r in rejects.itertuples():
                i = int(r.row)
                refused.append((int(parts[i]), int(offs[i]), r.reason, r.detail, None, None))
        log_frame = None
        if o.source == "kafka" and o.write:
            acc = events[accepted]
            id_col = event_id_column(self.src)
            log_frame = acc.drop(columns=[c for c in ("key", "ts", id_col) if c in acc.columns and c not in self.src.schema]
                                 + [bt.column for bt in self.view.batch_transforms()])
            log_frame = log_frame.rename(columns={"__part": "__partition", "__off": "__offset"})
            log_frame["__key"] = acc["key"].to_numpy()
            log_frame["__ts"] = acc["ts"].to_numpy()
            log_frame["__event_id"] = acc[id_col].to_numpy() if id_col in acc.columns else None
        records = final_states(self.pv, events[accepted].reset_index(drop=True)) if o.online else []
        t1 = time.perf_counter()
        history, plain = None, None
        if o.write:
            history = self.offline.history_copy_payload(self.view, values)
            if history is None:
                plain = values
        return _Chunk(bucket, len(events), history, plain, refused, log_frame, records, t1 - t0,
                      time.perf_counter() - t1, len(values))

    async def _write(self, chunk: _Chunk, bar) -> None:
        o, rep = self.opts, self.report
        t0 = time.perf_counter()
        rep.events_read += chunk.events
        rep.rows_written += chunk.rows
        if chunk.rejects:
            rows = self._reject_rows(chunk.rejects)
            await self._write_rejects(rows)
        if o.write:
            if chunk.log_frame is not None and len(chunk.log_frame):
                rep.events_logged += await self.offline.write_events(self.src, chunk.log_frame)
            if chunk.history is not None and chunk.rows:
                rep.rows_changed += await self.offline.copy_history(self.view, self.pv.version, *chunk.history)
            elif chunk.values is not None and len(chunk.values):
                rep.rows_changed += await self.offline.write_history(self.view, self.pv.version, chunk.values)
        if chunk.records:
            self._commit_states(chunk.records)
            rep.entities_online += len(chunk.records)
        if o.write:
            await self.offline.backfill_claim(self.view.name, self.pv.version, rep.run, f"b{chunk.bucket}",
                                              {"events": chunk.events, "rows": chunk.rows})
        rep.phases["write_s"] += time.perf_counter() - t0
        bar.update(chunk.events)

    def _fence(self) -> dict:
        """Offsets CAS that keeps them unchanged: fails if a worker of the group committed meanwhile."""
        if not self.handoff:
            return {}
        stored = self._header_stored
        return {name: (stored.get(name, -1), stored.get(name, -1)) for name in self.report.cutover}

    def _commit_states(self, records: list) -> None:
        group = self.group if self.handoff else None
        fence = self._fence()
        applied = self._applied_cutover()
        if applied:  # a worker that starts before the offsets are handed off skips what these states hold
            records = [replace(r, applied=applied) for r in records]
        for lo in range(0, len(records), ONLINE_BATCH):
            result = self.online.commit(records[lo:lo + ONLINE_BATCH], group, fence, self.epoch)
            if result == 0:
                raise BackfillError(f"group {self.group!r} committed offsets during the backfill: "
                                    f"stop its workers while a hand-off backfill runs")
            if result == -1:
                raise BackfillError("the online store lost its data during the backfill (epoch marker changed)")

    def _applied_cutover(self) -> bytes:
        """``OnlineRecord.applied`` of the states of a Kafka or event-log backfill: each holds every
        event of its entity up to the cut-over of each partition (b"" for files: no positions)."""
        prefix = f"{self.src.topic}:"
        cut = {int(name[len(prefix):]): int(off) for name, off in self.report.cutover.items() if name.startswith(prefix)}
        return encode_applied(cut)

    def _commit_offsets(self, header: dict) -> None:
        rep = self.report
        stored = {k: int(v) for k, v in header.get("stored", {}).items()}
        offsets = {name: (stored.get(name, -1), int(off)) for name, off in rep.cutover.items()}
        if not offsets:
            return
        result = self.online.commit([], self.group, offsets, self.epoch)
        if result == 1:
            rep.offsets_committed = True
            return
        now = self.online.load_offsets(self.group)
        if all(now.get(n) == new for n, (_, new) in offsets.items()):
            rep.offsets_committed = True  # another shard (or an earlier attempt) wrote them
            return
        raise BackfillError(f"could not hand off to group {self.group!r}: its offsets are {now}, "
                            f"expected {stored} (a worker ran during the backfill?)")

    @property
    def _header_stored(self) -> dict:
        return {k: int(v) for k, v in getattr(self, "_stored", {}).items()}
