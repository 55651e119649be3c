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

Modules: ``backfill_options`` (options, report, errors, run identity), ``backfill_readers``
(history file, Kafka), ``backfill_spill`` (entity buckets on disk), ``backfill_chunk`` (the
computation of one chunk), ``backfill_handoff``; this one runs the phases and records progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from featurestore.exceptions import InvalidInputError
from featurestore.offline import OfflineStore
from featurestore.offline.postgres import event_id_column
from featurestore.placement import place_views

from .backfill_chunk import _Chunk, add_batch_transforms, compute_history, final_states
from .backfill_handoff import HandOffMixin
from .backfill_options import (CHUNK_EVENTS, ONLINE_BATCH, READ_ROWS, SAMPLE_REJECTS, SOURCES, BackfillError,
                               BackfillOptions, BackfillReport, run_fingerprint)
from .backfill_readers import KafkaHistory, _file_location, _kafka_location, file_rows_estimate, iter_file_history
from .backfill_spill import Spill, _owner, crc_buckets, shard_mask
from featurestore.processing import PreparedView

__all__ = ["CHUNK_EVENTS", "ONLINE_BATCH", "READ_ROWS", "SAMPLE_REJECTS", "SOURCES", "BackfillError",
           "BackfillOptions", "BackfillReport", "KafkaHistory", "Spill", "add_batch_transforms", "compute_history",
           "crc_buckets", "file_rows_estimate", "final_states", "iter_file_history", "run_backfill",
           "run_fingerprint", "shard_mask"]


# -- where a Kafka read with ``start_ms`` begins: the windows' horizon before it ------------------

def _has_lifetime(pv: PreparedView) -> bool:
    return any(s.window_ms is None for s in pv.specs)


def _horizon(pv: PreparedView) -> int:
    return max((s.window_ms + (s.hop_ms or 0) for s in pv.specs if s.window_ms), default=0) + pv.lateness_ms


# -- the run --------------------------------------------------------------------------------------

async def run_backfill(pv: PreparedView, offline: OfflineStore, online, opts: BackfillOptions) -> BackfillReport:
    """Backfill one view as ``opts`` says; see the module docstring."""
    return await _Backfill(pv, offline, online, opts).run()


class _Backfill(HandOffMixin):
    """One process of a backfill: its shard, read once, then computed and written chunk by chunk."""

    def __init__(self, pv: PreparedView, offline: OfflineStore, online, opts: BackfillOptions):
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
            n_buckets, todo = self._plan(header, done)
            if self.handoff or o.online:
                place_views(self.online, [self.pv], o.kafka_options)
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
            await self._finish(run, header)
        finally:
            if kafka is not None:
                kafka.close()
        rep.seconds = time.perf_counter() - started
        return rep

    def _plan(self, header: dict, done: dict) -> tuple[int, list[int]]:
        """The number of buckets of the run and this shard's buckets still to do (not in ``done``)."""
        o, rep = self.opts, self.report
        self._stored = header.get("stored", {})
        chunks = int(header["chunks"])
        n_buckets = chunks * o.shards
        mine = [o.shard + o.shards * c for c in range(chunks)]
        todo = [b for b in mine if f"b{b}" not in done]
        rep.chunks = len(mine)
        rep.chunks_skipped = len(mine) - len(todo)
        return n_buckets, todo

    async def _finish(self, run: str, header: dict) -> None:
        """Mark this shard done; once every shard is, hand the offsets off and mark the run complete."""
        o, rep = self.opts, self.report
        name, version = self.view.name, self.pv.version
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
            log_frame = acc.drop(columns=[c for c in ("key", "ts", id_col)
                                          if c in acc.columns and c not in self.src.schema]
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
